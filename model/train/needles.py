"""Needle-in-a-haystack videos: footage-like haystacks with one short event, and questions about it.

A needle is a short event (1-3 s) drawn over the synthetic footage: a filled shape of one
colour, or a digit. Questions ask what appeared, which colour it was, and when it appeared
(answered in seconds, judged within a tolerance). Training and evaluation draw from disjoint
seed ranges, so no evaluation video is ever trained on.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Literal

import numpy as np

from longwatch.model.train.synthetic import Progress, SyntheticFootage

COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (225, 30, 30),
    "green": (30, 190, 50),
    "blue": (40, 70, 235),
    "yellow": (245, 225, 30),
    "magenta": (225, 40, 225),
    "cyan": (30, 215, 225),
}
SHAPES = ("circle", "square", "triangle", "cross")
DIGITS = tuple(str(d) for d in range(10))
QuestionKind = Literal["what", "colour", "when", "did"]
# The needle's own questions; "did" (yes or no: "Did a red circle appear?") is asked only where a
# clip source asks for it (NeedleClips.yes_no_share), so that runs without it draw what they drew.
QUESTION_KINDS: tuple[QuestionKind, ...] = ("what", "colour", "when")
ALL_KINDS: tuple[QuestionKind, ...] = (*QUESTION_KINDS, "did")
WHEN_TOLERANCE_S = 3.0

# Three disjoint seed ranges. "train" trains; "eval" is what the demo model's recipe was checked
# and chosen on (the needle grid, the clip checks), so its scores flatter the recipe; "holdout" is
# for reporting only: no training run and no recipe decision may look at it.
EVAL_SEED_BASE = 1 << 40
HOLDOUT_SEED_BASE = 2 << 40
Split = Literal["train", "eval", "holdout"]
SPLITS: tuple[Split, ...] = ("train", "eval", "holdout")
_SEED_BASE = {"train": 0, "eval": EVAL_SEED_BASE, "holdout": HOLDOUT_SEED_BASE}

# 3x5 bitmaps of the digits, one string per row ('#' = on).
_FONT = {
    "0": ("###", "#.#", "#.#", "#.#", "###"),
    "1": (".#.", "##.", ".#.", ".#.", "###"),
    "2": ("###", "..#", "###", "#..", "###"),
    "3": ("###", "..#", "###", "..#", "###"),
    "4": ("#.#", "#.#", "###", "..#", "..#"),
    "5": ("###", "#..", "###", "..#", "###"),
    "6": ("###", "#..", "###", "#.#", "###"),
    "7": ("###", "..#", ".#.", ".#.", ".#."),
    "8": ("###", "#.#", "###", "#.#", "###"),
    "9": ("###", "#.#", "###", "..#", "###"),
}


# Digit fonts beside _FONT ("block"): "tall", 5x7 bitmaps, and "segments", a seven-segment display.
_TALL_FONT = {
    "0": (".###.", "#...#", "#..##", "#.#.#", "##..#", "#...#", ".###."),
    "1": ("..#..", ".##..", "..#..", "..#..", "..#..", "..#..", ".###."),
    "2": (".###.", "#...#", "....#", "...#.", "..#..", ".#...", "#####"),
    "3": ("####.", "....#", "....#", ".###.", "....#", "....#", "####."),
    "4": ("...#.", "..##.", ".#.#.", "#..#.", "#####", "...#.", "...#."),
    "5": ("#####", "#....", "####.", "....#", "....#", "#...#", ".###."),
    "6": ("..##.", ".#...", "#....", "####.", "#...#", "#...#", ".###."),
    "7": ("#####", "....#", "...#.", "..#..", ".#...", ".#...", ".#..."),
    "8": (".###.", "#...#", "#...#", ".###.", "#...#", "#...#", ".###."),
    "9": (".###.", "#...#", "#...#", ".####", "....#", "...#.", ".##.."),
}
# Lit segments per digit: a top, b upper right, c lower right, d bottom, e lower left, f upper
# left, g middle.
_SEGMENTS = {
    "0": "abcdef", "1": "bc", "2": "abdeg", "3": "abcdg", "4": "bcfg",
    "5": "acdfg", "6": "acdefg", "7": "abc", "8": "abcdefg", "9": "abcdfg",
}  # fmt: skip
FONTS = ("block", "tall", "segments")
STROKES = ("filled", "outline")


@dataclass(frozen=True)
class Renderings:
    """How needles are drawn: digit fonts, strokes (a filled shape or its outline), and shades
    (the named colour scaled by a factor in `shades`, each channel moved by up to `tint`)."""

    fonts: tuple[str, ...]
    strokes: tuple[str, ...]
    shades: tuple[float, float]
    tint: int = 0


# "demo": what the shipped demo model first trained on; "varied": what training draws to learn
# needles in general; "heldout": renderings no training run draws (a font and a band of darker
# shades), for reporting how far what was learnt carries.
RENDERINGS: dict[str, Renderings] = {
    "demo": Renderings(("block",), ("filled",), (1.0, 1.0)),
    "varied": Renderings(("block", "tall"), STROKES, (0.75, 1.15), tint=25),
    "heldout": Renderings(("segments",), STROKES, (0.55, 0.75), tint=25),
}


def seed_for(split: Split, index: int) -> int:
    """The seed of example `index` of a split; no two splits share a seed."""
    if index < 0 or index >= EVAL_SEED_BASE:
        raise ValueError(f"example index must be in [0, 2^40), got {index}")
    if split not in _SEED_BASE:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    return _SEED_BASE[split] + index


def split_of(seed: int) -> Split:
    if 0 <= seed < EVAL_SEED_BASE:
        return "train"
    return "eval" if seed < HOLDOUT_SEED_BASE else "holdout"


@dataclass(frozen=True)
class Needle:
    """One short event: `shape` (a SHAPES name, or "digit") in `colour`, drawn at (cx, cy)."""

    start_s: float
    duration_s: float
    shape: str
    colour: str
    digit: str = ""
    cx: int = 0  # centre, frame pixels
    cy: int = 0
    size: int = 16  # side of the bounding square, pixels
    font: str = "block"  # a digit's (FONTS)
    stroke: str = "filled"  # a shape's (STROKES)
    rgb: tuple[int, int, int] | None = None  # its shade of `colour` (None: COLOURS[colour])

    @property
    def end_s(self) -> float:
        return self.start_s + self.duration_s

    def phrase(self) -> str:
        """How an answer names it: "a red circle", "the digit 7"."""
        return f"the digit {self.digit}" if self.shape == "digit" else f"a {self.colour} {self.shape}"

    def noun(self) -> str:
        return "digit" if self.shape == "digit" else self.shape

    def draw(self, frame: np.ndarray, t_s: float) -> None:
        if not self.start_s <= t_s < self.end_s:
            return
        mask = needle_mask(self.shape, self.size, self.digit, self.font, self.stroke)  # (size, size) bool
        h, w = frame.shape[:2]
        y0, x0 = self.cy - self.size // 2, self.cx - self.size // 2
        ys, xs = slice(max(y0, 0), min(y0 + self.size, h)), slice(max(x0, 0), min(x0 + self.size, w))
        region = frame[ys, xs]
        rgb = self.rgb or COLOURS[self.colour]
        region[mask[ys.start - y0 : ys.stop - y0, xs.start - x0 : xs.stop - x0]] = rgb


def needle_mask(
    shape: str, size: int, digit: str = "", font: str = "block", stroke: str = "filled"
) -> np.ndarray:
    """Boolean (size, size) footprint of a needle."""
    if shape == "digit":
        return _digit_mask(digit, size, font)
    filled = _shape_mask(shape, size)
    if stroke == "filled" or shape == "cross":  # a cross is strokes already
        return filled
    if stroke != "outline":
        raise ValueError(f"unknown stroke {stroke!r}")
    # The outline: filled pixels within about a sixth of the side of the shape's edge.
    width = max(1, round(size / 7))
    inner = filled.copy()
    for _ in range(width):  # erode by one pixel, 4-connected
        inner = (
            inner
            & np.roll(inner, 1, 0)
            & np.roll(inner, -1, 0)
            & np.roll(inner, 1, 1)
            & np.roll(inner, -1, 1)
        )
    return filled & ~inner


def _shape_mask(shape: str, size: int) -> np.ndarray:
    yy, xx = np.mgrid[0:size, 0:size] + 0.5
    c, r = size / 2, size / 2
    if shape == "circle":
        return (yy - c) ** 2 + (xx - c) ** 2 <= r * r
    if shape == "square":
        m = max(1, size // 8)
        return (yy >= m) & (yy < size - m) & (xx >= m) & (xx < size - m)
    if shape == "triangle":  # apex up
        return (yy >= size * 0.1) & (np.abs(xx - c) <= (yy - size * 0.1) * 0.55)
    if shape == "cross":
        t = size / 6
        return (np.abs(yy - c) <= t) | (np.abs(xx - c) <= t)
    raise ValueError(f"unknown needle shape {shape!r}")


def _digit_mask(digit: str, size: int, font: str) -> np.ndarray:
    yy, xx = np.mgrid[0:size, 0:size] + 0.5
    if font in ("block", "tall"):
        rows = _FONT[digit] if font == "block" else _TALL_FONT[digit]
        cell = np.array([[ch == "#" for ch in row] for row in rows])  # (rows, cols)
        n_rows, n_cols = cell.shape
        left, width = size * 0.2, size * 0.6
        ys = np.minimum((yy / size * n_rows).astype(int), n_rows - 1)
        xs = np.clip(((xx - left) / width * n_cols).astype(int), 0, n_cols - 1)
        inside = (xx >= left) & (xx < left + width)
        return inside & cell[ys, xs]
    if font == "segments":
        t = max(1.0, size / 8)  # a segment's thickness
        x0, x1, y0, y1, ym = size * 0.2, size * 0.8, size * 0.05, size * 0.95, size / 2
        across = (xx >= x0) & (xx <= x1)
        upper, lower = (yy >= y0) & (yy <= ym), (yy >= ym) & (yy <= y1)
        bars = {
            "a": across & (np.abs(yy - y0 - t / 2) <= t / 2),
            "g": across & (np.abs(yy - ym) <= t / 2),
            "d": across & (np.abs(yy - y1 + t / 2) <= t / 2),
            "f": upper & (np.abs(xx - x0 - t / 2) <= t / 2),
            "b": upper & (np.abs(xx - x1 + t / 2) <= t / 2),
            "e": lower & (np.abs(xx - x0 - t / 2) <= t / 2),
            "c": lower & (np.abs(xx - x1 + t / 2) <= t / 2),
        }
        mask = np.zeros((size, size), dtype=bool)
        for segment in _SEGMENTS[digit]:
            mask |= bars[segment]
        return mask
    raise ValueError(f"unknown digit font {font!r}")


# What the demo model trained on: a needle's side is this share of the frame's shorter side.
NEEDLE_SHARE = (0.55, 0.8)


def random_needle(
    rng: np.random.Generator,
    start_s: float,
    width: int,
    height: int,
    digit_share: float | None = None,
    size_px: tuple[int, int] | None = None,
    rendering: str = "demo",
) -> Needle:
    """A needle of random kind, colour, place and 1-3 s duration, starting at `start_s`.

    Kinds are equally likely unless digit_share says how often it is a digit. Its side is
    NEEDLE_SHARE of the frame's shorter side (30-44 px in a 56-px frame), or within size_px
    (pixels, both ends included) where given; the same draws either way, so a seed keeps its
    kind, colour and time. rendering: a RENDERINGS name; its font, stroke and shade are drawn
    after everything else (none for "demo"), so that they too leave the rest as it was.
    """
    if digit_share is None:
        shape = str(rng.choice((*SHAPES, "digit")))
    else:
        shape = "digit" if rng.random() < digit_share else str(rng.choice(SHAPES))
    share = rng.uniform(*NEEDLE_SHARE)
    size = int(share * min(width, height))
    if size_px is not None:
        lo, hi = size_px
        if not 3 <= lo <= hi <= min(width, height):
            raise ValueError(f"needle size must be 3..{min(width, height)} px and low <= high, got {lo}-{hi}")
        size = lo + round((share - NEEDLE_SHARE[0]) / (NEEDLE_SHARE[1] - NEEDLE_SHARE[0]) * (hi - lo))
    needle = Needle(
        start_s=float(start_s),
        duration_s=float(rng.integers(1, 4)),
        shape=shape,
        colour=str(rng.choice(list(COLOURS))),
        digit=str(rng.choice(DIGITS)) if shape == "digit" else "",
        cx=int(rng.integers(size // 2, width - size // 2 + 1)),
        cy=int(rng.integers(size // 2, height - size // 2 + 1)),
        size=size,
    )
    return rendered(rng, needle, rendering)


def rendered(rng: np.random.Generator, needle: Needle, rendering: str) -> Needle:
    """The needle in a font, stroke and shade drawn from RENDERINGS[rendering] (no draw for "demo")."""
    if rendering not in RENDERINGS:
        raise ValueError(f"rendering must be one of {sorted(RENDERINGS)}, got {rendering!r}")
    if rendering == "demo":
        return needle
    r = RENDERINGS[rendering]
    font = str(rng.choice(r.fonts))
    stroke = str(rng.choice(r.strokes))
    factor = rng.uniform(*r.shades)
    tint = rng.integers(-r.tint, r.tint + 1, size=3) if r.tint else np.zeros(3, dtype=int)
    rgb = np.clip(np.array(COLOURS[needle.colour]) * factor + tint, 0, 255).astype(int)
    return replace(needle, font=font, stroke=stroke, rgb=(int(rgb[0]), int(rgb[1]), int(rgb[2])))


@dataclass(frozen=True)
class NeedleQA:
    kind: QuestionKind
    question: str
    answer: str


YES, NO = "yes", "no"
NOTHING = "nothing"  # what a described yes/no answer says it saw in footage without a needle


def described_answer(seen: Needle | None, verdict: str) -> str:
    """A yes/no answer that says what was seen before the verdict: "a red circle, yes", "a blue
    square, no", "nothing, no". A 4-layer demo decoder that had to answer "yes" or "no" at once
    learnt only how often each comes (docs/experiments.md); saying what it saw first, which it
    can, leaves it to compare its own words with the question's."""
    return f"{seen.phrase() if seen else NOTHING}, {verdict}"


