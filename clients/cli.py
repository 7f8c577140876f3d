"""The `longwatch` command: run the server, ingest video, ask questions, manage streams.

Settings come from flags (defaulting to LONGWATCH_* variables) and are read here, once; the
handlers below turn them into client calls and print what comes back. Client errors end as
`error: <message>` on stderr with exit status 1; usage errors exit 2 (argparse's convention).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

from longwatch.clients.client import (
    DEFAULT_HTTP_SERVER,
    DEFAULT_TARGET,
    LongWatchClient,
    LongWatchError,
    StreamSummary,
    is_loopback_target,
)
from longwatch.clients.format import (
    answer_json,
    format_answer,
    format_evidence,
    format_ingest_summary,
    format_send_summary,
    format_stream,
    format_streams_table,
)
from longwatch.model.config import BASE_SIZES, DEFAULT_BASE_SIZE
from longwatch.proto import longwatch_pb2 as pb
from longwatch.stream.settings import add_service_arguments, address_list, settings_from_args

Handler = Callable[[argparse.Namespace], int]


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command == "ask":
        _check_time_range(parser, args)
    handler: Handler = args.handler
    try:
        return handler(args)
    except LongWatchError as exc:
        return _fail(str(exc))
    except KeyboardInterrupt:
        return _fail("interrupted", code=130)
    except BrokenPipeError:
        return _stdout_closed()


def _stdout_closed() -> int:
    """`longwatch streams | head`: the reader left; point stdout at /dev/null so exit is quiet."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    return 1


def _fail(message: str, code: int = 1) -> int:
    print(f"error: {message}", file=sys.stderr)
    return code


# --- parser ---------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    server_default = os.environ.get("LONGWATCH_SERVER", DEFAULT_TARGET)
    parser = argparse.ArgumentParser(prog="longwatch", description="Ask questions about long videos.")
    _add_connection_arguments(parser, server_default, None)
    # The same flags after the subcommand; SUPPRESS keeps a subcommand from resetting the global value.
    connection = argparse.ArgumentParser(add_help=False)
    _add_connection_arguments(connection, argparse.SUPPRESS, argparse.SUPPRESS)
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _add_serve(commands)
    _add_ingest(commands, connection)
    _add_stream(commands)
    _add_ask(commands, connection)
    _add_streams(commands, connection)
    _add_show(commands, connection)
    _add_delete(commands, connection)
    _add_demo(commands)
    _add_train(commands)
    _add_eval(commands)
    return parser


def _add_connection_arguments(parser: argparse.ArgumentParser, server: Any, timeout: Any) -> None:
    parser.add_argument(
        "--server",
        default=server,
        metavar="HOST:PORT",
        help=f"server address (LONGWATCH_SERVER, default {DEFAULT_TARGET})",
    )
    parser.add_argument(
        "--timeout",
        type=float,
        default=timeout,
        metavar="S",
        help="deadline per call in seconds (default: none)",
    )


def _command(
    commands: Any, name: str, handler: Handler, summary: str, *parents: argparse.ArgumentParser
) -> Any:
    sub = commands.add_parser(name, help=summary, description=summary, parents=list(parents))
    sub.set_defaults(handler=handler)
    return sub


def _add_serve(commands: Any) -> None:
    sub = _command(commands, "serve", _cmd_serve, "run the gRPC server")
    add_service_arguments(sub)


def _add_demo(commands: Any) -> None:
    sub = _command(commands, "demo", _cmd_demo, "start a server, ingest a sample clip and ask about it")
    add_service_arguments(sub)
    sub.add_argument("--keep", action="store_true", help="keep the state dir afterwards")


def _add_train(commands: Any) -> None:
    sub = _command(commands, "train", _cmd_train, "train summary tokens (or a small base from scratch)")
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
    sub.add_argument("--device", default="cpu")
    sub.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])


def _add_ingest(commands: Any, connection: argparse.ArgumentParser) -> None:
    sub = _command(commands, "ingest", _cmd_ingest, "ingest a video file into a new stream", connection)
    sub.add_argument("path", type=Path, metavar="PATH", help="video file")
    sub.add_argument("--stream", required=True, metavar="ID", help="id of the new stream")
    sub.add_argument("--fps", type=float, default=0.0, help="sampling rate (default: the server's)")
    sub.add_argument(
        "--upload",
        action="store_true",
        help="send the file's bytes even to a local server (remote servers always get the bytes)",
    )


