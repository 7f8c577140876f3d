"""Tenants and API keys over real gRPC and HTTP on loopback: who may do what, and who sees what.

One server with a keys file holds two tenants, acme and beta, that both own a stream called "cam"
(different videos) and one stream each of their own. Every RPC and every HTTP route is tried
without a key, with a wrong one, with each role, and across tenants.
"""

from __future__ import annotations

import json
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
import redis
from grpc_health.v1 import health_pb2, health_pb2_grpc
from service_settings import loopback_settings

from longwatch.clients.client import (
    LiveFrame,
    LongWatchClient,
    LongWatchError,
    NotFound,
    PermissionDenied,
    Unauthenticated,
    WatchSummary,
)
from longwatch.memory.redis_server import EmbeddedRedis
from longwatch.model.train.synthetic import SyntheticFootage, write_video
from longwatch.stream.auth import KeyRing, Role, create_key, revoke_key
from longwatch.stream.server import LongWatchServer
from longwatch.stream.settings import SecuritySettings, ServiceSettings

ROLES = ("reader", "writer", "admin")


@pytest.fixture(scope="module")
def keys_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("keys") / "keys.json"


@pytest.fixture(scope="module")
def keys(keys_file: Path) -> dict[str, str]:
    """tenant-role -> key, for acme and beta in every role."""
    made = {}
    for tenant in ("acme", "beta"):
        for role in ROLES:
            made[f"{tenant}-{role}"] = create_key(keys_file, tenant, Role.parse(role), f"{tenant} {role}")[1]
    return made


@pytest.fixture(scope="module")
def videos(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("videos")
    return {
        "short": write_video(folder / "short.mp4", seconds=24, fps=4, width=160, height=120, seed=1),
        "long": write_video(folder / "long.mp4", seconds=40, fps=4, width=160, height=120, seed=2),
    }


def settings(state_dir: Path, redis_url: str, security: SecuritySettings) -> ServiceSettings:
    return loopback_settings(
        state_dir,
        redis_url,
        security=security,
    )


@pytest.fixture(scope="module")
def server(
    state_dir: Path,
    module_redis: EmbeddedRedis,
    keys_file: Path,
    keys: dict[str, str],
    videos: dict[str, Path],
) -> Iterator[LongWatchServer]:
    security = SecuritySettings(keys_file=keys_file, ingest_roots=(videos["short"].parent,))
    with LongWatchServer(settings(state_dir, module_redis.url, security)) as srv:
        target = f"127.0.0.1:{srv.port}"
        for tenant, video, own in (("acme", "short", "acme-only"), ("beta", "long", "beta-only")):
            with LongWatchClient(target, timeout=120, api_key=keys[f"{tenant}-writer"]) as c:
                list(c.ingest_file("cam", path=videos[video]))
                list(c.ingest_file(own, path=videos["short"]))
        yield srv


def client(server: LongWatchServer, key: str | None) -> LongWatchClient:
    return LongWatchClient(f"127.0.0.1:{server.port}", timeout=60, api_key=key)


def every_call(c: LongWatchClient, stream_id: str, video: Path) -> dict[str, Any]:
    """Each RPC once, by name, as a thunk: ingests first, delete last (IngestFrames sends one frame)."""
    frame = SyntheticFootage(seed=1, width=64, height=64, fps=1.0).frame_at(0)
    return {
        "IngestFile": lambda: list(c.ingest_file(stream_id, server_path=str(video))),
        "IngestUpload": lambda: list(c.ingest_file(f"{stream_id}-up", path=video)),
        "IngestFrames": lambda: list(c.ingest_frames(f"{stream_id}-live", [LiveFrame(0.0, rgb=frame)])),
        "ListStreams": lambda: c.list_streams(),
        "GetStream": lambda: c.get_stream(stream_id),
        "Ask": lambda: c.ask(stream_id, "What appeared?"),
        "AskStream": lambda: list(c.ask_stream(stream_id, "What appeared?")),
        "AskAcross": lambda: c.ask_across("What appeared?", [stream_id], results=1),
        "GetFrames": lambda: c.get_frames(stream_id, 0, 1e9),
        "Watch": lambda: watch_once(c, stream_id),
        "ListWatches": lambda: c.list_watches(),
        "DeleteWatch": lambda: c.delete_watch(watch_once(c, stream_id).watch_id),
        "SetRetention": lambda: c.set_retention(stream_id, max_age_s=0),
        "DeleteStream": lambda: c.delete_stream(stream_id),
    }


def watch_once(c: LongWatchClient, stream_id: str) -> WatchSummary:
    """A new watch on the stream, its call ended once the server answered (the watch stays)."""
    with c.watch(stream_id, "Did it appear?") as events:
        return events.first()


def test_no_key_or_a_wrong_key_is_unauthenticated_on_every_call_and_health_stays_open(
    server: LongWatchServer, keys: dict[str, str], videos: dict[str, Path]
) -> None:
    wrong = keys["acme-admin"][:-4] + "AAAA"
    for key in (None, wrong, "lw_00000000_nothing", "not a key at all"):
        with client(server, key) as c:
            for name, call in every_call(c, "acme-only", videos["short"]).items():
                with pytest.raises(Unauthenticated) as refused:
                    call()
                assert "\n" not in str(refused.value), name
    with grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:  # a load balancer, no key
        reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=10)
        assert reply.status == health_pb2.HealthCheckResponse.SERVING
    with client(server, keys["acme-admin"]) as c:
        assert c.get_stream("acme-only").chunks > 0  # nothing was lost to the refused calls


