"""Compressing a chunk of frames into the K/V the decoder keeps (Video-XL's visual summary tokens).

A chunk's sequence is, per frame, the `Time t.ts:` label then its visual tokens (those DiffFP
kept), with one `<vs>` summary token after every `alpha` visual tokens (a trailing partial group
gets one too). One forward pass over the chunk, after the system prefix's cache, computes every
token's K/V; only the summary tokens' (and optionally the labels') are kept, with the positions
they were computed at. In keep-raw mode there are no summary tokens, every token's K/V is kept,
and each chunk sees all earlier chunks of its stream: the exact, uncompressed oracle.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from transformers import DynamicCache

from longwatch.memory.chunk import ChunkCache
from longwatch.model.loading import LoadedModel, frame_label
from longwatch.model.retrieval import capture_projections, key_vector

TEXT, VISUAL, SUMMARY = 0, 1, 2


@dataclass
class ChunkFrames:
    """One chunk's frames after the vision tower and DiffFP."""

    frame_times: list[float]  # seconds, stream time of each frame
    features: torch.Tensor  # (n_kept, hidden): projected visual tokens DiffFP kept, frame by frame
    tokens_per_frame: list[int]  # tokens each frame kept; sums to features.shape[0]
    first_in_stream: bool  # the stream's first chunk has no "," before its first label
    tokens_seen: int  # visual tokens before DiffFP
    end_s: float  # end of the span this chunk covers (last frame + one sampling interval)

    def __post_init__(self) -> None:
        if len(self.frame_times) != len(self.tokens_per_frame) or not self.frame_times:
            raise ValueError("a chunk needs one token count per frame and at least one frame")
        if sum(self.tokens_per_frame) != self.features.shape[0]:
            raise ValueError(
                f"{self.features.shape[0]} features for {sum(self.tokens_per_frame)} kept tokens"
            )


@dataclass
class ChunkSequence:
    ids: list[int]  # token ids; visual and summary rows hold placeholder ids
    kinds: list[int]  # TEXT, VISUAL or SUMMARY per token


def build_chunk_sequence(lm: LoadedModel, frames: ChunkFrames, alpha: int | None) -> ChunkSequence:
    """Lay out a chunk's tokens; alpha=None lays out no summary tokens (keep-raw mode)."""
    seq = ChunkSequence(ids=[], kinds=[])
    since_summary = 0
    for f, (t, n) in enumerate(zip(frames.frame_times, frames.tokens_per_frame, strict=True)):
        label = lm.tokenize(frame_label(t, first_in_stream=frames.first_in_stream and f == 0))
        seq.ids += label
        seq.kinds += [TEXT] * len(label)
        for _ in range(n):
            seq.ids.append(lm.video_token_id)
            seq.kinds.append(VISUAL)
            since_summary += 1
            if alpha is not None and since_summary == alpha:
                seq.ids.append(lm.vs_token_id)
                seq.kinds.append(SUMMARY)
                since_summary = 0
    if alpha is not None and (since_summary > 0 or SUMMARY not in seq.kinds):
        seq.ids.append(lm.vs_token_id)
        seq.kinds.append(SUMMARY)
    return seq


def chunk_embeddings(lm: LoadedModel, seq: ChunkSequence, features: torch.Tensor) -> torch.Tensor:
    """Input embeddings (1, L, hidden): text embedded, visual rows from the vision tower, `<vs>` learned."""
    kinds = torch.tensor(seq.kinds, device=lm.device)
    embeds = lm.embed(seq.ids)
    embeds = embeds.masked_scatter((kinds == VISUAL)[:, None], features.to(embeds.dtype))
    embeds = torch.where((kinds == SUMMARY)[:, None], lm.summary.vs_embedding.to(embeds.dtype), embeds)
    return embeds.unsqueeze(0)