def _add_stream(commands: Any) -> None:
    summary = "send a file, a camera or a test pattern live over WebRTC"
    sub = _command(commands, "stream", _cmd_stream, summary)
    source = sub.add_mutually_exclusive_group(required=True)
    source.add_argument("path", nargs="?", type=Path, metavar="FILE", help="video file, sent at its own pace")
    source.add_argument("--camera", metavar="DEVICE", help="v4l2 camera device, e.g. /dev/video0")
    source.add_argument("--test-pattern", action="store_true", help="generated colour bars")
    sub.add_argument(
        "--stream", metavar="ID", help="live stream to start or continue (default: the service picks an id)"
    )
    sub.add_argument(
        "--http-server",
        default=os.environ.get("LONGWATCH_HTTP_SERVER", DEFAULT_HTTP_SERVER),
        metavar="HOST:PORT",
        help=f"the service's HTTP address (LONGWATCH_HTTP_SERVER, default {DEFAULT_HTTP_SERVER})",
    )
    sub.add_argument(
        "--seconds", type=float, metavar="S", help="stop after S seconds (default: end of file or Ctrl-C)"
    )
    sub.add_argument(
        "--size", type=parse_size, metavar="WxH", help="camera or test pattern size (e.g. 640x480)"
    )
    sub.add_argument(
        "--ice-address",
        dest="ice_addresses",
        action="append",
        type=address_list,
        metavar="ADDR",
        help="an address WebRTC may use, on both ends (repeatable); e.g. 127.0.0.1 to a service "
        "started with --webrtc-address 127.0.0.1. Default: all of this machine's but loopback",
    )


def parse_size(text: str) -> tuple[int, int]:
    """Parse "640x480" as (640, 480)."""
    width, _, height = text.lower().partition("x")
    if not (width.isdigit() and height.isdigit() and int(width) > 0 and int(height) > 0):
        raise argparse.ArgumentTypeError(f"expected WIDTHxHEIGHT such as 640x480, got {text!r}")
    return int(width), int(height)


def _add_ask(commands: Any, connection: argparse.ArgumentParser) -> None:
    sub = _command(commands, "ask", _cmd_ask, "ask a question about a stream", connection)
    sub.add_argument("stream_id", metavar="ID")
    sub.add_argument("question", metavar="QUESTION")
    sub.add_argument("--top-k", type=int, metavar="K", help="chunks to retrieve (default: the server's)")
    sub.add_argument(
        "--score-margin",
        type=float,
        metavar="M",
        help="leave out retrieved chunks scoring more than M below the best (default: the server's; 0: all k)",
    )
    sub.add_argument(
        "--from", dest="start_s", type=parse_seconds, metavar="S", help="start of the time range"
    )
    sub.add_argument("--to", dest="end_s", type=parse_seconds, metavar="S", help="end of the time range")
    sub.add_argument("--max-new-tokens", type=int, default=0, metavar="N", help="default: the server's")
    output = sub.add_mutually_exclusive_group()
    output.add_argument("--json", action="store_true", help="print the answer as JSON")
    output.add_argument("--stream", action="store_true", help="print the answer as it is generated")


def _add_streams(commands: Any, connection: argparse.ArgumentParser) -> None:
    sub = _command(commands, "streams", _cmd_streams, "list the streams", connection)
    sub.add_argument("--json", action="store_true")


def _add_show(commands: Any, connection: argparse.ArgumentParser) -> None:
    sub = _command(commands, "show", _cmd_show, "show one stream", connection)
    sub.add_argument("stream_id", metavar="ID")
    sub.add_argument("--json", action="store_true")


def _add_delete(commands: Any, connection: argparse.ArgumentParser) -> None:
    sub = _command(
        commands, "delete", _cmd_delete, "delete a stream and everything stored for it", connection
    )
    sub.add_argument("stream_id", metavar="ID")


