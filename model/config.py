"""Typed configuration of the model side: which checkpoint, how chunks are compressed, how they are retrieved."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

ALPHAS = (2, 4, 8, 16)
ATTENTION = ("auto", "flash_attention_2", "sdpa", "eager")  # auto: flash-attn on CUDA if installed


@dataclass(frozen=True)
class BaseSize:
    """Widths and depths of a from-scratch base (frames are 56 px: 4 visual tokens each)."""

    vision_width: int
    vision_layers: int
    vision_heads: int
    decoder_width: int
    decoder_layers: int
    decoder_heads: int = 4
    decoder_kv_heads: int = 2


# "tiny" was the first demo model. "small" is the shipped one: at 56 px a 4-layer, 96-wide vision
# tower tells needle shapes far better than a 2-layer, 64-wide one, and the decoder grows with it
# (docs/demo-model.md).
BASE_SIZES = {
    "tiny": BaseSize(vision_width=64, vision_layers=2, vision_heads=2, decoder_width=96, decoder_layers=2),
    "small": BaseSize(vision_width=96, vision_layers=4, vision_heads=4, decoder_width=128, decoder_layers=4),
}
DEFAULT_BASE_SIZE = "small"


@dataclass
class ModelConfig:
    """How the decoder is loaded and how it compresses and answers.

    path: a local HF-format VideoLLaMA3 folder; None builds (once) and loads the tiny random
        model kept in the state folder.
    adapter: summary-token adapter folder (safetensors + JSON); None initialises the summary
        projections as copies of the base ones (what an untrained adapter is).
    mode: "summary" keeps only summary-token K/V per chunk (Video-XL); "raw" keeps every
        token's K/V; "auto" is summary with an adapter, else raw with chunk context (the
        training-free path for a released checkpoint).
    raw_context: in raw mode, what each chunk is computed after: "stream", every earlier chunk
        (the exactness oracle: ingest grows with the square of the stream), or "chunk", the system
        prompt alone (linear, as summary chunks are; ReKV's training-free retrieval).
    alpha: raw visual tokens per summary token, one of 2, 4, 8, 16.
    keep_timestamp_tokens: also keep the K/V of the `Time t.ts:` text tokens (Video-XL-2 does);
        costs a few tokens per frame.
    retrieval_layers: decoder layers whose pre-RoPE keys/queries form retrieval vectors;
        None picks the middle third.
    """

    path: Path | None = None
    adapter: Path | None = None
    device: str = "cpu"
    dtype: str = "float32"
    mode: str = "summary"
    raw_context: str = "stream"
    alpha: int = 16
    keep_timestamp_tokens: bool = False
    retrieval_layers: list[int] | None = None
    system_prompt: str = "You are a helpful assistant watching a video."
    attn_implementation: str = "auto"  # auto: flash_attention_2 on CUDA where installed, else sdpa
    extra: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.mode not in ("summary", "raw", "auto"):
            raise ValueError(f"mode must be 'summary', 'raw' or 'auto', got {self.mode!r}")
        if self.raw_context not in ("stream", "chunk"):
            raise ValueError(f"raw_context must be 'stream' or 'chunk', got {self.raw_context!r}")
        if self.mode == "summary" and self.alpha not in ALPHAS:
            raise ValueError(f"alpha must be one of {ALPHAS}, got {self.alpha}")
        if self.dtype not in ("float32", "bfloat16", "float16"):
            raise ValueError(f"dtype must be float32, bfloat16 or float16, got {self.dtype!r}")