@dataclass
class ChunkKV:
    """A chunk's kept K/V, as tensors that may carry gradients (the trainer's view of a ChunkCache)."""

    keys: torch.Tensor  # (layers, kv_heads, n_kept, head_dim), rotated at `positions`
    values: torch.Tensor  # (layers, kv_heads, n_kept, head_dim)
    positions: torch.Tensor  # (n_kept,) int64
    retrieval: torch.Tensor  # (retrieval_dim,) float32: mean pre-RoPE key of the visual tokens


def run_chunk(
    lm: LoadedModel,
    frames: ChunkFrames,
    alpha: int | None,
    cache: DynamicCache,
    start: int,
) -> ChunkKV:
    """One pass of a chunk after whatever `cache` holds, at positions start..; appends to `cache`.

    alpha=None is keep-raw: no summary tokens, every token kept. With summary tokens, the labels'
    K/V are kept too when the model was loaded with `keep_timestamp_tokens`: the service, the
    trainer and the in-process evaluation all read that one setting. Runs with gradients if enabled.
    """
    seq = build_chunk_sequence(lm, frames, alpha)
    embeds = chunk_embeddings(lm, seq, frames.features)  # (1, L, hidden)
    kinds = torch.tensor(seq.kinds, device=lm.device)
    past = cache.get_seq_length()
    positions = torch.arange(start, start + len(seq.ids), device=lm.device)
    with capture_projections(lm.language_model, "k_proj", lm.retrieval_layers, detach=False) as keys_pre_rope:
        lm.language_model(
            inputs_embeds=embeds,
            cache=cache,
            use_cache=True,
            position_ids=positions.unsqueeze(0),
            summary_mask=(kinds == SUMMARY).unsqueeze(0),
        )
    keep = torch.ones_like(kinds, dtype=torch.bool) if alpha is None else kept_tokens(lm, kinds)
    # cache layers: (1, kv_heads, past + L, head_dim); this chunk's tokens are the last L.
    return ChunkKV(
        keys=torch.stack([layer.keys[0, :, past:][:, keep] for layer in cache.layers]),
        values=torch.stack([layer.values[0, :, past:][:, keep] for layer in cache.layers]),
        positions=positions[keep],
        retrieval=key_vector(keys_pre_rope, lm.retrieval_layers, kinds == VISUAL),
    )


def kept_tokens(lm: LoadedModel, kinds: torch.Tensor) -> torch.Tensor:
    """Which tokens of a chunk's sequence keep their K/V with summary tokens: the summaries, and the
    labels when the model was loaded with `keep_timestamp_tokens`."""
    keep = kinds == SUMMARY
    if lm.config.keep_timestamp_tokens:
        keep |= kinds == TEXT
    return keep


@torch.no_grad()
def run_chunks(lm: LoadedModel, chunks: list[ChunkFrames], alpha: int) -> list[ChunkKV]:
    """Summary passes of several chunks (of any streams) as one batch, each after the system prefix.

    The chunks' sequences are padded on the right to the longest; padding is masked out of
    attention and each chunk's K/V is read from its own row, so it is what `run_chunk` makes of it
    alone up to float rounding (about 1e-6 here: a batch's sums run in another order), not bit
    for bit. Summary mode only: keep-raw chunks see their stream's earlier chunks.
    """
    if len(chunks) == 1:
        return [run_chunk(lm, chunks[0], alpha, lm.prefix_cache(), lm.prefix_len)]
    seqs = [build_chunk_sequence(lm, frames, alpha) for frames in chunks]
    lengths = [len(seq.ids) for seq in seqs]
    n, longest, start = len(seqs), max(lengths), lm.prefix_len
    embeds = torch.zeros(n, longest, lm.text_config.hidden_size, dtype=lm.dtype, device=lm.device)
    kinds = torch.full((n, longest), -1, device=lm.device)  # -1: padding
    for i, (seq, frames) in enumerate(zip(seqs, chunks, strict=True)):
        embeds[i, : lengths[i]] = chunk_embeddings(lm, seq, frames.features)[0]
        kinds[i, : lengths[i]] = torch.tensor(seq.kinds, device=lm.device)
    # The prefix's cache, once per row: (n, kv_heads, prefix_len, head_dim) per layer.
    cache = DynamicCache(
        ddp_cache_data=[
            (k.expand(n, -1, -1, -1).contiguous(), v.expand(n, -1, -1, -1).contiguous())
            for k, v in lm.prefix_kv
        ],
        config=lm.text_config,
    )
    attention = torch.ones(n, start + longest, dtype=torch.long, device=lm.device)
    for i, length in enumerate(lengths):
        attention[i, start + length :] = 0
    positions = torch.arange(start, start + longest, device=lm.device).expand(n, longest)
    with capture_projections(lm.language_model, "k_proj", lm.retrieval_layers) as keys_pre_rope:
        lm.language_model(
            inputs_embeds=embeds,
            cache=cache,
            use_cache=True,
            position_ids=positions,
            attention_mask=attention,
            summary_mask=kinds == SUMMARY,
        )
    out = []
    for i, length in enumerate(lengths):
        row = kinds[i, :length]
        keep = kept_tokens(lm, row)
        # cache layers: (n, kv_heads, prefix_len + longest, head_dim); row i's tokens from start.
        out.append(
            ChunkKV(
                keys=torch.stack(
                    [layer.keys[i, :, start : start + length][:, keep] for layer in cache.layers]
                ),
                values=torch.stack(
                    [layer.values[i, :, start : start + length][:, keep] for layer in cache.layers]
                ),
                positions=positions[i, :length][keep],
                retrieval=key_vector(
                    {j: keys_pre_rope[j][i : i + 1, :length] for j in lm.retrieval_layers},
                    lm.retrieval_layers,
                    row == VISUAL,
                ),
            )
        )
    return out


