"""Settings of the service, read once at the edge from flags and LONGWATCH_* environment variables."""

from __future__ import annotations

import argparse
import os
from dataclasses import dataclass, field
from pathlib import Path

from longwatch.model.config import ModelConfig


def default_state_dir() -> Path:
    base = os.environ.get("XDG_STATE_HOME") or os.path.join(os.path.expanduser("~"), ".local", "state")
    return Path(base) / "longwatch"


@dataclass
class IngestConfig:
    """How frames become chunks.

    fps: sampling rate by presentation time.
    frames_per_chunk: sampled frames compressed together into one chunk.
    max_tokens_per_frame: per-frame budget of merged visual tokens; sets the resize target.
    diff_threshold: DiffFP threshold (mean absolute pixel difference x 255 per merged token).
    """

    fps: float = 1.0
    frames_per_chunk: int = 8
    max_tokens_per_frame: int = 16
    diff_threshold: float = 0.1

    def __post_init__(self) -> None:
        if not 0 < self.fps <= 60:
            raise ValueError(f"fps must be in (0, 60], got {self.fps}")
        if self.frames_per_chunk < 1:
            raise ValueError(f"frames_per_chunk must be >= 1, got {self.frames_per_chunk}")
        if self.max_tokens_per_frame < 1:
            raise ValueError(f"max_tokens_per_frame must be >= 1, got {self.max_tokens_per_frame}")


@dataclass
class ServiceSettings:
    """Everything `longwatch serve` needs.

    redis_url: None starts an embedded redis-server with its data under state_dir.
    """

    host: str = "127.0.0.1"
    port: int = 50051
    redis_url: str | None = None
    state_dir: Path = field(default_factory=default_state_dir)
    workers: int = 8
    max_message_mb: int = 256
    top_k: int = 4
    max_new_tokens: int = 32
    max_question_chars: int = 2000
    ingest: IngestConfig = field(default_factory=IngestConfig)
    model: ModelConfig = field(default_factory=ModelConfig)

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"


def _env(name: str, default: str | None = None) -> str | None:
    return os.environ.get(f"LONGWATCH_{name}", default)


def add_service_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags of `longwatch serve` (and `demo`); each defaults to its LONGWATCH_* variable.

    Defaults stay strings where a type is set: argparse converts them like typed-in values, so a
    malformed variable gets the same one-line usage error as a malformed flag.
    """
    g = parser.add_argument_group("service")
    g.add_argument("--host", default=_env("HOST", "127.0.0.1"), help="address to bind (LONGWATCH_HOST)")
    g.add_argument("--port", type=int, default=_env("PORT", "50051"), help="gRPC port (LONGWATCH_PORT)")
    g.add_argument(
        "--redis-url",
        default=_env("REDIS_URL", os.environ.get("REDIS_URL")),
        help="Redis to use (LONGWATCH_REDIS_URL or REDIS_URL); unset starts an embedded redis-server",
    )
    g.add_argument(
        "--state-dir",
        type=Path,
        default=Path(_env("STATE_DIR") or default_state_dir()),
        help="embedded Redis data and generated models (LONGWATCH_STATE_DIR)",
    )
    g.add_argument("--top-k", type=int, default=_env("TOP_K", "4"), help="chunks retrieved per question")
    g.add_argument("--max-new-tokens", type=int, default=_env("MAX_NEW_TOKENS", "32"))
    g = parser.add_argument_group("ingest")
    g.add_argument("--fps", type=float, default=_env("FPS", "1.0"), help="sampling rate (LONGWATCH_FPS)")
    g.add_argument("--frames-per-chunk", type=int, default=_env("FRAMES_PER_CHUNK", "8"))
    g.add_argument("--max-tokens-per-frame", type=int, default=_env("MAX_TOKENS_PER_FRAME", "16"))
    g.add_argument("--diff-threshold", type=float, default=_env("DIFF_THRESHOLD", "0.1"))
    g = parser.add_argument_group("model")
    g.add_argument(
        "--model",
        type=Path,
        default=_env("MODEL"),
        help="local HF-format VideoLLaMA3 folder (LONGWATCH_MODEL); unset uses the built-in tiny model",
    )
    g.add_argument("--adapter", type=Path, default=_env("ADAPTER"), help="summary-token adapter folder")
    g.add_argument("--device", default=_env("DEVICE", "cpu"))
    g.add_argument("--dtype", default=_env("DTYPE", "float32"), choices=["float32", "bfloat16", "float16"])
    g.add_argument("--mode", default=_env("MODE", "summary"), choices=["summary", "raw"])
    g.add_argument("--alpha", type=int, default=_env("ALPHA", "16"), choices=[2, 4, 8, 16])


def settings_from_args(args: argparse.Namespace) -> ServiceSettings:
    return ServiceSettings(
        host=args.host,
        port=args.port,
        redis_url=args.redis_url or None,
        state_dir=Path(args.state_dir),
        top_k=args.top_k,
        max_new_tokens=args.max_new_tokens,
        ingest=IngestConfig(
            fps=args.fps,
            frames_per_chunk=args.frames_per_chunk,
            max_tokens_per_frame=args.max_tokens_per_frame,
            diff_threshold=args.diff_threshold,
        ),
        model=ModelConfig(
            path=args.model,
            adapter=args.adapter,
            device=args.device,
            dtype=args.dtype,
            mode=args.mode,
            alpha=args.alpha,
        ),
    )
