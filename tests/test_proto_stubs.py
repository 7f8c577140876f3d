"""The committed gRPC stubs are what the generator makes from longwatch.proto, and they import."""

from __future__ import annotations

import dataclasses
import importlib.util
import shutil
from pathlib import Path

import grpc
import pytest

from longwatch.proto import generate

needs_protoc = pytest.mark.skipif(
    importlib.util.find_spec("grpc_tools") is None,
    reason="grpcio-tools (a dev dependency) generates the stubs",
)

SERVICE_METHODS = {
    "IngestFile",
    "IngestUpload",
    "IngestFrames",
    "Ask",
    "AskStream",
    "AskAcross",
    "Watch",
    "ListWatches",
    "DeleteWatch",
    "GetStream",
    "ListStreams",
    "DeleteStream",
    "SetRetention",
    "GetFrames",
}


@needs_protoc
def test_committed_stubs_are_current() -> None:
    stale = generate.stale_stubs()
    assert not stale, (
        f"proto/{', '.join(stale)} out of date with proto/longwatch.proto; run `{generate.FIX_COMMAND}`"
    )


@needs_protoc
def test_generation_is_reproducible_and_path_free(tmp_path: Path) -> None:
    first = generate.generate(tmp_path / "a")
    second = generate.generate(tmp_path / "b")
    for a, b in zip(first, second, strict=True):
        assert a.read_bytes() == b.read_bytes(), a.name
        text = a.read_text(encoding="utf-8")
        assert str(tmp_path) not in text and str(generate.PROTO_DIR) not in text, a.name


def test_grpc_stub_imports_its_sibling_relatively() -> None:
    text = (generate.PROTO_DIR / "longwatch_pb2_grpc.py").read_text(encoding="utf-8")
    assert "from . import longwatch_pb2 as longwatch__pb2" in text
    assert "\nimport longwatch_pb2" not in text


@needs_protoc
def test_check_reports_a_stale_stub(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    for name in generate.STUB_NAMES:
        shutil.copy(generate.PROTO_DIR / name, tmp_path / name)
    (tmp_path / "longwatch_pb2.pyi").write_text("# edited by hand\n", encoding="utf-8")
    assert generate.stale_stubs(tmp_path) == ["longwatch_pb2.pyi"]
    assert generate.check(tmp_path) == 1
    err = capsys.readouterr().err
    assert "longwatch_pb2.pyi" in err and generate.FIX_COMMAND in err


@needs_protoc
def test_check_passes_on_committed_stubs(capsys: pytest.CaptureFixture[str]) -> None:
    assert generate.main(["--check"]) == 0
    assert "up to date" in capsys.readouterr().out


def test_service_has_every_method() -> None:
    from longwatch.proto import longwatch_pb2 as pb
    from longwatch.proto import longwatch_pb2_grpc as pb_grpc

    service = pb.DESCRIPTOR.services_by_name["LongWatch"]
    assert set(service.methods_by_name) == SERVICE_METHODS
    streaming = {m.name for m in service.methods if m.server_streaming}
    assert streaming == {"IngestFile", "IngestUpload", "IngestFrames", "AskStream", "Watch"}
    assert {m.name for m in service.methods if m.client_streaming} == {"IngestUpload", "IngestFrames"}
    with grpc.insecure_channel("localhost:1") as channel:  # never connected: stubs are lazy
        stub = pb_grpc.LongWatchStub(channel)
        assert all(callable(getattr(stub, name)) for name in SERVICE_METHODS)
    assert all(hasattr(pb_grpc.LongWatchServicer, name) for name in SERVICE_METHODS)


def test_messages_round_trip() -> None:
    from longwatch.proto import longwatch_pb2 as pb

    request = pb.AskRequest(stream_id="cam1", question="what?", top_k=3)
    request.time_range.CopyFrom(pb.TimeRange(start_s=1.0, end_s=2.0))
    parsed = pb.AskRequest.FromString(request.SerializeToString())
    assert parsed.HasField("top_k") and parsed.top_k == 3
    assert parsed.time_range.end_s == 2.0
    assert not pb.AskRequest(stream_id="cam1").HasField("top_k")


def test_the_stream_record_is_stream_info_field_for_field() -> None:
    """StreamRecord (proto/streams.py) is the one Python form of StreamInfo: the same fields by name."""
    from longwatch.proto import longwatch_pb2 as pb
    from longwatch.proto.streams import StreamRecord, StreamState

    assert {f.name for f in dataclasses.fields(StreamRecord)} == set(pb.StreamInfo.DESCRIPTOR.fields_by_name)
    record = StreamRecord(
        "cam1", "file:a.mp4", StreamState.LIVE, 2.0, "m@x", 1.0, 2.0, 9, 8, 7, 6, 5, 4, 3, 2, 1.5, "int8"
    )
    assert StreamRecord.from_proto(record.to_proto()) == record
    assert record.to_proto().state == pb.STREAM_STATE_LIVE
