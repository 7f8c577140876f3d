"""Quick in-process accuracy of a model on synthetic needle clips: the serving path without Redis or gRPC.

Each clip's chunks are compressed as the service would, the question's vector retrieves the
top-k chunks, and the answer is decoded greedily from their re-packed caches and judged.
The full evaluation over long haystacks through the real service is `longwatch eval needle`.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field

import numpy as np
import torch

from longwatch.memory.chunk import ChunkCache
from longwatch.model.answer import AnswerStream, question_vector
from longwatch.model.compressor import run_chunk
from longwatch.model.loading import LoadedModel
from longwatch.model.retrieval import evidence_lead, within_margin
from longwatch.model.train.clips import DIGIT_BALANCED_HAYSTACKS_S, NeedleClips, TrainingClip
from longwatch.model.train.needles import QUESTION_KINDS, QuestionKind, Split, judge
from longwatch.model.train.trainer import clip_chunks


@dataclass
class ClipEval:
    correct: dict[str, list[bool]] = field(default_factory=lambda: defaultdict(list))
    recalled: list[bool] = field(default_factory=list)

    def accuracy(self) -> dict[str, float]:
        out = {kind: float(np.mean(v)) for kind, v in sorted(self.correct.items())}
        out["recall@k"] = float(np.mean(self.recalled)) if self.recalled else 0.0
        return out


@torch.no_grad()
def compress_clip(
    lm: LoadedModel, clip: TrainingClip, alpha: int, max_tokens: int, threshold: float
) -> list[ChunkCache]:
    """Each of a clip's chunks as the service stores it: summary K/V and retrieval vector."""
    caches = []
    for i, frames in enumerate(clip_chunks(lm, clip, threshold, max_tokens)):
        kv = run_chunk(lm, frames, alpha, lm.prefix_cache(), lm.prefix_len)
        # As the service stores them: on the CPU (the answer moves them back to the model's device).
        caches.append(
            ChunkCache(
                "eval",
                i,
                frames.frame_times[0],
                frames.end_s,
                kv.keys.cpu(),
                kv.values.cpu(),
                kv.positions.cpu(),
                kv.retrieval.cpu(),
            )
        )
    return caches


@torch.no_grad()
def answer_clip(
    lm: LoadedModel,
    clip: TrainingClip,
    alpha: int,
    top_k: int,
    max_tokens: int,
    threshold: float = 0.1,
    score_margin: float | None = None,
) -> tuple[str, list[int]]:
    """The answer to a clip's question and the chunk numbers retrieval chose (top-k, then Ask's margin)."""
    caches = compress_clip(lm, clip, alpha, max_tokens, threshold)
    scores = torch.stack([c.retrieval for c in caches]) @ question_vector(lm, clip.question)
    top = scores.topk(min(top_k, len(caches)))
    hits = list(zip(top.indices.tolist(), top.values.tolist(), strict=True))
    if score_margin is not None:
        hits = within_margin(hits, score_margin)
    chosen = sorted(c for c, _ in hits)
    stream = AnswerStream(lm, [caches[i] for i in chosen], clip.question, max_new_tokens=8)
    return "".join(stream), chosen