def test_each_role_may_do_what_it_may_and_nothing_more(
    server: LongWatchServer, keys: dict[str, str], videos: dict[str, Path]
) -> None:
    readers = {
        "ListStreams",
        "GetStream",
        "Ask",
        "AskStream",
        "AskAcross",
        "GetFrames",
        "Watch",
        "ListWatches",
    }
    writers = readers | {"IngestFile", "IngestUpload", "IngestFrames", "SetRetention", "DeleteWatch"}
    allowed = {"reader": readers, "writer": writers, "admin": writers | {"DeleteStream"}}
    for role in ROLES:
        with client(server, keys[f"acme-{role}"]) as c:
            # Each role's own stream (a reader, who cannot make one, reads acme's)
            calls = every_call(c, "acme-only" if role == "reader" else f"made-by-{role}", videos["short"])
            for name in calls:  # in order: ingests first, delete last
                if name in allowed[role]:
                    calls[name]()
                    continue
                with pytest.raises(PermissionDenied) as refused:
                    calls[name]()
                assert f"may not call {name}: that needs the" in str(refused.value)
                assert f"(acme, {role})" in str(refused.value)
    with client(server, keys["acme-admin"]) as c:
        ids = {s.stream_id for s in c.list_streams()}
        made = {f"made-by-{r}{kind}" for r in ("writer", "admin") for kind in ("", "-up", "-live")}
        assert {"cam", "acme-only"} | made - {"made-by-admin"} <= ids
        assert "made-by-admin" not in ids  # deleted by the admin, who may
        for stream_id in made - {"made-by-admin"}:
            c.delete_stream(stream_id)


def test_a_tenant_never_sees_another_tenants_streams(
    server: LongWatchServer, keys: dict[str, str], videos: dict[str, Path], module_redis: EmbeddedRedis
) -> None:
    with client(server, keys["acme-admin"]) as acme, client(server, keys["beta-admin"]) as beta:
        # Both own a "cam", each its own video: 24 s and 40 s.
        assert acme.get_stream("cam").duration_s < beta.get_stream("cam").duration_s
        assert {s.stream_id for s in acme.list_streams()} >= {"cam", "acme-only"}
        assert "beta-only" not in {s.stream_id for s in acme.list_streams()}
        assert "acme-only" not in {s.stream_id for s in beta.list_streams()}
        assert acme.ask("cam", "When did it end?").evidence[-1].end_s <= 24.5
        # A question across all of one's streams searches one's own only.
        across = acme.ask_across("What appeared?", results=16, max_new_tokens=1)
        assert across.streams_searched == len(acme.list_streams())
        assert {r.stream_id for r in across.results} <= {s.stream_id for s in acme.list_streams()}
        assert "beta" not in str(across)
        # Another tenant's stream is answered exactly as a stream that does not exist.
        for name, call in every_call(acme, "beta-only", videos["short"]).items():
            if name in ("ListStreams", "IngestFile", "IngestUpload", "IngestFrames", "ListWatches"):
                continue
            with pytest.raises(NotFound) as other:
                call()
            with pytest.raises(NotFound) as missing:
                every_call(acme, "no-such-stream", videos["short"])[name]()
            assert str(other.value) == str(missing.value).replace("no-such-stream", "beta-only"), name
        # Ingesting under beta's id makes acme's own stream; beta's is untouched.
        before = beta.get_stream("beta-only")
        list(acme.ingest_file("beta-only", path=videos["long"]))
        assert beta.get_stream("beta-only") == before
        assert acme.get_stream("beta-only").duration_s > before.duration_s
        acme.delete_stream("beta-only")
        assert beta.get_stream("beta-only") == before
    # In Redis the tenant is inside each key's hash tag; the local tenant has none of these.
    raw = redis.Redis.from_url(module_redis.url)
    assert raw.exists("lw:{acme~cam}:stream") and raw.exists("lw:{beta~cam}:stream")
    assert not raw.exists("lw:{cam}:stream")
    assert {k.decode() for k in raw.scan_iter("lw:{beta~cam}:*")} >= {
        "lw:{beta~cam}:stream",
        "lw:{beta~cam}:vectors",
        "lw:{beta~cam}:spans",
        "lw:{beta~cam}:chunk:0",
    }
    raw.close()


