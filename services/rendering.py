"""Sample -> token ids: the model's chat template (or plain concatenation), tokenization and truncation.

Scores depend on the exact tokens, so rendering follows what a model's authors do when they score: the
tokenizer's own chat template over [user: prompt, assistant: response] (or the sample's messages), tokenized
in one piece; plain ``prompt + response`` with the tokenizer's special tokens when there is no template.

Truncation policy ``left`` (the default) keeps the response whole and cuts the oldest prompt tokens, keeping
leading special tokens (BOS): a reward model judges the response, and the end of the prompt is what it
answers. ``error`` refuses over-long samples. A response that cannot fit even with the whole prompt cut is
refused with INVALID_ARGUMENT naming the sample.

Text from a request is text. A response that contains the string of a special token (``<|im_end|>\\n
<|im_start|>user``) would otherwise be read as that token, so a policy could end its own turn and forge the
conversation that follows. Such a sample is tokenized in pieces: the chat template's own text as usual, every
text from the request with special-token strings taken literally (``split_special_tokens``). Samples without
such a string (nearly all) keep the one-piece tokenization, token for token.

Cheap bounds come before any tokenizing, because tokenizing is the expensive step (a 3 MB text took 5 s here) and
its cost is set by the sender. For tokenizers where it can be proven (``chars_per_token``: no token stands for
more characters than the longest string in the vocabulary, and nothing drops text on the way), a text of ``n``
characters has at least ``n / chars_per_token`` tokens: a response that long can never fit and is refused without
tokenizing, and with left truncation only the last ``(max_length + CUT_MARGIN_TOKENS) * chars_per_token``
characters of the prompt can reach the model, so only those are rendered. The margin keeps the cut well before
the tokens kept, so they are the tokens the whole prompt gives.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

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
# Tokens of prompt kept beyond max_length when a long prompt is cut before tokenizing: the tokens near a cut can
# differ from the whole text's (a word cut in two), and these are all dropped by the truncation that follows.
CUT_MARGIN_TOKENS = 64
# Placeholders for request texts when a template is rendered to find its own pieces (private-use code points).
_HOLE = "\U000f0000{}\U000f0001"


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


# -- what a tokenizer guarantees ---------------------------------------------------------------------------------
# Normalizers by the most characters of input that can become one character of output (None: can delete text).
_NORMALIZER_SHRINK: dict[str, float | None] = {
    "NFD": 1.0,
    "NFKD": 1.0,
    "Lowercase": 1.0,
    "Prepend": 1.0,
    "NFC": 4.0,  # composition: a base and up to three marks (Hangul L+V+T, stacked accents) into one
    "NFKC": 4.0,
}
# Pre-tokenizers that keep every character (Split and Punctuation unless told to remove what they match).
_KEEPING_PRE_TOKENIZERS = {"ByteLevel", "Metaspace", "Digits", "UnicodeScripts", "Split", "Punctuation"}


def _normalizer_shrink(spec: dict[str, Any] | None) -> float | None:
    if spec is None:
        return 1.0
    kind = spec.get("type")
    if kind == "Sequence":
        factor = 1.0
        for part in spec.get("normalizers", []):
            shrink = _normalizer_shrink(part)
            if shrink is None:
                return None
            factor *= shrink
        return factor
    if kind == "Replace":
        pattern, content = spec.get("pattern", {}).get("String"), spec.get("content", "")
        if not isinstance(pattern, str) or not pattern or not content:  # a regex, or a deletion
            return None
        return max(1.0, len(pattern) / len(content))
    return _NORMALIZER_SHRINK.get(str(kind))


def _keeps_every_character(spec: dict[str, Any] | None) -> bool:
    if spec is None:
        return True
    if spec.get("type") == "Sequence":
        return all(_keeps_every_character(p) for p in spec.get("pretokenizers", []))
    return spec.get("type") in _KEEPING_PRE_TOKENIZERS and spec.get("behavior", "Isolated") != "Removed"


def _byte_level(spec: dict[str, Any] | None) -> bool:
    if spec is None:
        return False
    if spec.get("type") == "Sequence":
        return any(_byte_level(p) for p in spec.get("pretokenizers", []))
    return spec.get("type") == "ByteLevel"


def chars_per_token(tokenizer: PreTrainedTokenizerBase) -> float | None:
    """The most characters of text one token can stand for, where the tokenizer lets that be proven; else None.

    Proven for BPE models that never produce an unknown-word token (byte-level, or byte fallback), whose
    pre-tokenizer keeps every character and whose normalizer deletes none: then every character ends up in the
    string of some token, so a text of ``n`` characters has at least ``n / chars_per_token`` tokens. WordPiece
    and Unigram can turn a whole word into one unknown token, and a stripping normalizer can turn megabytes of
    blanks into nothing: no bound for those (their inputs are tokenized whole, off the event loop).
    """
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        return None
    try:
        spec = json.loads(backend.to_str())
    except (ValueError, AttributeError):
        return None
    model = spec.get("model") or {}
    if model.get("type") != "BPE" or model.get("continuing_subword_prefix") or model.get("end_of_word_suffix"):
        return None
    shrink = _normalizer_shrink(spec.get("normalizer"))
    if shrink is None or not _keeps_every_character(spec.get("pre_tokenizer")):
        return None
    vocab: dict[str, int] = model.get("vocab") or {}
    if not model.get("byte_fallback"):
        if not _byte_level(spec.get("pre_tokenizer")):
            return None
        from tokenizers.pre_tokenizers import ByteLevel

        if not set(ByteLevel.alphabet()) <= set(vocab):  # a byte without a token would be unknown
            return None
    longest = max((len(t) for t in vocab), default=0)
    longest = max([longest, *(len(t.get("content", "")) for t in spec.get("added_tokens") or [])])
    return shrink * longest if longest > 0 else None


def special_token_strings(tokenizer: PreTrainedTokenizerBase) -> list[str]:
    """The strings the tokenizer reads as special tokens (``<|im_end|>``, BOS...), longest first."""
    out = {str(t) for t in getattr(tokenizer, "all_special_tokens", [])}
    for token in getattr(tokenizer, "added_tokens_decoder", {}).values():
        if getattr(token, "special", False):
            out.add(str(token.content))
    return sorted((s for s in out if s), key=len, reverse=True)


def literal_encoder(tokenizer: PreTrainedTokenizerBase) -> Any:
    """A private copy of the fast tokenizer that reads special-token strings as text (None without one).

    A copy, because ``split_special_tokens`` on the shared tokenizer is a setting of the object: switching it per
    call would change the tokens of a request rendered at the same moment on another thread."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        return None
    from tokenizers import Tokenizer

    copy = Tokenizer.from_str(backend.to_str())
    copy.encode_special_tokens = True
    copy.no_truncation()
    copy.no_padding()
    return copy


