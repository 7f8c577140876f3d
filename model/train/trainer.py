"""The bundled trainer: summary tokens on any VideoLLaMA3 base, or a small base from scratch.

Each step runs the serving path with gradients: frames -> patchify -> DiffFP -> vision tower ->
per-chunk summary pass (alpha drawn per chunk) -> re-packed summary K/V of a subset of chunks
(chunk dropout, as retrieval gives Ask a subset) -> each of the clip's questions and answers, after
the one context. Losses, averaged over the questions:
- next-token loss on the answer tokens;
- self-distillation (stage "summary"): KL from the keep-raw teacher (the same base, every
  token's K/V, chunks seeing earlier ones) to the summary student; needs no labels;
- retrieval (stage "base"): the question's in-model vector must score the evidence chunks
  above the clip's other chunks.
Stage "summary" freezes the base and trains the `<vs>` embedding and per-layer Q/K/V copies,
saved as an adapter. Stage "base" trains every weight of a small model from scratch, after an
optional single-frame pretraining of the vision tower (training a vision tower from scratch
end to end stays at chance for a long time). Checkpoints are safetensors + JSON, never pickle.
"""

from __future__ import annotations

import contextlib
import json
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from torch import nn
from torch.nn import functional as F
from torch.utils.checkpoint import checkpoint
from transformers import DynamicCache

from longwatch.model.answer import continue_logits, question_queries, repack
from longwatch.model.compressor import ChunkFrames, ChunkKV, run_chunk
from longwatch.model.config import BASE_SIZES, DEFAULT_BASE_SIZE
from longwatch.model.diffp import DiffFramePruner
from longwatch.model.frames import frames_to_pixel_values, grid_for
from longwatch.model.loading import (
    DEMO_MODEL_NAME,
    LoadedModel,
    prefill_prefix,
    question_suffix,
    question_text,
)
from longwatch.model.retrieval import evidence_lead
from longwatch.model.summary import save_adapter
from longwatch.model.train.clips import ClipSource, NeedleClips, TrainingClip, vision_frames
from longwatch.model.train.distributed import World, average_gradients, average_values
from longwatch.model.train.needles import ANSWER_FORMAT, COLOURS, DIGITS, SHAPES, yes_no_on_words
from longwatch.model.vision import chunk_frames, encode_frames

STAGES = ("summary", "base")
VERDICT_WORDS_STREAM = 1 << 21  # the random stream verdicts on words are drawn from (clips: 0..)


@dataclass
class TrainConfig:
    """One training run.

    stage: "summary" (base frozen, adapter out) or "base" (every weight, from scratch).
    alphas: alpha is drawn per chunk from these, so one adapter serves any of them.
    answer_chunks: chunks the answer is decoded from (the evidence plus others), like Ask's top-k.
    chunk_dropout: chance that each non-evidence chunk is left out of the answer context.
    diff_thresholds: DiffFP threshold drawn per clip from this range: raw rendered frames carry
        sensor noise that a codec would have flattened, so a higher threshold mimics encoded video.
    vision_steps: stage "base": steps of single-frame vision pretraining before the rest, at
        pretrain_vision_lr (a 4-layer tower learned shapes faster at 1e-3 than at 2e-3).
    vision_digit_share: share of the needles on vision pretraining frames that are digits (None:
        one kind in five). At one in five the tower's digit probe stayed at chance; at one in two
        it learned digits while shapes came more slowly (docs/demo-model.md).
    freeze_vision_steps: stage "base": steps after that with the vision tower frozen; then all
        weights train, the vision tower at vision_lr.
    raw_share: stage "base": share of clips answered in keep-raw mode (every token, no summaries).
    copy_steps: stage "base": the first steps after vision pretraining answer keep-raw on the
        trainer's `copy_source` (single frames, asked when): copying a frame's `Time t.ts:` label
        into the answer is a circuit a decoder from scratch formed on single frames asked only
        when, at lr 1e-3, and not on single frames asked all three questions (docs/demo-model.md).
    reading_steps: stage "base": the steps after those answer keep-raw on the trainer's
        `reading_source` (short clips): a decoder from scratch first learns to read a needle,
        then to find it among chunks and through summaries (mixed from the start, the decoder
        stayed at the answer prior).
    clips_per_step: clips whose gradients are averaged per optimizer step (a batch, accumulated);
        under torchrun, per process: a step then takes clips_per_step x processes clips.
    max_tokens_per_frame: visual tokens per frame (None: the model's own, from its card or its
        video processor settings, as the service ingests).
    autocast: compute in bfloat16 under torch.autocast, parameters and optimizer state in float32
        (on by itself when the frozen base was loaded in bfloat16).
    checkpointing: gradient checkpointing by chunk: each chunk's summary pass and each answer's
        pass are recomputed in the backward pass instead of keeping their activations. Done around
        longwatch's own functions, each building its cache afresh, because transformers' own
        checkpointing drops the K/V cache the summary path needs.
    retrieval_margin: stage "base": where > 0, retrieval also pays for every question whose
        evidence leads the best other chunk by less than this (scores as Ask's --score-margin
        reads them). The cross-entropy is zero to the third decimal once the evidence leads by
        a few units, so it stops ranking the rest; Ask reads every chunk within its margin of
        the best, so a lead under the margin puts a distractor beside the needle.
    verdict_words: stage "base": yes/no verdicts on words alone added to each step's clips
        (needles.yes_no_on_words: a question and a described answer, no footage), the loss on the
        verdict token alone, as `verdict_words` beside `lm`. A clip gives two verdicts; comparing
        kind, shape and digit took the demo decoder 64,000 examples on words, the colour more
        (bench/verdict_on_words.py): clips alone would give those in 32,000 steps.
    """

    stage: str = "summary"
    steps: int = 200
    lr: float = 1e-3
    vision_lr: float = 3e-4
    pretrain_vision_lr: float = 1e-3
    weight_decay: float = 0.0
    seed: int = 0
    alphas: tuple[int, ...] = (2, 4, 8, 16)
    max_tokens_per_frame: int | None = None
    answer_chunks: int = 4
    chunk_dropout: float = 0.25
    diff_thresholds: tuple[float, float] = (0.1, 6.0)
    lm_weight: float = 1.0
    distill_weight: float = 1.0
    retrieval_weight: float = 0.5
    retrieval_margin: float = 0.0
    verdict_words: int = 0
    vision_steps: int = 0
    vision_batch: int = 32
    vision_digit_share: float | None = 0.4
    freeze_vision_steps: int = 0
    raw_share: float = 0.25
    copy_steps: int = 0
    reading_steps: int = 0
    clips_per_step: int = 1
    checkpoint_every: int = 200
    grad_clip: float = 1.0
    warmup_steps: int = 20
    autocast: bool = False
    checkpointing: bool = False

    def __post_init__(self) -> None:
        if self.stage not in STAGES:
            raise ValueError(f"stage must be one of {STAGES}, got {self.stage!r}")
        if not self.alphas or any(a not in (2, 4, 8, 16) for a in self.alphas):
            raise ValueError(f"alphas must be drawn from 2, 4, 8, 16, got {self.alphas}")
        if self.steps < 0 or self.answer_chunks < 1:
            raise ValueError("steps must be >= 0 and answer_chunks >= 1")
        if self.retrieval_margin < 0:
            raise ValueError(f"retrieval_margin must be >= 0, got {self.retrieval_margin}")

    @property
    def total_steps(self) -> int:
        return self.vision_steps + self.steps if self.stage == "base" else self.steps


