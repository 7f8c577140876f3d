"""Charts for BENCHMARKS.md from a results file written by bench/run_all.py.

python bench/charts.py bench/results/cpu.json     # writes bench/results/*.png beside it
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def _finish(fig, ax, path: Path) -> Path:
    """Legend, layout, write the PNG, free the figure: how every chart here ends."""
    import matplotlib.pyplot as plt

    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def ask_latency_chart(rows: list[dict], path: Path) -> Path | None:
    """Time to first token (p50, bar to p95) against stream length, longwatch beside keep-raw."""
    import matplotlib.pyplot as plt

    rows = [r for r in rows if r.get("bench") == "ask_latency" and "ttft_p50_ms" in r]
    if not rows:
        return None
    fig, ax = plt.subplots(figsize=(6, 3.6))
    for system in sorted({r["system"] for r in rows}):
        mine = sorted((r for r in rows if r["system"] == system), key=lambda r: r["stream_min"])
        x = [r["stream_min"] for r in mine]
        p50 = [r["ttft_p50_ms"] for r in mine]
        p95 = [r["ttft_p95_ms"] for r in mine]
        ax.errorbar(
            x,
            p50,
            yerr=[[0] * len(p50), [b - a for a, b in zip(p50, p95, strict=True)]],
            marker="o",
            capsize=3,
            label=system,
        )
    ax.axhline(100, color="grey", linestyle=":", label="goal: 100 ms")
    ax.set(xscale="log", yscale="log", xlabel="stream length", ylabel="time to first token (ms)")
    lengths = sorted({r["stream_min"] for r in rows})
    ax.set_xticks(lengths, [f"{m // 60} h" if m % 60 == 0 else f"{m} min" for m in lengths])
    ax.minorticks_off()
    ax.set_title("Ask: time to first token, p50 (bar to p95)")
    return _finish(fig, ax, path)


def storage_chart(rows: list[dict], path: Path) -> Path | None:
    """GB per stream-hour for the 2B and 7B shapes (footage, int8 K/V), both modes, against the anchors."""
    import matplotlib.pyplot as plt

    bars = [
        (r["model"].replace(" (anchor)", ""), r["gb_per_stream_hour"], "#999")
        for r in rows
        if r.get("bench") == "storage" and "anchor" in r.get("model", "")
    ]
    bars += [
        (f"longwatch {r['model']}", r["gb_per_stream_hour"], "#2a5" if "summary" in r["model"] else "#a72")
        for r in rows
        if r.get("bench") == "storage"
        and r.get("model", "").startswith(("2b shape", "7b shape"))
        and r.get("video") == "footage"
        and r.get("kv_storage") == "int8"
    ]
    if not bars:
        return None
    fig, ax = plt.subplots(figsize=(6.5, 3.4))
    names, values, colours = zip(*bars, strict=True)
    ax.barh(names, values, color=colours)
    for i, v in enumerate(values):
        ax.text(v, i, f" {v:.2f}", va="center", fontsize=8)
    ax.set(xscale="log", xlabel="GB per stream-hour at 1 fps, int8 K/V (log)")
    ax.set_title("Stored per stream-hour (2B, 7B shapes)")
    return _finish(fig, ax, path)


def ingest_stages_chart(rows: list[dict], path: Path) -> Path | None:
    """Where an hour of archive ingest spends its time, stage by stage."""
    import matplotlib.pyplot as plt

    row = next((r for r in rows if r.get("bench") == "archive_ingest"), None)
    if row is None:
        return None
    stages = ["decode", "resize", "diffp", "vision", "compression", "storage"]
    values = [row.get(f"{s}_s", 0.0) for s in stages]
    fig, ax = plt.subplots(figsize=(6, 2.8))
    ax.barh(stages[::-1], values[::-1], color="#47a")
    ax.axvline(row["wall_s"], color="grey", linestyle=":", label=f"wall: {row['wall_s']:.0f} s")
    ax.set(xlabel="seconds busy (decode runs on its own thread, beside the rest)")
    ax.set_title(f"Archive ingest, {row['video']}: {row['realtime_x']:.0f}x real time")
    return _finish(fig, ax, path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("results", type=Path, help="a JSON file from bench/run_all.py --out")
    args = parser.parse_args()
    rows = json.loads(args.results.read_text())["rows"]
    out = args.results.parent
    for make, name in (
        (ask_latency_chart, "ask_latency.png"),
        (storage_chart, "storage.png"),
        (ingest_stages_chart, "archive_ingest.png"),
    ):
        written = make(rows, out / name)
        print(f"wrote {written}" if written else f"no rows for {name}")


if __name__ == "__main__":
    main()
