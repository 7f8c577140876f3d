"""TLS on both ports (gRPC and HTTP, WebRTC signalling included), mutual TLS, and the refusal to
serve a public address to anyone: real servers on loopback, certificates the tests make."""

from __future__ import annotations

import json
import ssl
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from certs import Pem, make_ca, make_leaf
from service_settings import loopback_settings

from longwatch.clients.client import LongWatchClient, Unavailable
from longwatch.clients.credentials import Credentials
from longwatch.clients.webrtc import open_source, send_video
from longwatch.memory.redis_server import EmbeddedRedis
from longwatch.model.train.synthetic import write_video
from longwatch.stream.auth import Role, create_key
from longwatch.stream.server import LongWatchServer
from longwatch.stream.settings import (
    SecuritySettings,
    check_exposure,
)


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Pem]:
    folder = tmp_path_factory.mktemp("pki")
    ca = make_ca(folder)
    other_ca = make_ca(folder, "another CA")
    return {
        "ca": ca[0],
        "server": make_leaf(folder, "server", ca, server=True),
        "client": make_leaf(folder, "client", ca, server=False),
        "stranger": make_leaf(folder, "stranger", other_ca, server=False),
    }


@pytest.fixture(scope="module")
def video(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_video(
        tmp_path_factory.mktemp("v") / "yard.mp4", seconds=16, fps=4, width=160, height=120, seed=1
    )


def start(state_dir: Path, redis_url: str, security: SecuritySettings) -> LongWatchServer:
    return LongWatchServer(
        loopback_settings(
            state_dir,
            redis_url,
            security=security,
        )
    ).start()


@pytest.fixture(scope="module")
def tls_server(
    tmp_path_factory: pytest.TempPathFactory, module_redis: EmbeddedRedis, pki: dict[str, Pem]
) -> Iterator[tuple[LongWatchServer, str]]:
    """TLS and keys together, as a deployment would run: (server, a writer's key)."""
    keys = tmp_path_factory.mktemp("keys") / "keys.json"
    _, key = create_key(keys, "acme", Role.WRITER)
    security = SecuritySettings(keys_file=keys, tls_cert=pki["server"].cert, tls_key=pki["server"].key)
    server = start(tmp_path_factory.mktemp("state"), module_redis.url, security)
    yield server, key
    server.stop()


def https_get(url: str, context: ssl.SSLContext | None, key: str | None = None) -> tuple[int, object]:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    request = urllib.request.Request(url, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=30, context=context) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def test_grpc_and_http_over_tls_with_a_key(
    tls_server: tuple[LongWatchServer, str], pki: dict[str, Pem], video: Path
) -> None:
    server, key = tls_server
    target = f"127.0.0.1:{server.port}"
    creds = Credentials(api_key=key, tls_ca=pki["ca"].cert)
    with LongWatchClient(target, timeout=60, credentials=creds) as c:
        list(c.ingest_file("yard", path=video))
        assert c.ask("yard", "What appeared?").evidence
    # Without TLS, or trusting another CA, nothing gets through.
    with LongWatchClient(target, timeout=10, api_key=key) as plain, pytest.raises(Unavailable):
        plain.get_stream("yard")
    wrong_ca = Credentials(api_key=key, tls_ca=pki["stranger"].cert)
    with LongWatchClient(target, timeout=10, credentials=wrong_ca) as c, pytest.raises(Unavailable):
        c.get_stream("yard")
    base = f"127.0.0.1:{server.http_port}/api/streams"
    status, streams = https_get(f"https://{base}", creds.ssl_context(), key)
    assert status == 200 and [s["stream_id"] for s in streams] == ["yard"]
    status, _ = https_get(f"https://{base}", creds.ssl_context())
    assert status == 401
    with pytest.raises((urllib.error.URLError, ConnectionError)):
        https_get(f"http://{base}", None, key)  # plain HTTP to a TLS port


def test_a_webrtc_sender_signals_over_https_with_its_key(
    tls_server: tuple[LongWatchServer, str], pki: dict[str, Pem]
) -> None:
    server, key = tls_server
    creds = Credentials(api_key=key, tls_ca=pki["ca"].cert)
    result = send_video(
        f"127.0.0.1:{server.http_port}",
        open_source(test_pattern=True),
        "pattern",
        seconds=3.0,
        ice_addresses=("127.0.0.1",),
        credentials=creds,
    )
    assert result.frames_sent > 0 and result.stream["stream_id"] == "pattern"
    with LongWatchClient(f"127.0.0.1:{server.port}", timeout=30, credentials=creds) as c:
        assert c.get_stream("pattern").source == "live:webrtc"


def test_mutual_tls_takes_only_clients_with_a_certificate_from_its_ca(
    tmp_path: Path, module_redis: EmbeddedRedis, pki: dict[str, Pem]
) -> None:
    security = SecuritySettings(
        tls_cert=pki["server"].cert, tls_key=pki["server"].key, tls_client_ca=pki["ca"].cert
    )
    server = start(tmp_path, module_redis.url, security)
    try:
        target = f"127.0.0.1:{server.port}"
        ca = pki["ca"].cert
        good = Credentials(tls_ca=ca, client_cert=pki["client"].cert, client_key=pki["client"].key)
        with LongWatchClient(target, timeout=30, credentials=good) as c:
            c.list_streams()
        for creds in (
            Credentials(tls_ca=ca),  # no certificate
            Credentials(tls_ca=ca, client_cert=pki["stranger"].cert, client_key=pki["stranger"].key),
        ):
            with LongWatchClient(target, timeout=10, credentials=creds) as c, pytest.raises(Unavailable):
                c.list_streams()
        url = f"https://127.0.0.1:{server.http_port}/api/streams"
        assert https_get(url, good.ssl_context())[0] == 200
        with pytest.raises((urllib.error.URLError, ssl.SSLError, ConnectionError)):
            https_get(url, Credentials(tls_ca=ca).ssl_context())
    finally:
        server.stop()


def test_a_public_address_with_neither_keys_nor_tls_is_refused_in_one_line(tmp_path: Path) -> None:
    for host in ("127.0.0.1", "::1", "localhost"):
        check_exposure(host, SecuritySettings())
    for allowed in (
        SecuritySettings(keys_file=tmp_path / "keys.json"),
        SecuritySettings(tls_cert=tmp_path / "c.pem", tls_key=tmp_path / "k.pem"),
        SecuritySettings(insecure=True),
    ):
        check_exposure("0.0.0.0", allowed)
    # Refused before anything binds or starts: no port is opened here.
    run = subprocess.run(
        [sys.executable, "-m", "longwatch.clients.main", "serve", "--host", "0.0.0.0", "--port", "0"],
        env={"LONGWATCH_STATE_DIR": str(tmp_path), "PATH": ""},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 1 and "Traceback" not in run.stderr
    error = run.stderr.strip().splitlines()[-1]
    assert error.startswith("error: cannot start the service: refusing to listen on 0.0.0.0"), run.stderr
    assert "--insecure" in error and not (tmp_path / "redis").exists()