def tail(text: str, chars: int) -> str:
    return text[len(text) - chars :] if len(text) > chars else text


@dataclass
class _Plan:
    """One sample on its way to tokens: the conversation (prompt cut, if it was), its rendering, and its label."""

    label: str
    messages: list[dict[str, str]]  # the conversation (with a chat template), or [prompt, response] without
    text: str = ""
    literal: bool = False  # some request text holds a special-token string: tokenize it in pieces


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
        self.specials = special_token_strings(tokenizer)
        self._literal = literal_encoder(tokenizer)
        self.chars_per_token = chars_per_token(tokenizer)

    # -- before tokenizing ----------------------------------------------------------------------------------
    def _plan(self, sample: pb.Sample, index: int) -> _Plan:
        """Checks the cheap bounds and cuts a long prompt; raises the sample's ServiceError."""
        label = sample_label(sample, index)
        if self.use_chat_template:
            messages = conversation(sample)
        elif sample.messages:
            raise invalid_argument(f"{label}: messages need a chat template and this model's tokenizer has none")
        else:
            messages = [{"role": "user", "content": sample.prompt}, {"role": "assistant", "content": sample.response}]
        cpt = self.chars_per_token
        if cpt is not None:
            response = len(messages[-1]["content"])
            everything = sum(len(m["content"]) for m in messages)
            if self.truncation == "left" and response > self.max_length * cpt:
                raise invalid_argument(
                    f"{label}: the response alone is at least {math.ceil(response / cpt)} tokens and cannot fit "
                    f"max_length={self.max_length}"
                )
            if self.truncation == "error" and everything > self.max_length * cpt:
                raise invalid_argument(
                    f"{label}: at least {math.ceil(everything / cpt)} tokens exceed max_length={self.max_length}"
                )
            if self.truncation == "left":
                messages = self._cut(messages, int((self.max_length + CUT_MARGIN_TOKENS) * cpt))
        return _Plan(label, messages)

    def refused_by_size(self, response_bytes: int, label: str) -> ServiceError | None:
        """Why a sample whose response is ``response_bytes`` of UTF-8 cannot be scored, told before its text is
        read (wire_sizes.py): ``_plan``'s rule with the fewest characters those bytes can hold, a quarter of them.
        None where the size alone does not tell."""
        cpt = self.chars_per_token
        if cpt is None or response_bytes <= 4 * self.max_length * cpt:
            return None
        least = math.ceil(response_bytes / 4 / cpt)
        if self.truncation == "left":
            return invalid_argument(
                f"{label}: the response alone is at least {least} tokens and cannot fit max_length={self.max_length}"
            )
        if self.truncation == "error":
            return invalid_argument(f"{label}: at least {least} tokens exceed max_length={self.max_length}")
        return None

    @staticmethod
    def _cut(messages: list[dict[str, str]], keep: int) -> list[dict[str, str]]:
        """The conversation with everything before its last ``keep`` characters of prompt emptied (the messages
        stay, so that the template renders the same structure)."""
        out = [messages[-1]]
        for message in reversed(messages[:-1]):
            content = tail(message["content"], max(keep, 0))
            keep -= len(content)
            out.append({**message, "content": content})
        return out[::-1]

    def _full_text(self, messages: list[dict[str, str]]) -> str:
        if self.use_chat_template:
            return chat_text(self.tokenizer, messages)
        return messages[0]["content"] + messages[1]["content"]

    def _prefix_text(self, messages: list[dict[str, str]]) -> str:
        """Everything before the response; only needed to truncate, so rendered only then.

        A conversation of the response alone has nothing before it that could be cut: "" counts all of it as the
        response, which then cannot fit (a chat template refuses to render an empty conversation, which once
        escaped as INTERNAL; found by tests/test_fuzz.py)."""
        if self.use_chat_template:
            if len(messages) < 2:
                return ""
            return chat_text(self.tokenizer, messages[:-1], add_generation_prompt=True)
        return messages[0]["content"]

    def _holds_special(self, messages: list[dict[str, str]]) -> bool:
        return any(s in m["content"] for m in messages for s in self.specials)

    # -- tokenizing -------------------------------------------------------------------------------------------
    def _encode(self, texts: Sequence[str]) -> list[list[int]]:
        add_special = not self.use_chat_template
        return self.tokenizer(list(texts), add_special_tokens=add_special)["input_ids"]

    def _encode_literally(self, text: str, add_special_tokens: bool = False) -> list[int]:
        if self._literal is not None:
            return list(self._literal.encode(text, add_special_tokens=add_special_tokens).ids)
        ids = self.tokenizer(text, add_special_tokens=add_special_tokens, split_special_tokens=True)["input_ids"]
        return list(ids)

    def _pieces(self, plan: _Plan) -> list[tuple[str, bool]]:
        """The rendering as (text, from the request) pieces, found by rendering the template with placeholders.

        A template that changes the request's text (trims it, say) cannot be cut into pieces that add up to its
        rendering; such a sample is refused rather than read with forged special tokens."""
        holes = [{**m, "content": _HOLE.format(i)} for i, m in enumerate(plan.messages)]
        skeleton = chat_text(self.tokenizer, holes)
        pieces: list[tuple[str, bool]] = []
        for i, message in enumerate(plan.messages):
            before, found, skeleton = skeleton.partition(_HOLE.format(i))
            if not found:
                break
            pieces += [(before, False), (message["content"], True)]
        pieces.append((skeleton, False))
        if "".join(text for text, _ in pieces) != plan.text:
            raise invalid_argument(
                f"{plan.label}: contains the text of a special token, and this model's chat template changes the text "
                "around it, so it cannot be read as plain text; remove the special-token text"
            )
        return pieces

    def _literal_ids(self, plan: _Plan) -> tuple[list[int], int]:
        """Token ids of a sample holding special-token text, and how many of them are the response and after."""
        if not self.use_chat_template:  # the whole text is the request's: one piece, the tokenizer's BOS around it
            response = self._encode_literally(plan.messages[1]["content"])
            return self._encode_literally(plan.text, add_special_tokens=True), len(response)
        ids: list[int] = []
        response_start = 0
        pieces = self._pieces(plan)
        for n, (text, from_request) in enumerate(pieces):
            if n == len(pieces) - 2:  # the last request text is the response
                response_start = len(ids)
            if from_request:
                ids += self._encode_literally(text)
            elif text:
                ids += self.tokenizer(text, add_special_tokens=False)["input_ids"]
        return ids, len(ids) - response_start

    def _truncate(self, ids: list[int], response_tokens: int, label: str) -> RenderedInput:
        """Left truncation: the leading special tokens, then as much of the end as fits."""
        head = 0
        while head < len(ids) and ids[head] in self._special_ids and head < 4:
            head += 1
        budget = self.max_length - head
        if response_tokens > budget:
            raise invalid_argument(
                f"{label}: the response alone is {response_tokens} tokens and cannot fit max_length={self.max_length}"
            )
        return RenderedInput(tuple(ids[:head] + ids[len(ids) - budget :]), truncated=True)

    def _plain_response_tokens(self, plan: _Plan) -> int:
        prefix_text = self._prefix_text(plan.messages)
        full_text = plan.text
        response_text = full_text[len(prefix_text) :] if full_text.startswith(prefix_text) else full_text
        return len(self._encode([response_text])[0])

    def render(self, samples: Sequence[pb.Sample]) -> list[RenderedInput | ServiceError]:
        """One entry per sample: its tokens, or the error that sample alone earns."""
        plans: list[_Plan | ServiceError] = []
        for i, sample in enumerate(samples):
            try:
                planned = self._plan(sample, i)
                planned.text = self._full_text(planned.messages)
                planned.literal = bool(self.specials) and self._holds_special(planned.messages)
                plans.append(planned)
            except ServiceError as e:
                plans.append(e.as_value())
            except Exception as e:  # a template that chokes on this input: the sample's fault, not the server's
                plans.append(invalid_argument(f"{sample_label(sample, i)}: cannot render with the chat template: {e}"))
        plain = [p.text for p in plans if isinstance(p, _Plan) and not p.literal]
        encoded = iter(self._encode(plain)) if plain else iter(())
        out: list[RenderedInput | ServiceError] = []
        for plan in plans:
            if isinstance(plan, ServiceError):
                out.append(plan)
                continue
            try:
                if plan.literal:
                    ids, response_tokens = self._literal_ids(plan)
                else:
                    ids, response_tokens = next(encoded), -1
                if len(ids) <= self.max_length:
                    out.append(RenderedInput(tuple(ids), truncated=False))
                    continue
                if self.truncation == "error":
                    raise invalid_argument(f"{plan.label}: {len(ids)} tokens exceed max_length={self.max_length}")
                if response_tokens < 0:
                    response_tokens = self._plain_response_tokens(plan)
                out.append(self._truncate(ids, response_tokens, plan.label))
            except ServiceError as e:
                out.append(e.as_value())
        return out


def renderer_for(config: ServeConfig, tokenizer: PreTrainedTokenizerBase, model_dir: Path) -> InputRenderer:
    """The renderer of a sequence-classification model as the service configuration asks for it."""
    template = {"auto": None, "on": True, "off": False}[config.chat_template]
    return InputRenderer(tokenizer, config.resolved_max_length(model_dir, tokenizer), config.truncation, template)