@dataclass
class RawStreamContext:
    """Keep-raw mode's running cache of a stream: the prefix plus every earlier chunk."""

    cache: DynamicCache
    next_position: int
    chunks: int = 0


@dataclass
class SummaryCompressor:
    """Turns ChunkFrames into ChunkCache, in the mode the model was loaded with."""

    lm: LoadedModel
    raw_contexts: dict[str, RawStreamContext] = field(default_factory=dict)

    def start_stream(self, stream_id: str) -> None:
        """Forget per-stream state (keep-raw mode's running cache)."""
        self.raw_contexts.pop(stream_id, None)

    def end_stream(self, stream_id: str) -> None:
        self.raw_contexts.pop(stream_id, None)

    @torch.no_grad()
    def compress(
        self, stream_id: str, index: int, frames: ChunkFrames, kv: ChunkKV | None = None
    ) -> ChunkCache:
        """The chunk's cache; `kv` is its summary pass when one was already run (`run_chunks`)."""
        lm = self.lm
        raw = lm.config.mode == "raw"
        if kv is not None:
            if raw:
                raise ValueError("a summary pass was run for a keep-raw model")
        elif raw and lm.config.raw_context == "chunk":  # every token kept, each chunk on its own
            kv = run_chunk(lm, frames, None, lm.prefix_cache(), lm.prefix_len)
        elif raw:
            ctx = self.raw_contexts.get(stream_id)
            if ctx is None:
                ctx = RawStreamContext(cache=lm.prefix_cache(), next_position=lm.prefix_len)
                self.raw_contexts[stream_id] = ctx
            kv = run_chunk(lm, frames, None, ctx.cache, ctx.next_position)
            ctx.next_position = ctx.cache.get_seq_length()
            ctx.chunks += 1
        else:
            kv = run_chunk(lm, frames, lm.config.alpha, lm.prefix_cache(), lm.prefix_len)
        return ChunkCache(
            stream_id=stream_id,
            index=index,
            start_s=frames.frame_times[0],
            end_s=frames.end_s,
            keys=kv.keys.cpu(),  # (layers, kv_heads, n_kept, head_dim)
            values=kv.values.cpu(),
            positions=kv.positions.cpu(),
            retrieval=kv.retrieval.cpu(),
            frame_times=list(frames.frame_times),
            tokens_seen=frames.tokens_seen,
            tokens_kept=int(frames.features.shape[0]),
            mode=lm.config.mode,
            alpha=0 if raw else lm.config.alpha,
        )
