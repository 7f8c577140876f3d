"""`longwatch eval needle`: a V-NIAH-style grid through the real path (ingest into Redis, Ask over gRPC).

Haystacks of {60, 300, 900, 1800, 3600} sampled frames x needle depth {0, 25, 50, 75, 100}%,
several needles per cell, evaluation seeds only. Rows, side by side:
- longwatch: summary tokens (alpha 16) + retrieval top-k, the default service (int8 K/V);
- longwatch-float: the same with K/V stored as computed: what int8 storage costs;
- keep-raw: every token's K/V kept (chunks see earlier ones), same retrieval: what compression
  costs; only up to `raw_max_frames` (its ingest grows with the square of the stream's length);
- uniform-180: the VideoLLaMA3 default, 180 frames sampled uniformly over the video,
  uncompressed, all of them in context (no retrieval).
Each needle is asked what appeared, its colour and when; answers are judged by
`needles.judge`. Retrieval recall@k counts questions whose evidence includes the needle's chunk.
"""

from __future__ import annotations

import json
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from longwatch.clients.client import LongWatchClient
from longwatch.model.config import ModelConfig
from longwatch.model.train.needles import (
    QUESTION_KINDS,
    NeedleVideo,
    Split,
    judge,
    make_needle_video,
    questions_for,
    seed_for,
)
from longwatch.model.train.synthetic import write_once

if TYPE_CHECKING:
    from longwatch.stream.settings import ServiceSettings

LENGTHS = (60, 300, 900, 1800, 3600)
DEPTHS = (0.0, 0.25, 0.5, 0.75, 1.0)
ROWS = ("longwatch", "longwatch-float", "keep-raw", "uniform-180")
# The service's K/V storage per row: the baselines and the float row keep K/V as computed.
ROW_KV_STORAGE = {
    "longwatch": "int8",
    "longwatch-float": "float",
    "keep-raw": "float",
    "uniform-180": "float",
}
UNIFORM_FRAMES = 180


@dataclass
class EvalPlan:
    lengths: tuple[int, ...] = LENGTHS
    depths: tuple[float, ...] = DEPTHS
    needles: int = 3
    rows: tuple[str, ...] = ROWS
    top_k: int = 4
    # The longwatch rows' --score-margin (None: the model card's); the raw rows use plain top-k.
    score_margin: float | None = None
    frames_per_chunk: int = 8
    max_tokens_per_frame: int | None = None  # None: the model card's, as the service ingests
    width: int = 56
    height: int = 56
    needle_px: tuple[int, int] | None = None  # the needle's side (None: the share the demo knows)
    raw_max_frames: int = 900  # keep-raw cells beyond this are skipped (reported as such)
    # "eval": the grid the demo model's recipe was checked on; "holdout": one nothing was tuned on.
    split: Split = "eval"

    def runs(self, row: str, length: int) -> bool:
        return row != "keep-raw" or length <= self.raw_max_frames

    def videos(self) -> Iterator[tuple[int, float, int, NeedleVideo]]:
        """(length, depth, n, video) for every cell; seeds of the plan's split, distinct per video."""
        index = 0
        for length in self.lengths:
            for depth in self.depths:
                for n in range(self.needles):
                    seed = seed_for(self.split, index)
                    video = make_needle_video(seed, length, depth, self.width, self.height, self.needle_px)
                    yield length, depth, n, video
                    index += 1


@dataclass
class Cell:
    correct: dict[str, list[bool]] = field(default_factory=lambda: defaultdict(list))
    recalled: list[bool] = field(default_factory=list)
    # Each wrong answer with what it should have said, so a report shows how answers fail
    # (a time a few seconds off, a wrong digit) and not only how often.
    misses: list[dict] = field(default_factory=list)
    # Per answer about a needle past the stream's first chunk: whether that chunk was among its
    # evidence anyway. Chance is about k in the stream's chunk count; far above it, retrieval has
    # learned that the opening holds the answer, and a user sees the stream's first seconds cited
    # for an event an hour later (docs/experiments.md).
    opening_cited: list[bool] = field(default_factory=list)

    def summary(self) -> dict:
        if not self.correct:
            return {"skipped": True}
        out = {k: sum(v) / len(v) for k, v in sorted(self.correct.items())}
        out["all"] = sum(sum(v) for v in self.correct.values()) / max(
            1, sum(len(v) for v in self.correct.values())
        )
        if self.recalled:
            out["recall@k"] = sum(self.recalled) / len(self.recalled)
        if self.opening_cited:
            out["opening_cited"] = sum(self.opening_cited) / len(self.opening_cited)
        out["misses"] = self.misses
        return out


