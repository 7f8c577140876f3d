"""bench/yes_no_scores.py and bench/verdict_on_words.py in their quick forms: rows that add up."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))

import verdict_on_words  # noqa: E402
import yes_no_scores  # noqa: E402

from longwatch.model.config import ModelConfig  # noqa: E402
from longwatch.model.train.clips import corpus  # noqa: E402
from longwatch.model.train.needles import YES_NO_CASES  # noqa: E402
from longwatch.model.train.vocab import extend_vocabulary  # noqa: E402

DEMO = Path(__file__).resolve().parents[1] / "model" / "demo"


def test_each_needle_clip_is_asked_yes_and_no_and_the_scores_are_summed_up() -> None:
    (row,) = yes_no_scores.run(quick=True, model=None, small=True, clips=4)
    assert row["needles"] == "12-20 px varied"
    # A clip with a needle asks about it and about something else; one without asks one question.
    assert row["yes: n"] == row["no, another needle: n"] >= 1
    assert row["yes: n"] + row["no, no needle: n"] == 4
    for case in ("yes", "no, another needle"):
        assert isinstance(row[f"{case}: median"], float)


def test_a_model_without_the_words_of_a_described_answer_is_refused_in_one_line() -> None:
    with pytest.raises(SystemExit, match="--yes-no-described"):
        verdict_on_words.run(True, None, None, 2, 1, 1e-3, 4, 0, 1)


def test_verdict_rows_report_every_case_of_the_fixed_examples(tmp_path: Path) -> None:
    for part in ("base", "adapter"):
        shutil.copytree(DEMO / part, tmp_path / part)
    extend_vocabulary(tmp_path / "base", corpus(ModelConfig().system_prompt), tmp_path / "adapter")
    for fresh in (None, "2x64"):
        rows = verdict_on_words.run(True, str(tmp_path), fresh, 2, 1, 1e-3, 8, 0, 1)
        assert [r["step"] for r in rows] == [0, 10, 20]
        for row in rows:
            assert all(0.0 <= row[case] <= 100.0 for case in YES_NO_CASES)
        # The fixed examples hold every case (a case with none would read 0% and mean nothing).
        counts = {case: 0 for case in YES_NO_CASES}
        for _, _, case in verdict_on_words.fixed_examples():
            counts[case] += 1
        assert min(counts.values()) >= 15