@dataclass
class StepMetrics:
    step: int
    phase: str
    loss: float
    parts: dict[str, float] = field(default_factory=dict)
    seconds: float = 0.0


# --- one clip through the serving path, with gradients ------------------------------------


def _cache(lm: LoadedModel, kv: list[tuple[torch.Tensor, torch.Tensor]]) -> DynamicCache:
    return DynamicCache(ddp_cache_data=list(kv), config=lm.text_config)


def clip_chunks(lm: LoadedModel, clip: TrainingClip, threshold: float, max_tokens: int) -> list[ChunkFrames]:
    """Patchify, prune (one DiffFP pass over the clip, as a stream would) and encode a clip's frames."""
    grid = grid_for(clip.frames.shape[1], clip.frames.shape[2], max_tokens)
    pixels = frames_to_pixel_values(clip.frames, grid)  # (T * gh * gw, 3 * 14 * 14)
    n = len(clip.times)
    keep = DiffFramePruner(threshold=threshold).push(pixels, grid, n)  # (T * tokens_per_frame,)
    feats = encode_frames(lm, pixels, n, grid.grid_h, grid.grid_w)  # (T * tokens_per_frame, hidden)
    tpf, f = grid.tokens_per_frame, clip.frames_per_chunk
    chunks = []
    for c in range(clip.n_chunks):
        rows = slice(c * f * tpf, (c + 1) * f * tpf)
        times = clip.times[c * f : (c + 1) * f]
        first = clip.opens_stream and c == 0
        chunks.append(chunk_frames(times, feats[rows], keep[rows], first, times[-1] + 1.0))
    return chunks


@torch.no_grad()
def hardest_chunks(
    lm: LoadedModel,
    clip: TrainingClip,
    threshold: float,
    max_tokens: int,
    prefix: list[tuple[torch.Tensor, torch.Tensor]],
) -> list[int]:
    """The evidence and the `clip.keep_chunks` - 1 other chunks its question scores highest, in clip order.

    Scored as Ask's retrieval scores them, with the model as it is now (no gradients): the
    chunks that look most like an answer are the distractors a long haystack puts beside it.
    A clip that opens its stream keeps the opening, whatever it scores. Its layout sets it apart
    (no "," before its first label), and were it kept only when it ranked high, retrieval would
    be told it is no answer only then, and that it is the answer every time it held the needle:
    runs trained so brought the opening into Ask's top-4 for many questions about needles later
    in the stream (docs/experiments.md).
    """
    chunks = clip_chunks(lm, clip, threshold, max_tokens)
    vectors = torch.stack(
        [run_chunk(lm, c, lm.config.alpha, _cache(lm, prefix), len(lm.prefix_ids)).retrieval for c in chunks]
    )  # (n_chunks, retrieval_dim)
    query = question_queries(lm, lm.tokenize(question_text(clip.question)), _cache(lm, prefix))
    kept = clip.evidence + ([0] if clip.opens_stream and 0 not in clip.evidence else [])
    ranked = [c for c in (vectors @ query).argsort(descending=True).tolist() if c not in kept]
    return sorted(kept + ranked[: max(0, clip.keep_chunks - len(kept))])