def yes_no_question(asked: Needle, kind_only: bool = False) -> str:
    """A yes/no question whether `asked` appeared: "Did a red circle appear?", "Did the digit 7
    appear?"; kind_only asks for its kind alone: "Is there a circle?", "Is there a digit?"."""
    return f"Is there a {asked.noun()}?" if kind_only else f"Did {asked.phrase()} appear?"


def other_needle(rng: np.random.Generator, needle: Needle, kind_only: bool = False) -> Needle:
    """A needle that is not this one by its words (the negatives of a yes/no question): another
    colour, shape or digit, or a digit for a shape and a shape for a digit; kind_only: another kind."""
    kinds = [k for k in (*SHAPES, "digit") if k != needle.noun()]
    way = 0 if kind_only else int(rng.integers(3))
    if way == 0:  # another kind
        shape = str(rng.choice(kinds))
        return replace(needle, shape=shape, digit=str(rng.choice(DIGITS)) if shape == "digit" else "")
    if needle.shape == "digit":
        return replace(needle, digit=str(rng.choice([d for d in DIGITS if d != needle.digit])))
    if way == 1:
        return replace(needle, colour=str(rng.choice([c for c in COLOURS if c != needle.colour])))
    return replace(needle, shape=str(rng.choice([s for s in SHAPES if s != needle.shape])))


