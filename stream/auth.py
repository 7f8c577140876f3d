"""Who is calling: API keys, the tenant and role each grants, and the keys file that holds them.

A key looks like ``lw_<id>_<secret>``: the id (8 hex digits) finds its entry, and the entry keeps
only the SHA-256 of the whole key, so the file gives nobody a working key. The secret is 32 random
bytes, which is why a plain hash is enough (no password-style stretching). The keys file is JSON:

    {"keys": [{"id": "3f9a0c1e", "tenant": "acme", "role": "writer", "sha256": "...",
               "name": "yard camera", "created_unix": 1796000000.0}],
     "tenants": {"acme": {"max_streams": 50, "max_stored_gb": 20}}}

The service re-reads it when it changes (size, mtime or inode), so a revoked key stops working
at its next call without a restart; a file that no longer parses is logged and the last good one
kept. Roles are ordered: a reader lists, reads and asks; a writer also ingests; an admin also
deletes. Without a keys file every caller is the local tenant's admin (the zero-config default,
which the server allows on loopback only).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import os
import secrets
import tempfile
import threading
import time
from dataclasses import dataclass, field
from enum import IntEnum
from pathlib import Path
from typing import Any

from longwatch.proto.streams import (
    LOCAL_TENANT,
    TENANT_SEPARATOR,
    split_stored_id,
    stored_stream_id,
    validate_stream_id,
    validate_tenant,
)
from longwatch.stream.errors import PermissionDenied, Unauthenticated
from longwatch.stream.settings import TenantLimits

log = logging.getLogger(__name__)

KEY_PREFIX = "lw"
_ID_HEX = 8


class Role(IntEnum):
    """What a key may do; each role may do what the ones below it may."""

    READER = 1  # list streams, read them, ask
    WRITER = 2  # and ingest (archives, live streams)
    ADMIN = 3  # and delete

    def __str__(self) -> str:
        return self.name.lower()

    @classmethod
    def parse(cls, name: str) -> Role:
        try:
            return cls[name.upper()]
        except KeyError:
            raise ValueError(
                f"role must be one of {', '.join(str(r) for r in cls)}, got {name!r:.40}"
            ) from None


@dataclass(frozen=True)
class Caller:
    """An authenticated caller: its tenant, role, and the key it used ("" without keys).

    The edge (gRPC and HTTP) turns the ids a caller sends into stored ids with `stored_id`, and
    stored ids back with `public_id`; nothing else in the service knows about tenants.
    """

    tenant: str
    role: Role
    key_id: str = ""

    def require(self, role: Role, action: str) -> None:
        if self.role < role:
            who = f"key {self.key_id} ({self.tenant}, {self.role})" if self.key_id else f"a {self.role}"
            raise PermissionDenied(f"{who} may not {action}: that needs the {role} role")

    def stored_id(self, stream_id: str) -> str:
        """The stored id of this caller's stream `stream_id` (validated: no other tenant's id)."""
        return stored_stream_id(self.tenant, validate_stream_id(stream_id))

    def owns(self, stored: str) -> bool:
        try:
            return split_stored_id(stored)[0] == self.tenant
        except ValueError:
            return False

    def public_id(self, stored: str) -> str:
        return split_stored_id(stored)[1]

    def public_text(self, text: str) -> str:
        """An error message with this caller's stored ids shown as the caller knows them."""
        return text.replace(f"{self.tenant}{TENANT_SEPARATOR}", "") if self.tenant != LOCAL_TENANT else text


LOCAL_ADMIN = Caller(LOCAL_TENANT, Role.ADMIN)


@dataclass(frozen=True)
class KeyEntry:
    key_id: str
    tenant: str
    role: Role
    sha256: str
    name: str = ""
    created_unix: float = 0.0

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.key_id,
            "tenant": self.tenant,
            "role": str(self.role),
            "sha256": self.sha256,
            "name": self.name,
            "created_unix": self.created_unix,
        }


@dataclass
class KeysFile:
    """The parsed contents of a keys file."""

    keys: dict[str, KeyEntry] = field(default_factory=dict)
    tenants: dict[str, dict[str, float]] = field(default_factory=dict)  # tenant -> fields it sets

    @classmethod
    def parse(cls, text: str, where: str) -> KeysFile:
        try:
            data = json.loads(text) if text.strip() else {}
        except ValueError as e:
            raise ValueError(f"{where} is not JSON: {e}") from None
        if not isinstance(data, dict):
            raise ValueError(f'{where} must hold a JSON object with "keys" and "tenants"')
        parsed = cls()
        entries = data.get("keys", [])
        if not isinstance(entries, list):
            raise ValueError(f'{where}: "keys" must be a list')
        for n, e in enumerate(entries):
            try:
                entry = KeyEntry(
                    key_id=str(e["id"]),
                    tenant=validate_tenant(e["tenant"]),
                    role=Role.parse(str(e["role"])),
                    sha256=str(e["sha256"]),
                    name=str(e.get("name", "")),
                    created_unix=float(e.get("created_unix", 0.0)),
                )
            except (KeyError, TypeError, ValueError, AttributeError) as exc:
                raise ValueError(f"{where}: key entry {n} is not valid ({exc})") from None
            parsed.keys[entry.key_id] = entry
        tenants = data.get("tenants", {})
        if not isinstance(tenants, dict):
            raise ValueError(f'{where}: "tenants" must be an object of tenant -> limits')
        for tenant, limits in tenants.items():
            validate_tenant(tenant)
            if not isinstance(limits, dict):
                raise ValueError(f"{where}: tenant {tenant!r} must map to an object of limits")
            parsed.tenants[tenant] = TenantLimits.from_json(limits, f"{where}, tenant {tenant!r}")
        return parsed

    def to_json(self) -> dict[str, Any]:
        return {
            "keys": [e.to_json() for e in self.keys.values()],
            "tenants": {t: TenantLimits.to_json(limits) for t, limits in self.tenants.items()},
        }