def retrieval_loss(scores: torch.Tensor, evidence: torch.Tensor, margin: float = 0.0) -> torch.Tensor:
    """Cross-entropy of chunk scores (n_chunks,) onto the evidence chunks taken as one class.

    With one evidence chunk it is the plain cross-entropy; where the answer is in two (a needle
    across their boundary), their shares add up, so either may score highest.
    margin > 0 adds a hinge on the lead of the best evidence chunk over the best other one: it
    is zero once the lead reaches the margin, and until then pushes those two apart.
    """
    loss = torch.logsumexp(scores, 0) - torch.logsumexp(scores[evidence], 0)
    if margin > 0 and (lead := evidence_lead(scores, evidence)) is not None:
        loss = loss + F.relu(margin - lead)
    return loss


def answer_context(clip: TrainingClip, rng: np.random.Generator, k: int, dropout: float) -> list[int]:
    """Chunk numbers the answer is decoded from: the evidence, plus others kept past dropout, in time order."""
    others = [c for c in rng.permutation(clip.n_chunks).tolist() if c not in clip.evidence]
    others = [c for c in others if rng.random() >= dropout][: max(0, k - len(clip.evidence))]
    return sorted(clip.evidence + others)


def answer_ids(lm: LoadedModel, question: str, answer: str) -> tuple[list[int], int]:
    """Question suffix + answer + end of turn; returns the ids and where the answer starts."""
    q = lm.tokenize(question_suffix(question))
    a = lm.tokenize(answer) + [lm.tokenizer.convert_tokens_to_ids("<|im_end|>")]
    return q + a, len(q)


TEACHER_ANSWER_TOKENS = 64  # the longest answer the teacher writes for an example that has none


@torch.no_grad()
def teacher_answer(lm: LoadedModel, chunks: list[ChunkFrames], question: str) -> str:
    """The keep-raw teacher's own greedy answer: the target of an example given no answer."""
    cache = raw_cache(lm, chunks, lm.prefix_kv)
    end = lm.tokenizer.convert_tokens_to_ids("<|im_end|>")
    ids = lm.tokenize(question_suffix(question))
    answer: list[int] = []
    for _ in range(TEACHER_ANSWER_TOKENS):
        token = int(continue_logits(lm, cache, ids)[0, -1].argmax())
        if token == end or token in lm.eos_token_ids:
            break
        answer.append(token)
        ids = [token]
    return lm.tokenizer.decode(answer, skip_special_tokens=True)


def answer_loss(logits: torch.Tensor, ids: list[int], start: int) -> torch.Tensor:
    """Next-token loss on the answer: logits at position i predict ids[i + 1]."""
    target = torch.tensor(ids[start:], device=logits.device)
    return F.cross_entropy(logits[0, start - 1 : len(ids) - 1].float(), target)


def distill_loss(student: torch.Tensor, teacher: torch.Tensor, start: int, n: int) -> torch.Tensor:
    """KL(teacher || student) over the answer positions."""
    s = F.log_softmax(student[0, start - 1 : start - 1 + n].float(), dim=-1)
    t = F.log_softmax(teacher[0, start - 1 : start - 1 + n].float(), dim=-1)
    return F.kl_div(s, t, log_target=True, reduction="batchmean")


def raw_cache(
    lm: LoadedModel, chunks: list[ChunkFrames], prefix: list[tuple[torch.Tensor, torch.Tensor]]
) -> DynamicCache:
    """Keep-raw mode: every token of each chunk, chunks in order seeing earlier ones."""
    cache = _cache(lm, prefix)
    for frames in chunks:
        run_chunk(lm, frames, None, cache, cache.get_seq_length())
    return cache


def qa_logits(lm: LoadedModel, cache: DynamicCache, qas: list[tuple[list[int], int]]) -> list[torch.Tensor]:
    """Each question + answer's logits after the same context; the cache is cropped back after each."""
    out = []
    for ids, _ in qas:
        out.append(continue_logits(lm, cache, ids))
        cache.crop(-len(ids))  # transformers 5 crops by a negative count of tokens to remove
    return out


@torch.no_grad()
def teacher_logits(
    lm: LoadedModel, chunks: list[ChunkFrames], qas: list[tuple[list[int], int]]
) -> list[torch.Tensor]:
    """The self-distillation teacher: the same base in keep-raw mode."""
    return qa_logits(lm, raw_cache(lm, chunks, lm.prefix_kv), qas)


