"""What a judge reads: a request's texts through the template, the chat template and the tokenizer, cut to fit.

One ``JudgePrompts`` is built from the service's configuration and holds everything that turns a sample (or a
Compare pair) into token ids and says where the answer is read. The local judge's training imports
``JudgePrompts.from_config`` with the default configuration, so the prompts it learns on are token for token
the ones the service sends to it.

Truncation (``truncation: left``) cuts the question from its start, keeping the response whole and the template's
own text intact; a sample whose response cannot fit even with no question is refused with INVALID_ARGUMENT.
Rationale modes keep room for the rationale, the marker and the answer.

Before anything is rendered, the cheap bounds of rendering.py apply where the tokenizer allows them
(``chars_per_token``): a response (with the reference) too long to fit in any case is refused without tokenizing,
and only the tail of a long question that truncation could keep is fenced and rendered.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from transformers import PreTrainedTokenizerBase

from rewardline.services.api import pb
from rewardline.services.config import ServeConfig
from rewardline.services.errors import ServiceError, invalid_argument
from rewardline.services.judge.labels import AnswerSlot, answer_slot
from rewardline.services.judge.modes import is_rating_mode, is_rationale_mode
from rewardline.services.judge.templating import JudgeTemplate, load_template, special_literals, template_variables
from rewardline.services.rendering import (
    CUT_MARGIN_TOKENS,
    RenderedInput,
    chars_per_token,
    chat_text,
    decoded_text,
    tail,
)
from rewardline.services.validation import quoted, sample_label

PAIR_LABELS = ("A", "B")
DEFAULT_MARKERS = {"rationale_verdict": "Verdict:", "rationale_rating": "Rating:"}
# Re-encoding a generated rationale can take a few more tokens than generating it did.
RATIONALE_SLACK_TOKENS = 8
_TRUNCATION_ROUNDS = 4
TRUNCATIONS = {
    "left": "keep the response and the template, cut the question from the left",
    "error": "refuse judge prompts longer than max_length",
}


def sample_texts(sample: pb.Sample) -> dict[str, str]:
    """The question, response and reference of a sample; a conversation's earlier turns become the question."""
    if sample.messages:
        earlier = list(sample.messages)[:-1]
        if len(earlier) == 1 and earlier[0].role == "user":
            question = earlier[0].content
        else:
            question = "\n".join(f"{m.role}: {m.content}" for m in earlier)
        return {"question": question, "response": sample.messages[-1].content, "reference": sample.reference}
    return {"question": sample.prompt, "response": sample.response, "reference": sample.reference}