YesNoCase = Literal["yes", "no-nothing", "no-kind", "no-digit", "no-colour"]
YES_NO_CASES: tuple[YesNoCase, ...] = ("yes", "no-nothing", "no-kind", "no-digit", "no-colour")


def yes_no_on_words(rng: np.random.Generator) -> tuple[str, str, YesNoCase]:
    """A yes/no question and its described answer with no footage: (question, answer, case).

    What was seen is given in the answer, so the verdict follows from the words alone (the
    trainer's --verdict-words). A quarter saw nothing; of the rest half are asked about what was
    seen and half about another needle: another kind or shape ("no-kind"), another digit
    ("no-digit") or the same shape in another colour ("no-colour").
    """
    shape = str(rng.choice([*SHAPES, "digit"]))
    digit = str(rng.choice(DIGITS)) if shape == "digit" else ""
    seen = Needle(0.0, 1.0, shape, str(rng.choice(list(COLOURS))), digit=digit)
    kind_only = bool(rng.random() < 0.3)
    draw = rng.random()
    if draw < 0.25:
        return yes_no_question(seen, kind_only), described_answer(None, NO), "no-nothing"
    if draw < 0.625:
        return yes_no_question(seen, kind_only), described_answer(seen, YES), "yes"
    asked = other_needle(rng, seen, kind_only)
    same_kind = asked.noun() == seen.noun()  # then another digit, or the same shape in another colour
    case: YesNoCase = "no-kind" if not same_kind else ("no-digit" if seen.shape == "digit" else "no-colour")
    return yes_no_question(asked, kind_only), described_answer(seen, NO), case