def _mean(losses: list[torch.Tensor]) -> torch.Tensor:
    return torch.stack(losses).mean()


def answers_loss(logits: list[torch.Tensor], qas: list[tuple[list[int], int]]) -> torch.Tensor:
    """Next-token loss on the answers, averaged over the clip's questions."""
    return _mean([answer_loss(x, ids, start) for x, (ids, start) in zip(logits, qas, strict=True)])


def verdict_batch(
    lm: LoadedModel, examples: list[tuple[str, str]], prefix: list[int]
) -> tuple[torch.Tensor, torch.Tensor]:
    """Ids (B, L) of `prefix`, each question and its described answer, right-padded (attention is
    causal: padding after a sequence changes nothing in it), and where each verdict is (B,)."""
    end = lm.tokenizer.convert_tokens_to_ids("<|im_end|>")
    seqs = [list(prefix) + answer_ids(lm, q, a)[0] for q, a in examples]  # ..., verdict, <|im_end|>
    longest = max(len(s) for s in seqs)
    ids = torch.tensor([s + [end] * (longest - len(s)) for s in seqs], device=lm.device)
    return ids, torch.tensor([len(s) - 2 for s in seqs], device=lm.device)


def verdict_words_loss(lm: LoadedModel, examples: list[tuple[str, str]]) -> torch.Tensor:
    """Next-token loss on each described answer's verdict alone, after the system prefix, the
    question and the description; no footage (the examples run as one batch)."""
    ids, verdict = verdict_batch(lm, examples, lm.prefix_ids)  # (B, L), (B,)
    hidden = lm.language_model(input_ids=ids).last_hidden_state  # (B, L, hidden)
    rows = torch.arange(len(examples), device=lm.device)
    logits = lm.model.lm_head(hidden[rows, verdict - 1])  # (B, vocab): predicting the verdict
    return F.cross_entropy(logits.float(), ids[rows, verdict])


def checkpointed_chunk(
    lm: LoadedModel, frames: ChunkFrames, alpha: int, prefix: list[tuple[torch.Tensor, torch.Tensor]]
) -> ChunkKV:
    """run_chunk after `prefix`, its activations recomputed in the backward pass (a cache built inside)."""
    flat = [t for kv in prefix for t in kv]

    def run(features: torch.Tensor, *prefix_flat: torch.Tensor) -> tuple[torch.Tensor, ...]:
        pairs = list(zip(prefix_flat[0::2], prefix_flat[1::2], strict=True))
        kv = run_chunk(lm, replace(frames, features=features), alpha, _cache(lm, pairs), len(lm.prefix_ids))
        return kv.keys, kv.values, kv.positions, kv.retrieval

    keys, values, positions, retrieval = checkpoint(run, frames.features, *flat, use_reentrant=False)
    return ChunkKV(keys, values, positions, retrieval)


def answer_logits(
    lm: LoadedModel,
    prefix: list[tuple[torch.Tensor, torch.Tensor]],
    kvs: list[ChunkKV],
    qas: list[tuple[list[int], int]],
    checkpointing: bool = False,
) -> list[torch.Tensor]:
    """Each question + answer's logits after the prefix and the chunks' K/V re-packed behind it.

    With checkpointing, each answer's pass re-packs the chunks itself and is recomputed in the
    backward pass; without, one re-packed cache serves every question.
    """
    parts = [(kv.keys, kv.values, kv.positions) for kv in kvs]
    if not checkpointing:
        return qa_logits(lm, repack(lm, prefix, parts), qas)
    flat = [t for kv in prefix for t in kv] + [t for part in parts for t in part]
    n_prefix = 2 * len(prefix)

    def run(ids: list[int], *tensors: torch.Tensor) -> torch.Tensor:
        pairs = list(zip(tensors[0:n_prefix:2], tensors[1:n_prefix:2], strict=True))
        rest = tensors[n_prefix:]
        chunk_parts = [(rest[i], rest[i + 1], rest[i + 2]) for i in range(0, len(rest), 3)]
        return continue_logits(lm, repack(lm, pairs, chunk_parts), ids)

    return [checkpoint(run, ids, *flat, use_reentrant=False) for ids, _ in qas]


