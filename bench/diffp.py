"""DiffFP throughput: longwatch's `DiffFramePruner` against transformers' native mask, same frames.

    python bench/diffp.py            # 448x252 (120 frames) and 1280x720 (32 frames)
    python bench/diffp.py --quick    # a few frames of each (the test's smoke run)

The frames are footage-like (`SyntheticFootage`: still scenes with sensor noise, pans, cuts),
sampled at 1 fps and passed through the H.264 encoder and decoder once, as a camera's or a
file's frames would be (it is the codec that makes still areas exact copies, so the kept share
is a realistic one). Each size is its own token grid (448x252 is 16 x 9 merged tokens, 1280x720
rounds to 1288x728, 46 x 26), with no token budget: DiffFP compares full-resolution tokens.

What is timed, on both sides, is the same work: the keep mask of T frames from the same
`pixel_values` rows (T * grid_h * grid_w, 3 * 14 * 14) float32, already patchified, threshold
0.1, min_tokens 1. Native: `VideoLlama3VideoProcessor._get_compression_mask` over the T frames
as one video. Pruner: a new `DiffFramePruner` and one `push` of all T frames; "chunked" pushes
the same frames 8 at a time as the ingest pipeline does (state carried across pushes). Every
mask is checked `torch.equal` to the native one. Rounds alternate native and pruner so that a
busy machine slows both alike; the figure is the median round.
"""

from __future__ import annotations

import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from common import bench_main, machine

from longwatch.model.diffp import DiffFramePruner
from longwatch.model.frames import FrameGrid, frames_to_pixel_values, grid_for
from longwatch.model.train.synthetic import SyntheticFootage, encode_video
from longwatch.stream.decode import VideoFileReader

# The one door to transformers' native VideoLLaMA3 processor (and its torchvision stub) is the
# tests' helper; the benchmark goes through the same door rather than a copy of it.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from native_videollama3 import native_compression_mask  # noqa: E402

NO_BUDGET = 10**6  # tokens per frame: every size keeps its own grid
CHUNK_FRAMES = 8  # frames per push in the chunked run: the pipeline's frames_per_chunk
THRESHOLD = 0.1
MIN_TOKENS = 1


@dataclass(frozen=True)
class Case:
    width: int
    height: int
    frames: int
    rounds: int


FULL = (Case(448, 252, 120, 7), Case(1280, 720, 32, 5))
QUICK = (Case(448, 252, 12, 2), Case(1280, 720, 4, 2))


def footage_frames(case: Case, folder: Path) -> np.ndarray:
    """(T, H, W, 3) uint8: footage-like frames at 1 fps, through the H.264 encoder and decoder."""
    source = SyntheticFootage(seed=3, width=case.width, height=case.height, fps=1.0)
    path = encode_video(folder / f"{case.width}x{case.height}.mp4", source.frames(case.frames), 1.0)
    frames = np.stack([f.image for f in VideoFileReader(path, fps=1.0)])
    if len(frames) != case.frames:
        raise RuntimeError(f"decoded {len(frames)} frames of {case.frames} encoded")
    return frames


def native_mask(values: torch.Tensor, grid: FrameGrid, n: int) -> torch.Tensor:
    grid_thw = torch.tensor([[n, grid.grid_h, grid.grid_w]])
    return native_compression_mask(values, grid_thw, grid.merge_size, THRESHOLD, MIN_TOKENS)


def pruner_mask(values: torch.Tensor, grid: FrameGrid, n: int, per_push: int) -> torch.Tensor:
    """The mask of `n` frames from a new pruner, pushed `per_push` frames at a time."""
    pruner = DiffFramePruner(THRESHOLD, MIN_TOKENS, grid.merge_size)
    rows = grid.patches_per_frame
    masks = [
        pruner.push(values[start * rows : (start + per_push) * rows], grid, min(per_push, n - start))
        for start in range(0, n, per_push)
    ]
    return torch.cat(masks)


def timed_rounds(contenders: dict[str, Callable[[], torch.Tensor]], rounds: int) -> dict[str, float]:
    """Median seconds of each contender over `rounds` rounds, contenders alternating within a round."""
    seconds: dict[str, list[float]] = {name: [] for name in contenders}
    for _ in range(rounds):
        for name, fn in contenders.items():
            start = time.perf_counter()
            fn()
            seconds[name].append(time.perf_counter() - start)
    return {name: statistics.median(s) for name, s in seconds.items()}


def measure(case: Case, folder: Path) -> dict:
    frames = footage_frames(case, folder)
    n = case.frames
    grid = grid_for(case.height, case.width, NO_BUDGET)
    values = frames_to_pixel_values(frames, grid)  # not timed: both sides start from these rows
    contenders = {
        "native": lambda: native_mask(values, grid, n),
        "pruner": lambda: pruner_mask(values, grid, n, n),
        "chunked": lambda: pruner_mask(values, grid, n, CHUNK_FRAMES),
    }
    expected = contenders["native"]()
    identical = all(torch.equal(contenders[k](), expected) for k in ("pruner", "chunked"))
    median_s = timed_rounds(contenders, case.rounds)
    fps = {name: n / s for name, s in median_s.items()}
    return {
        "bench": "diffp",
        "frame": f"{case.width}x{case.height}",
        "grid": f"{grid.width}x{grid.height}",
        "tokens_per_frame": grid.tokens_per_frame,
        "frames": n,
        "rounds": case.rounds,
        "native_fps": round(fps["native"], 1),
        "pruner_fps": round(fps["pruner"], 1),
        "chunked_fps": round(fps["chunked"], 1),
        "speedup": round(fps["pruner"] / fps["native"], 2),
        "chunked_speedup": round(fps["chunked"] / fps["native"], 2),
        "kept_share": round(float(expected.float().mean()), 4),
        "masks_identical": identical,
        "goal_speedup": 2.0,
    }


def run(quick: bool = False) -> list[dict]:
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-diffp-") as tmp:
        for case in QUICK if quick else FULL:
            rows.append(measure(case, Path(tmp)) | machine())
    return rows


def main() -> None:
    bench_main(run, __doc__.split("\n")[0])


if __name__ == "__main__":
    main()
