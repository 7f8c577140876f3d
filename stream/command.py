"""`longwatch serve`: the service's flags (stream/settings.py), and a handler that starts it."""

from __future__ import annotations

import argparse

from longwatch.clients.cli import fail
from longwatch.stream.settings import add_service_arguments, settings_from_args


def add_serve(sub: argparse.ArgumentParser) -> None:
    sub.set_defaults(handler=_serve)
    add_service_arguments(sub)


def _serve(args: argparse.Namespace) -> int:
    try:
        settings = settings_from_args(args)
    except ValueError as exc:
        return fail(str(exc), code=2)
    from longwatch.stream.server import StartError, serve_forever  # imports torch: only when serving

    try:
        return int(serve_forever(settings))
    except StartError as exc:  # a port in use, a state folder in use, a model that will not load
        return fail(f"cannot start the service: {exc}")
