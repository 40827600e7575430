"""Which tokens carry a judge's answer, and where they are read.

A verdict ("Yes"/"No"), a rating ("1".."5") or a pairwise choice ("A"/"B") is read from the judge's
next-token probabilities at one position, without sampling. Words do not map to tokens the same way in every
tokenizer: "Yes" is one token in Qwen's, two ("Y", "es") in the local models' tiny one, and after a marker
such as "Verdict:" the space before the word may be a token of its own or part of " Yes". So the answer
position is found from the tokenizer itself: every label is encoded after the same lead text (nothing at the
start of the assistant's turn, or the rationale marker), the tokens all labels share at the front (a lone
space, say) are forced into the context, and the first token after them — which must differ between
classes — is the one whose probability is read. A label word longer than one token is thus read by its
first distinctive token, as GenRM and Prometheus implementations do.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

Encode = Callable[[str], list[int]]


class LabelError(ValueError):
    """Labels that cannot be told apart by one token; raised at start so a misconfigured judge never serves."""


@dataclass(frozen=True)
class AnswerSlot:
    """The tokens to force after the context, then the candidate tokens of each class (read, not sampled)."""

    forced: tuple[int, ...]
    classes: tuple[tuple[int, ...], ...]  # classes[k]: the first-token ids of every label of class k
    names: tuple[str, ...]  # one display name per class (its first label)

    @property
    def token_ids(self) -> list[int]:
        """Every candidate id once, in class order: what to ask the backend for."""
        out: list[int] = []
        for ids in self.classes:
            out += [i for i in ids if i not in out]
        return out


def answer_slot(encode: Encode, classes: Sequence[Sequence[str]], lead: str = "") -> AnswerSlot:
    """Finds where the answer to ``classes`` (each a list of label words) is read after ``lead``.

    ``encode`` tokenizes without special tokens. With a ``lead`` (a rationale marker such as "Verdict:"),
    each label is written after it with one space, as "Verdict: Yes".
    """
    if len(classes) < 2 or any(not labels for labels in classes):
        raise LabelError("a judge needs at least two classes of answer, each with at least one label")
    lead_ids = encode(lead) if lead else []
    continuations: list[tuple[int, list[int]]] = []
    for k, labels in enumerate(classes):
        for label in labels:
            if not label.strip():
                raise LabelError("an answer label is empty")
            text = f"{lead} {label}" if lead else label
            ids = encode(text)
            if ids[: len(lead_ids)] != lead_ids:
                raise LabelError(
                    f"the tokenizer merges the marker {lead!r} with the label {label!r} ({text!r}); "
                    "choose a marker that ends in punctuation"
                )
            continuations.append((k, ids[len(lead_ids) :]))
    forced = _common_prefix([ids for _, ids in continuations])
    first: list[set[int]] = [set() for _ in classes]
    for k, ids in continuations:
        if len(ids) <= len(forced):
            raise LabelError(f"the answer labels {[list(c) for c in classes]} are prefixes of one another as tokens")
        first[k].add(ids[len(forced)])
    for k in range(len(classes)):
        for j in range(k + 1, len(classes)):
            shared = first[k] & first[j]
            if shared:
                raise LabelError(
                    f"the answers {classes[k][0]!r} and {classes[j][0]!r} begin with the same token "
                    f"({sorted(shared)}), so their probabilities cannot be told apart"
                )
    ordered = tuple(tuple(_in_order(continuations, k, len(forced))) for k in range(len(classes)))
    return AnswerSlot(tuple(forced), ordered, tuple(labels[0] for labels in classes))


def _common_prefix(seqs: Sequence[Sequence[int]]) -> list[int]:
    prefix: list[int] = []
    for column in zip(*seqs):
        if any(token != column[0] for token in column):
            break
        prefix.append(column[0])
    return prefix


def _in_order(continuations: list[tuple[int, list[int]]], k: int, at: int) -> list[int]:
    out: list[int] = []
    for cls, ids in continuations:
        if cls == k and ids[at] not in out:
            out.append(ids[at])
    return out
