"""What every benchmark shares: the machine it ran on, one JSON line per result, a readable table.

A benchmark module exposes `run(quick: bool) -> list[dict]` (rows of one flat dict each, with a
"bench" key naming it) and a `main()` for running it alone. `quick` shrinks the workload to a smoke
run of a few seconds (CI runs those so the scripts cannot rot); figures come from full runs.
"""

from __future__ import annotations

import json
import os
import platform
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path


def machine() -> dict:
    """The machine a figure was measured on, recorded beside it."""
    import torch

    info = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cpus": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "cpu": _cpu_model(),
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "load_avg_1m": round(os.getloadavg()[0], 2),
    }
    return info


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def emit(rows: Iterable[dict], stream=sys.stdout) -> list[dict]:
    """Print each row as one JSON line (prefixed `BENCH `), then all rows as a table."""
    rows = list(rows)
    for row in rows:
        print("BENCH " + json.dumps(row, sort_keys=False), file=stream, flush=True)
    print(table(rows), file=stream, flush=True)
    return rows


def table(rows: list[dict]) -> str:
    if not rows:
        return "(no rows)"
    cols: list[str] = []
    for row in rows:
        cols += [k for k in row if k not in cols]
    cells = [[_cell(row.get(c, "")) for c in cols] for row in rows]
    widths = [max(len(c), *(len(r[i]) for r in cells)) for i, c in enumerate(cols)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(cols, widths, strict=True))]
    lines.append("  ".join("-" * w for w in widths))
    lines += ["  ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)) for r in cells]
    return "\n".join(lines)


def _cell(v: object) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100) of a non-empty list."""
    ordered = sorted(values)
    rank = max(1, min(len(ordered), round(q / 100 * len(ordered) + 0.5)))
    return ordered[rank - 1]


@contextmanager
def timer() -> Iterator[dict]:
    """`with timer() as t: ...` then t["s"] holds the wall seconds."""
    t: dict = {}
    start = time.perf_counter()
    try:
        yield t
    finally:
        t["s"] = time.perf_counter() - start


def bench_main(run, description: str, add_arguments=None) -> None:
    """The command line every benchmark shares: `--quick`, `--json-out FILE`, plus its own flags.

    `run(quick, **flags)` returns the rows; they are printed (JSON lines and a table) and, with
    --json-out, saved for bench/run_all.py.
    """
    import argparse

    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--quick", action="store_true", help="a smoke run of a few seconds, not figures")
    add_json_out(parser)
    if add_arguments:
        add_arguments(parser)
    args = vars(parser.parse_args())
    quick, out = args.pop("quick"), args.pop("json_out")
    emit_and_save(run(quick, **args), out)


def add_json_out(parser) -> None:
    parser.add_argument("--json-out", help="also write the rows to this file as JSON (bench/run_all.py)")


def emit_and_save(rows: Iterable[dict], json_out: str | None) -> list[dict]:
    """`emit` the rows, and write them to `json_out` as JSON when given."""
    rows = emit(rows)
    if json_out:
        with open(json_out, "w") as f:
            json.dump(rows, f)
    return rows


def model_placement() -> dict[str, str]:
    """Where benchmarks that load a model run it: LONGWATCH_DEVICE (cpu), LONGWATCH_DTYPE (float32)
    and LONGWATCH_ATTN (auto: flash_attention_2 on CUDA where flash-attn is installed, else sdpa).
    """
    return {
        "device": os.environ.get("LONGWATCH_DEVICE", "cpu"),
        "dtype": os.environ.get("LONGWATCH_DTYPE", "float32"),
        "attn_implementation": os.environ.get("LONGWATCH_ATTN", "auto"),
    }


CACHE_DIR = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "longwatch-bench"


def cached_file(name: str, write: Callable[[Path], None], cache_dir: Path | None = None) -> Path:
    """`cache_dir / name` (default CACHE_DIR), made by `write(path)` on first use.

    Written beside its final name and renamed, so an interrupted run never leaves half a file.
    """
    cache_dir = CACHE_DIR if cache_dir is None else cache_dir
    path = cache_dir / name
    if path.is_file():
        return path
    cache_dir.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f"{path.stem}.{os.getpid()}.part{path.suffix}")
    try:
        write(partial)
        partial.rename(path)
    finally:
        partial.unlink(missing_ok=True)
    return path


def load_model_folder(model: str | None):  # noqa: ANN201 - a LoadedModel (imported when called)
    """A demo-layout model folder (base/, and adapter/ where it has one) loaded; None: the built-in model."""
    from longwatch.model.config import ModelConfig
    from longwatch.model.loading import DEMO_MODEL_DIR, load_model

    folder = Path(model) if model else DEMO_MODEL_DIR
    adapter = folder / "adapter"
    return load_model(ModelConfig(path=folder / "base", adapter=adapter if adapter.is_dir() else None))