def evaluate_clips(
    lm: LoadedModel,
    n: int,
    alpha: int = 16,
    top_k: int = 4,
    max_tokens: int | None = None,
    seed: int = 0,
    n_chunks: int = 6,
    haystack_s: int = 3600,
    kinds: tuple[QuestionKind, ...] = QUESTION_KINDS,
    encoded_fps: float | None = None,
    rollover: bool = False,
    turnover: bool = False,
    stream_start: bool = False,
    straddle: bool = False,
    score_margin: float | None = None,
    split: Split = "eval",
    frame_size: tuple[int, int] = (56, 56),
    needle_px: tuple[int, int] | None = None,
    rendering: str = "demo",
) -> ClipEval:
    """Accuracy per question kind and retrieval recall on `n` clips of a split (evaluation by default).

    haystack_s: length of the haystack the clips are cut from; it sets how many digits a
    "when" answer has (a minute: two; an hour: mostly four).
    kinds: the question kinds asked, one drawn per clip; "did" (yes or no) is scored as "did-yes"
        and "did-no" by the answer expected, a clip in three with no needle at all.
    encoded_fps: the needle's chunk is sampled from an mp4 of footage at this rate (the same
        clips otherwise); None: rendered frames.
    rollover: every needle in a chunk where the time's hundreds digit turns over.
    turnover: every needle starts just before that digit turns over and is still shown when it
        has (where a needle's chunk holds no turnover, as in a haystack under 100 s, as drawn).
    straddle: every needle runs from its chunk into the next, both in the clip (recall counts
        either chunk retrieved).
    score_margin: of the top-k, keep only chunks scoring at most this below the best, as Ask
        does (`within_margin`); None: plain top-k.
    split: "eval" (what the demo recipe was checked on) or "holdout" (never tuned on).
    frame_size: (width, height) of the footage; needle_px: the needle's side in pixels (a range;
        None: the share of the frame the demo model trained on).
    rendering: how needles are drawn (needles.RENDERINGS: "demo", "varied", "heldout").
    max_tokens: tokens per frame (None: the model card's, as the service would ingest).
    """
    if max_tokens is None:
        max_tokens = int(lm.card.get("ingest", {}).get("max_tokens_per_frame", 16))
    needle_kinds = tuple(k for k in kinds if k != "did") or QUESTION_KINDS
    source = NeedleClips(
        n_chunks=n_chunks,
        split=split,
        haystack_s=haystack_s,
        kinds=needle_kinds,
        yes_no_share=(1 / len(kinds)) if "did" in kinds else 0.0,
        absent_share=1 / 3,
        rendering=rendering,
        codec_share=0.0 if encoded_fps is None else 1.0,
        footage_rates=(encoded_fps or 1.0,),
        rollover_share=float(rollover or turnover),
        turnover_share=float(turnover),
        stream_start_share=float(stream_start),
        stream_start_needle=stream_start,
        straddle_share=float(straddle),
        width=frame_size[0],
        height=frame_size[1],
        needle_px=needle_px,
    )
    result = ClipEval()
    for i in range(n):
        clip = source.clip(np.random.default_rng([seed, i, 7]))
        answer, chosen = answer_clip(lm, clip, alpha, top_k, max_tokens, score_margin=score_margin)
        kind = f"did-{clip.answer}" if clip.kind == "did" else clip.kind
        result.correct[kind].append(judge(clip.kind, answer, clip.needle, expected=clip.answer))
        if clip.evidence and clip.question not in clip.unanchored:
            result.recalled.append(bool(set(clip.evidence) & set(chosen)))
    return result


# The clips a score margin is chosen on: the polish stage's draw in the demo model's recipe (the
# shipped model's last stage), six chunks and a pool of 18 each, from the training split, so that
# the evaluation's needles stay unseen by the choice.
MARGIN_CLIPS = NeedleClips(
    n_chunks=6,
    split="train",
    haystack_lengths=DIGIT_BALANCED_HAYSTACKS_S,
    all_questions=True,
    codec_share=0.5,
    distractor_pool=18,
    rollover_share=0.25,
    turnover_share=0.5,
    straddle_share=0.3,
    stream_start_share=1.0,
)


@dataclass
class EvidenceLeads:
    """Per question, how far the needle's chunk scores above the best other chunk of its clip.

    The scores are the ones Ask's --score-margin reads, so these say what a margin does: a lead
    under it keeps a distractor beside the needle; a lead below minus it leaves the needle out.
    straddle_gaps: for needles across two chunks, how far apart their two chunks score.
    """

    leads: list[float] = field(default_factory=list)
    straddle_gaps: list[float] = field(default_factory=list)

    def percentile(self, q: float) -> float:
        return float(np.percentile(self.leads, q))

    def straddle_median(self) -> float:
        return float(np.median(self.straddle_gaps))

    def share_within(self, margin: float) -> float:
        """Share of questions with another chunk within `margin` of the needle's (or above it)."""
        return float(np.mean([lead <= margin for lead in self.leads]))

    def share_left_out(self, margin: float) -> float:
        """Share of questions whose needle's chunk scores more than `margin` below another: Ask drops it."""
        return float(np.mean([lead < -margin for lead in self.leads]))


@torch.no_grad()
def evidence_leads(
    lm: LoadedModel,
    source: NeedleClips,
    n: int,
    alpha: int = 16,
    max_tokens: int = 4,
    threshold: float = 0.1,
    seed: int = 0,
) -> EvidenceLeads:
    """Score every chunk of `n` clips of `source` for each of their questions; measure the needle's lead.

    Every chunk a clip draws is scored, its distractor pool included (the trainer's hardest-chunk
    cut is not applied), as Ask scores a whole stream.
    """
    out = EvidenceLeads()
    for i in range(n):
        clip = source.clip(np.random.default_rng([seed, i, 11]))
        caches = compress_clip(lm, clip, alpha, max_tokens, threshold)
        vectors = torch.stack([c.retrieval for c in caches])  # (n_chunks, retrieval_dim)
        evidence = torch.tensor(clip.evidence)
        for question, _ in clip.questions_and_answers:
            scores = vectors @ question_vector(lm, question)  # (n_chunks,)
            if (lead := evidence_lead(scores, evidence)) is not None:
                out.leads.append(float(lead))
            if len(clip.evidence) == 2:
                out.straddle_gaps.append(float((scores[evidence[0]] - scores[evidence[1]]).abs()))
    return out