class PromptRenderer:
    """Renders one template to token ids, with the answer slot's forced tokens appended, within a budget."""

    def __init__(
        self,
        tokenizer: PreTrainedTokenizerBase,
        template: JudgeTemplate,
        constants: dict[str, Any],
        literals: Sequence[str],
        use_chat_template: bool,
        max_length: int,
        truncation: str,
        suffix: Sequence[int],
        reserve: int,
    ) -> None:
        self.tokenizer = tokenizer
        self.template = template
        self.constants = constants
        self.literals = list(literals)
        self.use_chat_template = use_chat_template
        self.max_length = max_length
        self.truncation = truncation
        self.suffix = list(suffix)
        self.budget = max_length - len(self.suffix) - reserve
        if self.budget <= 0:
            raise ValueError(
                f"max_length={max_length} leaves no room for a prompt (the answer needs {max_length - self.budget})"
            )
        self.chars_per_token = chars_per_token(tokenizer)

    def bounded(self, item: dict[str, str], label: str) -> dict[str, str]:
        """``item`` with a long question cut to the tail that truncation could keep; raises INVALID_ARGUMENT for
        texts that can never fit. Nothing is tokenized (see rendering.py: chars_per_token)."""
        cpt = self.chars_per_token
        if cpt is None:
            return item
        judged = sum(len(text) for name, text in item.items() if name != "question")
        question = item.get("question", "")
        if self.truncation == "left" and judged > self.budget * cpt:
            raise invalid_argument(
                f"{label}: the response and the reference alone are at least {math.ceil(judged / cpt)} tokens and "
                f"cannot fit the budget of {self.budget} (max_length={self.max_length})"
            )
        if self.truncation == "error" and judged + len(question) > self.budget * cpt:
            raise invalid_argument(
                f"{label}: the judge prompt is at least {math.ceil((judged + len(question)) / cpt)} tokens and "
                f"exceeds the budget of {self.budget} (max_length={self.max_length})"
            )
        keep = int((self.budget + CUT_MARGIN_TOKENS) * cpt)
        if self.truncation == "left" and len(question) > keep:
            return {**item, "question": tail(question, keep)}
        return item

    def refused_by_size(self, response_bytes: int, label: str) -> ServiceError | None:
        """``bounded``'s refusal, told from the response's size in UTF-8 bytes before its text is read (see
        InputRenderer.refused_by_size); None where the size alone does not tell."""
        cpt = self.chars_per_token
        if cpt is None or response_bytes <= 4 * self.budget * cpt:
            return None
        least = math.ceil(response_bytes / 4 / cpt)
        if self.truncation == "left":
            return invalid_argument(
                f"{label}: the response and the reference alone are at least {least} tokens and cannot fit the "
                f"budget of {self.budget} (max_length={self.max_length})"
            )
        if self.truncation == "error":
            return invalid_argument(
                f"{label}: the judge prompt is at least {least} tokens and exceeds the budget of {self.budget} "
                f"(max_length={self.max_length})"
            )
        return None

    def text(self, texts: dict[str, str]) -> str:
        """The whole judge prompt as text: template, then the chat template (or a newline without one)."""
        has_reference = bool(texts.get("reference"))
        message = self.template.render(template_variables(texts, self.constants, self.literals, has_reference))
        if self.use_chat_template:
            return chat_text(self.tokenizer, [{"role": "user", "content": message}], add_generation_prompt=True)
        return message + "\n"

    def encode(self, texts: Sequence[str]) -> list[list[int]]:
        # A chat template writes its own BOS; without one the tokenizer adds its special tokens.
        return self.tokenizer(list(texts), add_special_tokens=not self.use_chat_template)["input_ids"]

    def render(self, items: Sequence[dict[str, str]], labels: Sequence[str]) -> list[RenderedInput | ServiceError]:
        """One entry per item: its token ids (``suffix`` included), or why it cannot be judged."""
        texts: list[str | ServiceError] = []
        bounded: list[dict[str, str]] = []
        for item, label in zip(items, labels):
            try:
                item = self.bounded(item, label)
                texts.append(self.text(item))
            except ServiceError as e:
                texts.append(e.as_value())
            except Exception as e:  # a chat template that chokes on this input: the sample's fault
                texts.append(invalid_argument(f"{label}: cannot render the judge prompt: {e}"))
            bounded.append(item)
        ok = [t for t in texts if isinstance(t, str)]
        encoded = iter(self.encode(ok)) if ok else iter(())
        out: list[RenderedInput | ServiceError] = []
        for item, label, text in zip(bounded, labels, texts):
            if isinstance(text, ServiceError):
                out.append(text)
                continue
            ids = next(encoded)
            if len(ids) <= self.budget:
                out.append(RenderedInput(tuple(ids + self.suffix), truncated=False))
                continue
            try:
                out.append(self._truncate(item, len(ids), label))
            except ServiceError as e:
                out.append(e.as_value())
        return out

    def _truncate(self, item: dict[str, str], length: int, label: str) -> RenderedInput:
        if self.truncation == "error":
            raise invalid_argument(
                f"{label}: the judge prompt is {length} tokens and exceeds the budget of {self.budget} "
                f"(max_length={self.max_length})"
            )
        question_ids = self.tokenizer(item.get("question", ""), add_special_tokens=False)["input_ids"]
        for _ in range(_TRUNCATION_ROUNDS):
            keep = len(question_ids) - (length - self.budget)
            question_ids = question_ids[len(question_ids) - keep :] if keep > 0 else []
            shorter = {**item, "question": decoded_text(self.tokenizer, question_ids)}
            (ids,) = self.encode([self.text(shorter)])
            length = len(ids)
            if length <= self.budget:
                return RenderedInput(tuple(ids + self.suffix), truncated=True)
            if not question_ids:
                break
        raise invalid_argument(
            f"{label}: the response and the judge template alone are {length} tokens and cannot fit the budget of "
            f"{self.budget} (max_length={self.max_length})"
        )


