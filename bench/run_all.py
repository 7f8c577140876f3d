"""Run every benchmark, print each one's JSON lines and table, and save all rows with the machine.

    python bench/run_all.py                  # full runs (about 15-20 minutes on 2 cores)
    python bench/run_all.py --quick          # smoke runs of a few seconds each
    python bench/run_all.py --only diffp storage --out bench/results/cpu.json
    python bench/run_all.py --reliability --out bench/results/reliability.json   # about 40 minutes
    python bench/run_all.py --scaling        # Redis Cluster commits, replicas following each other
    python bench/run_all.py --long           # 10-hour streams and watches (about 30 minutes)

Each benchmark runs in its own process (`python bench/<name>.py --json-out ...`), so one's threads,
caches and memory cannot colour another's figures. LONGWATCH_DEVICE / LONGWATCH_DTYPE pick the
device and dtype of the benchmarks that load the model (see bench/cuda.sh).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

from common import machine

HERE = Path(__file__).resolve().parent
# In the order of the data path: pruning, archive ingest, live ingest, storage, asking.
BENCHMARKS = (
    "diffp",
    "archive_ingest",
    "live_ingest",
    "live_streams",
    "storage",
    "tier",
    "kv_quant",
    "ask_latency",
    "ask_across",
)
# Faults, bad input and load (BENCHMARKS.md, Reliability): crashes, fuzzing, Asks under load, a soak.
RELIABILITY = ("crash", "fuzz", "load", "soak")
# Scaling out (BENCHMARKS.md, Scaling out): a local Redis Cluster, replicas on one Redis, Ray.
SCALING = ("cluster", "replicas", "ray_ingest", "priority", "batching")
# Long streams (BENCHMARKS.md, sections 10-11): a 10-hour live stream, watches on live needle streams.
LONG = ("ten_hours", "watch_live")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smoke runs (seconds each), not figures")
    parser.add_argument(
        "--only", nargs="+", choices=BENCHMARKS + RELIABILITY + SCALING + LONG, help="run just these"
    )
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--reliability", action="store_true", help="run the reliability benchmarks instead")
    group.add_argument("--scaling", action="store_true", help="run the scaling-out benchmarks instead")
    group.add_argument("--long", action="store_true", help="run the long-stream benchmarks instead")
    parser.add_argument("--out", type=Path, help="write {machine, rows} here as JSON")
    args = parser.parse_args()
    rows: list[dict] = []
    failed: list[str] = []
    chosen = (
        RELIABILITY if args.reliability else SCALING if args.scaling else LONG if args.long else BENCHMARKS
    )
    for name in args.only or chosen:
        print(f"\n== {name}", flush=True)
        out = HERE / "results" / f".{name}.rows.json"
        out.parent.mkdir(exist_ok=True)
        cmd = [sys.executable, str(HERE / f"{name}.py"), "--json-out", str(out)]
        t0 = time.perf_counter()
        code = subprocess.call(cmd + (["--quick"] if args.quick else []))
        print(f"== {name}: exit {code} in {time.perf_counter() - t0:.0f} s", flush=True)
        if code != 0 or not out.exists():
            failed.append(name)
            continue
        rows += json.loads(out.read_text())
        out.unlink()
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps({"machine": machine(), "quick": args.quick, "rows": rows}, indent=1))
        print(f"\nrows written to {args.out}")
    if failed:
        print(f"failed: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
