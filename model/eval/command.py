"""`longwatch eval` and `longwatch demo`: their flags, and handlers that import the model only when they run."""

from __future__ import annotations

import argparse
from pathlib import Path

from longwatch.clients.cli import fail, parse_size
from longwatch.model.train.command import needle_px
from longwatch.stream.settings import add_service_arguments


def add_demo(sub: argparse.ArgumentParser) -> None:
    sub.set_defaults(handler=_demo)
    add_service_arguments(sub)


def _demo(args: argparse.Namespace) -> int:
    from longwatch.model.eval.demo import run_demo  # starts a server: imports torch
    from longwatch.stream.server import StartError

    try:
        return int(run_demo(args))
    except StartError as exc:
        return fail(f"cannot start the demo's service: {exc}")


def add_eval(sub: argparse.ArgumentParser) -> None:
    sub.set_defaults(handler=_eval)
    sub.add_argument(
        "suite",
        choices=["needle", "clips", "margins"],
        help="needle: the V-NIAH-style grid through the real service; clips: a quick in-process check; "
        "margins: how far the needle's chunk scores above the rest on hard training-split clips (what "
        "a --score-margin keeps and drops)",
    )
    sub.add_argument("--model", type=Path, help="VideoLLaMA3 checkpoint folder (default: the built-in model)")
    sub.add_argument("--adapter", type=Path, help="summary-token adapter folder")
    sub.add_argument(
        "--out", type=Path, default=Path("needle-eval"), help="folder for the JSON, heatmap and videos"
    )
    sub.add_argument("--lengths", default="60,300,900,1800,3600", help="haystack lengths in sampled frames")
    sub.add_argument("--depths", default="0,25,50,75,100", help="needle depths in percent")
    sub.add_argument("--needles", type=int, default=3, help="needles per cell")
    sub.add_argument("--rows", default="longwatch,longwatch-float,keep-raw,uniform-180")
    sub.add_argument("--top-k", type=int, default=4)
    sub.add_argument(
        "--score-margin",
        type=float,
        help="needle: the longwatch rows' --score-margin (retrieved chunks this far below the best left out; "
        "default: the model card's); clips: the same on each clip's top-k (default: none, plain top-k)",
    )
    sub.add_argument(
        "--margins", default="1,2,3,5,10,15", help="margins: the score margins whose effect is tabulated"
    )
    sub.add_argument(
        "--clips",
        type=int,
        default=120,
        help="clips: evaluation clips per chunk count; margins: clips scored",
    )
    sub.add_argument("--chunks", default="6,16", help="clips: chunks per clip, one run per count")
    sub.add_argument(
        "--haystacks",
        default="3600",
        help="clips: seconds of haystack the clips are cut from, one run per length (sets the digits of a time)",
    )
    sub.add_argument(
        "--kinds",
        default="what,colour,when",
        help="clips: question kinds asked, one per clip (what, colour, when; did: yes/no, as a watch asks)",
    )
    sub.add_argument(
        "--rendering",
        choices=["demo", "varied", "heldout"],
        default="demo",
        help="clips: how needles are drawn: demo (one font, filled, pure colours), varied (what training "
        "draws with --rendering varied), heldout (a font and darker shades no training run draws)",
    )
    sub.add_argument(
        "--encoded",
        type=float,
        nargs="?",
        const=1.0,
        metavar="FPS",
        help="clips: the same clips with the needle's chunk sampled from an mp4 of footage at FPS "
        "(default 1: every frame sampled, as in the needle grid's videos; 10: as from a camera)",
    )
    sub.add_argument(
        "--rollover",
        action="store_true",
        help="clips: every needle in a chunk where the time's hundreds digit turns over (a hard case for when)",
    )
    sub.add_argument(
        "--turnover",
        action="store_true",
        help="clips: every needle starts 1-2 s before the time's hundreds digit turns over and is still "
        "shown when it has (as the needle grid's depth 75%% of an hour, 2698-2701 s)",
    )
    sub.add_argument(
        "--stream-start",
        action="store_true",
        help="clips: every needle in the stream's first chunk (the needle grid's depth 0)",
    )
    sub.add_argument(
        "--straddle",
        action="store_true",
        help="clips: every needle runs from its chunk into the next, both in the clip",
    )
    sub.add_argument(
        "--frame-size",
        type=parse_size,
        default=(56, 56),
        metavar="WxH",
        help="needle, clips: the footage's frame size (default 56x56, the demo model's); a real model "
        "is evaluated at its own, e.g. 640x360",
    )
    sub.add_argument(
        "--needle-px",
        type=needle_px,
        metavar="N or LO-HI",
        help="needle, clips: the needle's side in pixels (default: 55-80%% of the frame's shorter side, "
        "what the demo model trained on; small needles, e.g. 12-20, are what real footage holds)",
    )
    sub.add_argument(
        "--max-tokens-per-frame",
        type=int,
        metavar="N",
        help="needle, clips: visual tokens per frame (default: the model's own, from its card or video settings)",
    )
    sub.add_argument(
        "--split",
        choices=["eval", "holdout"],
        default="eval",
        help="needle, clips: whose seeds to draw: eval (what the demo model's recipe was checked and "
        "chosen on) or holdout (for reporting only: tune nothing on it)",
    )
    sub.add_argument(
        "--raw-max-frames",
        type=int,
        default=900,
        help="keep-raw row: longest haystack to run (its ingest grows with the square of the length)",
    )