def questions_for(needle: Needle) -> dict[QuestionKind, NeedleQA]:
    """The three questions about a needle, with the answers the demo model is trained to give."""
    noun = needle.noun()
    return {
        "what": NeedleQA("what", "What appeared in the video?", needle.phrase()),
        "colour": NeedleQA("colour", f"What colour was the {noun}?", needle.colour),
        "when": NeedleQA("when", f"When did the {noun} appear?", f"at {int(needle.start_s)} s"),
    }


# The answers needle clips train (`questions_for`'s; yes/no, plain or described), as a model card's
# answer_format (model/answer_format.py): a demo model then never says a broken one ("at  s")
# about video it was not trained on.
ANSWER_FORMAT = {
    "templates": [
        "a {colour} {shape}",
        "the digit {digit}",
        "{colour}",
        "at {seconds} s",
        YES,
        NO,
        "a {colour} {shape}, {verdict}",
        "the digit {digit}, {verdict}",
        f"{NOTHING}, {NO}",
    ],
    "slots": {
        "verdict": [YES, NO],
        "colour": list(COLOURS),
        "shape": list(SHAPES),
        "digit": list(DIGITS),
        "seconds": {"digits": [1, 6]},
    },
}


def judge(
    kind: QuestionKind,
    answer: str,
    needle: Needle,
    tolerance_s: float = WHEN_TOLERANCE_S,
    expected: str = "",
) -> bool:
    """Whether a generated answer is right: the needle's words, its colour, its time within
    tolerance, or (kind "did") the `expected` yes or no and not the other."""
    words = set(re.findall(r"[a-z]+|\d+", answer.lower()))
    if kind == "did":
        if expected not in (YES, NO):
            raise ValueError(f"a yes/no answer is judged against yes or no, got {expected!r}")
        return expected in words and ({YES, NO} - {expected}).isdisjoint(words)
    if kind == "what":
        expected = {"digit", needle.digit} if needle.shape == "digit" else {needle.shape}
        wrong = (set(SHAPES) | {"digit"}) - expected
        return expected <= words and not (words & wrong)
    if kind == "colour":
        return needle.colour in words and not (words & (set(COLOURS) - {needle.colour}))
    numbers = re.findall(r"\d+(?:\.\d+)?", answer)
    if not numbers:
        return False
    t = float(numbers[0])
    return needle.start_s - tolerance_s <= t <= needle.end_s + tolerance_s