def clip_losses(
    lm: LoadedModel,
    clip: TrainingClip,
    config: TrainConfig,
    rng: np.random.Generator,
    raw_share: float | None = None,
) -> dict[str, torch.Tensor]:
    """The losses of one clip; raw_share overrides the config's (the reading curriculum)."""
    raw_share = config.raw_share if raw_share is None else raw_share
    threshold = float(rng.uniform(*config.diff_thresholds))
    # Stage base recomputes the prefix so that gradients reach the embeddings.
    prefix = prefill_prefix(lm.model, lm.prefix_ids) if config.stage == "base" else lm.prefix_kv
    max_tokens = frame_budget(lm, config)
    if clip.keep_chunks is not None and clip.keep_chunks < clip.n_chunks:
        clip = clip.subset(hardest_chunks(lm, clip, threshold, max_tokens, prefix))
    chunks = clip_chunks(lm, clip, threshold, max_tokens)
    context = answer_context(clip, rng, config.answer_chunks, config.chunk_dropout)
    # An example without an answer learns the teacher's own (distillation alone, in effect).
    teacher_chunks = [chunks[c] for c in context]
    qas = [
        answer_ids(lm, q, a or teacher_answer(lm, teacher_chunks, q)) for q, a in clip.questions_and_answers
    ]
    if config.stage == "base" and rng.random() < raw_share:
        # Keep-raw answering trains too, so that the base is a real teacher for the summary stage
        # (and the keep-raw and uniform rows of the evaluation mean something).
        logits = qa_logits(lm, raw_cache(lm, [chunks[c] for c in context], prefix), qas)
        return {"lm_raw": answers_loss(logits, qas)}
    kvs: dict[int, ChunkKV] = {}
    for c in range(clip.n_chunks):
        if c in context or config.stage == "base":  # base stage needs every chunk's retrieval vector
            alpha = int(rng.choice(config.alphas))
            if config.checkpointing:
                kvs[c] = checkpointed_chunk(lm, chunks[c], alpha, prefix)
            else:
                kvs[c] = run_chunk(lm, chunks[c], alpha, _cache(lm, prefix), len(lm.prefix_ids))
    student = answer_logits(lm, prefix, [kvs[c] for c in context], qas, config.checkpointing)
    losses = {"lm": answers_loss(student, qas)}
    if config.stage == "summary" and config.distill_weight > 0:
        teacher = teacher_logits(lm, [chunks[c] for c in context], qas)
        losses["distill"] = _mean(
            [
                distill_loss(s, t, start, len(ids) - start)
                for s, t, (ids, start) in zip(student, teacher, qas, strict=True)
            ]
        )
    if config.stage == "base" and config.retrieval_weight > 0 and clip.evidence:
        evidence = torch.tensor(clip.evidence, device=lm.device)  # (n_evidence,)
        scores = torch.stack([kvs[c].retrieval for c in range(clip.n_chunks)])  # (n_chunks, dim)
        parts = []
        for question, _ in clip.questions_and_answers:
            if question in clip.unanchored:
                continue
            q = question_queries(lm, lm.tokenize(question_text(question)), _cache(lm, prefix))
            parts.append(retrieval_loss(scores @ q, evidence, config.retrieval_margin))
        if parts:
            losses["retrieval"] = _mean(parts)
    return losses


# --- vision pretraining --------------------------------------------------------------------

HEADS = {"present": 2, "colour": len(COLOURS) + 1, "shape": len(SHAPES) + 2, "digit": len(DIGITS) + 1}


def vision_targets(needles: list) -> dict[str, torch.Tensor]:
    colours, shapes = list(COLOURS), [*SHAPES, "digit"]
    t: dict[str, list[int]] = {name: [] for name in HEADS}
    for n in needles:
        t["present"].append(int(n is not None))
        t["colour"].append(colours.index(n.colour) + 1 if n else 0)
        t["shape"].append(shapes.index(n.shape) + 1 if n else 0)
        t["digit"].append(int(n.digit) + 1 if n and n.digit else 0)
    return {k: torch.tensor(v) for k, v in t.items()}


