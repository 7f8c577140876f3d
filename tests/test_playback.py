"""Playing the cited span of an archive from its own file: links signed for one stream and a
while, served with HTTP ranges, only from inside the ingest roots, and the page's player."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from service_settings import loopback_settings

from longwatch.clients.client import LongWatchClient
from longwatch.memory.redis_server import EmbeddedRedis
from longwatch.model.train.synthetic import write_video
from longwatch.stream.media import MediaLinks
from longwatch.stream.server import LongWatchServer
from longwatch.stream.settings import SecuritySettings


def test_a_link_names_one_stream_until_it_expires() -> None:
    links = MediaLinks(ttl_s=60)
    token, expires = links.token("acme~cam", now=1000.0)
    assert expires == 1060.0 and links.stream_of(token, now=1059.0) == "acme~cam"
    assert links.stream_of(token, now=1061.0) is None  # expired
    payload, _, signature = token.partition(".")
    forged = MediaLinks(ttl_s=60).token("acme~cam", now=1000.0)[0]
    assert links.stream_of(forged, now=1001.0) is None  # another process' key
    assert links.stream_of(payload + "." + signature[::-1], now=1001.0) is None
    assert links.stream_of("nonsense", now=1001.0) is None


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("archive")
    write_video(folder / "yard.mp4", seconds=24, fps=10, width=320, height=180, seed=8)
    return folder


@pytest.fixture(scope="module")
def server(
    tmp_path_factory: pytest.TempPathFactory, module_redis: EmbeddedRedis, root: Path
) -> Iterator[LongWatchServer]:
    settings = loopback_settings(
        tmp_path_factory.mktemp("state"), module_redis.url, security=SecuritySettings(ingest_roots=(root,))
    )
    with LongWatchServer(settings) as srv:
        with LongWatchClient(f"127.0.0.1:{srv.port}", timeout=60) as c:
            list(c.ingest_file("yard", server_path="yard.mp4"))
            list(c.ingest_file("uploaded", path=root / "yard.mp4"))
        yield srv


def get(server: LongWatchServer, path: str, headers: dict[str, str] | None = None) -> tuple[int, bytes, dict]:
    request = urllib.request.Request(f"http://127.0.0.1:{server.http_port}{path}", headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=30) as r:
            return r.status, r.read(), dict(r.headers)
    except urllib.error.HTTPError as e:
        return e.code, e.read(), dict(e.headers)


def test_an_archive_from_an_ingest_root_plays_by_ranges_and_nothing_else_does(
    server: LongWatchServer, root: Path
) -> None:
    with LongWatchClient(f"127.0.0.1:{server.port}", timeout=60) as c:
        assert c.get_stream("yard").source_path == str((root / "yard.mp4").resolve())
        assert c.get_stream("uploaded").source_path == ""
    status, body, _ = get(server, "/api/streams/yard/video")
    assert status == 200
    url = json.loads(body)["url"]
    content = (root / "yard.mp4").read_bytes()
    status, part, headers = get(server, url, {"Range": "bytes=100-1099"})
    assert status == 206 and part == content[100:1100] and headers["Content-Type"] == "video/mp4"
    assert get(server, url)[1] == content
    status, body, _ = get(server, "/api/streams/uploaded/video")
    assert status == 404 and "no file on the server" in json.loads(body)["error"]
    payload, _, signature = url.removeprefix("/media/").partition(".")
    assert get(server, f"/media/{payload}.{signature[:-2]}AA")[0] == 404  # a forged link
    moved = root / "yard.mp4"
    moved.rename(root / "elsewhere.mp4")
    try:
        assert get(server, url)[0] == 404  # the file is gone: nothing is served
    finally:
        (root / "elsewhere.mp4").rename(moved)


def test_the_page_plays_a_cited_span(server: LongWatchServer) -> None:
    from browser import chromium_driver
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    driver = chromium_driver()
    try:
        driver.get(f"http://127.0.0.1:{server.http_port}/")
        driver.find_element(By.ID, "ask-stream").send_keys("yard")
        driver.find_element(By.ID, "question").send_keys("What appeared?")
        driver.find_element(By.ID, "ask").click()
        WebDriverWait(driver, 30).until(
            lambda d: d.find_elements(By.CSS_SELECTOR, "#evidence li button.play")
        )
        first = driver.find_elements(By.CSS_SELECTOR, "#evidence li")[-1]
        span = first.text  # "▶0:16 – 0:24  ·  score ..."
        first.find_element(By.CSS_SELECTOR, "button.play").click()
        state = "const v = document.getElementById('evidence-video'); return [v.readyState, v.currentTime, v.error && v.error.code];"
        WebDriverWait(driver, 30).until(
            lambda d: d.execute_script(state)[0] >= 1 and d.execute_script(state)[1] > 0
        )
        ready, at, error = driver.execute_script(state)
        start = sum(
            float(p) * 60**i for i, p in enumerate(reversed(span.lstrip("▶").split(" ")[0].split(":")))
        )
        assert error is None and start <= at <= start + 9, (span, at)
    finally:
        driver.quit()