@dataclass
class JudgePrompts:
    """Everything that turns requests into the judge's inputs, built once at start from the configuration."""

    mode: str
    tokenizer: PreTrainedTokenizerBase
    pointwise: PromptRenderer
    pairwise: PromptRenderer
    slot: AnswerSlot  # where Score's verdict or rating is read
    pair_slot: AnswerSlot
    marker: str | None  # rationale modes

    @classmethod
    def from_config(
        cls, config: ServeConfig, tokenizer: PreTrainedTokenizerBase, max_length: int, use_chat_template: bool
    ) -> JudgePrompts:
        """Checks the templates and labels against this tokenizer; raises ``ValueError`` subclasses on any fault."""
        mode = config.judge_mode
        rationale = is_rationale_mode(mode)
        marker = (config.judge_marker or DEFAULT_MARKERS[mode]) if rationale else None
        scale = config.judge_rating_scale
        if is_rating_mode(mode):
            classes: list[list[str]] = [[str(r)] for r in range(1, scale + 1)]
        else:
            classes = [list(config.judge_positive), list(config.judge_negative)]

        def encode(text: str) -> list[int]:
            return tokenizer(text, add_special_tokens=False)["input_ids"]

        slot = answer_slot(encode, classes, lead=marker or "")
        pair_slot = answer_slot(encode, [[PAIR_LABELS[0]], [PAIR_LABELS[1]]])
        literals = special_literals(tokenizer)
        constants = {
            "rationale": rationale,
            "marker": marker or "",
            "positive": config.judge_positive[0],
            "negative": config.judge_negative[0],
            "rating_min": 1,
            "rating_max": scale,
            "rubric": config.judge_rubric,
        }
        template_spec = config.judge_template or ("rubric" if is_rating_mode(mode) else "verify")
        template = load_template(template_spec, pairwise=False, constants=constants, literals=literals)
        pair_constants = {"label_a": PAIR_LABELS[0], "label_b": PAIR_LABELS[1]}
        pair_template = load_template(
            config.judge_pairwise_template, pairwise=True, constants=pair_constants, literals=literals
        )
        if rationale:
            assert marker is not None
            reserve = (
                config.judge_max_rationale_tokens + len(encode(marker)) + len(slot.forced) + 1 + RATIONALE_SLACK_TOKENS
            )
            pointwise = PromptRenderer(
                tokenizer, template, constants, literals, use_chat_template, max_length, config.truncation, (), reserve
            )
        else:
            pointwise = PromptRenderer(
                tokenizer,
                template,
                constants,
                literals,
                use_chat_template,
                max_length,
                config.truncation,
                slot.forced,
                1,
            )
        pairwise = PromptRenderer(
            tokenizer,
            pair_template,
            pair_constants,
            literals,
            use_chat_template,
            max_length,
            config.truncation,
            pair_slot.forced,
            1,
        )
        return cls(mode, tokenizer, pointwise, pairwise, slot, pair_slot, marker)

    @property
    def truncation_description(self) -> str:
        return TRUNCATIONS[self.pointwise.truncation]

    def render_samples(self, samples: Sequence[pb.Sample]) -> list[RenderedInput | ServiceError]:
        return self.pointwise.render(
            [sample_texts(s) for s in samples], [sample_label(s, i) for i, s in enumerate(samples)]
        )

    def render_pair(self, request: pb.CompareRequest) -> tuple[RenderedInput, RenderedInput]:
        """The pair shown A-first and B-first (the judge's "A" then means the request's B)."""
        base = {"question": request.prompt, "reference": request.reference}
        a_first = {**base, "response_a": request.response_a, "response_b": request.response_b}
        b_first = {**base, "response_a": request.response_b, "response_b": request.response_a}
        label = f"compare {quoted(request.id)}" if request.id else "compare"
        first, second = self.pairwise.render([a_first, b_first], [label, label])
        if isinstance(first, ServiceError):
            raise first.raised_anew()
        if isinstance(second, ServiceError):
            raise second.raised_anew()
        return first, second

    def rationale_context(self, prompt_ids: Sequence[int], rationale: str) -> list[int]:
        """Where a rationale's verdict is read: the prompt, the rationale and the marker, then the forced tokens."""
        assert self.marker is not None
        after = self.tokenizer(rationale + self.marker, add_special_tokens=False)["input_ids"]
        return [*prompt_ids, *after, *self.slot.forced]

    def scope(self) -> str:
        """The part of the cache key the prompts decide (the mode and the scorer's settings are added there)."""
        return "|".join(
            [
                self.mode,
                self.pointwise.template.name,
                self.pointwise.template.digest,
                ",".join(map(str, self.slot.token_ids)),
                self.marker or "",
            ]
        )
