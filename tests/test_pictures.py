"""Pictures of the cited moments: kept with each chunk, named in Ask's evidence, fetched over gRPC,
HTTP and the CLI, gone with the chunk. Real service, real Redis, real video."""

from __future__ import annotations

import io
import json
import math
import os
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import av
import numpy as np
import pytest
from service_settings import loopback_settings

from longwatch.clients.client import LongWatchClient
from longwatch.memory.redis_server import EmbeddedRedis
from longwatch.model.train.synthetic import write_video
from longwatch.stream.pictures import PictureMode, chosen_frames, encode_picture
from longwatch.stream.server import LongWatchServer
from longwatch.stream.settings import IngestConfig


def decoded_size(image: bytes) -> tuple[int, int]:
    with av.open(io.BytesIO(image)) as container:
        frame = next(container.decode(video=0))
        return frame.width, frame.height


def test_which_frames_get_a_picture() -> None:
    kept = [16, 3, 9, 9, 1, 0, 2, 5]
    assert chosen_frames(PictureMode.parse("chunk"), 40, kept) == [0]
    assert chosen_frames(PictureMode.parse("chunk"), 48, [1, 3, 9, 9, 1, 0, 2, 5]) == [
        2
    ]  # the earliest of equals
    assert chosen_frames(PictureMode.parse("3"), 40, kept) == [2, 5]  # samples 42 and 45
    assert chosen_frames(PictureMode.parse("off"), 40, kept) == []
    for bad in ("0", "-1", "often", ""):
        with pytest.raises(ValueError, match="off, chunk or a whole number"):
            PictureMode.parse(bad)
    rgb = np.random.default_rng(0).integers(0, 256, (720, 1280, 3), dtype=np.uint8)
    image = encode_picture(rgb, 240)
    assert image[:2] == b"\xff\xd8" and decoded_size(image) == (240, 134)  # JPEG, longest side 240