def test_a_revoked_key_stops_working_without_a_restart(server: LongWatchServer, keys_file: Path) -> None:
    entry, key = create_key(keys_file, "acme", Role.READER, "temporary")
    with client(server, key) as c:
        assert c.get_stream("cam").chunks > 0
        revoke_key(keys_file, entry.key_id)
        with pytest.raises(Unauthenticated, match="not valid"):
            c.get_stream("cam")


def http(
    server: LongWatchServer, method: str, path: str, key: str | None, body: Any = None
) -> tuple[int, Any]:
    request = urllib.request.Request(
        f"http://127.0.0.1:{server.http_port}{path}",
        data=None if body is None else json.dumps(body).encode(),
        method=method,
        headers={"Content-Type": "application/json", **({"Authorization": f"Bearer {key}"} if key else {})},
    )
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            status, text = response.status, response.read()
    except urllib.error.HTTPError as e:
        status, text = e.code, e.read()
    try:
        return status, json.loads(text)
    except ValueError:
        return status, text


def test_the_http_api_takes_the_same_keys_and_keeps_tenants_apart(
    server: LongWatchServer, keys: dict[str, str]
) -> None:
    ask = {"stream_id": "cam", "question": "What appeared?"}
    for method, path, body in (
        ("GET", "/api/streams", None),
        ("GET", "/api/streams/cam", None),
        ("POST", "/api/ask", ask),
        ("POST", "/offer", {"sdp": "v=0", "type": "offer"}),
    ):
        for key in (None, "lw_00000000_wrong"):
            status, reply = http(server, method, path, key, body)
            assert status == 401 and "error" in reply, (path, reply)
    status, page = http(server, "GET", "/", None)
    assert status == 200 and b"<html" in page.lower()  # the page is open: it asks for the key
    status, streams = http(server, "GET", "/api/streams", keys["acme-reader"])
    assert status == 200 and "beta-only" not in {s["stream_id"] for s in streams}
    assert {"cam", "acme-only"} <= {s["stream_id"] for s in streams}
    status, other = http(server, "GET", "/api/streams/beta-only", keys["acme-reader"])
    status_missing, missing = http(server, "GET", "/api/streams/none-such", keys["acme-reader"])
    assert status == status_missing == 404
    assert other["error"] == missing["error"].replace("none-such", "beta-only")
    status, answer = http(server, "POST", "/api/ask", keys["beta-reader"], ask)
    assert status == 200 and answer["stream_id"] == "cam" and answer["evidence"][-1]["end_s"] > 30
    status, reply = http(server, "POST", "/api/ask", keys["acme-reader"], {**ask, "stream_id": "beta-only"})
    assert status == 404
    status, reply = http(server, "POST", "/offer", keys["acme-reader"], {"sdp": "v=0", "type": "offer"})
    assert status == 403 and "may not send live video" in reply["error"]


