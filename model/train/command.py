"""`longwatch train`: its flags, and a handler that imports the trainer only when it runs."""

from __future__ import annotations

import argparse
from pathlib import Path

from longwatch.clients.cli import fail, parse_size
from longwatch.model.config import ATTENTION, BASE_SIZES, DEFAULT_BASE_SIZE


def needle_px(text: str) -> tuple[int, int]:
    """ "16" or "12-20": a needle's side in pixels, one size or a range."""
    lo, _, hi = text.partition("-")
    if not (lo.isdigit() and (hi.isdigit() or not hi)):
        raise argparse.ArgumentTypeError(f"expected pixels such as 16 or 12-20, got {text!r}")
    low, high = int(lo), int(hi or lo)
    if not 3 <= low <= high:
        raise argparse.ArgumentTypeError(f"expected 3 <= low <= high pixels, got {text!r}")
    return low, high


def add_train(sub: argparse.ArgumentParser) -> None:
    sub.set_defaults(handler=_train)
    sub.add_argument(
        "--stage",
        choices=["summary", "base", "demo"],
        default="summary",
        help="summary: adapter for --base; base: every weight (from scratch or --base); "
        "demo: base, summary, refine, hard, polish",
    )
    sub.add_argument(
        "--out", type=Path, required=True, help="run folder: checkpoint, log, adapter (and base)"
    )
    sub.add_argument(
        "--base", type=Path, help="VideoLLaMA3 checkpoint folder (stage summary; stage base: start from it)"
    )
    sub.add_argument("--adapter", type=Path, help="stage summary: start from this adapter instead of copies")
    sub.add_argument("--data", default="needles", help="'needles' (synthetic) or a JSONL file")
    sub.add_argument("--steps", type=int, default=1000, help="steps after vision pretraining")
    sub.add_argument(
        "--vision-steps",
        type=int,
        default=3000,
        help="stage base: vision pretraining steps (the shipped demo model: 22000)",
    )
    sub.add_argument(
        "--freeze-vision-steps", type=int, default=2500, help="stage base: steps with vision frozen"
    )
    sub.add_argument(
        "--copy-steps",
        type=int,
        default=0,
        help="stage base: first steps after vision pretraining on single frames asked when, answered keep-raw",
    )
    sub.add_argument(
        "--reading-steps",
        type=int,
        default=0,
        help="stage base: steps after the copy steps on single-chunk clips answered keep-raw",
    )
    sub.add_argument(
        "--size",
        choices=sorted(BASE_SIZES),
        default=DEFAULT_BASE_SIZE,
        help="stage base: widths and depths (BASE_SIZES)",
    )
    sub.add_argument("--lr", type=float, default=1e-3)
    sub.add_argument(
        "--pretrain-vision-lr", type=float, default=1e-3, help="stage base: lr of vision pretraining"
    )
    sub.add_argument("--seed", type=int, default=0)
    sub.add_argument("--alphas", default="2,4,8,16", help="alpha drawn per chunk from these")
    sub.add_argument("--summary-steps", type=int, default=500, help="stage demo: steps of its summary stage")
    sub.add_argument(
        "--refine-steps",
        type=int,
        default=0,
        help="stage demo: steps of every weight again after the summary stage (the shipped model: 90000)",
    )
    sub.add_argument("--refine-lr", type=float, default=3e-4, help="stage demo: lr of the refine steps")
    sub.add_argument(
        "--hard-steps",
        type=int,
        default=0,
        help="stage demo: steps of a last refinement, from the refined model, on clips as hard as Ask's: "
        "needle chunks through x264 (--hard-codec-share) and distractors chosen by retrieval "
        "(--hard-distractor-pool); the shipped model: 24000",
    )
    sub.add_argument("--hard-lr", type=float, default=1e-4, help="stage demo: lr of the hard steps")
    sub.add_argument(
        "--hard-codec-share",
        type=float,
        default=0.5,
        help="stage demo: share of the hard steps' clips whose needle chunk comes from an mp4 of the footage "
        "(x264, 1 or 10 fps)",
    )
    sub.add_argument(
        "--hard-distractor-pool",
        type=int,
        default=0,
        help="stage demo: chunks drawn besides each hard clip's, of which it keeps those the question "
        "scores highest",
    )
    sub.add_argument(
        "--hard-rollover-share",
        type=float,
        default=0.0,
        help="stage demo: share of the hard steps' clips whose needle's chunk holds a multiple of 100 s "
        "(the time's hundreds digit turns over inside it)",
    )
    sub.add_argument(
        "--hard-stream-start-share",
        type=float,
        default=0.0,
        help="stage demo: share of the hard steps' clips of two or more chunks that hold the stream's "
        "first chunk (the needle there as in any chunk of the clip and its pool)",
    )
    sub.add_argument(
        "--hard-straddle-share",
        type=float,
        default=0.0,
        help="stage demo: share of the hard steps' clips of two or more chunks whose needle runs from its "
        "chunk into the next, both in the clip (an event across a chunk boundary)",
    )
    sub.add_argument(
        "--polish-steps",
        type=int,
        default=0,
        help="stage demo: steps of one more hard stage, from the hard stage's model, on its clips but with "
        "--polish-straddle-share and --polish-turnover-share; the shipped model: 9000",
    )
    sub.add_argument("--polish-lr", type=float, default=3e-5, help="stage demo: lr of the polish steps")
    sub.add_argument(
        "--polish-straddle-share",
        type=float,
        default=0.0,
        help="stage demo: --hard-straddle-share for the polish steps (the shipped model: 0.3)",
    )
    sub.add_argument(
        "--polish-turnover-share",
        type=float,
        default=0.0,
        help="stage demo: share of the polish steps' rollover clips (--hard-rollover-share) whose needle "
        "starts 1-2 s before the hundreds digit turns over and is still shown when it has",
    )
    sub.add_argument(
        "--polish-retrieval-margin",
        type=float,
        default=0.0,
        help="stage demo: the polish steps' retrieval also pays while the evidence leads the best other "
        "chunk by less than this (in the scores --score-margin reads; 0: off)",
    )
    sub.add_argument(
        "--start-from",
        type=Path,
        metavar="DIR",
        help="stage demo: take this demo model (base/ + adapter/, e.g. the shipped one) as the recipe's "
        "stages before its last, and train the last one alone",
    )
    sub.add_argument(
        "--score-margin",
        type=float,
        metavar="M",
        help="stage demo: write into the model's card that Ask leaves out retrieved chunks scoring more "
        "than M below the best (the service's default for it; the shipped model: 5)",
    )
    sub.add_argument("--clips-per-step", type=int, default=1, help="clips averaged per optimizer step")
    sub.add_argument("--checkpoint-every", type=int, default=500)
    sub.add_argument(
        "--video-root", type=Path, help="--data as LLaVA-Video JSON: the folder its video paths start from"
    )
    sub.add_argument(
        "--frame-size",
        type=parse_size,
        default=(56, 56),
        metavar="WxH",
        help="--data needles: the footage's frame size (default 56x56, the demo model's)",
    )
    sub.add_argument(
        "--needle-px",
        type=needle_px,
        metavar="N or LO-HI",
        help="--data needles: the needle's side in pixels (default: 55-80%% of the frame's shorter side)",
    )
    sub.add_argument(
        "--needle-px-share",
        type=float,
        default=1.0,
        metavar="P",
        help="--data needles: the share of needles sized by --needle-px; the rest are the default size",
    )
    sub.add_argument(
        "--rendering",
        default="demo",
        choices=["demo", "varied"],
        help="--data needles: how needles are drawn (varied: digit fonts, outlines, shades; the "
        "'heldout' renderings are for evaluation only)",
    )
    sub.add_argument(
        "--yes-no-share",
        type=float,
        default=0.0,
        metavar="P",
        help="--data needles: the share of clips asking a yes/no question ('Did a red circle appear?'), "
        "a watch's kind; a demo model's vocabulary gains its words where it lacks them",
    )
    sub.add_argument(
        "--yes-no-described",
        action="store_true",
        help="--data needles: yes/no answers say what was seen first ('a red circle, yes', 'nothing, no')",
    )
    sub.add_argument(
        "--verdict-words",
        type=int,
        default=0,
        metavar="N",
        help="stage base (and demo's later stages): N yes/no verdicts on words alone beside each step's clips "
        "(a question and a described answer, no footage; the loss on the verdict); needs --yes-no-described",
    )
    sub.add_argument(
        "--max-tokens-per-frame",
        type=int,
        metavar="N",
        help="visual tokens per frame (default: the base's own, from its card or video settings)",
    )
    sub.add_argument("--device", default="cpu", help="cpu or cuda (under torchrun: one GPU per process)")
    sub.add_argument(
        "--dtype",
        default="float32",
        choices=["float32", "bfloat16"],
        help="how the base is held; bfloat16 (stage summary) keeps the summary tokens in float32 and "
        "computes under autocast",
    )
    sub.add_argument("--autocast", action="store_true", help="compute in bfloat16 under torch.autocast")
    sub.add_argument(
        "--checkpointing",
        action="store_true",
        help="gradient checkpointing by chunk: recompute each chunk's and answer's pass in backward",
    )
    sub.add_argument(
        "--attn", default="auto", choices=list(ATTENTION), help="attention kernel (auto: flash-attn on CUDA)"
    )
    sub.add_argument(
        "--state-dir", type=Path, help="where the base's file hashes are cached (default: none, hash again)"
    )


def _train(args: argparse.Namespace) -> int:
    from longwatch.model.train.recipe import run_train  # imports torch: only when training

    try:
        return run_train(args)
    except ValueError as exc:
        return fail(str(exc), code=2)
