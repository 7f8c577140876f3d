"""bench/train_scale.py's smoke run: summary training on the 2B's widths steps, and says what it cost."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))

import train_scale  # noqa: E402


def test_train_scale_quick_row_is_sane() -> None:
    (row,) = train_scale.run(quick=True, device="cpu", dtype="bfloat16", checkpointing=True)
    assert row["shape"] == "2b" and row["layers"] == "1 text, 1 vision"
    assert row["tokens_per_frame"] == 128  # the release's own budget, from its video settings
    assert row["trainable_params_m"] > 3  # one layer's q/k/v copies at width 1536, and <vs>
    assert row["s_per_step"] > 0 and row["peak_rss_gib"] > 0 and row["peak_gpu_gib"] is None
