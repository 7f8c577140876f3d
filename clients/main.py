"""The `longwatch` command: a table of commands, each handed to the room that owns it.

    ingest, stream, ask, streams, show,    clients/cli.py         (talk to a running service)
      delete, retention
    serve, keys                            stream/command.py      (run the service, its keys)
    demo, eval                             model/eval/command.py  (the service end to end, evaluation)
    convert                                model/convert.py       (DAMO checkpoints to native)
    train                                  model/train/command.py

Only the chosen command's module is imported, and each imports its heavy parts (torch, the
server, the trainer) only when its handler runs: `longwatch ask` loads neither torch nor the
server, and `longwatch --help` loads none of them. Errors of a client call end as
`error: <message>` on stderr with exit status 1; usage errors exit 2 (argparse's convention).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable, Sequence

from longwatch.clients.cli import add_connection_arguments, default_server, fail
from longwatch.clients.client import LongWatchError

Adder = Callable[[argparse.ArgumentParser], None]


def _client(name: str) -> Adder:
    def add(sub: argparse.ArgumentParser) -> None:
        from longwatch.clients import cli

        getattr(cli, f"add_{name}")(sub)

    return add


def _serve(sub: argparse.ArgumentParser) -> None:
    from longwatch.stream.command import add_serve

    add_serve(sub)


def _keys(sub: argparse.ArgumentParser) -> None:
    from longwatch.stream.command import add_keys

    add_keys(sub)


def _demo(sub: argparse.ArgumentParser) -> None:
    from longwatch.model.eval.command import add_demo

    add_demo(sub)


def _eval(sub: argparse.ArgumentParser) -> None:
    from longwatch.model.eval.command import add_eval

    add_eval(sub)


def _convert(sub: argparse.ArgumentParser) -> None:
    from longwatch.model.convert import add_convert

    add_convert(sub)


def _train(sub: argparse.ArgumentParser) -> None:
    from longwatch.model.train.command import add_train

    add_train(sub)


# name -> (summary for --help, what fills its parser)
COMMANDS: dict[str, tuple[str, Adder]] = {
    "serve": ("run the service (gRPC, and HTTP for WebRTC and the browser page)", _serve),
    "keys": ("create, list and revoke API keys; set tenants' limits (the server's keys file)", _keys),
    "ingest": ("ingest a video file into a new stream", _client("ingest")),
    "stream": ("send a file, a camera or a test pattern live over WebRTC", _client("stream")),
    "ask": ("ask a question about a stream", _client("ask")),
    "watch": ("watch for something: a line each time a new chunk answers yes", _client("watch")),
    "watches": ("list your watches", _client("watches")),
    "unwatch": ("delete a watch and its events", _client("unwatch")),
    "streams": ("list the streams", _client("streams")),
    "show": ("show one stream", _client("show")),
    "delete": ("delete a stream and everything stored for it", _client("delete")),
    "retention": ("set how long or how much of a stream is kept", _client("retention")),
    "demo": ("start a service, ingest a sample video and ask about it", _demo),
    "convert": ("convert a DAMO-NLP-SG VideoLLaMA3 release to transformers' native layout", _convert),
    "train": ("train summary tokens (or a small base from scratch)", _train),
    "eval": ("evaluate a model on needle videos", _eval),
}
# Global options that take a value: skipped when looking for the command's name.
_VALUED = ("--server", "--timeout", "--api-key", "--tls-ca", "--client-cert", "--client-key")


def build_parser(commands: Sequence[str] | None = None) -> argparse.ArgumentParser:
    """The whole parser; only `commands` get their flags (None: every command, as tests want)."""
    parser = argparse.ArgumentParser(prog="longwatch", description="Ask questions about long videos.")
    add_connection_arguments(parser, default_server(), None)
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (summary, add) in COMMANDS.items():
        sub = subparsers.add_parser(name, help=summary, description=summary)
        if commands is None or name in commands:
            add(sub)
    return parser


def command_in(argv: Sequence[str]) -> str | None:
    """The command named in `argv`: its first word that is not a global option or its value."""
    skip = False
    for word in argv:
        if skip:
            skip = False
        elif word in _VALUED:
            skip = True
        elif not word.startswith("-"):
            return word
    return None


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    command = command_in(argv)
    parser = build_parser([command] if command in COMMANDS else [])
    args = parser.parse_args(argv)
    if check := getattr(args, "check", None):
        check(parser, args)
    try:
        return int(args.handler(args))
    except LongWatchError as exc:
        if getattr(args, "json", False):  # a script reading --json output gets its error as JSON too
            print(json.dumps({"error": str(exc), "code": exc.code.name}))
            return 1
        return fail(str(exc))
    except KeyboardInterrupt:
        return fail("interrupted", code=130)
    except BrokenPipeError:
        return _stdout_closed()


def _stdout_closed() -> int:
    """`longwatch streams | head`: the reader left; point stdout at /dev/null so exit is quiet."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    return 1


if __name__ == "__main__":
    sys.exit(main())
