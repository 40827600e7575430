"""Sample -> token ids: the model's chat template (or plain concatenation), tokenization and truncation.

Scores depend on the exact tokens, so rendering follows what a model's authors do when they score: the
tokenizer's own chat template over [user: prompt, assistant: response] (or the sample's messages), tokenized
in one piece; plain ``prompt + response`` with the tokenizer's special tokens when there is no template.

Truncation policy ``left`` (the default) keeps the response whole and cuts the oldest prompt tokens, keeping
leading special tokens (BOS): a reward model judges the response, and the end of the prompt is what it
answers. ``error`` refuses over-long samples. A response that cannot fit even with the whole prompt cut is
refused with INVALID_ARGUMENT naming the sample.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from transformers import PreTrainedTokenizerBase

from rewardline.services.api import pb
from rewardline.services.config import ServeConfig
from rewardline.services.errors import ServiceError, invalid_argument
from rewardline.services.validation import sample_label

TruncationPolicy = Literal["left", "error"]
TRUNCATION_DESCRIPTIONS = {
    "left": "keep the response, cut the prompt from the left (leading special tokens kept)",
    "error": "refuse inputs longer than max_length",
}


@dataclass(frozen=True)
class RenderedInput:
    """What the model reads for one sample."""

    token_ids: tuple[int, ...]
    truncated: bool

    @property
    def num_tokens(self) -> int:
        return len(self.token_ids)


def chat_text(
    tokenizer: PreTrainedTokenizerBase, messages: Sequence[dict[str, str]], add_generation_prompt: bool = False
) -> str:
    """The tokenizer's chat template over ``messages``, as text (to be tokenized in one piece by the caller)."""
    text = tokenizer.apply_chat_template(list(messages), tokenize=False, add_generation_prompt=add_generation_prompt)
    assert isinstance(text, str)  # tokenize=False renders text; the library's annotation covers every mode
    return text


def decoded_text(
    tokenizer: PreTrainedTokenizerBase, token_ids: Sequence[int], skip_special_tokens: bool = False
) -> str:
    """One sequence of token ids as text."""
    text = tokenizer.decode(list(token_ids), skip_special_tokens=skip_special_tokens)
    assert isinstance(text, str)  # one sequence decodes to one string; the library's annotation covers batches
    return text


def conversation(sample: pb.Sample) -> list[dict[str, str]]:
    if sample.messages:
        return [{"role": m.role, "content": m.content} for m in sample.messages]
    return [{"role": "user", "content": sample.prompt}, {"role": "assistant", "content": sample.response}]


class InputRenderer:
    """Renders and tokenizes samples for one sequence-classification model."""

    def __init__(
        self,
        tokenizer: PreTrainedTokenizerBase,
        max_length: int,
        truncation: TruncationPolicy = "left",
        use_chat_template: bool | None = None,
    ) -> None:
        self.tokenizer = tokenizer
        self.max_length = max_length
        self.truncation = truncation
        has_template = bool(getattr(tokenizer, "chat_template", None))
        self.use_chat_template = has_template if use_chat_template is None else use_chat_template
        if self.use_chat_template and not has_template:
            raise ValueError("use_chat_template is set but the tokenizer has no chat template")
        self._special_ids = set(tokenizer.all_special_ids)

    def _full_text(self, sample: pb.Sample) -> str:
        if self.use_chat_template:
            return chat_text(self.tokenizer, conversation(sample))
        if sample.messages:
            raise invalid_argument(
                f"sample {sample.id!r}: messages need a chat template and this model's tokenizer has none"
            )
        return sample.prompt + sample.response

    def _prefix_text(self, sample: pb.Sample) -> str:
        """Everything before the response; only needed to truncate, so rendered only then."""
        if self.use_chat_template:
            return chat_text(self.tokenizer, conversation(sample)[:-1], add_generation_prompt=True)
        return sample.prompt

    def _encode(self, texts: Sequence[str]) -> list[list[int]]:
        add_special = not self.use_chat_template
        return self.tokenizer(list(texts), add_special_tokens=add_special)["input_ids"]

    def _truncate(self, ids: list[int], prefix_text: str, full_text: str, label: str) -> RenderedInput:
        if self.truncation == "error":
            raise invalid_argument(f"{label}: {len(ids)} tokens exceed max_length={self.max_length}")
        head = 0
        while head < len(ids) and ids[head] in self._special_ids and head < 4:
            head += 1
        response_text = full_text[len(prefix_text) :] if full_text.startswith(prefix_text) else full_text
        response_tokens = len(self._encode([response_text])[0])
        budget = self.max_length - head
        if response_tokens > budget:
            raise invalid_argument(
                f"{label}: the response alone is {response_tokens} tokens and cannot fit max_length={self.max_length}"
            )
        return RenderedInput(tuple(ids[:head] + ids[len(ids) - budget :]), truncated=True)

    def render(self, samples: Sequence[pb.Sample]) -> list[RenderedInput | ServiceError]:
        """One entry per sample: its tokens, or the error that sample alone earns."""
        texts: list[str | ServiceError] = []
        for i, sample in enumerate(samples):
            try:
                texts.append(self._full_text(sample))
            except ServiceError as e:
                texts.append(e)
            except Exception as e:  # a template that chokes on this input: the sample's fault, not the server's
                texts.append(invalid_argument(f"{sample_label(sample, i)}: cannot render with the chat template: {e}"))
        ok = [t for t in texts if not isinstance(t, ServiceError)]
        encoded = iter(self._encode(ok)) if ok else iter(())
        out: list[RenderedInput | ServiceError] = []
        for i, (sample, text) in enumerate(zip(samples, texts)):
            if isinstance(text, ServiceError):
                out.append(text)
                continue
            ids = next(encoded)
            if len(ids) <= self.max_length:
                out.append(RenderedInput(tuple(ids), truncated=False))
                continue
            try:
                out.append(self._truncate(ids, self._prefix_text(sample), text, sample_label(sample, i)))
            except ServiceError as e:
                out.append(e)
        return out


def renderer_for(config: ServeConfig, tokenizer: PreTrainedTokenizerBase, model_dir: Path) -> InputRenderer:
    """The renderer of a sequence-classification model as the service configuration asks for it."""
    template = {"auto": None, "on": True, "off": False}[config.chat_template]
    return InputRenderer(tokenizer, config.resolved_max_length(model_dir, tokenizer), config.truncation, template)
