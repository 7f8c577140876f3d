"""What a user's `longwatch serve` does when something fails: the process killed, Redis killed or full,
SIGTERM mid-ingest, a port or state folder in use. Real processes, real redis-servers, real gRPC.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from service_process import ServeProcess, alive, gone

from longwatch.clients.client import LiveFrame, LongWatchClient, LongWatchError, Unavailable
from longwatch.memory.redis_server import EmbeddedRedis
from longwatch.model.train.synthetic import SyntheticFootage, write_video
from longwatch.proto.streams import StreamState

INGEST_FPS = "8"  # sampled from a 10 fps file: enough frames that an ingest takes a few seconds


@pytest.fixture(scope="module")
def footage(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_video(tmp_path_factory.mktemp("video") / "yard.mp4", 240, 10, 320, 180, seed=5)


def chunk_blobs(url: str, stream_id: str) -> dict[int, bytes]:
    """Every committed chunk's stored bytes, by index, read straight from Redis."""
    client = redis.Redis.from_url(url)
    try:
        indices = sorted(int(i) for i in client.hkeys(f"lw:{{{stream_id}}}:spans"))
        vectors = sorted(int(i) for i in client.hkeys(f"lw:{{{stream_id}}}:vectors"))
        assert indices == vectors == list(range(len(indices)))  # no partial chunk, no gap, no duplicate
        return {i: client.get(f"lw:{{{stream_id}}}:chunk:{i}") for i in indices}
    finally:
        client.close()


def redis_url_of(serve: ServeProcess) -> str:
    return serve.wait_for(r"embedded redis-server pid \d+ serving (\S+)", 10).group(1)


def ingest(client: LongWatchClient, path: Path, stream_id: str, resume: bool = False) -> list:
    return list(client.ingest_file(stream_id, path=str(path), fps=float(INGEST_FPS), resume=resume))