def read_keys_file(path: Path) -> KeysFile:
    """The keys file at `path`; a file that does not exist yet is empty."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return KeysFile()
    except OSError as e:
        raise ValueError(f"cannot read keys file {path}: {e.strerror}") from None
    return KeysFile.parse(text, f"keys file {path}")


def write_keys_file(path: Path, keys: KeysFile) -> None:
    """Replace the keys file whole (a temporary file renamed over it), readable by its owner only."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(keys.to_json(), f, indent=2)
            f.write("\n")
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o600)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def key_hash(key: str) -> str:
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


def create_key(path: Path, tenant: str, role: Role, name: str = "") -> tuple[KeyEntry, str]:
    """Add a new key to the keys file; returns its entry and the key (shown this once only)."""
    keys = read_keys_file(path)
    validate_tenant(tenant)
    while (key_id := secrets.token_hex(_ID_HEX // 2)) in keys.keys:
        pass
    key = f"{KEY_PREFIX}_{key_id}_{secrets.token_urlsafe(32)}"
    entry = KeyEntry(key_id, tenant, role, key_hash(key), name, round(time.time(), 3))
    keys.keys[key_id] = entry
    write_keys_file(path, keys)
    return entry, key


def revoke_key(path: Path, key_id: str) -> KeyEntry:
    """Remove a key by id (or by the key itself); raises KeyError naming it if there is none."""
    keys = read_keys_file(path)
    key_id = key_id_of(key_id) or key_id
    entry = keys.keys.pop(key_id, None)
    if entry is None:
        raise KeyError(f"no key {key_id!r} in {path}")
    write_keys_file(path, keys)
    return entry


def set_limits(path: Path, tenant: str, limits: dict[str, float]) -> dict[str, float]:
    """Set some of a tenant's limits (names of LIMIT_NAMES, sizes in GB; 0 removes a limit)."""
    keys = read_keys_file(path)
    validate_tenant(tenant)
    merged = dict(keys.tenants.get(tenant, {}))
    merged.update(TenantLimits.from_json(limits, f"tenant {tenant!r}"))
    keys.tenants[tenant] = {k: v for k, v in merged.items() if v}
    write_keys_file(path, keys)
    return keys.tenants[tenant]


def key_id_of(key: str) -> str | None:
    """The id inside a key of the ``lw_<id>_<secret>`` form, else None."""
    parts = key.split("_", 2)
    if len(parts) == 3 and parts[0] == KEY_PREFIX and len(parts[1]) == _ID_HEX and parts[2]:
        return parts[1]
    return None


class KeyRing:
    """The keys the service accepts, from its keys file, re-read when the file changes.

    path None: no keys; every caller is the local tenant's admin. `defaults` are the server's
    quotas, which a tenant's entry in the keys file overrides limit by limit.
    """

    def __init__(self, path: Path | None, defaults: TenantLimits | None = None) -> None:
        self.path = path
        self.defaults = defaults or TenantLimits()
        self._lock = threading.Lock()
        self._seen: tuple[int, int, int] | None = None
        self._keys = KeysFile()
        if path is not None:
            if not path.is_file():
                raise ValueError(
                    f"keys file {path} does not exist (create keys with `longwatch keys create`)"
                )
            self._keys = read_keys_file(path)  # a bad file at start is an error, not a warning
            self._seen = self._stat()
            if not self._keys.keys:
                log.warning("keys file %s holds no key: every call will be refused", path)

    @property
    def enabled(self) -> bool:
        return self.path is not None

    def _stat(self) -> tuple[int, int, int] | None:
        assert self.path is not None
        try:
            st = self.path.stat()
        except OSError:
            return None
        return (st.st_mtime_ns, st.st_size, st.st_ino)

    def _current(self) -> KeysFile:
        """The keys as the file says now (a stat per call; a re-read only when it changed)."""
        if self.path is None:
            return self._keys
        seen = self._stat()
        with self._lock:
            if seen != self._seen:
                self._seen = seen
                try:
                    self._keys = read_keys_file(self.path) if seen is not None else KeysFile()
                    log.info("keys file %s re-read: %d keys", self.path, len(self._keys.keys))
                except ValueError as e:
                    log.error("keeping the keys read before: %s", e)
            return self._keys

    def authenticate(self, authorization: str | None) -> Caller:
        """The caller an ``Authorization`` header value names; raises Unauthenticated."""
        if self.path is None:
            return LOCAL_ADMIN
        if not authorization:
            raise Unauthenticated("this server needs an API key: send `authorization: Bearer <key>`")
        scheme, _, key = authorization.strip().partition(" ")
        key = key.strip()
        if scheme.lower() != "bearer" or not key:
            raise Unauthenticated("the authorization header must be `Bearer <key>`")
        key_id = key_id_of(key)
        entry = self._current().keys.get(key_id) if key_id else None
        # compare_digest against a dummy too, so an unknown id takes as long as a wrong secret
        expected = entry.sha256 if entry is not None else "0" * 64
        if not hmac.compare_digest(key_hash(key), expected) or entry is None:
            raise Unauthenticated("API key not valid (unknown, revoked or mistyped)")
        return Caller(entry.tenant, entry.role, entry.key_id)

    def limits(self, tenant: str) -> TenantLimits:
        values = self._current().tenants.get(tenant, {})
        if not values:
            return self.defaults
        base = {name: getattr(self.defaults, name) for name in TenantLimits.__dataclass_fields__}
        return TenantLimits(**{**base, **values})
