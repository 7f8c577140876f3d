"""`longwatch serve` (its flags are in stream/settings.py) and `longwatch keys` (the keys file it reads)."""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

from longwatch.clients.cli import fail
from longwatch.stream.auth import (
    KeysFile,
    Role,
    create_key,
    read_keys_file,
    revoke_key,
    set_limits,
)
from longwatch.stream.settings import LIMIT_NAMES, add_service_arguments, settings_from_args


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


def add_keys(sub: argparse.ArgumentParser) -> None:
    """`longwatch keys create|list|revoke|limits`: the keys file `serve --keys-file` reads."""
    actions = sub.add_subparsers(dest="keys_action", required=True, metavar="ACTION")

    def action(name: str, summary: str) -> argparse.ArgumentParser:
        p = actions.add_parser(name, help=summary, description=summary)
        p.add_argument(
            "--keys-file",
            type=Path,
            required=os.environ.get("LONGWATCH_KEYS_FILE") is None,
            default=os.environ.get("LONGWATCH_KEYS_FILE"),
            help="the keys file (LONGWATCH_KEYS_FILE)",
        )
        return p

    p = action("create", "add a key; the key is printed once, alone on the last line")
    p.add_argument("--tenant", required=True, help="the tenant whose streams the key reaches")
    p.add_argument("--role", required=True, choices=["reader", "writer", "admin"])
    p.add_argument("--name", default="", help="what the key is for (shown by `keys list`)")
    p.set_defaults(handler=_keys_create)
    p = action("list", "list the keys (ids, tenants, roles; never the keys) and tenants' limits")
    p.add_argument("--json", action="store_true", help="one JSON object")
    p.set_defaults(handler=_keys_list)
    p = action("revoke", "remove a key (by id or the key itself); servers stop taking it at once")
    p.add_argument("key", help="the key's id (from `keys list`) or the key")
    p.set_defaults(handler=_keys_revoke)
    p = action("limits", "set a tenant's quotas (0 removes one; unset ones keep the server's default)")
    p.add_argument("--tenant", required=True)
    for name in LIMIT_NAMES:
        p.add_argument(f"--{name.replace('_', '-')}", dest=name, type=float, default=None)
    p.set_defaults(handler=_keys_limits)


def _keys_create(args: argparse.Namespace) -> int:
    try:
        entry, key = create_key(args.keys_file, args.tenant, Role.parse(args.role), args.name)
    except ValueError as exc:
        return fail(str(exc))
    print(f"created key {entry.key_id} for tenant {entry.tenant}, role {entry.role}, in {args.keys_file}")
    print("keep it now: only its hash is stored")
    print(key)
    return 0


def _keys_list(args: argparse.Namespace) -> int:
    try:
        keys = read_keys_file(args.keys_file)
    except ValueError as exc:
        return fail(str(exc))
    data = keys.to_json()
    for entry in data["keys"]:
        del entry["sha256"]
    if args.json:
        print(json.dumps(data))
        return 0
    print(f"{'ID':<10}{'TENANT':<20}{'ROLE':<8}{'CREATED':<25}NAME")
    for e in data["keys"]:
        created = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(e["created_unix"]))
        print(f"{e['id']:<10}{e['tenant']:<20}{e['role']:<8}{created + ' UTC':<25}{e['name']}")
    for tenant, limits in data["tenants"].items():
        print(f"tenant {tenant}: " + ", ".join(f"{k} {v:g}" for k, v in limits.items()))
    return 0


def _keys_revoke(args: argparse.Namespace) -> int:
    try:
        entry = revoke_key(args.keys_file, args.key)
    except KeyError as exc:
        return fail(str(exc.args[0]))
    except ValueError as exc:
        return fail(str(exc))
    print(f"revoked key {entry.key_id} (tenant {entry.tenant}, {entry.role})")
    return 0


def _keys_limits(args: argparse.Namespace) -> int:
    given = {name: getattr(args, name) for name in LIMIT_NAMES if getattr(args, name) is not None}
    if not given:
        return fail("name at least one limit, e.g. --max-streams 20", code=2)
    try:
        limits = set_limits(args.keys_file, args.tenant, given)
    except ValueError as exc:
        return fail(str(exc))
    shown = KeysFile(tenants={args.tenant: limits}).to_json()["tenants"][args.tenant]
    print(
        f"tenant {args.tenant}: " + (", ".join(f"{k} {v:g}" for k, v in shown.items()) or "server defaults")
    )
    return 0