@pytest.fixture(scope="module")
def long_footage(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Long enough (some 15 s to ingest here) that a SIGTERM after the first chunk always lands mid-ingest."""
    return write_video(tmp_path_factory.mktemp("video") / "long.mp4", 720, 10, 320, 180, seed=5)


@pytest.fixture(scope="module")
def clean_run(long_footage: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[int, bytes]:
    """The long video ingested in one go: what an interrupted-and-resumed run must equal."""
    with (
        ServeProcess(tmp_path_factory.mktemp("clean")) as serve,
        LongWatchClient(serve.target, timeout=120) as c,
    ):
        ingest(c, long_footage, "yard")
        return chunk_blobs(redis_url_of(serve), "yard")


def test_a_killed_service_starts_again_on_its_state_folder(tmp_path: Path, footage: Path) -> None:
    """kill -9 of serve: its redis-server goes with it, and the next serve starts on the same folder."""
    serve = ServeProcess(tmp_path).start()
    with LongWatchClient(serve.target, timeout=120) as client:
        ingest(client, footage, "yard")
    old_redis = serve.redis_pid
    serve.kill()
    serve.wait()
    assert old_redis is not None and gone(old_redis)
    with ServeProcess(tmp_path) as again, LongWatchClient(again.target, timeout=60) as client:
        assert client.get_stream("yard").state == "ready"  # everything acknowledged is there
        assert client.ask("yard", "What appeared in the video?").evidence
    assert "Traceback" not in serve.output + again.output


def test_a_port_or_state_folder_in_use_is_refused_in_one_line(tmp_path: Path) -> None:
    with ServeProcess(tmp_path / "a") as first:
        for state, why in (
            (tmp_path / "b", "for gRPC (in use?)"),
            (tmp_path / "a", f"in use by longwatch pid {first.proc.pid}"),
        ):
            second = subprocess.run(
                [
                    sys.executable,
                    "-m",
                    "longwatch.clients.main",
                    "serve",
                    "--port",
                    str(first.port),
                    "--http-port",
                    "0",
                ],
                env={**first.env, "LONGWATCH_STATE_DIR": str(state)},
                capture_output=True,
                text=True,
                timeout=120,
            )
            error = second.stderr.strip().splitlines()[-1]
            assert second.returncode == 1 and error.startswith("error: cannot start the service:"), (
                second.stderr
            )
            assert why in error and "Traceback" not in second.stderr
        with LongWatchClient(first.target, timeout=10) as client:
            assert client.list_streams() == []  # the first one still serves, alone


def test_the_demo_runs_beside_a_serve_on_the_same_state_folder(tmp_path: Path) -> None:
    with ServeProcess(tmp_path):
        demo = subprocess.run(
            [sys.executable, "-m", "longwatch.clients.main", "demo"],
            env={**os.environ, "LONGWATCH_STATE_DIR": str(tmp_path)},
            capture_output=True,
            text=True,
            timeout=300,
        )
    assert demo.returncode == 0, demo.stderr[-2000:]
    assert demo.stdout.count("[right]") == 3


def test_sigterm_during_an_ingest_stops_it_cleanly_and_resume_finishes_it(
    tmp_path: Path, long_footage: Path, clean_run: dict[int, bytes]
) -> None:
    serve = ServeProcess(tmp_path).start()
    acked: list[int] = []
    try:
        with LongWatchClient(serve.target, timeout=120) as client, pytest.raises(Unavailable) as stopped:
            for p in client.ingest_file("yard", path=str(long_footage), fps=float(INGEST_FPS)):
                acked.append(p.chunks_committed)
                if len(acked) == 1:
                    serve.kill(signal.SIGTERM)
        assert serve.wait() == 0
    finally:
        serve.stop()  # a failure above leaves no service behind
    message = str(stopped.value)
    assert "the server is stopping: ingest of 'yard' stopped after" in message and "--resume" in message
    assert "\n" not in message
    output = serve.output
    assert "Traceback" not in output and output.count("longwatch stopped") == 1
    with ServeProcess(tmp_path) as again, LongWatchClient(again.target, timeout=120) as client:
        record = client.get_stream("yard")
        assert record.state == StreamState.INTERRUPTED and record.chunks >= acked[-1]
        assert client.ask("yard", "When did it start?").evidence  # what was committed answers
        with pytest.raises(LongWatchError, match="interrupted after .* chunks: resume it"):
            ingest(client, long_footage, "yard")
        progress = ingest(client, long_footage, "yard", resume=True)
        assert progress[-1].done and progress[-1].stream.state == StreamState.READY.to_proto()
        assert chunk_blobs(redis_url_of(again), "yard") == clean_run  # chunk for chunk, byte for byte


def test_a_live_stream_goes_on_after_the_service_is_killed(tmp_path: Path) -> None:
    """IngestFrames with reconnect: the service is killed and restarted; only uncommitted frames are lost."""
    footage = SyntheticFootage(seed=9, width=160, height=120, fps=4.0)
    serve = ServeProcess(tmp_path).start()
    port = serve.port
    progress: list = []
    errors: list[BaseException] = []

    def frames() -> Iterator[LiveFrame]:
        for i in range(400):
            time.sleep(0.01)
            yield LiveFrame(i / 4.0, rgb=footage.frame_at(i))

    def feed() -> None:
        try:
            with LongWatchClient(f"127.0.0.1:{port}") as client:
                progress.extend(client.ingest_frames("porch", frames(), fps=4.0, reconnect_s=120))
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    sender = threading.Thread(target=feed)
    sender.start()
    deadline = time.monotonic() + 60
    while (not progress or progress[-1].chunks_committed < 3) and time.monotonic() < deadline:
        time.sleep(0.05)
    serve.kill()
    serve.wait()
    again = ServeProcess(tmp_path).start(port=port)  # the same address: the sender finds it again
    try:
        sender.join(180)
        assert not sender.is_alive() and not errors, errors
        final = progress[-1]
        assert final.done
        with LongWatchClient(again.target, timeout=60) as client:
            record = client.get_stream("porch")
        blobs = chunk_blobs(redis_url_of(again), "porch")
        assert record.chunks == len(blobs) > 3  # the stream went on past the crash
        # Every sampled frame the service counted is in a chunk, or counted as lost.
        from longwatch.memory.serialization import chunk_from_bytes

        in_chunks = sum(chunk_from_bytes(b).n_frames for b in blobs.values())
        assert record.frames_sampled == in_chunks + record.frames_lost
        assert final.stream.frames_lost == record.frames_lost
    finally:
        again.stop()


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[EmbeddedRedis]:
    """A redis-server the service is given with --redis-url (not its own): the tests kill it."""
    server = EmbeddedRedis(tmp_path / "redis-data")
    server.start()
    try:
        yield server
    finally:
        server.stop()


def test_redis_killed_mid_ingest_and_mid_ask(tmp_path: Path, footage: Path, own_redis: EmbeddedRedis) -> None:
    url = own_redis.url
    with (
        ServeProcess(tmp_path, "--redis-url", url) as serve,
        LongWatchClient(serve.target, timeout=120) as client,
    ):
        ingest(client, footage, "first")
        # Mid-Ask: while Redis is down, a clear UNAVAILABLE; once it is back, answers again.
        os.kill(own_redis.pid, signal.SIGKILL)
        with pytest.raises(Unavailable) as down:
            client.ask("first", "What appeared?")
        assert "redis unavailable" in str(down.value) and "\n" not in str(down.value)
        own_redis.start()  # the same data: its AOF holds every acknowledged write
        assert client.ask("first", "What appeared?").evidence
        # Mid-ingest: Redis dies and comes back; the commits wait it out and the ingest finishes.
        acked: list[int] = []
        for p in client.ingest_file("second", path=str(footage), fps=float(INGEST_FPS)):
            acked.append(p.chunks_committed)
            if len(acked) == 2:
                os.kill(own_redis.pid, signal.SIGKILL)
                threading.Timer(1.5, own_redis.start).start()
        assert client.get_stream("second").state == "ready"
        assert client.get_stream("second").chunks == client.get_stream("first").chunks
        assert chunk_blobs(url, "second").keys() == chunk_blobs(url, "first").keys()
    assert "Traceback" not in serve.output


def test_the_embedded_redis_is_started_again_if_it_dies(tmp_path: Path, footage: Path) -> None:
    with ServeProcess(tmp_path) as serve, LongWatchClient(serve.target, timeout=120) as client:
        ingest(client, footage, "yard")
        old = serve.redis_pid
        os.kill(old, signal.SIGKILL)
        serve.wait_for("embedded redis-server died; starting it again", 10)
        deadline = time.monotonic() + 20
        while True:
            try:
                assert client.ask("yard", "What appeared?").evidence
                break
            except Unavailable:
                assert time.monotonic() < deadline
                time.sleep(0.2)
        assert not alive(old)


def test_redis_at_maxmemory_refuses_writes_clearly_and_reads_go_on(
    tmp_path: Path, footage: Path, own_redis: EmbeddedRedis
) -> None:
    with (
        ServeProcess(tmp_path, "--redis-url", own_redis.url) as serve,
        LongWatchClient(serve.target, timeout=120) as c,
    ):
        ingest(c, footage, "first")
        raw = redis.Redis.from_url(own_redis.url)
        used = int(raw.info("memory")["used_memory"])
        raw.config_set("maxmemory", str(used + 200_000))
        raw.config_set("maxmemory-policy", "noeviction")
        with pytest.raises(LongWatchError) as full:
            ingest(c, footage, "second")
        assert full.value.code.name == "RESOURCE_EXHAUSTED" and "redis is full (maxmemory)" in str(full.value)
        assert c.ask("first", "What appeared?").evidence  # reads keep working
        assert c.get_stream("first").state == "ready"
        second = c.get_stream("second")
        assert second.state == StreamState.INTERRUPTED  # what reached Redis is kept, nothing half-written
        chunk_blobs(own_redis.url, "second")
        raw.config_set("maxmemory", "0")
        ingest(c, footage, "second", resume=True)  # room again: the ingest resumes and finishes
        assert c.get_stream("second").chunks == c.get_stream("first").chunks
        raw.close()


def test_a_full_disk_under_the_state_folder_is_a_clear_error(tmp_path: Path, footage: Path) -> None:
    state = tmp_path / "small"
    state.mkdir()
    mount = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=3m", "tmpfs", str(state)], capture_output=True
    )
    if mount.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here: {mount.stderr.decode().strip()}")
    try:
        with ServeProcess(state) as serve, LongWatchClient(serve.target, timeout=120) as c:
            ingest(c, footage, "first")  # fits
            with open(state / "filler", "wb") as f, pytest.raises(OSError):
                while True:
                    f.write(b"\0" * 65536)
                    f.flush()
            with pytest.raises(LongWatchError) as full:
                for _ in range(20):  # until the AOF write fails and Redis refuses writes
                    ingest(c, footage, f"more-{_}")
            assert full.value.code.name in ("RESOURCE_EXHAUSTED", "UNAVAILABLE")
            assert "\n" not in str(full.value)
            assert c.ask("first", "What appeared?").evidence  # reads keep working
            assert c.get_stream("first").state == "ready"
            (state / "filler").unlink()
        assert "Traceback" not in serve.output
    finally:
        subprocess.run(["umount", "-l", str(state)], capture_output=True)
