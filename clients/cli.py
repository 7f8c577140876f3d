"""The client commands of `longwatch`: ingest, stream, ask, streams, show, delete.

Each `add_<command>` fills the command's parser (clients/main.py makes it) with its flags and its
handler; a handler turns the flags into client calls and prints what comes back. Nothing here
imports the server or the model: these commands only talk to a running service.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc

from longwatch.clients.client import (
    DEFAULT_HTTP_SERVER,
    DEFAULT_TARGET,
    LongWatchClient,
    LongWatchError,
    StreamSummary,
)
from longwatch.clients.credentials import Credentials
from longwatch.clients.format import (
    across_json,
    answer_json,
    format_across,
    format_answer,
    format_evidence,
    format_ingest_summary,
    format_retention,
    format_send_summary,
    format_stream,
    format_streams_table,
    format_timestamp,
    format_watch_event,
    format_watch_start,
    format_watches,
)
from longwatch.clients.ice import address_list
from longwatch.proto import longwatch_pb2 as pb


def fail(message: str, code: int = 1) -> int:
    """Print `error: <message>` on stderr and return the exit status (1, or 2 for usage errors)."""
    print(f"error: {message}", file=sys.stderr)
    return code


def add_connection_arguments(parser: argparse.ArgumentParser, server: Any, timeout: Any) -> None:
    """--server and --timeout; the command line takes them before or after a client command."""
    parser.add_argument(
        "--server",
        default=server,
        metavar="HOST:PORT",
        help=f"server address, or several replicas' a:50051,b:50051 (LONGWATCH_SERVER, default {DEFAULT_TARGET})",
    )
    parser.add_argument(
        "--timeout",
        type=float,
        default=timeout,
        metavar="S",
        help="deadline per call in seconds (default: none)",
    )
    suppress = server is argparse.SUPPRESS
    g = parser.add_argument_group("credentials") if not suppress else parser
    g.add_argument(
        "--api-key",
        default=argparse.SUPPRESS if suppress else os.environ.get("LONGWATCH_API_KEY"),
        metavar="KEY",
        help="API key, for a server with keys (LONGWATCH_API_KEY)",
    )
    g.add_argument(
        "--tls",
        action="store_true",
        default=argparse.SUPPRESS if suppress else os.environ.get("LONGWATCH_TLS", "") not in ("", "0"),
        help="connect over TLS, checking the server against the system's CAs (LONGWATCH_TLS=1)",
    )
    for flag, env, what in (
        ("--tls-ca", "LONGWATCH_TLS_CA", "PEM CA to check the server's certificate against (implies --tls)"),
        ("--client-cert", "LONGWATCH_CLIENT_CERT", "PEM client certificate, for mutual TLS"),
        ("--client-key", "LONGWATCH_CLIENT_KEY", "PEM key of --client-cert"),
    ):
        g.add_argument(
            flag,
            type=Path,
            default=argparse.SUPPRESS if suppress else os.environ.get(env),
            metavar="FILE",
            help=f"{what} ({env})",
        )


def default_server() -> str:
    return os.environ.get("LONGWATCH_SERVER", DEFAULT_TARGET)


def _client_command(sub: argparse.ArgumentParser, handler: Any) -> None:
    # SUPPRESS: given after the command they win; absent, the value before the command stands.
    add_connection_arguments(sub, argparse.SUPPRESS, argparse.SUPPRESS)
    sub.set_defaults(handler=handler)


# --- parsers --------------------------------------------------------------------------------


def add_ingest(sub: argparse.ArgumentParser) -> None:
    _client_command(sub, _cmd_ingest)
    sub.add_argument("path", type=Path, metavar="PATH", help="video file (uploaded; see --on-server)")
    sub.add_argument("--stream", required=True, metavar="ID", help="id of the new stream")
    sub.add_argument("--fps", type=float, default=0.0, help="sampling rate (default: the server's)")
    sub.add_argument(
        "--on-server",
        action="store_true",
        help="PATH is on the server, inside one of its --ingest-root folders, and it reads it there "
        "(default: the file is uploaded, in pieces)",
    )
    sub.add_argument("--upload", action="store_true", help=argparse.SUPPRESS)  # the default now
    sub.add_argument(
        "--resume",
        action="store_true",
        help="continue an interrupted ingest of this file into this stream from its last committed chunk",
    )
    sub.add_argument(
        "--ray",
        action="store_true",
        help="the server makes the chunks in segments over its Ray workers (serve --ray ADDRESS); "
        "the stream is the same chunk for chunk",
    )


def add_stream(sub: argparse.ArgumentParser) -> None:
    sub.set_defaults(handler=_cmd_stream)
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
        help=f"the service's HTTP address, or its replicas' separated by commas (LONGWATCH_HTTP_SERVER, "
        f"default {DEFAULT_HTTP_SERVER})",
    )
    sub.add_argument(
        "--seconds", type=float, metavar="S", help="stop after S seconds (default: end of file or Ctrl-C)"
    )
    sub.add_argument(
        "--reconnect",
        type=float,
        default=60.0,
        metavar="S",
        help="when the server goes away mid-stream, offer again (to each server in turn) for up to S "
        "seconds (default 60; 0: stop at once)",
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


def add_ask(sub: argparse.ArgumentParser) -> None:
    _client_command(sub, _cmd_ask)
    sub.set_defaults(check=_check_ask)
    sub.add_argument("stream_id", metavar="ID", nargs="?", help="the stream (none with --all or --streams)")
    sub.add_argument("question", metavar="QUESTION")
    across = sub.add_mutually_exclusive_group()
    across.add_argument("--all", action="store_true", help="ask every stream of yours; the best answer first")
    across.add_argument(
        "--streams", type=_id_list, metavar="ID,ID,...", help="ask these streams; the best answer first"
    )
    sub.add_argument(
        "--results",
        type=int,
        default=0,
        metavar="N",
        help="with --all or --streams: streams to answer, best first (default: the server's 3)",
    )
    sub.add_argument(
        "--top-k", type=int, metavar="K", help="chunks to retrieve (per stream; default: the server's)"
    )
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


def add_watch(sub: argparse.ArgumentParser) -> None:
    _client_command(sub, _cmd_watch)
    sub.set_defaults(check=_check_watch)
    sub.add_argument("stream_id", metavar="ID", nargs="?", help="the stream (none with --all or --resume)")
    sub.add_argument(
        "question", metavar="QUESTION", nargs="?", help='a yes/no question: "Did a red van stop?"'
    )
    which = sub.add_mutually_exclusive_group()
    which.add_argument("--all", action="store_true", help="watch every stream of yours, later ones too")
    which.add_argument("--resume", metavar="WATCH", help="a watch made before: its events after --after")
    sub.add_argument(
        "--after", default="", metavar="EVENT", help="with --resume: the last event id seen (default: all)"
    )
    sub.add_argument("--match", default="", help='what an answer starts with to be an event (default "yes")')
    sub.add_argument(
        "--webhook", default="", metavar="URL", help="also POST each event there (needs a writer)"
    )
    sub.add_argument(
        "--reconnect",
        type=float,
        default=300.0,
        metavar="S",
        help="wait this long for a server that went away",
    )
    sub.add_argument("--json", action="store_true", help="one JSON object a line")


def add_watches(sub: argparse.ArgumentParser) -> None:
    _client_command(sub, _cmd_watches)
    sub.add_argument("--json", action="store_true")


def add_unwatch(sub: argparse.ArgumentParser) -> None:
    _client_command(sub, _cmd_unwatch)
    sub.add_argument("watch_id", metavar="WATCH")


def add_streams(sub: argparse.ArgumentParser) -> None:
    _client_command(sub, _cmd_streams)
    sub.add_argument("--json", action="store_true")


def add_show(sub: argparse.ArgumentParser) -> None:
    _client_command(sub, _cmd_show)
    sub.add_argument("stream_id", metavar="ID")
    sub.add_argument("--json", action="store_true")
    sub.add_argument(
        "--at", type=parse_seconds, metavar="TIME", help="save the picture nearest this time (1:02:03)"
    )
    sub.add_argument("--out", type=Path, metavar="FILE", help="where --at saves it (default: ID-TIME.jpg)")


def add_delete(sub: argparse.ArgumentParser) -> None:
    _client_command(sub, _cmd_delete)
    sub.add_argument("stream_id", metavar="ID")


def add_retention(sub: argparse.ArgumentParser) -> None:
    _client_command(sub, _cmd_retention)
    sub.add_argument("stream_id", metavar="ID")
    sub.add_argument("--days", type=float, default=0.0, help="keep chunks this long after their commit")
    sub.add_argument(
        "--gb", type=float, default=0.0, help="keep at most this many GB, the oldest dropped first"
    )
    sub.add_argument("--json", action="store_true", help="the stream as JSON")


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


def _id_list(text: str) -> list[str]:
    ids = [i.strip() for i in text.split(",") if i.strip()]
    if not ids:
        raise argparse.ArgumentTypeError(f"expected stream ids separated by commas, got {text!r}")
    return ids


def _check_ask(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    across = args.all or args.streams is not None
    if across and args.stream_id is not None:
        parser.error("ask: give a stream ID, or --all / --streams, not both")
    if not across and args.stream_id is None:
        parser.error("ask: give a stream ID (or --all, or --streams ID,ID,...) and a QUESTION")
    if across and args.stream:
        parser.error("ask: --stream prints one stream's answer as it comes; not with --all or --streams")
    if args.results and not across:
        parser.error("ask: --results goes with --all or --streams")
    _check_time_range(parser, args)


def _check_watch(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    if args.resume is not None:
        if args.stream_id is not None or args.match or args.webhook:
            parser.error("watch: --resume takes a watch id alone (and --after)")
        return
    if args.after:
        parser.error("watch: --after goes with --resume")
    if args.all and args.question is None and args.stream_id is not None:
        args.stream_id, args.question = None, args.stream_id  # `watch --all QUESTION`
    if args.all and args.stream_id is not None:
        parser.error("watch: give a stream ID or --all, not both")
    if args.question is None or (not args.all and args.stream_id is None):
        parser.error("watch: give a stream ID (or --all) and a QUESTION, or --resume WATCH")


def _check_time_range(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    if (args.start_s is None) != (args.end_s is None):
        parser.error("ask: --from and --to go together")
    if args.start_s is not None and args.start_s > args.end_s:
        parser.error(f"ask: --from ({args.start_s:g}s) is after --to ({args.end_s:g}s)")


# --- handlers -------------------------------------------------------------------------------


def credentials_from(args: argparse.Namespace) -> Credentials:
    """The key and TLS settings given on the command line or in LONGWATCH_* variables."""
    try:
        return Credentials(
            api_key=args.api_key or None,
            tls=bool(args.tls),
            tls_ca=args.tls_ca or None,
            client_cert=args.client_cert or None,
            client_key=args.client_key or None,
        )
    except ValueError as e:
        raise LongWatchError(str(e), grpc.StatusCode.INVALID_ARGUMENT) from None


def _client(args: argparse.Namespace) -> LongWatchClient:
    return LongWatchClient(args.server, timeout=args.timeout, credentials=credentials_from(args))


def _cmd_ingest(args: argparse.Namespace) -> int:
    path: Path = args.path
    if args.on_server:
        source: dict[str, Any] = {"server_path": str(args.path)}
    elif not path.is_file():
        return fail(f"no such file: {path}")
    else:
        source = {"path": path}
    started = time.monotonic()
    with _client(args) as client:
        last = _follow_ingest(
            client.ingest_file(args.stream, fps=args.fps, resume=args.resume, ray=args.ray, **source),
            args.stream,
        )
    if last is None or not last.done:
        return fail(f"ingest of {args.stream} ended before the server reported it done")
    print(format_ingest_summary(StreamSummary.from_proto(last.stream), time.monotonic() - started))
    return 0


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
        return fail(f"no such file: {path}")
    if args.seconds is not None and args.seconds <= 0:
        return fail(f"--seconds must be > 0, got {args.seconds:g}", code=2)
    if args.reconnect < 0:
        return fail(f"--reconnect must be >= 0, got {args.reconnect:g}", code=2)
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
            args.http_server,
            track,
            args.stream,
            args.seconds,
            on_progress=progress,
            ice_addresses=addresses,
            credentials=credentials_from(args),
            reconnect_s=args.reconnect,
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
        if args.all or args.streams is not None:
            across = client.ask_across(args.question, args.streams or (), args.results, **query)
            print(_json(across_json(across)) if args.json else format_across(across))
            return 0
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


def _cmd_watch(args: argparse.Namespace) -> int:
    with _client(args) as client:
        if args.resume is not None:
            events = client.watch(watch_id=args.resume, after_event_id=args.after, reconnect_s=args.reconnect)
        else:
            events = client.watch(
                args.stream_id, args.question, args.match, args.webhook, reconnect_s=args.reconnect
            )
        with events:
            watch = events.first()
            print(format_watch_start(watch), file=sys.stderr, flush=True)
            for event in events:
                print(
                    json.dumps(event.to_json_dict()) if args.json else format_watch_event(event), flush=True
                )
    return 0


def _cmd_watches(args: argparse.Namespace) -> int:
    with _client(args) as client:
        watches = client.list_watches()
    print(_json([w.to_json_dict() for w in watches]) if args.json else format_watches(watches))
    return 0


def _cmd_unwatch(args: argparse.Namespace) -> int:
    with _client(args) as client:
        watch = client.delete_watch(args.watch_id)
    print(f"deleted watch {watch.watch_id} ({watch.events} events)")
    return 0


def _cmd_streams(args: argparse.Namespace) -> int:
    with _client(args) as client:
        streams = client.list_streams()
    print(_json([s.to_json_dict() for s in streams]) if args.json else format_streams_table(streams))
    return 0


def _cmd_show(args: argparse.Namespace) -> int:
    if args.at is not None:
        return _save_frame(args)
    with _client(args) as client:
        summary = client.get_stream(args.stream_id)
    print(_json(summary.to_json_dict()) if args.json else format_stream(summary))
    return 0


def _save_frame(args: argparse.Namespace) -> int:
    with _client(args) as client:
        frame = client.frame_at(args.stream_id, args.at)
    if frame is None:
        return fail(f"{args.stream_id} keeps no pictures (the service runs with --thumbnails off?)")
    out = args.out or Path(
        f"{args.stream_id}-{format_timestamp(frame.time_s).replace(':', '-')}.{frame.format}"
    )
    try:
        out.write_bytes(frame.image)
    except OSError as e:
        return fail(f"cannot write {out}: {e.strerror}")
    print(f"saved the picture at {format_timestamp(frame.time_s)} (chunk {frame.chunk_index}) to {out}")
    return 0


def _cmd_delete(args: argparse.Namespace) -> int:
    with _client(args) as client:
        keys = client.delete_stream(args.stream_id)
    print(f"deleted {args.stream_id} ({keys} keys)")
    return 0


def _cmd_retention(args: argparse.Namespace) -> int:
    if args.days < 0 or args.gb < 0:
        return fail("--days and --gb must be >= 0 (0: the tenant's or the server's)", code=2)
    with _client(args) as client:
        s = client.set_retention(args.stream_id, args.days * 86400, int(args.gb * 1e9))
    if args.json:
        print(_json(s.to_json_dict()))
    else:
        print(f"{s.stream_id}: retention {format_retention(s.retention_age_s, s.retention_bytes)}")
    return 0


def _json(value: Any) -> str:
    return json.dumps(value, indent=2, ensure_ascii=False)
