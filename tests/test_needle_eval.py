"""`longwatch eval needle` end to end on a tiny grid: real ingest into Redis, real Ask over gRPC."""

from __future__ import annotations

import json
from pathlib import Path

from longwatch.clients import cli
from longwatch.model.needles import make_needle_video, seed_for


def test_needle_eval_runs_every_row_and_writes_report(tmp_path: Path, capsys) -> None:  # noqa: ANN001
    out = tmp_path / "eval"
    code = cli.main(
        [
            "eval",
            "needle",
            "--out",
            str(out),
            "--lengths",
            "60",
            "--depths",
            "0,100",
            "--needles",
            "1",
            "--top-k",
            "2",
        ]
    )
    assert code == 0
    report = json.loads((out / "needle_eval.json").read_text())
    assert set(report["rows"]) == {"longwatch", "keep-raw", "uniform-180"}
    for row, cells in report["rows"].items():
        assert [(c["length"], c["depth"]) for c in cells] == [(60, 0.0), (60, 1.0)]
        for c in cells:
            assert {"what", "colour", "when", "all"} <= set(c) and 0.0 <= c["all"] <= 1.0
            assert ("recall@k" in c) == (row != "uniform-180")
    assert (out / "needle_eval.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    table = capsys.readouterr().out
    assert "longwatch" in table and "recall@k" in table
    # Evaluation videos come from the evaluation split only.
    videos = sorted(p.name for p in (out / "videos").iterdir())
    assert videos == sorted(
        f"needle-{make_needle_video(seed_for('eval', i), 60, d).seed}-60s.mp4"
        for i, d in enumerate((0.0, 1.0))
    )
