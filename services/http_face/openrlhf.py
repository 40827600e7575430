"""OpenRLHF's remote reward model contract: ``POST /get_reward``.

Matched against OpenRLHF 0.11.2 (PyPI), ``openrlhf/utils/agent.py``: ``SingleTurnAgentExecutor._fetch_rewards_via_http``
posts ``{"query": [...], "prompts": [...], "labels": [...]}`` to each ``--reward.remote_url`` (the older flag
``--remote_rm_url``) and reads ``rewards``, ``scores`` (falling back to ``rewards``) and ``extra_logs`` from the JSON
answer; ``openrlhf/trainer/ppo_utils/samples_generator.py`` turns each ``extra_logs`` value into a tensor, so those
are numbers only. The reward server it ships (``openrlhf/cli/serve_rm.py``) answers the same shape.

Here: each query is split into prompt and response as ``rewardline.services.queries`` says (with this service's
tokenizer), ``labels`` become the samples' reference answers (judges that verify against one read it), and the
samples go through the same admission path as gRPC Score (one bad query fails the request, as Score does). The
answer carries ``rewards`` and ``scores`` (both the service's score), ``extra_logs`` (uncertainty, attributes, the
out-of-distribution flag, a judge's verdict or rating: ``rewardline.services.extras``) and ``rewardline_rewards``, each
query's whole Reward in proto3 JSON (a judge's rationale is text, which ``extra_logs`` cannot carry). Empty lists
are a valid request (older OpenRLHF sends them to every URL but the first) and get empty lists back.
"""

from __future__ import annotations

import json
from typing import Any

from aiohttp import web
from pydantic import BaseModel, ConfigDict, StrictStr

from rewardline.services.api import pb
from rewardline.services.core import ScoringCore
from rewardline.services.extras import reward_extras
from rewardline.services.http_face.bodies import message_json, parse_model, read_parsed
from rewardline.services.http_face.errors import field_error
from rewardline.services.queries import QuerySplitter

ROUTE = "/get_reward"


class GetRewardRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")

    query: list[StrictStr]
    prompts: list[StrictStr] | None = None
    labels: list[Any] | None = None


def reference_text(label: Any, index: int) -> str:
    """A label as the sample's reference answer (what a verifying judge compares against)."""
    if label is None:
        return ""
    if isinstance(label, str):
        return label
    if isinstance(label, bool | int | float):
        return json.dumps(label)
    raise field_error(f"labels[{index}]: expected a string (a reference answer), got {type(label).__name__}", "labels")


def get_reward_answer(rewards: list[pb.Reward]) -> dict[str, Any]:
    scores = [float(r.score) for r in rewards]
    extras = [reward_extras(r) for r in rewards]
    names = list(extras[0]) if extras else []
    return {
        "rewards": scores,
        "scores": scores,
        "extra_logs": {name: [e[name] for e in extras] for name in names},
        "rewardline_rewards": [message_json(r) for r in rewards],
    }


class OpenRLHFRoutes:
    def __init__(self, core: ScoringCore) -> None:
        self.core = core
        self._splitter: QuerySplitter | None = None

    def add_to(self, app: web.Application) -> None:
        app.router.add_post(ROUTE, self.get_reward)

    def splitter(self) -> QuerySplitter:
        if self._splitter is None:  # the tokenizer exists once the model is loaded, which the gate has checked
            assert self.core.scorer is not None
            self._splitter = QuerySplitter(self.core.scorer.tokenizer)
        return self._splitter

    async def get_reward(self, request: web.Request) -> web.Response:
        method = "http:" + ROUTE
        async with self.core.admitted(method):
            body, size = await read_parsed(request, self.core, lambda data: parse_model(data, GetRewardRequest))
            if body.prompts is None:
                raise field_error("prompts: required (the response is what follows the prompt in the query)", "prompts")
            labels: list[Any] = body.labels if body.labels is not None else [None] * len(body.query)
            if len(labels) != len(body.query):
                raise field_error(f"query has {len(body.query)} entries and labels {len(labels)}", "labels")
            splitter, prompts = self.splitter(), body.prompts

            def samples_of_queries() -> list[pb.Sample]:
                pairs = splitter.split_all(body.query, prompts)
                return [
                    pb.Sample(id=str(i), prompt=prompt, response=response, reference=reference_text(label, i))
                    for i, ((prompt, response), label) in enumerate(zip(pairs, labels))
                ]

            samples = await self.core.render(size, samples_of_queries)  # off the event loop when large
            rewards = await self.core.score(samples, None, method, size) if samples else []
            return web.json_response(get_reward_answer(rewards))
