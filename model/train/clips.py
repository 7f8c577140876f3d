"""Training clips: what the trainer sees, and the synthetic needle source that makes them.

A clip is a handful of chunks drawn from one long haystack at scattered times (as retrieval
would bring them back), a question, its answer, and which chunks hold the evidence. Training
on clips shaped like Ask's context (same chunk size, same number of chunks, same compression)
is what makes the answers hold at inference.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Protocol

import numpy as np

from longwatch.model.train.needles import (
    NO,
    QUESTION_KINDS,
    YES,
    Needle,
    QuestionKind,
    Split,
    described_answer,
    other_needle,
    questions_for,
    random_needle,
    seed_for,
    yes_no_question,
)
from longwatch.model.train.synthetic import SyntheticFootage, codec_round_trip

# Haystack lengths the refine stage cuts its clips from: needle times of two, three and four
# digits about equally often (see NeedleClips.haystack_lengths).
DIGIT_BALANCED_HAYSTACKS_S = (100, 1000, 3600)
# Footage frames encoded either side of an encoded chunk: x264's look-ahead at its veryfast
# preset (the encoder `encode_video` uses) is 10 frames.
CODEC_CONTEXT_FRAMES = 10


@dataclass
class TrainingClip:
    frames: np.ndarray  # (n_chunks * frames_per_chunk, H, W, 3) uint8, chunk after chunk
    times: list[float]  # stream time of each frame, seconds; increasing
    question: str
    answer: str
    evidence: list[int] = field(default_factory=list)  # chunk numbers (in clip order) holding the answer
    frames_per_chunk: int = 8
    needle: Needle | None = None  # synthetic clips: what the question is about, for judging answers
    kind: str = ""  # synthetic clips: the question kind
    # More (question, answer) pairs about the same evidence, trained on the same context: the
    # context's forward pass is shared, so each one is nearly free supervision.
    also_asked: list[tuple[str, str]] = field(default_factory=list)
    # Clips with a pool of distractors: how many chunks to train on, the evidence and the others
    # the question scores highest (the trainer picks them); None: all of them.
    keep_chunks: int | None = None
    # The clip's first chunk is its stream's first (chunk 0): the service writes that chunk's
    # first label without the "," that joins every later one, as VideoLLaMA3 joins frames.
    opens_stream: bool = False
    # Questions whose answer no chunk holds (a yes/no question answered "no"): the retrieval loss
    # leaves them out, as there is no evidence chunk for them to find.
    unanchored: tuple[str, ...] = ()

    @property
    def n_chunks(self) -> int:
        return len(self.times) // self.frames_per_chunk

    def subset(self, chunks: list[int]) -> TrainingClip:
        """The clip cut to these chunks (in clip order), the evidence among them."""
        if not set(self.evidence) <= set(chunks):
            raise ValueError(f"a subset must keep the evidence {self.evidence}, got {chunks}")
        f = self.frames_per_chunk
        rows = [i for c in chunks for i in range(c * f, (c + 1) * f)]
        return replace(
            self,
            frames=self.frames[rows],
            times=[self.times[i] for i in rows],
            evidence=[chunks.index(c) for c in self.evidence],
            keep_chunks=None,
            opens_stream=self.opens_stream and chunks[0] == 0,
        )

    @property
    def questions_and_answers(self) -> list[tuple[str, str]]:
        return [(self.question, self.answer), *self.also_asked]


class ClipSource(Protocol):
    """Anything that makes training clips; `clip(rng)` must depend on rng alone (resumable runs)."""

    def clip(self, rng: np.random.Generator) -> TrainingClip: ...


@dataclass
class NeedleClips:
    """Clips from synthetic needle haystacks: one chunk holds the needle.

    n_chunks: chunks per clip; with min_chunks below it, each clip draws its length from
    [min_chunks, n_chunks]: short clips teach what a needle looks like, long ones teach finding it
    (training only on long clips from scratch stays at chance).
    """

    n_chunks: int = 6
    min_chunks: int | None = None
    # Chunk lengths to mix in besides frames_per_chunk: a 1- or 2-frame chunk with the needle on it
    # is where a model from scratch first learns what a needle is (without them, training stayed
    # at chance).
    short_chunks: tuple[int, ...] = ()
    frames_per_chunk: int = 8
    width: int = 56
    height: int = 56
    # The needle's side in pixels, a range (None: the share of the frame the demo model trained on).
    needle_px: tuple[int, int] | None = None
    fps: float = 1.0
    haystack_s: int = 3600
    # With haystack_lengths, each clip is cut from a haystack of one of these lengths, drawn
    # uniformly: (100, 1000, 3600) makes needle times of two, three and four digits about equally
    # common. Cut from hour-long haystacks only, a model answered "when" on a ten-minute video
    # with four digits; cut from lengths log-uniform in one minute to an hour, it stopped after
    # two or three digits of hour-scale times.
    haystack_lengths: tuple[int, ...] = ()
    split: Split = "train"
    # The question kinds drawn from; all_questions asks every one of them about the needle, not
    # just one drawn at random (evaluation asks one).
    kinds: tuple[QuestionKind, ...] = QUESTION_KINDS
    all_questions: bool = False
    # Share of clips whose needle chunk comes through x264, as the service only ever sees footage:
    # sampled from an mp4 of the haystack at a rate drawn from footage_rates. 1 fps is a video
    # whose every frame is sampled (the needle evaluation's), 10 fps one sampled at a tenth of
    # its frames, as a camera's are; each cost a demo model "when" answers that rendered frames
    # did not (docs/demo-model.md). Only the needle's chunk, since it alone carried that
    # cost, and rendering at 10 fps costs ten times as much per second of footage.
    codec_share: float = 0.0
    footage_rates: tuple[float, ...] = (1.0, 10.0)
    # Chunks drawn besides the n_chunks of each clip of two or more, from which the trainer keeps
    # the ones the question scores highest: Ask's top-k brings the chunks that look most like
    # an answer, not random ones, and those are what cost a demo model answers on long haystacks
    # (with the needle's chunk retrieved first, one such distractor beside it changed them).
    distractor_pool: int = 0
    # Share of clips whose needle's chunk is one in which the time's hundreds digit turns over
    # (it holds a multiple of 100 s). A demo model said "when" worse on such clips than on the
    # others (docs/demo-model.md): around the turnover a summary token's group of frames reads two prefixes
    # ("89x" and "90x"), and a frame DiffFP prunes a token more moves the group. At random
    # they are one clip in twenty-five.
    rollover_share: float = 0.0
    # Share of clips that hold the stream's first chunk, as depth 0 of the needle grid puts it
    # (a needle there is a one-digit time among distractors of up to four digits, which clips cut
    # at random from an hour almost never hold), with the needle in any of their chunks alike:
    # trained with the needle always there, a demo model's retrieval learned that the stream's
    # opening holds the needle and brought it into Ask's top-4 for every question it missed
    # anywhere on the grid (docs/experiments.md). A needle in the first chunk is on the stream's first
    # frame half the time (a recording that opens on it). stream_start_needle puts every needle
    # there: the evaluation of depth 0 (`eval clips --stream-start`). Training opens only clips
    # of two or more chunks: a one-chunk clip opened at the stream's start holds the needle there
    # every time, and with short clips half of all, that was the same cue again. A clip that
    # opens its stream keeps the opening through the trainer's hardest-chunk cut (`hardest_chunks`).
    stream_start_share: float = 0.0
    stream_start_needle: bool = False
    # Share of clips of two or more chunks whose needle starts in the last frames of its chunk and
    # runs on into the next, that next chunk in the clip too: an event across a chunk boundary is
    # in two chunks, and Ask retrieves both. Drawn at random, the next chunk is almost never in
    # the clip, and a demo model that had never seen a needle in two chunks mixed their times
    # ("at 1879 s" for a needle at 1799-1801 s, chunks from 1792 s and 1800 s). With the
    # rollover draw too, the boundary is one where the time's hundreds digit turns over.
    straddle_share: float = 0.0
    # Share of rollover clips whose needle runs across the turnover: it starts 1-2 frames before
    # the time's hundreds digit turns over and is still shown when it has. Of a rollover draw's
    # needles, about one in nine does so at random, and those are the ones the demo model said
    # worst (1800 s needles as "at 1907 s" for 1899 s; the needle grid's depth 75% of an hour is
    # 2698-2701 s).
    turnover_share: float = 0.0
    # Share of clips whose needle is sized by needle_px; the others are the demo model's own size
    # (1.0: every one by needle_px). Drawn only below 1.0.
    needle_px_share: float = 1.0
    # How needles are drawn: a needles.RENDERINGS name ("demo": one font, filled, pure colours).
    rendering: str = "demo"
    # Share of clips that ask a yes/no question ("Did a red circle appear?", "Is there a digit?"),
    # the kind a watch asks of every chunk. Of them, absent_share have no needle drawn at all (so
    # "no" whatever is asked, as a watch hears from almost every chunk), and of the rest half ask
    # about the needle ("yes") and half about something else ("no"), each with the other question
    # among its `also`; kind_only_share ask for a kind alone. Drawn after everything else, and
    # only when asked for.
    yes_no_share: float = 0.0
    absent_share: float = 0.4
    kind_only_share: float = 0.3
    # Yes/no answers say what was seen first ("a red circle, yes", "nothing, no"; needles.
    # described_answer) instead of the verdict alone.
    yes_no_described: bool = False

    def __post_init__(self) -> None:
        for rate in self.footage_rates:
            ratio = rate / self.fps
            if ratio < 1 or ratio != round(ratio):
                raise ValueError(f"footage rates must be whole multiples of fps, got {rate} and {self.fps}")

    def clip(self, rng: np.random.Generator) -> TrainingClip:
        seed = seed_for(self.split, int(rng.integers(0, 1 << 39)))
        n_chunks = int(rng.integers(self.min_chunks, self.n_chunks + 1)) if self.min_chunks else self.n_chunks
        f = self.frames_per_chunk
        if self.short_chunks and rng.random() < 0.5:
            f, n_chunks = int(rng.choice(self.short_chunks)), 1
        chunk_s = f / self.fps
        haystack_s = self.haystack_s
        if self.haystack_lengths:
            haystack_s = self.haystack_lengths[int(rng.integers(len(self.haystack_lengths)))]
        keep = None
        if self.distractor_pool and n_chunks > 1:
            keep, n_chunks = n_chunks, n_chunks + self.distractor_pool
        slots = max(int(haystack_s // chunk_s), n_chunks)
        starts = np.sort(rng.choice(slots, size=n_chunks, replace=False)) * chunk_s
        evidence = int(rng.integers(n_chunks))
        straddle = bool(self.straddle_share) and n_chunks > 1 and rng.random() < self.straddle_share
        rolled = bool(self.rollover_share) and rng.random() < self.rollover_share
        if rolled:
            starts, evidence = rollover_evidence(
                rng, starts, evidence, slots, chunk_s, 1 / self.fps, across=straddle
            )
        # The needle starts on a sampled frame inside its chunk and may run on past it; at the
        # stream's start, on its very first frame half the time (a recording that opens on it).
        frame = None
        opens = len(starts) > 1 or self.stream_start_needle
        if self.stream_start_share and opens and rng.random() < self.stream_start_share:
            replaced = evidence if self.stream_start_needle else int(rng.integers(len(starts)))
            starts, evidence = with_stream_start(starts, evidence, replaced)
            if evidence == 0:
                frame = 0 if rng.random() < 0.5 else None
        if straddle and frame is None:
            starts, evidence, straddle = with_next_chunk(rng, starts, evidence, slots, chunk_s)
        else:
            straddle = False
        t0 = float(starts[evidence] + (rng.integers(f) if frame is None else frame) / self.fps)
        size_px = self.needle_px
        if self.needle_px_share < 1.0 and rng.random() >= self.needle_px_share:
            size_px = None
        needle = random_needle(rng, t0, self.width, self.height, size_px=size_px, rendering=self.rendering)
        if rolled and self.turnover_share and not straddle and frame is None:
            turn = (int(starts[evidence]) // 100 + 1) * 100  # the next multiple of 100 s
            turn_frame = round((turn - starts[evidence]) * self.fps)  # its frame in the chunk, if < f
            if 0 < turn_frame < f and rng.random() < self.turnover_share:
                shown = max(2, round(needle.duration_s * self.fps))  # frames
                before = min(int(rng.integers(1, shown)), turn_frame)  # of which before the turnover
                needle = replace(needle, start_s=turn - before / self.fps, duration_s=shown / self.fps)
        if straddle:
            shown = max(2, round(needle.duration_s * self.fps))  # frames; at least one in each chunk
            inside = int(rng.integers(1, shown))  # of which in the needle's own chunk
            start = float(starts[evidence] + (f - inside) / self.fps)
            needle = replace(needle, start_s=start, duration_s=shown / self.fps)
        held = [evidence, evidence + 1] if straddle else [evidence]
        qas = questions_for(needle)
        qa = qas[self.kinds[int(rng.integers(len(self.kinds)))]]
        others = [qas[k] for k in self.kinds if k != qa.kind] if self.all_questions else []
        also = [(o.question, o.answer) for o in others]
        # Drawn last, and only when asked for: a run without them draws the same clips as before.
        rate = None
        if self.codec_share and rng.random() < self.codec_share:
            rate = self.footage_rates[int(rng.integers(len(self.footage_rates)))]
        question, answer, kind, evidence_chunks = qa.question, qa.answer, qa.kind, held
        overlays, unanchored = [needle], ()
        if self.yes_no_share and rng.random() < self.yes_no_share:
            kind_only = rng.random() < self.kind_only_share
            draw = rng.random()
            kind = "did"
            seen = needle if draw >= self.absent_share else None

            def said(verdict: str) -> str:
                return described_answer(seen, verdict) if self.yes_no_described else verdict

            if seen is None:  # no needle at all: no evidence, and nothing else to ask
                question, answer = yes_no_question(needle, kind_only), said(NO)
                overlays, evidence_chunks, also, unanchored = [], [], [], (question,)
            else:
                asked_other = draw >= self.absent_share + (1 - self.absent_share) / 2
                about_it = yes_no_question(needle, kind_only), said(YES)
                about_other = yes_no_question(other_needle(rng, needle, kind_only), kind_only), said(NO)
                # Both are asked of the same context, the other one among `also`: "yes" and "no"
                # then differ in the words asked alone, not in the footage.
                (question, answer), counterpart = (
                    (about_other, about_it) if asked_other else (about_it, about_other)
                )
                also = [(qa.question, qa.answer), counterpart, *also]  # and the needle's own questions
                unanchored = (about_other[0],)  # no chunk holds what a "no" asks about
        footage = SyntheticFootage(seed, self.width, self.height, self.fps, overlays=overlays)
        times = [float(s + i / self.fps) for s in starts for i in range(f)]
        frames = np.stack([footage.frame_at(round(t * self.fps)) for t in times])
        if rate is not None:
            for c in held:
                frames[c * f : (c + 1) * f] = self.encoded_chunk(seed, overlays, float(starts[c]), f, rate)
        return TrainingClip(
            frames,
            times,
            question,
            answer,
            evidence_chunks,
            f,
            needle,
            kind,
            also,
            keep,
            opens_stream=bool(starts[0] == 0),
            unanchored=unanchored,
        )

    def encoded_chunk(
        self, seed: int, overlays: list[Needle], start_s: float, f: int, rate: float
    ) -> np.ndarray:
        """A chunk's f frames from `start_s` as a stream samples them from an mp4 at `rate` fps.

        The mp4 holds CODEC_CONTEXT_FRAMES of footage either side of the chunk, so that its frames
        are coded as inside a long video (predicted from earlier ones, x264 looking ahead).
        """
        step = round(rate / self.fps)
        footage = SyntheticFootage(seed, self.width, self.height, rate, overlays=overlays)
        first = round(start_s * rate)
        lead = min(first, CODEC_CONTEXT_FRAMES)
        n = f * step
        video = np.stack(
            [footage.frame_at(i) for i in range(first - lead, first + n + CODEC_CONTEXT_FRAMES)]
        )  # (lead + n + CODEC_CONTEXT_FRAMES, H, W, 3)
        return codec_round_trip(video, rate)[lead : lead + n : step]


def rollover_evidence(
    rng: np.random.Generator,
    starts: np.ndarray,
    evidence: int,
    slots: int,
    chunk_s: float,
    frame_s: float,
    across: bool = False,
) -> tuple[np.ndarray, int]:
    """Starts with the evidence chunk moved to a free slot whose frames' hundreds digit turns over.

    across: the turnover may also fall between the slot and the next one (a needle that runs on
    into the next chunk), and the slot is never the haystack's last. Unchanged where the haystack
    has no such slot (under 100 s).
    """
    used = {round(s / chunk_s) for s in starts}
    last = chunk_s if across else chunk_s - frame_s  # the last frame's time, from the slot's start
    turns = [
        k
        for k in range(slots - int(across))
        if k not in used and int(k * chunk_s // 100) != int((k * chunk_s + last) // 100)
    ]
    if not turns:
        return starts, evidence
    moved = float(turns[int(rng.integers(len(turns)))] * chunk_s)
    new = np.sort(np.append(np.delete(starts, evidence), moved))
    return new, int(np.flatnonzero(new == moved)[0])


def with_stream_start(starts: np.ndarray, evidence: int, replaced: int) -> tuple[np.ndarray, int]:
    """Chunk starts with the stream's first chunk (slot 0) in place of chunk `replaced`, and the
    evidence's new index: the first chunk when it replaced the evidence's (the needle moves there).
    """
    new = starts if starts[0] == 0 else np.sort(np.append(np.delete(starts, replaced), 0.0))
    if replaced == evidence:
        return new, 0
    return new, int(np.flatnonzero(new == starts[evidence])[0])


def with_next_chunk(
    rng: np.random.Generator, starts: np.ndarray, evidence: int, slots: int, chunk_s: float
) -> tuple[np.ndarray, int, bool]:
    """Starts with the haystack's chunk after the evidence's in the clip, in place of another
    (never the evidence's, nor the stream's opening); returns them, the evidence's new index, and
    whether the next chunk is in the clip (not where the evidence's chunk is the haystack's last).
    """
    following = float(starts[evidence] + chunk_s)
    if round(following / chunk_s) >= slots:
        return starts, evidence, False
    if following in starts:
        return starts, evidence, True
    others = [i for i in range(len(starts)) if i != evidence and starts[i] != 0]
    if not others:
        return starts, evidence, False
    dropped = others[int(rng.integers(len(others)))]
    new = np.sort(np.append(np.delete(starts, dropped), following))
    return new, int(np.flatnonzero(new == starts[evidence])[0]), True


def vision_frames(
    rng: np.random.Generator,
    n: int,
    width: int = 56,
    height: int = 56,
    digit_share: float | None = None,
    like: NeedleClips | None = None,
) -> tuple[np.ndarray, list[Needle | None]]:
    """Single frames for vision pretraining: haystack frames, about half with a needle on them.

    digit_share: how many of the needles are digits (None: as many as of each shape).
    like: needles sized and drawn as this clip source draws them (its needle_px, needle_px_share
        and rendering); None: the demo model's.
    """
    frames, needles = [], []
    for _ in range(n):
        seed = seed_for("train", int(rng.integers(0, 1 << 39)))
        t = float(rng.integers(0, 600))
        needle = None
        if rng.random() < 0.5:
            size_px, rendering = (None, "demo") if like is None else (like.needle_px, like.rendering)
            if like is not None and like.needle_px_share < 1.0 and rng.random() >= like.needle_px_share:
                size_px = None
            needle = random_needle(rng, t, width, height, digit_share, size_px, rendering)
        footage = SyntheticFootage(seed, width, height, 1.0, overlays=[needle] if needle else [])
        frames.append(footage.frame_at(int(t)))
        needles.append(needle)
    return np.stack(frames), needles


def corpus(system_prompt: str) -> list[str]:
    """Texts a needle demo model must spell: prompts, labels, every question and answer form."""
    from longwatch.model.loading import frame_label, question_suffix, system_prefix
    from longwatch.model.train.needles import COLOURS, DIGITS, SHAPES

    texts = [system_prefix(system_prompt), frame_label(0.0, True), frame_label(1234.5, False), "6789"]
    for shape in (*SHAPES, "digit"):
        for colour in COLOURS:
            n = Needle(0.0, 1.0, shape, colour, digit="7" if shape == "digit" else "")
            for qa in questions_for(n).values():
                texts += [question_suffix(qa.question), qa.answer]
            texts += [question_suffix(yes_no_question(n, kind_only)) for kind_only in (False, True)]
    texts += [YES, NO, described_answer(None, NO), described_answer(Needle(0.0, 1.0, "circle", "red"), YES)]
    texts += [f"the digit {d}" for d in DIGITS]
    return texts
