"""Links to play an archive's own file in the browser page, for looking at an answer's cited span.

A <video> element cannot send an API key, so the page asks for a link (with its key, as a reader of
the stream) and gets a URL whose token names the stream and an expiry, signed with a key this
process drew at start: it reaches that one file, until it expires or the service restarts. The
file must still be a regular file inside an ingest root when played; aiohttp serves it with HTTP
ranges, so the player seeks without reading the file from its start.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets
import time

LINK_TTL_S = 3600.0


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


class MediaLinks:
    def __init__(self, ttl_s: float = LINK_TTL_S) -> None:
        self._key = secrets.token_bytes(32)
        self.ttl_s = ttl_s

    def _sign(self, payload: str) -> str:
        return _b64(hmac.new(self._key, payload.encode(), hashlib.sha256).digest())

    def token(self, stored_id: str, now: float | None = None) -> tuple[str, float]:
        """A token for one stream's file, and when it expires (unix seconds)."""
        expires = round((time.time() if now is None else now) + self.ttl_s)
        payload = _b64(json.dumps([stored_id, expires]).encode())
        return f"{payload}.{self._sign(payload)}", float(expires)

    def stream_of(self, token: str, now: float | None = None) -> str | None:
        """The stored id a token names, or None if it is forged, damaged or expired."""
        payload, _, signature = token.partition(".")
        if not hmac.compare_digest(self._sign(payload), signature):
            return None
        try:
            stored_id, expires = json.loads(_unb64(payload))
        except (ValueError, TypeError):
            return None
        if not isinstance(stored_id, str) or (time.time() if now is None else now) > float(expires):
            return None
        return stored_id