@pytest.fixture(scope="module")
def video(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_video(
        tmp_path_factory.mktemp("v") / "yard.mp4", seconds=40, fps=4, width=320, height=180, seed=6
    )


@pytest.fixture(scope="module")
def server(
    tmp_path_factory: pytest.TempPathFactory, module_redis: EmbeddedRedis
) -> Iterator[LongWatchServer]:
    with LongWatchServer(loopback_settings(tmp_path_factory.mktemp("state"), module_redis.url)) as srv:
        yield srv


def test_each_chunk_keeps_a_picture_that_evidence_names_and_every_surface_returns(
    server: LongWatchServer, video: Path, tmp_path: Path
) -> None:
    with LongWatchClient(f"127.0.0.1:{server.port}", timeout=60) as c:
        final = list(c.ingest_file("yard", path=video))[-1].stream
        frames = c.get_frames("yard", 0, 1e9)
        assert [f.chunk_index for f in frames] == list(range(final.chunks)) == [0, 1, 2, 3, 4]
        assert all(f.image[:2] == b"\xff\xd8" and decoded_size(f.image) == (240, 134) for f in frames)
        spans = {e.chunk_index: e for e in c.ask("yard", "What appeared?", top_k=0).evidence}
        for f in frames:  # each picture lies in its chunk, and the evidence names its time
            assert spans[f.chunk_index].start_s <= f.time_s < spans[f.chunk_index].end_s
            assert spans[f.chunk_index].picture_times_s == (f.time_s,)
        assert [f.time_s for f in c.get_frames("yard", 8, 24)] == [
            f.time_s for f in frames if 8 <= f.time_s <= 24
        ]
        assert len(c.get_frames("yard", 0, 1e9, max_frames=2)) == 2
        near = c.frame_at("yard", frames[3].time_s + 0.4)
        assert near is not None and near.time_s == frames[3].time_s and near.image == frames[3].image
        base = f"http://127.0.0.1:{server.http_port}/api/streams/yard/frames"
        listed = json.loads(urllib.request.urlopen(f"{base}?from=0&to=100", timeout=30).read())["frames"]
        assert [f["time_s"] for f in listed] == [f.time_s for f in frames]
        with urllib.request.urlopen(
            f"http://127.0.0.1:{server.http_port}{listed[1]['url']}", timeout=30
        ) as r:
            assert r.headers["Content-Type"] == "image/jpeg" and r.read() == frames[1].image
        with pytest.raises(urllib.error.HTTPError) as bad:
            urllib.request.urlopen(f"{base}?from=nan", timeout=30)
        assert bad.value.code == 400
        assert final.bytes_stored > sum(len(f.image) for f in frames)  # counted in what the stream stores
    out = tmp_path / "frame.jpg"
    run = subprocess.run(
        [sys.executable, "-m", "longwatch.clients.main", "--server", f"127.0.0.1:{server.port}",
         "show", "yard", "--at", "0:17", "--out", str(out)],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    nearest = min(frames, key=lambda f: abs(f.time_s - 17))
    assert out.read_bytes() == nearest.image and "saved the picture at" in run.stdout


def test_every_nth_frame_or_none(module_redis: EmbeddedRedis, video: Path, tmp_path: Path) -> None:
    for mode, expected in (("3", math.ceil(40 / 3)), ("off", 0)):
        ingest = IngestConfig(
            fps=1.0, frames_per_chunk=8, max_tokens_per_frame=16, pictures=mode, picture_side=160
        )
        settings = loopback_settings(tmp_path / mode, module_redis.url, ingest=ingest)
        with LongWatchServer(settings) as srv, LongWatchClient(f"127.0.0.1:{srv.port}", timeout=60) as c:
            list(c.ingest_file(f"every-{mode}", path=video))
            frames = c.get_frames(f"every-{mode}", 0, 1e9)
            assert len(frames) == expected
            assert all(max(decoded_size(f.image)) == 160 for f in frames)
            if mode == "off":
                assert c.frame_at("every-off", 10) is None


def test_pictures_leave_with_their_chunks(server: LongWatchServer, video: Path) -> None:
    with LongWatchClient(f"127.0.0.1:{server.port}", timeout=60) as c:
        list(c.ingest_file("short-lived", path=video))
        c.set_retention("short-lived", max_bytes=1)
        assert server.sweeper is not None
        server.sweeper.sweep()
        assert c.get_frames("short-lived", 0, 1e9) == []
        assert c.get_stream("short-lived").bytes_stored == 0  # pictures were counted, and went
        c.delete_stream("short-lived")


def test_the_page_shows_the_evidence_as_pictures_on_a_timeline(
    server: LongWatchServer, video: Path, tmp_path: Path
) -> None:
    """After an Ask the strip holds loaded pictures at the cited times; the screenshot is kept
    (in $LONGWATCH_ARTEFACTS when set, else the test's temporary folder)."""
    from browser import chromium_driver
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    with LongWatchClient(f"127.0.0.1:{server.port}", timeout=60) as c:
        if "page-yard" not in {s.stream_id for s in c.list_streams()}:
            list(c.ingest_file("page-yard", path=video))
        expected = c.ask("page-yard", "What appeared?")  # the page asks the same: the same evidence
    times = sorted(t for e in expected.evidence for t in e.picture_times_s)
    assert times
    driver = chromium_driver()
    try:
        driver.get(f"http://127.0.0.1:{server.http_port}/")
        driver.find_element(By.ID, "ask-stream").send_keys("page-yard")
        driver.find_element(By.ID, "question").send_keys("What appeared?")
        driver.find_element(By.ID, "ask").click()
        loaded = "return [...document.querySelectorAll('#evidence-strip img')].filter(i => i.complete && i.naturalWidth > 0).map(i => +i.dataset.time)"  # noqa: E501
        WebDriverWait(driver, 30).until(lambda d: len(d.execute_script(loaded)) == len(times))
        assert sorted(driver.execute_script(loaded)) == times
        captions = [f.text for f in driver.find_elements(By.CSS_SELECTOR, "#evidence-strip figcaption")]
        assert len(captions) == len(times) and all(":" in text for text in captions)
        cited = driver.find_elements(By.CSS_SELECTOR, "#timeline .chunk.cited")
        assert sorted(int(b.get_attribute("data-chunk")) for b in cited) == [
            e.chunk_index for e in expected.evidence
        ]
        assert len(driver.find_elements(By.CSS_SELECTOR, "#timeline .chunk")) == 5
        driver.find_element(By.CSS_SELECTOR, "#evidence-strip img").click()
        WebDriverWait(driver, 10).until(lambda d: d.find_element(By.ID, "lightbox").is_displayed())
        assert driver.execute_script("return document.getElementById('lightbox-image').naturalWidth") > 0
        folder = Path(os.environ.get("LONGWATCH_ARTEFACTS", tmp_path))
        folder.mkdir(parents=True, exist_ok=True)
        shot = folder / "page-evidence.png"
        driver.find_element(By.ID, "lightbox").click()
        driver.save_screenshot(str(shot))
        assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    finally:
        driver.quit()