def _eval(args: argparse.Namespace) -> int:
    if args.suite == "clips":
        return _eval_clips(args)
    if args.suite == "margins":
        return _eval_margins(args)
    from longwatch.model.config import ModelConfig
    from longwatch.model.eval.needle_grid import ROWS, EvalPlan, format_report, run_needle_eval

    rows = tuple(args.rows.split(","))
    if unknown := set(rows) - set(ROWS):
        return fail(f"unknown rows {sorted(unknown)}; choose from {', '.join(ROWS)}", code=2)
    plan = EvalPlan(
        lengths=tuple(int(x) for x in args.lengths.split(",")),
        depths=tuple(float(x) / 100 for x in args.depths.split(",")),
        needles=args.needles,
        rows=rows,
        top_k=args.top_k,
        score_margin=args.score_margin,
        raw_max_frames=args.raw_max_frames,
        split=args.split,
        width=args.frame_size[0],
        height=args.frame_size[1],
        needle_px=args.needle_px,
        max_tokens_per_frame=args.max_tokens_per_frame,
    )
    report = run_needle_eval(ModelConfig(path=args.model, adapter=args.adapter), plan, args.out)
    print(format_report(report))
    print(f"wrote {args.out / 'needle_eval.json'} and {args.out / 'needle_eval.png'}")
    return 0


def _eval_clips(args: argparse.Namespace) -> int:
    """Accuracy per question kind on evaluation clips, in process: minutes, where the grid takes tens."""
    from longwatch.model.config import ModelConfig
    from longwatch.model.eval.clips import evaluate_clips
    from longwatch.model.loading import load_model
    from longwatch.model.train.needles import ALL_KINDS

    kinds = tuple(args.kinds.split(","))
    if unknown := set(kinds) - set(ALL_KINDS):
        return fail(f"unknown question kinds {sorted(unknown)}; choose from {', '.join(ALL_KINDS)}", code=2)
    lm = load_model(ModelConfig(path=args.model, adapter=args.adapter))
    columns = ("what", "colour", "when", "did-yes", "did-no")
    print(
        f"{'haystack':>8}  {'chunks':>6}  {'clips':>5}  "
        + "  ".join(f"{c:>7}" for c in columns)
        + f"  {'recall@' + str(args.top_k):>9}"
    )
    for haystack_s in (int(x) for x in args.haystacks.split(",")):
        for n_chunks in (int(x) for x in args.chunks.split(",")):
            acc = evaluate_clips(
                lm,
                args.clips,
                top_k=args.top_k,
                n_chunks=n_chunks,
                haystack_s=haystack_s,
                kinds=kinds,
                encoded_fps=args.encoded,
                rollover=args.rollover,
                turnover=args.turnover,
                straddle=args.straddle,
                stream_start=args.stream_start,
                score_margin=args.score_margin,
                split=args.split,
                frame_size=args.frame_size,
                needle_px=args.needle_px,
                max_tokens=args.max_tokens_per_frame,
                rendering=args.rendering,
            ).accuracy()
            cells = [f"{acc[k]:7.1%}" if k in acc else f"{'-':>7}" for k in columns]
            print(
                f"{haystack_s:>7}s  {n_chunks:>6}  {args.clips:>5}  {'  '.join(cells)}  {acc['recall@k']:9.1%}",
                flush=True,
            )
    return 0


def _eval_margins(args: argparse.Namespace) -> int:
    """The needle chunk's score lead on hard training-split clips (`MARGIN_CLIPS`), and what margins do."""
    from longwatch.model.config import ModelConfig
    from longwatch.model.eval.clips import MARGIN_CLIPS, evidence_leads
    from longwatch.model.loading import load_model

    try:
        margins = [float(x) for x in args.margins.split(",")]
    except ValueError:
        return fail(f"--margins wants numbers separated by commas, got {args.margins!r}", code=2)
    lm = load_model(ModelConfig(path=args.model, adapter=args.adapter))
    leads = evidence_leads(lm, MARGIN_CLIPS, args.clips)
    print(
        f"{len(leads.leads)} questions on {args.clips} training-split clips drawn as the polish stage's: 24 chunks "
        "(6 and a pool of 18) opening their stream, half the needles' chunks through x264, a quarter at a "
        "hundreds turnover, three in ten across two chunks"
    )
    print(
        "needle chunk's lead over the best other: "
        + ", ".join(
            f"{name} {leads.percentile(q):.1f}"
            for name, q in (("median", 50), ("5th pct", 5), ("1st pct", 1))
        )
        + f", min {min(leads.leads):.1f}"
    )
    if leads.straddle_gaps:
        print(f"needles across two chunks: their chunks' scores {leads.straddle_median():.1f} apart (median)")
    print(f"{'margin':>6}  {'a distractor kept beside the needle':>36}  {'needle left out':>15}")
    for m in margins:
        print(f"{m:>6g}  {leads.share_within(m):36.1%}  {leads.share_left_out(m):15.1%}")
    return 0
