"""The unit of memory: one chunk of a stream, compressed to the K/V the decoder needs later."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch


@dataclass
class ChunkCache:
    """What one chunk leaves behind after compression.

    Keys are stored rotated by RoPE at ``positions`` (the positions they were computed at);
    the answerer rotates them by the difference when it re-packs chunks contiguously.
    In summary mode only the summary tokens (plus, if configured, timestamp tokens) are
    kept; in keep-raw mode every token of the chunk is.
    """

    stream_id: str
    index: int  # chunk number within the stream, from 0, contiguous
    start_s: float  # timestamp of the first sampled frame
    end_s: float  # timestamp of the last sampled frame plus one sampling interval
    keys: torch.Tensor  # (layers, kv_heads, n_kept, head_dim), rotated at `positions`
    values: torch.Tensor  # (layers, kv_heads, n_kept, head_dim)
    positions: torch.Tensor  # (n_kept,) int64: the RoPE position each kept token was computed at
    retrieval: torch.Tensor  # (retrieval_dim,) float32: mean pre-RoPE key at the retrieval layers
    frame_times: list[float] = field(default_factory=list)  # timestamps of the frames in the chunk
    tokens_seen: int = 0  # visual tokens before DiffFP
    tokens_kept: int = 0  # visual tokens after DiffFP (what the decoder saw)
    mode: str = "summary"  # "summary" or "raw"
    alpha: int = 0  # raw tokens per summary token (0 in keep-raw mode)

    def __post_init__(self) -> None:
        if self.keys.shape != self.values.shape:
            raise ValueError(f"keys {tuple(self.keys.shape)} and values {tuple(self.values.shape)} differ")
        if self.keys.dim() != 4:
            raise ValueError(
                f"keys must be (layers, kv_heads, n_kept, head_dim), got {tuple(self.keys.shape)}"
            )
        if self.positions.shape != (self.keys.shape[2],):
            raise ValueError(
                f"positions {tuple(self.positions.shape)} do not match {self.keys.shape[2]} kept tokens"
            )

    @property
    def n_kept(self) -> int:
        return int(self.keys.shape[2])

    @property
    def n_frames(self) -> int:
        return len(self.frame_times)