@dataclass(frozen=True)
class NeedleVideo:
    """A haystack of `seconds` at `fps` with one needle at `depth` (0 = start, 1 = end)."""

    seed: int
    seconds: int
    depth: float
    needle: Needle
    width: int = 56
    height: int = 56
    fps: float = 1.0
    sized: bool = False  # the needle's size was asked for (not the share of the frame the demo knows)

    def footage(self) -> SyntheticFootage:
        return SyntheticFootage(self.seed, self.width, self.height, self.fps, overlays=[self.needle])

    def write(self, path: str | Path, progress: Progress | None = None) -> Path:
        return self.footage().write(path, self.seconds, faststart=True, progress=progress)

    @property
    def file_name(self) -> str:
        """A name that differs wherever the pixels do.

        The seed alone does not say where the needle is: the same seed at another depth (another
        grid plan) is another video, and a cache by seed answered one plan's questions from
        another's videos.
        """
        at = f"{self.needle.start_s:g}s-{self.width}x{self.height}-{self.fps:g}fps"
        size = f"-{self.needle.size}px" if self.sized else ""
        return f"needle-{self.seed}-{self.seconds}s-at{at}{size}.mp4"


def make_needle_video(
    seed: int,
    seconds: int,
    depth: float,
    width: int = 56,
    height: int = 56,
    needle_px: tuple[int, int] | None = None,
) -> NeedleVideo:
    """The needle video of `seed`: depth places the needle's start within [0, seconds - duration].

    needle_px: the needle's side in pixels (a range); None: the share of the frame the demo knows.
    """
    if not 0.0 <= depth <= 1.0:
        raise ValueError(f"depth must be in [0, 1], got {depth}")
    rng = np.random.default_rng([seed, 11])
    probe = random_needle(rng, 0.0, width, height, size_px=needle_px)
    start = float(round(depth * max(seconds - probe.duration_s, 0)))
    needle = Needle(**{**probe.__dict__, "start_s": start})
    return NeedleVideo(seed, seconds, depth, needle, width, height, sized=needle_px is not None)
