"""Answers held to a format the model card declares: greedy decoding that can only say well-formed things.

A model trained on one kind of answer ("a red circle", "the digit 7", "at 359 s") can still
produce a broken one on video it was never trained on ("at  s", "the digit" and nothing after).
A card's `answer_format` lists the answers' templates; each `{slot}` is one of a list of words or
a run of digits. Decoding stays greedy, but skips any token that would leave the text no longer
the start of some template, and may end only where the text is a whole one. Where the model's own
greedy answer is well formed, nothing changes.

    "answer_format": {
        "templates": ["a {colour} {shape}", "at {seconds} s"],
        "slots": {"colour": ["red", "blue"], "shape": ["circle"], "seconds": {"digits": [1, 6]}}
    }
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

_SLOT = re.compile(r"\{(\w+)\}")


@dataclass(frozen=True)
class Digits:
    """A run of `least` to `most` decimal digits."""

    least: int
    most: int


Part = str | tuple[str, ...] | Digits  # literal text, one of some words, or digits


@dataclass(frozen=True)
class AnswerFormat:
    templates: tuple[tuple[Part, ...], ...]

    @classmethod
    def from_card(cls, card: dict) -> AnswerFormat | None:
        spec = card.get("answer_format")
        if not spec:
            return None
        slots = spec.get("slots", {})
        templates = []
        for template in spec["templates"]:
            parts: list[Part] = []
            pos = 0
            for m in _SLOT.finditer(template):
                if m.start() > pos:
                    parts.append(template[pos : m.start()])
                slot = slots[m.group(1)]
                if isinstance(slot, dict):
                    least, most = slot["digits"]
                    parts.append(Digits(int(least), int(most)))
                else:
                    parts.append(tuple(str(w) for w in slot))
                pos = m.end()
            if pos < len(template):
                parts.append(template[pos:])
            templates.append(tuple(parts))
        return cls(tuple(templates))

    def viable(self, text: str) -> bool:
        """Whether `text` is the start of some answer (a whole answer included)."""
        return any(_match(text, t, partial=True) for t in self.templates)

    def complete(self, text: str) -> bool:
        """Whether `text` is a whole answer."""
        return any(_match(text, t, partial=False) for t in self.templates)

    def choose(
        self,
        logits: torch.Tensor,
        generated: Sequence[int],
        decode: Callable[[list[int]], str],
        eos: frozenset[int],
    ) -> int:
        """The best-scoring token that keeps the answer well formed (an end of turn only after a whole one).

        logits: (vocab,) for the next token. Candidates are tried best first; a small vocabulary
        is scanned whole, a large one as far as needed.
        """
        done = self.complete(decode(list(generated)))
        for token in torch.argsort(logits, descending=True).tolist():
            if token in eos:
                if done:
                    return token
            elif self.viable(decode([*generated, token])):
                return token
        return next(iter(eos))  # no token continues the answer: end it where it stands


def _match(text: str, parts: Sequence[Part], partial: bool) -> bool:
    """Whether `text` matches `parts` whole, or (partial) is a prefix of something they match."""
    if not parts:
        return not text
    if partial and not text:
        return True
    head, rest = parts[0], parts[1:]
    if isinstance(head, str):
        if text.startswith(head):
            return _match(text[len(head) :], rest, partial)
        return partial and head.startswith(text)
    if isinstance(head, tuple):
        return any(_match(text, (word, *rest), partial) for word in head)
    run = len(text) - len(text.lstrip("0123456789"))
    if partial and run == len(text) and run <= head.most:
        return True  # the text ends inside the digits
    return any(_match(text[k:], rest, partial) for k in range(head.least, min(run, head.most) + 1))
