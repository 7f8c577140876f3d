"""Files into the service: uploads in pieces (no message-size cap, a per-tenant limit) and
server-side paths only from the ingest roots, over real gRPC on loopback."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from footage import write_noise_video
from service_settings import loopback_settings

from longwatch.clients.client import InvalidArgument, LongWatchClient, LongWatchError, PermissionDenied
from longwatch.memory.redis_server import EmbeddedRedis
from longwatch.model.train.synthetic import write_video
from longwatch.proto import longwatch_pb2 as pb
from longwatch.proto import longwatch_pb2_grpc as pb_grpc
from longwatch.stream.auth import Role, create_key, set_limits
from longwatch.stream.server import LongWatchServer
from longwatch.stream.settings import SecuritySettings


@pytest.fixture(scope="module")
def layout(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """An ingest root with a video, a sub-folder and a symlink leading out; a video outside it."""
    base = tmp_path_factory.mktemp("files")
    root = base / "root"
    (root / "sub").mkdir(parents=True)
    inside = write_video(root / "sub" / "yard.mp4", seconds=16, fps=4, width=160, height=120, seed=1)
    outside = write_video(base / "secret.mp4", seconds=16, fps=4, width=160, height=120, seed=2)
    (root / "escape.mp4").symlink_to(outside)
    (root / "inner-link.mp4").symlink_to(inside)
    big = write_noise_video(base / "big.mp4", seconds=30)
    return {"base": base, "root": root, "inside": inside, "outside": outside, "big": big}


def make_server(
    state: Path, redis_url: str, roots: tuple[Path, ...], keys: Path | None = None
) -> LongWatchServer:
    return LongWatchServer(
        loopback_settings(
            state,
            redis_url,
            max_message_mb=1,  # uploads larger than one message still go, in pieces,
            security=SecuritySettings(ingest_roots=roots, keys_file=keys),
        )
    )


@pytest.fixture(scope="module")
def server(
    tmp_path_factory: pytest.TempPathFactory, module_redis: EmbeddedRedis, layout: dict[str, Path]
) -> Iterator[LongWatchServer]:
    with make_server(tmp_path_factory.mktemp("state"), module_redis.url, (layout["root"],)) as srv:
        yield srv


@pytest.fixture
def client(server: LongWatchServer) -> Iterator[LongWatchClient]:
    with LongWatchClient(f"127.0.0.1:{server.port}", timeout=120) as c:
        yield c


def ingest(c: LongWatchClient, stream_id: str, **source: object) -> list:
    return list(c.ingest_file(stream_id, **source))  # type: ignore[arg-type]


def test_server_side_paths_are_read_only_inside_the_ingest_roots(
    client: LongWatchClient, layout: dict[str, Path]
) -> None:
    root = layout["root"]
    for n, path in enumerate(
        (
            str(layout["inside"]),
            "sub/yard.mp4",
            str(root / "sub" / ".." / "sub" / "yard.mp4"),
            "inner-link.mp4",
        )
    ):
        assert ingest(client, f"in-{n}", server_path=path)[-1].done
        assert client.get_stream(f"in-{n}").source == "file:yard.mp4"
    refused = {}
    for name, path in {
        "outside": str(layout["outside"]),
        "missing-outside": str(layout["base"] / "nothing.mp4"),
        "dotdot": "../secret.mp4",
        "dotdot-absolute": str(root / ".." / "secret.mp4"),
        "symlink-out": "escape.mp4",
        "etc": "/etc/passwd",
    }.items():
        with pytest.raises(PermissionDenied) as denied:
            ingest(client, f"out-{name}", server_path=path)
        refused[name] = str(denied.value)
        # Only the path sent comes back: no resolved path, no symlink's target, no "exists".
        assert refused[name] == f"{path!r} is not inside one of this server's ingest roots"
        assert "secret" not in refused[name] or "secret" in path
    with pytest.raises(InvalidArgument, match="no such file on the server"):
        ingest(client, "in-missing", server_path=str(root / "sub" / "missing.mp4"))
    assert not {s.stream_id for s in client.list_streams()} & {f"out-{n}" for n in refused}


def test_without_roots_no_path_is_read_and_uploads_still_work(
    tmp_path: Path, module_redis: EmbeddedRedis, layout: dict[str, Path]
) -> None:
    with make_server(tmp_path, module_redis.url, ()) as srv, LongWatchClient(f"127.0.0.1:{srv.port}") as c:
        with pytest.raises(PermissionDenied, match="no --ingest-root.*upload the file instead"):
            ingest(c, "nope", server_path=str(layout["inside"]))
        assert ingest(c, "uploaded", path=layout["inside"])[-1].done
        assert c.get_stream("uploaded").source == "file:yard.mp4"


def test_an_upload_larger_than_a_message_goes_in_pieces_and_leaves_nothing_behind(
    server: LongWatchServer, client: LongWatchClient, layout: dict[str, Path]
) -> None:
    big = layout["big"]
    assert big.stat().st_size > 1 << 20  # more than the server takes in one message (1 MB here)
    with grpc.insecure_channel(client.target) as channel, pytest.raises(grpc.RpcError) as one_message:
        request = pb.IngestFileRequest(stream_id="big-whole", data=big.read_bytes())
        list(pb_grpc.LongWatchStub(channel).IngestFile(request, timeout=60))
    assert one_message.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED  # one message is capped
    final = ingest(client, "big", path=big)[-1]
    assert final.done and final.stream.source == "file:big.mp4" and final.stream.chunks == 4
    assert ingest(client, "big-bytes", data=big.read_bytes())[-1].stream.chunks == 4
    spool = server.settings.state_dir / "uploads"
    assert spool.is_dir() and not list(spool.iterdir())


def test_a_tenants_upload_limit_refuses_a_larger_file_and_keeps_nothing(
    tmp_path: Path, module_redis: EmbeddedRedis, layout: dict[str, Path]
) -> None:
    keys = tmp_path / "keys.json"
    _, key = create_key(keys, "small", Role.WRITER)
    set_limits(keys, "small", {"max_upload_gb": 100_000 / 1e9})  # 100 kB
    with (
        make_server(tmp_path / "state", module_redis.url, (), keys) as srv,
        LongWatchClient(f"127.0.0.1:{srv.port}", api_key=key) as c,
    ):
        with pytest.raises(LongWatchError) as refused:
            ingest(c, "too-big", path=layout["big"])
        assert refused.value.code == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "upload limit of 0.0001 GB (max_upload_gb)" in str(refused.value)
        assert c.list_streams() == []
        assert ingest(c, "fits", path=layout["inside"])[-1].done  # 16 s at 160x120: under 100 kB
        assert not list((tmp_path / "state" / "uploads").iterdir())


def test_an_interrupted_upload_resumes_by_uploading_the_same_file_again(
    client: LongWatchClient, layout: dict[str, Path]
) -> None:
    progress = client.ingest_file("resumed", path=layout["big"])
    next(progress)  # one chunk committed, then the client goes away
    progress.close()  # type: ignore[attr-defined]
    deadline = time.monotonic() + 30
    while (record := client.get_stream("resumed")).state != "interrupted" and time.monotonic() < deadline:
        time.sleep(0.05)
    assert record.state == "interrupted" and 1 <= record.chunks < 4
    renamed = layout["base"] / "renamed.mp4"
    os.link(layout["big"], renamed)  # the same bytes under another name: another file to resume
    with pytest.raises(LongWatchError, match="was ingested from file:big.mp4, not file:renamed.mp4"):
        ingest(client, "resumed", path=renamed, resume=True)
    final = ingest(client, "resumed", path=layout["big"], resume=True)[-1]
    assert final.done and final.stream.chunks == 4