class VisionProbe(nn.Module):
    """Linear heads on each frame's mean merged vision token: what single-frame pretraining optimises."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.heads = nn.ModuleDict({name: nn.Linear(width, n) for name, n in HEADS.items()})

    def forward(self, pooled: torch.Tensor) -> dict[str, torch.Tensor]:
        return {name: head(pooled) for name, head in self.heads.items()}


def vision_losses(
    lm: LoadedModel,
    probe: VisionProbe,
    rng: np.random.Generator,
    config: TrainConfig,
    like: ClipSource | None = None,
) -> dict[str, torch.Tensor]:
    """The probe's losses on single frames whose needles are drawn as `like`'s (a needle source)."""
    frames, needles = vision_frames(
        rng,
        config.vision_batch,
        digit_share=config.vision_digit_share,
        like=like if isinstance(like, NeedleClips) else None,
    )
    grid = grid_for(frames.shape[1], frames.shape[2], frame_budget(lm, config))
    pixels = frames_to_pixel_values(frames, grid)
    n = len(frames)
    hidden = lm.model.model.vision_model(
        pixel_values=pixels.to(lm.device, lm.dtype),
        grid_thw=torch.tensor([[n, grid.grid_h, grid.grid_w]], device=lm.device),
        merge_sizes=torch.tensor([2], device=lm.device),
    ).last_hidden_state  # (n * tokens_per_frame, vision_hidden)
    pooled = hidden.view(n, grid.tokens_per_frame, -1).mean(1)
    targets = vision_targets(needles)
    out = probe(pooled)
    return {name: F.cross_entropy(out[name], targets[name].to(lm.device)) for name in HEADS}


# --- the loop -------------------------------------------------------------------------------


def phase_at(config: TrainConfig, step: int) -> str:
    if config.stage == "summary":
        return "summary"
    if step < config.vision_steps:
        return "vision"
    return "decoder" if step < config.vision_steps + config.freeze_vision_steps else "joint"


def trainable(lm: LoadedModel, probe: VisionProbe | None, phase: str) -> list[tuple[str, list[nn.Parameter]]]:
    """(group name, parameters) for a phase; everything else is frozen."""
    lm.model.requires_grad_(False)
    if phase == "summary":
        groups = [("summary", list(lm.summary.parameters()))]
    elif phase == "vision":
        groups = [("vision", list(lm.model.model.vision_model.parameters()))]
        groups.append(("probe", list(probe.parameters()) if probe else []))
    else:
        vision = list(lm.model.model.vision_model.parameters())
        vision_ids = {id(p) for p in vision}
        rest = [p for p in lm.model.parameters() if id(p) not in vision_ids]
        groups = [("rest", rest)]
        if phase == "joint":
            groups.append(("vision", vision))
    for _, params in groups:
        for p in params:
            p.requires_grad_(True)
    return groups


def frame_budget(lm: LoadedModel, config: TrainConfig) -> int:
    """Visual tokens per frame to train with: the config's, else the model's own (as served)."""
    if config.max_tokens_per_frame is not None:
        return config.max_tokens_per_frame
    return int(lm.card.get("ingest", {}).get("max_tokens_per_frame", 16))


def float32_trainables(lm: LoadedModel, config: TrainConfig) -> TrainConfig:
    """A base held in bf16 or fp16 trains its summary tokens in float32, computing under autocast.

    AdamW on half-precision weights loses small updates; the frozen base can stay small.
    """
    if lm.dtype == torch.float32:
        return config
    if config.stage != "summary":
        raise ValueError(
            f"stage {config.stage} trains every weight: load the base in float32 (--autocast computes in bf16)"
        )
    for trio in lm.summary.projections:
        for proj in trio:
            proj.summary.float()
    lm.summary.vs_embedding.data = lm.summary.vs_embedding.data.float()
    return replace(config, autocast=True)


class Trainer:
    """Owns the model, the optimizer and the checkpoint folder of one run (one process's share of it).

    world: this process among those torchrun started; each takes its own clips of every step, the
    gradients are averaged, and only the main process writes checkpoints, logs and outputs.
    """

    def __init__(
        self,
        lm: LoadedModel,
        source: ClipSource,
        config: TrainConfig,
        out_dir: Path,
        reading_source: ClipSource | None = None,
        copy_source: ClipSource | None = None,
        world: World | None = None,
    ) -> None:
        config = replace(float32_trainables(lm, config), max_tokens_per_frame=frame_budget(lm, config))
        self.lm, self.source, self.config, self.out_dir = lm, source, config, Path(out_dir)
        self.world = world or World()
        self.reading_source = reading_source or source
        self.copy_source = copy_source or self.reading_source
        self.probe = (
            VisionProbe(lm.model.config.vision_config.hidden_size) if config.stage == "base" else None
        )
        self.step = 0
        self.phase = ""
        self.optimizer: torch.optim.Optimizer | None = None
        self.history: list[StepMetrics] = []  # this process's steps
        self._logged = 0  # how many of them train_log.jsonl already has

    # parameters by stable names, for checkpoints
    def named_parameters(self) -> dict[str, nn.Parameter]:
        named = {f"model.{k}": p for k, p in self.lm.model.named_parameters()}
        if self.probe is not None:
            named.update({f"probe.{k}": p for k, p in self.probe.named_parameters()})
        return named

    def _set_phase(self, phase: str) -> None:
        if phase == self.phase:
            return
        self.phase = phase
        groups = trainable(self.lm, self.probe, phase)
        c = self.config
        self.optimizer = torch.optim.AdamW(
            [
                {
                    "params": params,
                    "base_lr": self._base_lr(name, phase),
                }
                for name, params in groups
            ],
            lr=c.lr,
            weight_decay=c.weight_decay,
        )

    def _base_lr(self, group: str, phase: str) -> float:
        c = self.config
        if phase == "vision":
            return c.pretrain_vision_lr
        return c.vision_lr if group == "vision" else c.lr

    def train_step(self) -> StepMetrics:
        t0 = time.perf_counter()
        self._set_phase(phase_at(self.config, self.step))
        scale = cosine_lr(self.step, self.config.total_steps, self.config.warmup_steps)
        for group in self.optimizer.param_groups:
            group["lr"] = group["base_lr"] * scale
        self.optimizer.zero_grad(set_to_none=True)
        if self.phase == "vision":
            # Data depends on (seed, step) only (and the process, when several share a step).
            seeds = [self.config.seed, self.step] + (
                [1 << 20, self.world.rank] if self.world.size > 1 else []
            )
            with self._autocast():
                losses = vision_losses(
                    self.lm, self.probe, np.random.default_rng(seeds), self.config, self.source
                )
                total = sum(losses.values())
            total.backward()
        else:
            total, losses = self._clip_batch()
        params = [p for g in self.optimizer.param_groups for p in g["params"]]
        average_gradients(params, self.world)
        torch.nn.utils.clip_grad_norm_(params, self.config.grad_clip)
        self.optimizer.step()
        self.step += 1
        parts = average_values({"loss": total.item(), **{k: v.item() for k, v in losses.items()}}, self.world)
        loss = parts.pop("loss")
        metrics = StepMetrics(self.step, self.phase, loss, parts, time.perf_counter() - t0)
        self.history.append(metrics)
        return metrics

    def _autocast(self) -> contextlib.AbstractContextManager:
        if not self.config.autocast:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.lm.device.type, dtype=torch.bfloat16)

    def _clip_batch(self) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Accumulate the gradients of this process's `clips_per_step` clips (backward per clip:
        memory stays one clip's).

        Clip j of a step is drawn from rng(seed, step, j), and this process takes clips
        rank * clips_per_step onwards: one process with clips_per_step x processes clips computes
        the same mean gradient as the processes together.
        """
        c = self.config
        weights = {
            "lm": c.lm_weight,
            "lm_raw": c.lm_weight,
            "distill": c.distill_weight,
            "retrieval": c.retrieval_weight,
        }
        source, keep_raw = self._source_at(self.step)
        total = torch.zeros(())
        sums: dict[str, torch.Tensor] = {k: torch.zeros(()) for k in weights}
        first = self.world.rank * c.clips_per_step
        for j in range(first, first + c.clips_per_step):
            rng = np.random.default_rng([c.seed, self.step, j])
            with self._autocast():
                losses = clip_losses(self.lm, source.clip(rng), c, rng, 1.0 if keep_raw else None)
                loss = sum(weights[k] * v for k, v in losses.items()) / c.clips_per_step
            loss.backward()
            total = total + loss.detach().float().cpu()
            for k, v in losses.items():
                sums[k] = sums[k] + v.detach().float().cpu() / c.clips_per_step
        if "verdict_words" in self._loss_names(source, keep_raw):
            # Drawn from a stream of their own: the step's clips are what they were without them.
            rng = np.random.default_rng([c.seed, self.step, VERDICT_WORDS_STREAM, self.world.rank])
            examples = [yes_no_on_words(rng)[:2] for _ in range(c.verdict_words)]
            with self._autocast():
                loss = c.lm_weight * verdict_words_loss(self.lm, examples)
            loss.backward()
            total = total + loss.detach().float().cpu()
            sums["verdict_words"] = loss.detach().float().cpu()
        return total, {k: v for k, v in sums.items() if k in self._loss_names(source, keep_raw)}

    def _loss_names(self, source: ClipSource, keep_raw: bool) -> set[str]:
        """The losses a step of this phase computes (the same in every process, for averaging)."""
        c = self.config
        if keep_raw:
            return {"lm_raw"}
        names = {"lm"}
        if c.stage == "summary" and c.distill_weight > 0:
            names.add("distill")
        if c.stage == "base":
            names |= {"lm_raw"} if c.raw_share > 0 else set()
            names |= {"retrieval"} if c.retrieval_weight > 0 else set()
            names |= {"verdict_words"} if c.verdict_words > 0 else set()
        return names

    def _source_at(self, step: int) -> tuple[ClipSource, bool]:
        """Where a step's clips come from, and whether they are all answered keep-raw (the curriculum)."""
        c = self.config
        if c.stage == "base":
            if step < c.vision_steps + c.copy_steps:
                return self.copy_source, True
            if step < c.vision_steps + c.copy_steps + c.reading_steps:
                return self.reading_source, True
        return self.source, False

    def run(self, progress: Callable[[StepMetrics], None] | None = None) -> list[StepMetrics]:
        self.lm.model.train()
        try:
            while self.step < self.config.total_steps:
                m = self.train_step()
                if progress:
                    progress(m)
                if self.step % self.config.checkpoint_every == 0 or self.step == self.config.total_steps:
                    self.save_checkpoint()
        finally:
            self.lm.model.eval()
        return self.history

    # --- checkpoints: safetensors for tensors, JSON for the rest --------------------------

    @property
    def checkpoint_dir(self) -> Path:
        return self.out_dir / "checkpoint"

    def save_checkpoint(self) -> Path:
        """The run's checkpoint (safetensors + JSON), written aside and renamed into place; only
        the main process writes (the others hold the same weights)."""
        folder = self.checkpoint_dir
        if not self.world.is_main:
            return folder
        tmp = folder.with_name("checkpoint.partial")
        tmp.mkdir(parents=True, exist_ok=True)
        params = {k: p.detach().contiguous().cpu() for k, p in self.named_parameters().items()}
        save_file(params, str(tmp / "params.safetensors"))
        optim, steps = {}, {}
        names = {id(p): k for k, p in self.named_parameters().items()}
        for p, state in self.optimizer.state.items():
            for key in ("exp_avg", "exp_avg_sq"):
                optim[f"{names[id(p)]}::{key}"] = state[key].contiguous().cpu()
            steps[names[id(p)]] = float(state["step"])
        save_file(optim, str(tmp / "optimizer.safetensors"))
        state = {"step": self.step, "phase": self.phase, "config": asdict(self.config), "adam_steps": steps}
        (tmp / "state.json").write_text(json.dumps(state, indent=2))
        with (self.out_dir / "train_log.jsonl").open("a") as log:
            for m in self.history[self._logged :]:
                log.write(json.dumps(asdict(m)) + "\n")
        self._logged = len(self.history)
        if folder.exists():
            for f in folder.iterdir():
                f.unlink()
            folder.rmdir()
        tmp.rename(folder)
        return folder

    def load_checkpoint(self) -> bool:
        """Resume from the run's checkpoint if there is one; returns whether it did."""
        folder = self.checkpoint_dir
        if not (folder / "state.json").exists():
            return False
        state = json.loads((folder / "state.json").read_text())
        if state["config"]["stage"] != self.config.stage or state["config"]["seed"] != self.config.seed:
            raise ValueError(
                f"{folder}: checkpoint is of another run (stage/seed differ); use a new output folder"
            )
        named = self.named_parameters()
        with torch.no_grad():
            for k, t in load_file(str(folder / "params.safetensors")).items():
                named[k].copy_(t)
        self.step = int(state["step"])
        self._set_phase(state["phase"])
        optim = load_file(str(folder / "optimizer.safetensors"))
        for k, step in state["adam_steps"].items():
            p = named[k]
            self.optimizer.state[p] = {
                "step": torch.tensor(step),
                "exp_avg": optim[f"{k}::exp_avg"].to(p.device),
                "exp_avg_sq": optim[f"{k}::exp_avg_sq"].to(p.device),
            }
        return True

    # --- outputs ----------------------------------------------------------------------------

    def save_adapter(self, folder: Path, base_fingerprint: str) -> Path:
        extra = {
            "alphas": list(self.config.alphas),
            "steps": self.step,
            "seed": self.config.seed,
            # What longwatch did to the base to give it summary tokens (load_model does it again).
            "vs_token_id": self.lm.vs_token_id,
            "added_tokens": list(self.lm.added_tokens),
            "embedding_rows": int(self.lm.language_model.get_input_embeddings().weight.shape[0]),
        }
        return save_adapter(self.lm.summary, folder, self.lm.name, base_fingerprint, extra)

    def save_base(self, folder: Path) -> Path:
        """The base weights as an HF-format checkpoint (summary parameters excluded: they go in the adapter)."""
        folder = Path(folder)
        model = self.lm.model
        state = {k: v for k, v in model.state_dict().items() if not _is_summary_key(k)}
        model.save_pretrained(folder, state_dict=state)
        self.lm.tokenizer.save_pretrained(folder)
        trained = {"stage": "base", "steps": self.step, "seed": self.config.seed, "lr": self.config.lr}
        if "trained" in self.lm.card:  # trained on from a trained base: the card keeps the whole lineage
            trained["after"] = self.lm.card["trained"]
        card = {**self.lm.card, "trained": trained}
        if isinstance(self.source, NeedleClips) and self.source.yes_no_share and self.source.yes_no_described:
            card["yes_no_answers"] = "described"  # a watch then reads the verdict at the answer's end
        (folder / "longwatch.json").write_text(json.dumps(card, indent=2, sort_keys=True) + "\n")
        return folder


def _is_summary_key(key: str) -> bool:
    return ".summary." in key or key.endswith("summary_vs_embedding")


def cosine_lr(step: int, total: int, warmup: int = 20) -> float:
    """Warmup then cosine decay to 10% over the whole run: a multiplier for each group's base lr."""
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


DEMO_CARD = {
    "ingest": {"max_tokens_per_frame": 4, "frames_per_chunk": 8, "fps": 1.0},
    "alpha": 16,
    "answer_format": ANSWER_FORMAT,
}


def new_base(
    folder: Path, seed: int, system_prompt: str, name: str = DEMO_MODEL_NAME, size: str = DEFAULT_BASE_SIZE
) -> Path:
    """A from-scratch base for the needle demo: word tokenizer, 56 px frames (4 tokens), a BASE_SIZES size."""
    from longwatch.model.tiny import build_tiny_model
    from longwatch.model.train.clips import corpus
    from longwatch.model.train.vocab import build_word_tokenizer

    if size not in BASE_SIZES:
        raise ValueError(f"size must be one of {sorted(BASE_SIZES)}, got {size!r}")
    s = BASE_SIZES[size]
    return build_tiny_model(
        folder,
        seed=seed,
        tokenizer=build_word_tokenizer(corpus(system_prompt)),
        name=name,
        card={**DEMO_CARD, "size": size},
        vision_overrides={
            "hidden_size": s.vision_width,
            "intermediate_size": 2 * s.vision_width,
            "num_hidden_layers": s.vision_layers,
            "num_attention_heads": s.vision_heads,
        },
        projector_scale=40.0,
        hidden_size=s.decoder_width,
        intermediate_size=2 * s.decoder_width + 64,
        num_hidden_layers=s.decoder_layers,
        num_attention_heads=s.decoder_heads,
        num_key_value_heads=s.decoder_kv_heads,
    )