def row_settings(row: str, base: ModelConfig, plan: EvalPlan, state_dir: Path) -> ServiceSettings:
    from longwatch.stream.settings import IngestConfig, LiveConfig, ServiceSettings

    mode = "raw" if row in ("keep-raw", "uniform-180") else "summary"
    tokens = {} if plan.max_tokens_per_frame is None else {"max_tokens_per_frame": plan.max_tokens_per_frame}
    model = ModelConfig(
        path=base.path,
        adapter=base.adapter,
        device=base.device,
        dtype=base.dtype,
        mode=mode,
        alpha=base.alpha,
    )
    return ServiceSettings(
        port=0,
        http_port=0,
        state_dir=state_dir,
        top_k=plan.top_k,
        score_margin=plan.score_margin if mode == "summary" else 0.0,
        max_new_tokens=12,
        kv_storage=ROW_KV_STORAGE[row],
        ingest=IngestConfig(fps=1.0, frames_per_chunk=plan.frames_per_chunk, **tokens),
        ingest_explicit=frozenset({"fps", "frames_per_chunk", *tokens}),
        live=LiveConfig(ice_addresses=("127.0.0.1",)),  # a private service: WebRTC (unused) on loopback
        model=model,
    )


@contextmanager
def running(settings: ServiceSettings) -> Iterator[LongWatchClient]:
    from longwatch.stream.server import LongWatchServer  # imports torch: only when evaluating

    with LongWatchServer(settings) as server, LongWatchClient(f"127.0.0.1:{server.port}") as client:
        client.wait_ready(timeout=30)
        yield client