def test_the_cli_takes_a_key_from_its_flag_or_environment(
    server: LongWatchServer, keys: dict[str, str], keys_file: Path
) -> None:
    base = [sys.executable, "-m", "longwatch.clients.main", "--server", f"127.0.0.1:{server.port}"]
    run = subprocess.run([*base, "streams", "--json"], capture_output=True, text=True, timeout=60)
    assert run.returncode == 1 and run.stdout.strip()
    error = json.loads(run.stdout)
    assert error["code"] == "UNAUTHENTICATED"
    run = subprocess.run(
        [*base, "--api-key", keys["beta-reader"], "streams", "--json"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert run.returncode == 0, run.stderr
    assert {s["stream_id"] for s in json.loads(run.stdout)} == {"cam", "beta-only"}
    env = {"LONGWATCH_API_KEY": keys["acme-reader"], "PATH": ""}
    run = subprocess.run([*base, "delete", "cam"], capture_output=True, text=True, timeout=60, env=env)
    assert run.returncode == 1 and run.stderr.startswith("error: ") and "needs the admin role" in run.stderr
    # `keys create` prints the key alone on its last line; the key works at once.
    made = subprocess.run(
        [sys.executable, "-m", "longwatch.clients.main", "keys", "create", "--keys-file", str(keys_file),
         "--tenant", "gamma", "--role", "reader"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert made.returncode == 0, made.stderr
    key = made.stdout.strip().splitlines()[-1]
    with client(server, key) as c:
        assert c.list_streams() == []  # a new tenant owns nothing yet
    listed = subprocess.run(
        [sys.executable, "-m", "longwatch.clients.main", "keys", "list", "--keys-file", str(keys_file), "--json"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    entries = json.loads(listed.stdout)["keys"]
    assert "gamma" in {e["tenant"] for e in entries} and key not in listed.stdout
    assert all("sha256" not in e for e in entries)


def test_a_keys_file_that_breaks_keeps_the_last_good_keys(tmp_path: Path) -> None:
    path = tmp_path / "keys.json"
    _, key = create_key(path, "acme", Role.ADMIN)
    ring = KeyRing(path)
    assert ring.authenticate(f"Bearer {key}").tenant == "acme"
    path.write_text("{ half a file")
    assert ring.authenticate(f"Bearer {key}").tenant == "acme"  # logged; the keys before stand
    with pytest.raises(ValueError, match="is not JSON"):
        KeyRing(path)  # at start, a broken file is an error


def test_without_keys_the_local_tenant_sees_only_bare_ids(server: LongWatchServer, tmp_path: Path) -> None:
    """The zero-config default serves the local tenant: streams from before tenants are its own."""
    url = server.redis_url
    with (
        LongWatchServer(settings(tmp_path, url, SecuritySettings())) as local,
        LongWatchClient(f"127.0.0.1:{local.port}", timeout=60) as c,
    ):
        assert all("~" not in s.stream_id for s in c.list_streams())
        assert "cam" not in {s.stream_id for s in c.list_streams()}  # acme's and beta's are theirs
        with pytest.raises(LongWatchError) as bad:
            c.get_stream("acme~cam")  # no id a caller sends names another tenant's stream
        assert bad.value.code == grpc.StatusCode.INVALID_ARGUMENT


def test_the_browser_page_asks_for_the_key_once_and_shows_the_tenants_streams(
    server: LongWatchServer, keys: dict[str, str]
) -> None:
    from browser import chromium_driver
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    driver = chromium_driver()
    try:
        driver.get(f"http://127.0.0.1:{server.http_port}/")
        prompt = WebDriverWait(driver, 30).until(lambda d: d.switch_to.alert)
        assert "API key" in prompt.text
        prompt.send_keys(keys["beta-reader"])
        prompt.accept()
        rows = WebDriverWait(driver, 30).until(
            lambda d: [r.text for r in d.find_elements(By.CSS_SELECTOR, "#streams tr")] if d.find_elements(
                By.CSS_SELECTOR, "#streams tr a") else None
        )  # fmt: skip
        assert {r.split()[0] for r in rows} == {"cam", "beta-only"}
        driver.find_element(By.ID, "ask-stream").send_keys("cam")
        driver.find_element(By.ID, "question").send_keys("What appeared?")
        driver.find_element(By.ID, "ask").click()
        WebDriverWait(driver, 60).until(lambda d: d.find_elements(By.CSS_SELECTOR, "#evidence li"))
    finally:
        driver.quit()