def parse_seconds(text: str) -> float:
    """Seconds as "90", "1:30" or "1:02:03.5" (the form the CLI prints timestamps in)."""
    parts = text.strip().split(":")
    try:
        values = [float(p) for p in parts]
    except ValueError:
        values = []
    if not 1 <= len(values) <= 3 or any(v < 0 for v in values):
        raise argparse.ArgumentTypeError(f"expected seconds, M:SS or H:MM:SS, got {text!r}")
    seconds = 0.0
    for value in values:
        seconds = seconds * 60 + value
    return seconds


def _check_time_range(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    if (args.start_s is None) != (args.end_s is None):
        parser.error("ask: --from and --to go together")
    if args.start_s is not None and args.start_s > args.end_s:
        parser.error(f"ask: --from ({args.start_s:g}s) is after --to ({args.end_s:g}s)")


# --- handlers -------------------------------------------------------------------------------


def _client(args: argparse.Namespace) -> LongWatchClient:
    return LongWatchClient(args.server, timeout=args.timeout)


def _cmd_serve(args: argparse.Namespace) -> int:
    try:
        settings = settings_from_args(args)
    except ValueError as exc:
        return _fail(str(exc), code=2)
    from longwatch.stream.server import serve_forever  # imports torch: only when serving

    try:
        return int(serve_forever(settings))
    except OSError as exc:  # a port in use, an unwritable state folder: one line, not a traceback
        return _fail(f"cannot start the service: {exc}")


def _cmd_demo(args: argparse.Namespace) -> int:
    from longwatch.model.eval.demo import run_demo  # starts a server, so imports torch

    return int(run_demo(args))


def _add_eval(commands: Any) -> None:
    sub = _command(commands, "eval", _cmd_eval, "evaluate a model on needle videos")
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
    sub.add_argument("--kinds", default="what,colour,when", help="clips: question kinds asked, one per clip")
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
        "--raw-max-frames",
        type=int,
        default=900,
        help="keep-raw row: longest haystack to run (its ingest grows with the square of the length)",
    )