def evaluate_video(
    client: LongWatchClient, row: str, video: NeedleVideo, path: Path, plan: EvalPlan, cell: Cell
) -> None:
    sid = f"needle-{video.seed}"
    fps = min(1.0, UNIFORM_FRAMES / video.seconds) if row == "uniform-180" else 0.0
    for _ in client.ingest_file(sid, path=str(path), fps=fps):
        pass
    # uniform-180 puts every sampled frame in context; the others retrieve top-k.
    top_k = min(64, -(-UNIFORM_FRAMES // plan.frames_per_chunk)) if row == "uniform-180" else plan.top_k
    needle = video.needle
    for kind, qa in questions_for(needle).items():
        result = client.ask(sid, qa.question, top_k=top_k, max_new_tokens=12)
        right = judge(kind, result.answer, needle)
        cell.correct[kind].append(right)
        if row != "uniform-180":
            cell.recalled.append(any(e.start_s <= needle.start_s < e.end_s for e in result.evidence))
            if needle.start_s >= plan.frames_per_chunk:  # past the first chunk: the grid samples 1 fps
                cell.opening_cited.append(any(e.start_s == 0.0 for e in result.evidence))
        if not right:
            miss = {
                "video": video.seed,
                "question": qa.question,
                "answer": result.answer,
                "expected": qa.answer,
                "needle_s": [needle.start_s, needle.start_s + needle.duration_s],
            }
            if row != "uniform-180":  # it has every chunk in context: no evidence was chosen
                miss["evidence_s"] = [[e.start_s, e.end_s] for e in result.evidence]
            cell.misses.append(miss)
    client.delete_stream(sid)


def run_needle_eval(
    base: ModelConfig, plan: EvalPlan, out_dir: Path, progress: Callable[[str], None] = print
) -> dict:
    """Run every row over the grid; writes needle_eval.json (and the heatmap) into out_dir."""
    out_dir.mkdir(parents=True, exist_ok=True)
    videos_dir = out_dir / "videos"
    videos_dir.mkdir(exist_ok=True)
    cells: dict[str, dict[tuple[int, float], Cell]] = {row: defaultdict(Cell) for row in plan.rows}
    timings: dict[str, float] = {}
    margins: dict[str, float | None] = {}
    for row in plan.rows:
        t0 = time.perf_counter()
        with tempfile.TemporaryDirectory(prefix="lw-eval-") as state:
            settings = row_settings(row, base, plan, Path(state))
            with running(settings) as client:
                for length, depth, n, video in plan.videos():
                    if not plan.runs(row, length):
                        continue
                    path = write_once(videos_dir / video.file_name, video.write)
                    evaluate_video(client, row, video, path, plan, cells[row][(length, depth)])
                    progress(f"{row}: {length} frames, depth {depth:.0%}, needle {n + 1}/{plan.needles}")
            margins[row] = settings.score_margin  # as served: the card's where the plan set none
        timings[row] = time.perf_counter() - t0
    report = {
        "plan": {
            "lengths": list(plan.lengths),
            "depths": list(plan.depths),
            "needles": plan.needles,
            "top_k": plan.top_k,
            "score_margin": margins,
            "raw_max_frames": plan.raw_max_frames,
            "split": plan.split,
            "frame_size": [plan.width, plan.height],
            "needle_px": None if plan.needle_px is None else list(plan.needle_px),
        },
        "question_kinds": list(QUESTION_KINDS),
        "rows": {
            row: [
                {"length": n, "depth": d, **cells[row][(n, d)].summary()}
                for n in plan.lengths
                for d in plan.depths
            ]
            for row in plan.rows
        },
        "seconds": timings,
    }
    (out_dir / "needle_eval.json").write_text(json.dumps(report, indent=2) + "\n")
    write_heatmap(report, out_dir / "needle_eval.png")
    return report


def write_heatmap(report: dict, path: Path) -> Path:
    """One panel per row: accuracy over all question kinds per (haystack length, depth)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    lengths, depths = report["plan"]["lengths"], report["plan"]["depths"]
    rows = list(report["rows"])
    fig, axes = plt.subplots(1, len(rows), figsize=(4.2 * len(rows), 3.6), squeeze=False)
    for ax, row in zip(axes[0], rows, strict=True):
        grid = np.zeros((len(lengths), len(depths)))
        grid[:] = np.nan  # skipped cells stay blank
        for entry in report["rows"][row]:
            if not entry.get("skipped"):
                grid[lengths.index(entry["length"]), depths.index(entry["depth"])] = entry["all"]
        ax.imshow(grid, vmin=0, vmax=1, cmap="RdYlGn", aspect="auto")
        ax.set_xticks(range(len(depths)), [f"{d:.0%}" for d in depths])
        ax.set_yticks(range(len(lengths)), [str(n) for n in lengths])
        ax.set_xlabel("needle depth")
        ax.set_ylabel("haystack frames")
        ax.set_title(row)
        for i in range(len(lengths)):
            for j in range(len(depths)):
                label = "skipped" if np.isnan(grid[i, j]) else f"{grid[i, j]:.0%}"
                ax.text(j, i, label, ha="center", va="center", fontsize=7 if np.isnan(grid[i, j]) else 8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def format_report(report: dict) -> str:
    """A readable table: per row, accuracy per question kind and recall@k, averaged over the grid."""
    lines = ["row              what  colour  when   all  recall@k  opening  cells"]
    for row, all_entries in report["rows"].items():
        entries = [e for e in all_entries if not e.get("skipped")]
        if not entries:
            lines.append(f"{row:<15}  (skipped)")
            continue
        mean = {
            k: sum(e.get(k, 0.0) for e in entries) / len(entries)
            for k in ("what", "colour", "when", "all", "recall@k")
        }
        recall = f"{mean['recall@k']:8.1%}" if any("recall@k" in e for e in entries) else "       -"
        cited = [e["opening_cited"] for e in entries if "opening_cited" in e]
        opening = f"{sum(cited) / len(cited):7.1%}" if cited else "      -"
        lines.append(
            f"{row:<15} {mean['what']:5.1%} {mean['colour']:6.1%} {mean['when']:5.1%} {mean['all']:5.1%} "
            f"{recall}  {opening}  {len(entries)}/{len(all_entries)}"
        )
    return "\n".join(lines)
