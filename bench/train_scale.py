"""Seconds per step and peak memory of summary-token training on a VideoLLaMA3 of the real shapes.

    python bench/train_scale.py --shape 2b                # 28 + 27 layers, real widths and vocabulary
    python bench/train_scale.py --shape 7b --checkpointing
    python bench/train_scale.py --quick                   # the 2B's widths, one layer a side (the tests)

No real weights are at hand, so the base is a DAMO-layout release of the real widths, heads,
vocabulary and depth with random weights (tests/damo_checkpoint.py), converted by `longwatch
convert`; time and memory do not depend on the weights' values. The run is `longwatch train
--stage summary`'s trainer on needle clips drawn at 448x252 (120 tokens a frame at the release's
own budget) with needles of 12-32 px: 6 chunks of 8 frames a clip, 4 of them in the answer's
context, `--clips-per-step` clips a step. On CUDA in bf16 it is what a real run costs per step and
per GPU (bench/cuda.sh runs it for both shapes); on this CPU only --quick is practical.
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "tests"))
from common import bench_main, machine  # noqa: E402
from damo_checkpoint import Widths, real_2b, write_damo_checkpoint  # noqa: E402

from longwatch.model.config import ModelConfig  # noqa: E402
from longwatch.model.convert import convert  # noqa: E402
from longwatch.model.loading import load_model  # noqa: E402
from longwatch.model.train.clips import NeedleClips  # noqa: E402
from longwatch.model.train.trainer import TrainConfig, Trainer  # noqa: E402

SHAPES = {
    "2b": lambda v, t: real_2b(v, t),
    "7b": lambda v, t: Widths(1152, 4304, 16, v, 3584, 18944, 28, 4, t, 152064, False),
}
FULL_DEPTH = {"vision": 27, "text": 28}


def run(
    quick: bool = False,
    shape: str = "2b",
    steps: int = 4,
    clips_per_step: int = 1,
    checkpointing: bool = False,
    device: str = os.environ.get("LONGWATCH_DEVICE", "cpu"),
    dtype: str = os.environ.get("LONGWATCH_DTYPE", "float32"),
) -> list[dict]:
    vision_layers, text_layers = (1, 1) if quick else (FULL_DEPTH["vision"], FULL_DEPTH["text"])
    steps = 2 if quick else steps
    widths = SHAPES[shape](vision_layers, text_layers)
    with tempfile.TemporaryDirectory(prefix="lw-train-scale-") as tmp:
        src = write_damo_checkpoint(Path(tmp) / f"videollama3-{shape}", widths, shard_bytes=2 << 30)
        native = convert(src, Path(tmp) / "native").out
        for f in src.glob("model*.safetensors"):
            f.unlink()
        lm = load_model(ModelConfig(path=native, device=device, dtype=dtype))
        config = TrainConfig(
            stage="summary",
            steps=steps,
            clips_per_step=clips_per_step,
            checkpointing=checkpointing,
            checkpoint_every=10**9,
            warmup_steps=1,
        )
        chunks = 2 if quick else 6
        source = NeedleClips(n_chunks=chunks, width=448, height=252, needle_px=(12, 32), all_questions=True)
        trainer = Trainer(lm, source, config, Path(tmp) / "run")
        if device.startswith("cuda"):
            torch.cuda.reset_peak_memory_stats()
        times = []
        lm.model.train()
        for _ in range(steps):
            t0 = time.perf_counter()
            trainer.train_step()
            if device.startswith("cuda"):
                torch.cuda.synchronize()
            times.append(time.perf_counter() - t0)
        peak_gpu = torch.cuda.max_memory_allocated() / 2**30 if device.startswith("cuda") else None
        trainable = sum(p.numel() for p in lm.summary.parameters())
    return [
        {
            "bench": "train_scale",
            "shape": shape,
            "layers": f"{text_layers} text, {vision_layers} vision",
            "device": device,
            "dtype": dtype,
            "checkpointing": checkpointing,
            "tokens_per_frame": trainer.config.max_tokens_per_frame,
            "clips_per_step": clips_per_step,
            "trainable_params_m": round(trainable / 1e6, 1),
            "first_step_s": round(times[0], 2),
            "s_per_step": round(statistics.median(times[1:]), 2),
            "peak_gpu_gib": None if peak_gpu is None else round(peak_gpu, 2),
            "peak_rss_gib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2),
            "load_avg_1m": machine()["load_avg_1m"],
        }
    ]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--shape", choices=sorted(SHAPES), default="2b")
    parser.add_argument("--steps", type=int, default=4, help="steps timed (the first is reported apart)")
    parser.add_argument("--clips-per-step", type=int, default=1)
    parser.add_argument("--checkpointing", action="store_true")
    parser.add_argument("--device", default=os.environ.get("LONGWATCH_DEVICE", "cpu"))
    parser.add_argument("--dtype", default=os.environ.get("LONGWATCH_DTYPE", "float32"))


def main() -> None:
    print("machine: " + str(machine()), file=sys.stderr)
    bench_main(run, __doc__.split("\n")[0], add_arguments)


if __name__ == "__main__":
    main()
