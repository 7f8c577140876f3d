"""`longwatch eval needle` end to end on a tiny grid: real ingest into Redis, real Ask over gRPC."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from longwatch.clients import main
from longwatch.model.train.needles import make_needle_video, seed_for


def test_needle_eval_runs_every_row_and_writes_report(tmp_path: Path, capsys) -> None:  # noqa: ANN001
    out = tmp_path / "eval"
    code = main.main(
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
    assert set(report["rows"]) == {"longwatch", "longwatch-float", "keep-raw", "uniform-180"}
    for row, cells in report["rows"].items():
        assert [(c["length"], c["depth"]) for c in cells] == [(60, 0.0), (60, 1.0)]
        for c in cells:
            assert {"what", "colour", "when", "all"} <= set(c) and 0.0 <= c["all"] <= 1.0
            assert ("recall@k" in c) == (row != "uniform-180")
            # Whether the stream's first chunk was cited is counted for needles past it only
            # (depth 100%), by the rows that retrieve.
            assert ("opening_cited" in c) == (row != "uniform-180" and c["depth"] == 1.0)
            # Every wrong answer is kept beside what was expected, so failures can be read.
            wrong = sum(round(1 - c[k]) for k in ("what", "colour", "when"))  # one question per kind
            assert len(c["misses"]) == wrong
            for m in c["misses"]:
                assert m["answer"] != m["expected"] and m["question"].endswith("?")
                assert ("evidence_s" in m) == (row != "uniform-180")  # only retrieval chooses evidence
    assert (out / "needle_eval.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    table = capsys.readouterr().out
    assert "longwatch" in table and "recall@k" in table and "opening" in table
    # Evaluation videos come from the evaluation split only.
    videos = sorted(p.name for p in (out / "videos").iterdir())
    assert videos == sorted(
        make_needle_video(seed_for("eval", i), 60, d).file_name for i, d in enumerate((0.0, 1.0))
    )


def test_the_holdout_split_draws_other_videos_than_the_evaluation_split(tmp_path: Path) -> None:
    from longwatch.model.eval.needle_grid import EvalPlan
    from longwatch.model.train.needles import split_of

    plan = EvalPlan(lengths=(60, 300), depths=(0.0, 0.5), needles=2)
    held = EvalPlan(lengths=(60, 300), depths=(0.0, 0.5), needles=2, split="holdout")
    eval_seeds = {v.seed for *_, v in plan.videos()}
    held_seeds = {v.seed for *_, v in held.videos()}
    assert len(held_seeds) == 8 and not eval_seeds & held_seeds
    assert {split_of(s) for s in held_seeds} == {"holdout"} and {split_of(s) for s in eval_seeds} == {"eval"}


def test_keep_raw_cells_past_its_limit_are_reported_skipped() -> None:
    from longwatch.model.eval.needle_grid import Cell, EvalPlan, format_report

    plan = EvalPlan(lengths=(60, 3600), raw_max_frames=900)
    assert plan.runs("keep-raw", 60) and not plan.runs("keep-raw", 3600) and plan.runs("longwatch", 3600)
    ran = Cell()
    ran.correct["colour"] += [True, False]
    report = {
        "rows": {
            "keep-raw": [
                {"length": 60, "depth": 0.0, **ran.summary()},
                {"length": 3600, "depth": 0.0, **Cell().summary()},
            ]
        }
    }
    assert report["rows"]["keep-raw"][1] == {"length": 3600, "depth": 0.0, "skipped": True}
    line = format_report(report).splitlines()[1]
    assert "50.0%" in line and line.endswith("1/2")  # the skipped cell is not averaged in as 0%


def test_the_report_averages_how_often_the_opening_is_cited_over_the_cells_that_count_it() -> None:
    from longwatch.model.eval.needle_grid import Cell, format_report

    at_start, later = Cell(), Cell()
    at_start.correct["what"].append(True)  # a needle in the first chunk: nothing to count
    later.correct["what"] += [True, True]
    later.opening_cited += [True, False, False, False]
    cells = [{"length": 60, "depth": d, **c.summary()} for d, c in ((0.0, at_start), (1.0, later))]
    assert "opening_cited" not in cells[0] and cells[1]["opening_cited"] == 0.25
    header, line = format_report({"rows": {"longwatch": cells}}).splitlines()
    assert header.split()[-2] == "opening" and line.split()[-2] == "25.0%"


@pytest.mark.parametrize(
    "extra",
    [
        [],
        ["--encoded"],
        ["--encoded", "10"],
        ["--rollover"],
        ["--turnover"],
        ["--stream-start"],
        ["--straddle"],
    ],
    ids=["rendered", "encoded", "encoded-10fps", "rollover", "turnover", "stream-start", "straddle"],
)
def test_eval_clips_prints_accuracy_of_the_shipped_model(capsys, extra: list[str]) -> None:  # noqa: ANN001
    args = ["eval", "clips", "--clips", "12", "--chunks", "3", "--top-k", "1", "--haystacks", "60,3600"]
    assert main.main(args + extra) == 0
    header, *rows = capsys.readouterr().out.strip().splitlines()[-3:]
    columns = ["what", "colour", "when", "did-yes", "did-no", "recall@1"]
    assert header.split() == ["haystack", "chunks", "clips", *columns]
    assert [row.split()[:3] for row in rows] == [["60s", "3", "12"], ["3600s", "3", "12"]]
    for row in rows:
        colour, recall = row.split()[4], row.split()[8]
        # The shipped demo model reads colours, and its retrieval finds the needle's chunk among
        # three, from rendered frames, from the same frames through a codec, and with the needle
        # where the hundreds digit of its time turns over (or just before it, shown across it), at
        # the stream's start, or across two chunks (recall: either of them retrieved).
        assert float(colour.rstrip("%")) >= 75 and float(recall.rstrip("%")) >= 75


def test_eval_clips_asks_only_the_kinds_given(capsys) -> None:  # noqa: ANN001
    assert main.main(["eval", "clips", "--clips", "3", "--chunks", "2", "--kinds", "when"]) == 0
    what, colour, when = capsys.readouterr().out.strip().splitlines()[-1].split()[3:6]
    assert (what, colour) == ("-", "-") and when.endswith("%")
    assert main.main(["eval", "clips", "--kinds", "when,weather"]) == 2
    assert "unknown question kinds ['weather']" in capsys.readouterr().err


def test_eval_clips_with_a_zero_score_margin_reads_the_best_chunk_alone(capsys) -> None:  # noqa: ANN001
    """As Ask does: of the top-k, only chunks within the margin of the best are read."""
    args = ["eval", "clips", "--clips", "6", "--chunks", "3", "--haystacks", "300"]
    assert main.main([*args, "--top-k", "1"]) == 0
    top1 = capsys.readouterr().out.strip().splitlines()[-1]
    assert main.main([*args, "--top-k", "3", "--score-margin", "0"]) == 0
    assert capsys.readouterr().out.strip().splitlines()[-1] == top1


def test_eval_margins_tabulates_what_each_margin_keeps_and_drops(capsys) -> None:  # noqa: ANN001
    assert main.main(["eval", "margins", "--clips", "2", "--margins", "0,5,1000"]) == 0
    out = capsys.readouterr().out.strip().splitlines()
    assert out[0].startswith("6 questions on 2 training-split clips")  # three questions a clip
    assert out[1].startswith("needle chunk's lead over the best other: median")
    rows = {line.split()[0]: line.split()[1:] for line in out[-3:]}
    assert list(rows) == ["0", "5", "1000"]
    # A margin wider than any lead keeps a distractor beside every needle and drops none.
    assert rows["1000"] == ["100.0%", "0.0%"]
    assert main.main(["eval", "margins", "--margins", "five"]) == 2
    assert "--margins wants numbers" in capsys.readouterr().err


def test_eval_clips_takes_the_holdout_split_and_refuses_training_seeds(capsys) -> None:  # noqa: ANN001
    assert main.main(["eval", "clips", "--clips", "2", "--chunks", "2", "--split", "holdout"]) == 0
    with pytest.raises(SystemExit) as exited:
        main.main(["eval", "clips", "--split", "train"])
    assert exited.value.code == 2


def test_needles_take_a_size_and_frames_a_size_and_keep_what_they_are() -> None:
    from longwatch.model.train.needles import make_needle_video

    default = make_needle_video(seed_for("eval", 5), 300, 0.5)
    small = make_needle_video(seed_for("eval", 5), 300, 0.5, 320, 180, needle_px=(16, 16))
    assert 30 <= default.needle.size <= 44 and small.needle.size == 16
    same = ("shape", "colour", "digit", "start_s", "duration_s")
    assert [getattr(small.needle, k) for k in same] == [getattr(default.needle, k) for k in same]
    assert small.file_name != default.file_name and "320x180" in small.file_name and "16px" in small.file_name
    frame = small.footage().frame_at(int(small.needle.start_s))
    assert frame.shape == (180, 320, 3)


def test_eval_clips_at_another_frame_size_with_small_needles(capsys) -> None:  # noqa: ANN001
    args = [
        "eval",
        "clips",
        "--clips",
        "2",
        "--chunks",
        "2",
        "--frame-size",
        "112x84",
        "--needle-px",
        "12-20",
    ]
    assert main.main(args) == 0
    assert capsys.readouterr().out.strip().splitlines()[-1].split()[:3] == ["3600s", "2", "2"]
    for bad in ("2", "20-12", "big"):
        with pytest.raises(SystemExit):
            main.main(["eval", "clips", "--needle-px", bad])
