"""Judge templates: built-in or user Jinja2 files, checked at start, with the judged text fenced.

A template renders the judge's user message; the tokenizer's chat template then wraps it as a user turn and
opens the assistant's turn, whose first tokens are the verdict (labels.py says which). Built-ins live in
``templates/``: ``verify`` (correctness, Yes/No), ``rubric`` (a 1..K rating against a rubric) and
``pairwise`` (A or B).

Fencing. Every text that comes from a request — the prompt (``question``), the ``response``, the ``reference``,
``response_a``/``response_b`` — reaches the template already fenced: wrapped in its tag
(``<response>...</response>``), after two kinds of string inside it were neutralised:
- every fence tag, opening or closing, of any field (``</response>``, ``< /Response >``, ``<question>``...),
  so nothing in a response can close its fence early or open a fake one;
- every special or added token of the tokenizer written as text (``<|im_end|>``, ``<|im_start|>``, BOS...),
  which the tokenizer would otherwise turn into the real token and so end the user's turn and speak as the
  assistant.
Neutralising inserts a zero-width space (U+200B) after the first character of each occurrence, repeated until
none is left: the text reads the same to a person, the tokenizer sees ordinary characters, and nothing is
deleted (deleting could join two halves into a new delimiter). Templates never see the raw text, so a user
template cannot forget to fence it. Values a template gets from the service's own configuration (labels,
rubric) are trusted and not fenced.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import jinja2
from jinja2.sandbox import ImmutableSandboxedEnvironment

BUILTIN_TEMPLATES = ("verify", "rubric", "pairwise")
POINTWISE_FIELDS = ("question", "reference", "response")
PAIRWISE_FIELDS = ("question", "reference", "response_a", "response_b")
FENCE_TAGS = ("question", "reference", "response", "response_a", "response_b")
ZERO_WIDTH_SPACE = "\u200b"

# Any opening or closing tag of a fence field, whatever its case or spacing: "<response>", "</ Response >".
_FENCE_TAG = re.compile(
    r"<(?=\s*/?\s*(?:" + "|".join(sorted(FENCE_TAGS, key=len, reverse=True)) + r")\b)", re.IGNORECASE
)


class TemplateError(ValueError):
    """A template that cannot serve; raised at start (the process exits 1 with this message)."""


def neutralise(text: str, literals: Iterable[str]) -> str:
    """``text`` with every fence tag and every string of ``literals`` broken by a zero-width space."""
    ordered = sorted({s for s in literals if len(s) > 1}, key=len, reverse=True)
    # Each pass breaks every occurrence it sees; a break can expose a new one only where occurrences
    # overlapped ("<|a<|a|>|>"), and each pass adds a character that can never be part of one, so it ends.
    while _contains_any(text, ordered):
        text = _FENCE_TAG.sub("<" + ZERO_WIDTH_SPACE, text)
        for literal in ordered:
            text = text.replace(literal, literal[0] + ZERO_WIDTH_SPACE + literal[1:])
    return text


def _contains_any(text: str, literals: Sequence[str]) -> bool:
    return _FENCE_TAG.search(text) is not None or any(s in text for s in literals)


def fence(tag: str, text: str, literals: Iterable[str]) -> str:
    """``text`` neutralised and wrapped in ``<tag>`` ... ``</tag>``."""
    return f"<{tag}>{neutralise(text, literals)}</{tag}>"


@dataclass(frozen=True)
class JudgeTemplate:
    """A checked template: its name (built-in name or file path), source and whether it judges a pair."""

    name: str
    source: str
    pairwise: bool
    _compiled: jinja2.Template = field(repr=False, compare=False)

    @property
    def digest(self) -> str:
        """Part of the cache scope: the same name with edited text must not reuse old rewards."""
        return hashlib.sha256(self.source.encode()).hexdigest()[:12]

    def render(self, variables: dict[str, Any]) -> str:
        return self._compiled.render(**variables).strip()


def _environment() -> ImmutableSandboxedEnvironment:
    # Sandboxed: a user template is configuration, not code; StrictUndefined: a misspelt variable is an error
    # at start instead of an empty string in every prompt.
    return ImmutableSandboxedEnvironment(
        undefined=jinja2.StrictUndefined, autoescape=False, keep_trailing_newline=False
    )


def read_template_source(spec: str) -> tuple[str, str]:
    """(name, source) of a built-in template name or a Jinja2 file path."""
    if spec in BUILTIN_TEMPLATES:
        return spec, resources.files("rewardline.services.judge").joinpath("templates").joinpath(
            f"{spec}.jinja"
        ).read_text(encoding="utf-8")
    path = Path(spec)
    if not path.is_file():
        raise TemplateError(
            f"judge template {spec!r} is neither a built-in ({', '.join(BUILTIN_TEMPLATES)}) nor a readable file"
        )
    try:
        return str(path), path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise TemplateError(f"cannot read judge template {spec}: {e}") from e


def load_template(spec: str, pairwise: bool, constants: dict[str, Any], literals: Sequence[str]) -> JudgeTemplate:
    """Compiles the template and renders it once with probe texts, so that a malformed template fails at start.

    Checked: Jinja2 syntax; no undefined variable; every judged text (``response``, or ``response_a`` and
    ``response_b``) appears fenced in the output, so the judge actually reads what it scores.
    """
    name, source = read_template_source(spec)
    try:
        compiled = _environment().from_string(source)
    except jinja2.TemplateSyntaxError as e:
        raise TemplateError(f"judge template {name}: syntax error on line {e.lineno}: {e.message}") from e
    template = JudgeTemplate(name, source, pairwise, compiled)
    probes = {f: f"PROBE {f.upper()} TEXT" for f in (PAIRWISE_FIELDS if pairwise else POINTWISE_FIELDS)}
    for has_reference in (True, False):
        variables = template_variables(probes, constants, literals, has_reference)
        try:
            text = template.render(variables)
        except jinja2.UndefinedError as e:
            known = ", ".join(sorted(variables))
            raise TemplateError(f"judge template {name}: {e.message} (the variables are: {known})") from e
        except jinja2.TemplateError as e:
            raise TemplateError(f"judge template {name}: cannot render: {e}") from e
        judged = ("response_a", "response_b") if pairwise else ("response",)
        for f in judged:
            if variables[f] not in text:
                kind = "a pairwise" if pairwise else "a pointwise"
                raise TemplateError(
                    f"judge template {name} never shows {{{{ {f} }}}}: {kind} template must include the fenced "
                    f"{f} so the judge reads what it scores"
                )
    return template


def template_variables(
    texts: dict[str, str], constants: dict[str, Any], literals: Sequence[str], has_reference: bool
) -> dict[str, Any]:
    """What a template sees: the request's texts fenced (the reference empty when absent) and the constants."""
    variables: dict[str, Any] = dict(constants)
    for name, text in texts.items():
        if name == "reference" and not has_reference:
            variables[name] = ""
        else:
            variables[name] = fence(name, text, literals)
    variables["has_reference"] = has_reference
    return variables


def special_literals(tokenizer: Any) -> list[str]:
    """Every string the tokenizer would turn into a special or added token (``<|im_end|>``, BOS, PAD...)."""
    out = {str(t) for t in getattr(tokenizer, "all_special_tokens", [])}
    for token in getattr(tokenizer, "added_tokens_decoder", {}).values():
        out.add(str(getattr(token, "content", token)))
    return sorted(s for s in out if s)
