"""bench/kv_quant.py's smoke run: the stored int8 format is the per-token round trip, and drift is small."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))

import kv_quant  # noqa: E402


def test_kv_quant_quick_rows_are_sane() -> None:
    try:
        kv_quant.real_clip(kv_quant.CLIPS[0])
    except FileNotFoundError as e:
        pytest.skip(str(e))
    rows = kv_quant.run(quick=True)
    float_row, *int8_rows = rows
    assert float_row["scheme"].startswith("float") and len(int8_rows) == len(kv_quant.SCHEMES)
    for row in int8_rows:
        assert row["kv_bytes_per_token"] < float_row["kv_bytes_per_token"] / 3  # float32 -> int8 + scales
        assert row["questions"] == 6
        # Relative to the logits' scale, which is the model's: int8 moves none by 2% of the largest.
        assert 0 <= row["max_abs_logit_diff"] < 0.02 * row["max_abs_logit"]
        assert 0 <= row["greedy_answer_agreement"] <= row["first_token_agreement"] <= 1
