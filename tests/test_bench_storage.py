"""bench/storage.py's smoke run: bytes read back from Redis, int8 below float, the shrink check holds."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))

import storage  # noqa: E402


def test_storage_quick_rows_are_sane() -> None:
    try:
        storage.real_clip("bikes.mp4")
    except FileNotFoundError as e:
        pytest.skip(str(e))
    rows = storage.run(quick=True)
    by = {(r["model"], r.get("video"), r.get("kv_storage")): r for r in rows}
    shapes = [f"{size} shape, {mode}" for size in ("2b", "7b") for mode in ("summary tokens", "keep-raw")]
    for model in ("demo", *shapes):
        for video in ("footage", "bikes.mp4"):
            f, q = by[(model, video, "float")], by[(model, video, "int8")]
            assert f["chunks"] == q["chunks"] == 2  # 16 s and 10 s at 1 fps, 8 frames a chunk
            assert 0 < q["gb_per_stream_hour"] < f["gb_per_stream_hour"]
            assert f["stream_memory_usage"] >= f["stream_value_bytes"] * 0.9
            assert f["chunk_bytes_min"] <= f["chunk_bytes_mean"] <= f["chunk_bytes_max"]
    f7, q7 = (
        by[("7b shape, summary tokens", "footage", "float")],
        by[("7b shape, summary tokens", "footage", "int8")],
    )
    assert f7["vector_dim"] == 9 * 4 * 128  # middle third of 28 layers x 4 KV heads x head_dim 128
    assert q7["chunk_bytes_mean"] < 0.55 * f7["chunk_bytes_mean"]  # int8 codes + small scales vs bf16
    q2 = by[("2b shape, summary tokens", "footage", "int8")]
    assert 0.4 < q2["chunk_bytes_mean"] / q7["chunk_bytes_mean"] < 0.6  # half the KV heads
    raw7 = by[("7b shape, keep-raw", "footage", "int8")]
    assert raw7["chunk_bytes_mean"] > 10 * q7["chunk_bytes_mean"]  # every token, not one in 16
    check = next(r for r in rows if r["model"].startswith("shrink check"))
    assert check["chunk_bytes_identical"] is True
