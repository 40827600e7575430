"""A tiny arithmetic task whose answers can be checked by a program.

It is what the local models are trained on and what the trainer's verifiable rewards check: addition and
subtraction of numbers from 0 to 99 (subtraction never goes below zero, so every answer is a plain natural
number). The response format is one short sentence, ``The answer is 71.``; a checker reads the last integer in
a response, so a correct number in a slightly different sentence still counts as correct, and
`follows_format` tells the two apart for a format reward.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass
from typing import Literal

Operation = Literal["+", "-"]
OPERATIONS: tuple[Operation, ...] = ("+", "-")
MAX_OPERAND = 99

# Several phrasings so that a model has to read the numbers, not memorise one string.
PROMPT_TEMPLATES: tuple[str, ...] = (
    "What is {a} {op} {b}?",
    "Compute {a} {op} {b}.",
    "{a} {op} {b} = ?",
    "Please calculate {a} {op} {b}.",
)
RESPONSE_TEMPLATE = "The answer is {answer}."

# Kinds of wrong response, from hardest to tell apart from the right one to easiest.
WrongKind = Literal["off_by_one", "off_by_ten", "digit_error", "random_number", "malformed"]
WRONG_KINDS: tuple[WrongKind, ...] = ("off_by_one", "off_by_ten", "digit_error", "random_number", "malformed")

# Malformed responses hold no usable number: empty-ish, truncated, evasive or degenerate text.
_MALFORMED: tuple[str, ...] = (
    "",
    "The answer is",
    "The answer is .",
    "The answer is ?",
    "I do not know.",
    "answer answer answer",
    "The the the the",
    "...",
    "It is a number.",
    "The answer",
)

_INTEGER = re.compile(r"-?\d+")
_FORMAT = re.compile(r"The answer is (-?\d+)\.")


@dataclass(frozen=True)
class Problem:
    """One question; `template` picks the phrasing, so the same sum can be asked several ways."""

    a: int
    op: Operation
    b: int
    template: int = 0

    @property
    def answer(self) -> int:
        return self.a + self.b if self.op == "+" else self.a - self.b

    @property
    def prompt(self) -> str:
        return PROMPT_TEMPLATES[self.template].format(a=self.a, op=self.op, b=self.b)

    @property
    def operands(self) -> tuple[int, Operation, int]:
        """The identity of a problem regardless of phrasing: splits are disjoint on this."""
        return (self.a, self.op, self.b)


def all_operands(max_operand: int = MAX_OPERAND) -> list[tuple[int, Operation, int]]:
    """Every distinct problem, in a fixed order, so that seeded shuffles of it are reproducible."""
    out: list[tuple[int, Operation, int]] = []
    for a in range(max_operand + 1):
        for b in range(max_operand + 1):
            out.append((a, "+", b))
            if a >= b:
                out.append((a, "-", b))
    return out


def with_random_template(operands: tuple[int, Operation, int], rng: random.Random) -> Problem:
    a, op, b = operands
    return Problem(a, op, b, rng.randrange(len(PROMPT_TEMPLATES)))


def canonical_response(answer: int) -> str:
    return RESPONSE_TEMPLATE.format(answer=answer)


def extract_answer(response: str) -> int | None:
    """The last integer in the response (as GSM8K-style checkers do), or None when there is none."""
    found = _INTEGER.findall(response)
    return int(found[-1]) if found else None


def is_correct(response: str, answer: int | str) -> bool:
    got = extract_answer(response)
    return got is not None and got == int(answer)


def follows_format(response: str) -> bool:
    """Whether the response is exactly the canonical sentence (surrounding whitespace aside)."""
    return _FORMAT.fullmatch(response.strip()) is not None


def wrong_number(answer: int, kind: WrongKind, rng: random.Random) -> int:
    """A natural number other than `answer`, as close to it as `kind` says."""
    if kind == "off_by_one":
        candidates = [answer - 1, answer + 1]
    elif kind == "off_by_ten":
        candidates = [answer - 10, answer + 10]
    elif kind == "digit_error":
        candidates = _digit_errors(answer)
    elif kind == "random_number":
        candidates = rng.sample(range(2 * MAX_OPERAND + 1), 8)
    else:
        raise ValueError(f"{kind!r} does not produce a number")
    candidates = [n for n in candidates if n >= 0 and n != answer]
    return rng.choice(candidates) if candidates else answer + 1


def _digit_errors(answer: int) -> list[int]:
    """Numbers with the digits swapped or one digit changed: the slips a model that reads digits makes."""
    digits = str(answer)
    out = [int(digits[::-1])] if len(digits) > 1 else []
    for i in range(len(digits)):
        for d in "0123456789":
            if d != digits[i] and not (i == 0 and d == "0" and len(digits) > 1):
                out.append(int(digits[:i] + d + digits[i + 1 :]))
    return out


def wrong_response(answer: int, kind: WrongKind, rng: random.Random) -> str:
    """A response that `is_correct` rejects; every kind but `malformed` keeps the canonical format."""
    if kind == "malformed":
        return rng.choice(_MALFORMED)
    return canonical_response(wrong_number(answer, kind, rng))