def _cmd_eval(args: argparse.Namespace) -> int:
    if args.suite == "clips":
        return _eval_clips(args)
    if args.suite == "margins":
        return _eval_margins(args)
    from longwatch.model.config import ModelConfig
    from longwatch.model.eval.needle_grid import ROWS, EvalPlan, format_report, run_needle_eval

    rows = tuple(args.rows.split(","))
    if unknown := set(rows) - set(ROWS):
        return _fail(f"unknown rows {sorted(unknown)}; choose from {', '.join(ROWS)}", code=2)
    plan = EvalPlan(
        lengths=tuple(int(x) for x in args.lengths.split(",")),
        depths=tuple(float(x) / 100 for x in args.depths.split(",")),
        needles=args.needles,
        rows=rows,
        top_k=args.top_k,
        score_margin=args.score_margin,
        raw_max_frames=args.raw_max_frames,
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
    from longwatch.model.train.needles import QUESTION_KINDS

    kinds = tuple(args.kinds.split(","))
    if unknown := set(kinds) - set(QUESTION_KINDS):
        return _fail(
            f"unknown question kinds {sorted(unknown)}; choose from {', '.join(QUESTION_KINDS)}", code=2
        )
    lm = load_model(ModelConfig(path=args.model, adapter=args.adapter))
    print(
        f"{'haystack':>8}  {'chunks':>6}  {'clips':>5}  {'what':>6}  {'colour':>6}  {'when':>6}"
        f"  {'recall@' + str(args.top_k):>9}"
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
            ).accuracy()
            cells = [f"{acc[k]:6.1%}" if k in acc else f"{'-':>6}" for k in ("what", "colour", "when")]
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
        return _fail(f"--margins wants numbers separated by commas, got {args.margins!r}", code=2)
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


def _cmd_train(args: argparse.Namespace) -> int:
    from longwatch.model.train.recipe import run_train  # imports torch: only when training

    try:
        return run_train(args)
    except ValueError as exc:
        return _fail(str(exc), code=2)


def _cmd_ingest(args: argparse.Namespace) -> int:
    path: Path = args.path
    if not path.is_file():
        return _fail(f"no such file: {path}")
    source = _ingest_source(path, local=is_loopback_target(args.server) and not args.upload)
    started = time.monotonic()
    with _client(args) as client:
        last = _follow_ingest(client.ingest_file(args.stream, fps=args.fps, **source), args.stream)
    if last is None or not last.done:
        return _fail(f"ingest of {args.stream} ended before the server reported it done")
    print(format_ingest_summary(StreamSummary.from_proto(last.stream), time.monotonic() - started))
    return 0


def _ingest_source(path: Path, local: bool) -> dict[str, Any]:
    """A local server reads the file itself; a remote one gets its bytes (read into memory)."""
    if local:
        return {"path": str(path.resolve())}
    try:
        return {"data": path.read_bytes()}
    except OSError as exc:
        raise LongWatchError(f"cannot read {path}: {exc.strerror}") from exc


def _follow_ingest(progress: Iterator[pb.IngestProgress], label: str) -> pb.IngestProgress | None:
    """Drive a progress bar over stream time; returns the last message (None if there was none)."""
    from tqdm import tqdm

    last = None
    with tqdm(desc=label, unit="s", disable=None, dynamic_ncols=True) as bar:
        for last in progress:
            _update_bar(bar, last)
    return last


def _update_bar(bar: Any, p: pb.IngestProgress) -> None:
    if p.duration_s > 0:
        bar.total = round(p.duration_s, 1)
    bar.n = round(p.duration_s if p.done and p.duration_s > 0 else p.position_s, 1)
    bar.set_postfix(chunks=p.chunks_committed, tokens=f"{p.tokens_kept}/{p.tokens_seen}", refresh=False)
    bar.refresh()


def _cmd_stream(args: argparse.Namespace) -> int:
    path: Path | None = args.path
    if path is not None and not path.is_file():
        return _fail(f"no such file: {path}")
    if args.seconds is not None and args.seconds <= 0:
        return _fail(f"--seconds must be > 0, got {args.seconds:g}", code=2)
    from tqdm import tqdm

    from longwatch.clients.webrtc import open_source, send_video  # imports aiortc: only when streaming

    track = open_source(
        path=None if path is None else str(path),
        camera=args.camera,
        test_pattern=args.test_pattern,
        size=args.size,
    )
    with tqdm(desc=args.stream or "stream", unit=" frames", disable=None, dynamic_ncols=True) as bar:

        def progress(frames: int, seconds: float) -> None:
            bar.n = frames
            bar.set_postfix(seconds=f"{seconds:.0f}", refresh=False)
            bar.refresh()

        addresses = tuple(a for group in args.ice_addresses for a in group) if args.ice_addresses else None
        result = send_video(
            args.http_server, track, args.stream, args.seconds, on_progress=progress, ice_addresses=addresses
        )
    print(format_send_summary(result))
    return 0


def _cmd_ask(args: argparse.Namespace) -> int:
    time_range = None if args.start_s is None else (args.start_s, args.end_s)
    query = dict(
        top_k=args.top_k,
        time_range=time_range,
        max_new_tokens=args.max_new_tokens,
        score_margin=args.score_margin,
    )
    with _client(args) as client:
        if args.stream:
            return _ask_streaming(client, args.stream_id, args.question, query)
        result = client.ask(args.stream_id, args.question, **query)
    print(_json(answer_json(result)) if args.json else format_answer(result))
    return 0


def _ask_streaming(client: LongWatchClient, stream_id: str, question: str, query: dict[str, Any]) -> int:
    with client.ask_stream(stream_id, question, **query) as stream:
        for delta in stream:
            sys.stdout.write(delta)
            sys.stdout.flush()
    print()
    evidence = format_evidence(stream.result.evidence)
    if evidence:
        print(evidence)
    return 0


def _cmd_streams(args: argparse.Namespace) -> int:
    with _client(args) as client:
        streams = client.list_streams()
    print(_json([s.to_json_dict() for s in streams]) if args.json else format_streams_table(streams))
    return 0


def _cmd_show(args: argparse.Namespace) -> int:
    with _client(args) as client:
        summary = client.get_stream(args.stream_id)
    print(_json(summary.to_json_dict()) if args.json else format_stream(summary))
    return 0


def _cmd_delete(args: argparse.Namespace) -> int:
    with _client(args) as client:
        keys = client.delete_stream(args.stream_id)
    print(f"deleted {args.stream_id} ({keys} keys)")
    return 0


def _json(value: Any) -> str:
    return json.dumps(value, indent=2, ensure_ascii=False)


if __name__ == "__main__":
    sys.exit(main())
