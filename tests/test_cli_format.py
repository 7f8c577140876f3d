"""The client side: output formatting (exact strings), the client's typed results, errors and
retries, and the `longwatch` command run against an in-process fake server (no model, no Redis)."""

from __future__ import annotations

import argparse
import json
import math
from collections.abc import Iterator
from concurrent import futures
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from longwatch.clients import cli, main
from longwatch.clients.client import (
    AlreadyExists,
    AskResult,
    EvidenceSpan,
    InvalidArgument,
    LongWatchClient,
    LongWatchError,
    NotFound,
    RetryPolicy,
    StreamSummary,
    Unavailable,
    ask_request,
    is_loopback_target,
)
from longwatch.clients.format import (
    answer_json,
    format_answer,
    format_bytes,
    format_ingest_summary,
    format_stream,
    format_streams_table,
    format_timestamp,
)
from longwatch.proto import longwatch_pb2 as pb
from longwatch.proto import longwatch_pb2_grpc as pb_grpc
from longwatch.proto.streams import StreamState

# --- format: exact strings ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (0, "0:00"),
        (12, "0:12"),
        (12.5, "0:12.5"),
        (12.04, "0:12"),
        (59.96, "1:00"),
        (600, "10:00"),
        (3599.9, "59:59.9"),
        (3600, "1:00:00"),
        (3723.5, "1:02:03.5"),
        (36000, "10:00:00"),
        (-5, "-0:05"),
        (math.nan, "?"),
        (math.inf, "?"),
    ],
)
def test_format_timestamp(seconds: float, text: str) -> None:
    assert format_timestamp(seconds) == text


@pytest.mark.parametrize(
    ("n", "text"),
    [
        (0, "0 B"),
        (1023, "1023 B"),
        (1024, "1.0 KiB"),
        (1536, "1.5 KiB"),
        (1258291, "1.2 MiB"),
        (1024**2 - 1, "1.0 MiB"),  # 1023.999 KiB would print as "1024.0 KiB"
        (3 * 1024**3, "3.0 GiB"),
        (2048 * 1024**5, "2048.0 PiB"),
    ],
)
def test_format_bytes(n: int, text: str) -> None:
    assert format_bytes(n) == text


def make_result(**changes: Any) -> AskResult:
    result = AskResult(
        answer="A red car parks by the gate.",
        evidence=[EvidenceSpan(12.0, 20.0, 0.8312, 1), EvidenceSpan(3700.0, 3723.5, 0.5, 9)],
        timings={"retrieve_ms": 1.5, "total_ms": 40.0},
        tokens_generated=9,
        model="tiny-videollama3",
        stream_id="cam1",
    )
    return replace(result, **changes)


def make_summary(**changes: Any) -> StreamSummary:
    summary = StreamSummary(
        stream_id="cam1",
        state="ready",
        source="file:cam1.mp4",
        duration_s=125.0,
        frames_decoded=3000,
        frames_sampled=125,
        frames_kept=40,
        tokens_seen=2000,
        tokens_kept=560,
        chunks=16,
        bytes_stored=1258291,
        fps=1.0,
        model="tiny-videollama3",
        created_unix=1.7e9,
        updated_unix=1.7e9 + 60,
        frames_dropped=0,
    )
    return replace(summary, **changes)


def test_format_answer_lists_evidence_under_the_answer() -> None:
    assert format_answer(make_result()) == (
        "A red car parks by the gate.\n  [0:12 - 0:20] score 0.83\n  [1:01:40 - 1:02:03.5] score 0.50"
    )


def test_format_answer_without_evidence_is_the_answer() -> None:
    assert format_answer(make_result(evidence=[])) == "A red car parks by the gate."


def test_answer_json() -> None:
    data = answer_json(make_result())
    assert data == {
        "stream_id": "cam1",
        "answer": "A red car parks by the gate.",
        "evidence": [
            {"start_s": 12.0, "end_s": 20.0, "score": 0.8312, "chunk_index": 1, "picture_times_s": []},
            {"start_s": 3700.0, "end_s": 3723.5, "score": 0.5, "chunk_index": 9, "picture_times_s": []},
        ],
        "timings": {"retrieve_ms": 1.5, "total_ms": 40.0},
        "tokens_generated": 9,
        "model": "tiny-videollama3",
    }
    assert json.loads(json.dumps(data)) == data


def test_format_streams_table() -> None:
    streams = [
        make_summary(),
        make_summary(
            stream_id="lobby-camera",
            state="ingesting",
            duration_s=3723.5,
            frames_kept=7,
            frames_sampled=9,
            tokens_kept=12,
            tokens_seen=144,
            chunks=2,
            bytes_stored=900,
            frames_dropped=3,
        ),
    ]
    assert format_streams_table(streams) == "\n".join(
        [
            "id            state       duration  frames kept/sampled  tokens kept/seen  chunks    bytes  dropped",
            "cam1          ready           2:05               40/125          560/2000      16  1.2 MiB        0",
            "lobby-camera  ingesting  1:02:03.5                  7/9            12/144       2    900 B        3",
        ]
    )


def test_format_streams_table_empty() -> None:
    assert format_streams_table([]) == "no streams"


def test_format_stream() -> None:
    assert format_stream(make_summary()) == "\n".join(
        [
            "stream:    cam1",
            "state:     ready",
            "source:    file:cam1.mp4",
            "duration:  2:05",
            "fps:       1",
            "frames:    40 kept / 125 sampled / 3000 decoded",
            "dropped:   0",
            "lost:      0",
            "tokens:    560 kept / 2000 seen",
            "chunks:    16",
            "stored:    1.2 MiB",
            "retention: keeps everything",
            "model:     tiny-videollama3",
        ]
    )
    aged = make_summary(
        chunks_dropped=4,
        bytes_dropped=300_000,
        bytes_cold=900_000,
        retention_age_s=7 * 86400,
        retention_bytes=2e9,
    )
    lines = format_stream(aged).splitlines()
    assert "chunks:    16 (4 dropped by retention)" in lines
    assert "stored:    1.2 MiB (878.9 KiB on disk; 293.0 KiB dropped)" in lines
    assert "retention: 7 days, 2 GB" in lines


def test_format_ingest_summary() -> None:
    assert format_ingest_summary(make_summary(), elapsed_s=4.25) == (
        "cam1: ready, 2:05 of video in 4.2s, 16 chunks, 40/125 frames kept, "
        "560/2000 tokens kept, 1.2 MiB stored"
    )


# --- client: results, requests, errors, retries ---------------------------------------------


def test_results_from_proto() -> None:
    response = pb.AskResponse(
        stream_id="cam1",
        answer="red",
        evidence=[pb.Evidence(start_s=1.0, end_s=2.0, score=0.83, chunk_index=4)],
        timings=pb.AskTimings(retrieve_ms=1.0, total_ms=5.0),
        tokens_generated=2,
        model="m",
    )
    result = AskResult.from_proto(response)
    assert result.evidence == [EvidenceSpan(1.0, 2.0, 0.83, 4)]  # not float32's 0.8299999833
    assert result.timings == {
        "retrieve_ms": 1.0,
        "load_ms": 0.0,
        "prefill_ms": 0.0,
        "first_token_ms": 0.0,
        "generate_ms": 0.0,
        "total_ms": 5.0,
        "question_ms": 0.0,
        "search_ms": 0.0,
        "repack_ms": 0.0,
    }
    info = pb.StreamInfo(stream_id="cam1", state=pb.STREAM_STATE_INGESTING, chunks=3)
    summary = StreamSummary.from_proto(info)
    assert (summary.stream_id, summary.state, summary.chunks) == ("cam1", "ingesting", 3)
    assert summary.to_json_dict()["state"] == "ingesting"


def test_state_names_and_unknown_states() -> None:
    assert StreamState.from_proto(pb.STREAM_STATE_READY) == "ready"
    assert StreamState.from_proto(pb.STREAM_STATE_UNSPECIFIED) == "unspecified"
    assert StreamState.from_proto(99) == "unspecified"  # a newer server's state these stubs do not know
    assert all(StreamState.from_proto(s.to_proto()) is s for s in StreamState)
    assert f"{StreamState.LIVE}" == "live"


def test_ask_request_leaves_defaults_to_the_server() -> None:
    plain = ask_request("cam1", "q")
    assert not plain.HasField("top_k") and not plain.HasField("time_range") and plain.max_new_tokens == 0
    full = ask_request("cam1", "q", top_k=0, time_range=(5.0, 9.0), max_new_tokens=7)
    assert full.HasField("top_k") and full.top_k == 0
    assert (full.time_range.start_s, full.time_range.end_s) == (5.0, 9.0)


@pytest.mark.parametrize(
    ("target", "local"),
    [
        ("localhost:50051", True),
        ("LOCALHOST", True),
        ("127.0.0.1:50051", True),
        ("127.3.4.5:1", True),
        ("[::1]:50051", True),
        ("::1", True),
        ("ipv4:127.0.0.1:50051", True),
        ("dns:///localhost:50051", True),
        ("unix:/tmp/longwatch.sock", True),
        ("10.0.0.5:50051", False),
        ("gpu-box:50051", False),
        ("[2001:db8::1]:50051", False),
        ("dns:///example.com:443", False),
    ],
)
def test_is_loopback_target(target: str, local: bool) -> None:
    assert is_loopback_target(target) is local


def test_invalid_argument_is_also_a_value_error() -> None:
    with pytest.raises(ValueError, match="exactly one of path=, data= or server_path="):
        LongWatchClient("localhost:1").ingest_file("cam1")


def test_retry_policy_retries_unavailable_only() -> None:
    waits: list[float] = []
    policy = RetryPolicy(attempts=4, backoff_s=0.1, multiplier=2.0, max_backoff_s=0.3, sleep=waits.append)
    calls = iter([Unavailable("down"), Unavailable("down"), Unavailable("down"), "ok"])

    def flaky() -> str:
        outcome = next(calls)
        if isinstance(outcome, Exception):
            raise outcome
        return outcome

    assert policy.call(flaky) == "ok"
    assert waits == pytest.approx([0.1, 0.2, 0.3])
    with pytest.raises(Unavailable):
        RetryPolicy(attempts=2, sleep=waits.append).call(_raiser(Unavailable("down")))
    waits.clear()
    with pytest.raises(NotFound):
        policy.call(_raiser(NotFound("no stream")))
    assert waits == []


def test_retry_policy_rejects_nonsense() -> None:
    with pytest.raises(ValueError, match="attempts must be >= 1, got 0"):
        RetryPolicy(attempts=0)


def _raiser(exc: Exception) -> Any:
    def fn() -> None:
        raise exc

    return fn


# --- a fake server --------------------------------------------------------------------------


def stream_info(stream_id: str, state: int = pb.STREAM_STATE_READY) -> pb.StreamInfo:
    return pb.StreamInfo(
        stream_id=stream_id, state=state, duration_s=3.0, frames_sampled=3, frames_kept=2, chunks=1
    )


@dataclass
class FakeLongWatch(pb_grpc.LongWatchServicer):
    """Answers like the real service would, and records what it was sent."""

    streams: dict[str, pb.StreamInfo] = field(default_factory=lambda: {"cam1": stream_info("cam1")})
    ingested: list[pb.IngestFileRequest] = field(default_factory=list)
    uploaded: list[tuple[pb.UploadStart, bytes]] = field(default_factory=list)  # (start, the file)
    unavailable: dict[str, int] = field(default_factory=dict)  # method -> failures still to give

    def _gate(self, method: str, stream_id: str | None, context: grpc.ServicerContext) -> None:
        if self.unavailable.get(method, 0) > 0:
            self.unavailable[method] -= 1
            context.abort(grpc.StatusCode.UNAVAILABLE, "warming up\nsecond line is dropped")
        if stream_id is not None and stream_id not in self.streams:
            context.abort(grpc.StatusCode.NOT_FOUND, f"no stream {stream_id!r}")

    def IngestFile(self, request: pb.IngestFileRequest, context: grpc.ServicerContext) -> Iterator[Any]:
        if request.stream_id in self.streams:
            context.abort(grpc.StatusCode.ALREADY_EXISTS, f"stream {request.stream_id!r} exists")
        self.ingested.append(request)
        yield from self._progress(request.stream_id)

    def IngestUpload(
        self, requests: Iterator[pb.IngestUploadRequest], context: grpc.ServicerContext
    ) -> Iterator[Any]:
        start = next(requests).start
        if start.stream_id in self.streams:
            context.abort(grpc.StatusCode.ALREADY_EXISTS, f"stream {start.stream_id!r} exists")
        self.uploaded.append((start, b"".join(r.piece for r in requests)))
        yield from self._progress(start.stream_id)

    def _progress(self, stream_id: str) -> Iterator[pb.IngestProgress]:
        for second in (1.0, 2.0):
            yield pb.IngestProgress(stream_id=stream_id, position_s=second, duration_s=3.0)
        info = stream_info(stream_id)
        self.streams[stream_id] = info
        yield pb.IngestProgress(stream_id=stream_id, position_s=3.0, duration_s=3.0, done=True, stream=info)

    def Ask(self, request: pb.AskRequest, context: grpc.ServicerContext) -> pb.AskResponse:
        self._gate("Ask", request.stream_id, context)
        if not request.question:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "question is empty")
        return self._answer(request)

    def AskStream(self, request: pb.AskRequest, context: grpc.ServicerContext) -> Iterator[Any]:
        self._gate("AskStream", request.stream_id, context)
        yield pb.AskStreamResponse(delta="A red ")
        yield pb.AskStreamResponse(delta="car.", response=self._answer(request))

    def _answer(self, request: pb.AskRequest) -> pb.AskResponse:
        span = (
            (request.time_range.start_s, request.time_range.end_s)
            if request.HasField("time_range")
            else (0, 2)
        )
        return pb.AskResponse(
            stream_id=request.stream_id,
            answer="A red car.",
            evidence=[pb.Evidence(start_s=span[0], end_s=span[1], score=0.75, chunk_index=0)],
            timings=pb.AskTimings(total_ms=3.0),
            tokens_generated=request.top_k if request.HasField("top_k") else 4,
            model="fake",
        )

    def GetStream(self, request: pb.GetStreamRequest, context: grpc.ServicerContext) -> pb.StreamInfo:
        self._gate("GetStream", request.stream_id, context)
        return self.streams[request.stream_id]

    def ListStreams(self, request: pb.ListStreamsRequest, context: grpc.ServicerContext) -> Any:
        self._gate("ListStreams", None, context)
        return pb.ListStreamsResponse(streams=list(self.streams.values()))

    def DeleteStream(self, request: pb.DeleteStreamRequest, context: grpc.ServicerContext) -> Any:
        self._gate("DeleteStream", request.stream_id, context)
        del self.streams[request.stream_id]
        return pb.DeleteStreamResponse(keys_deleted=5)


@pytest.fixture
def fake() -> FakeLongWatch:
    return FakeLongWatch()


@pytest.fixture
def server(fake: FakeLongWatch) -> Iterator[str]:
    """The fake on a free loopback port, with the standard health service reporting SERVING."""
    grpc_server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    pb_grpc.add_LongWatchServicer_to_server(fake, grpc_server)
    health_servicer = health.HealthServicer()
    health_servicer.set("", health_pb2.HealthCheckResponse.SERVING)
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, grpc_server)
    port = grpc_server.add_insecure_port("127.0.0.1:0")
    grpc_server.start()
    yield f"127.0.0.1:{port}"
    grpc_server.stop(grace=None)


NO_WAIT = RetryPolicy(attempts=3, sleep=lambda _: None)


# --- client against the fake ----------------------------------------------------------------


def test_client_calls(server: str, fake: FakeLongWatch) -> None:
    with LongWatchClient(server, timeout=5, retry=NO_WAIT) as client:
        client.wait_ready(timeout=5)
        result = client.ask("cam1", "colour?", top_k=2, time_range=(1.0, 4.0))
        assert (result.answer, result.tokens_generated, result.model) == ("A red car.", 2, "fake")
        assert result.evidence == [EvidenceSpan(1.0, 4.0, 0.75, 0)]
        assert [s.stream_id for s in client.list_streams()] == ["cam1"]
        assert client.get_stream("cam1").state == "ready"
        progress = list(client.ingest_file("cam2", data=b"video bytes", fps=2.0))
        assert [p.position_s for p in progress] == [1.0, 2.0, 3.0] and progress[-1].done
        start, data = fake.uploaded[0]
        assert (start.stream_id, start.name, start.fps, data) == ("cam2", "upload", 2.0, b"video bytes")
        assert client.delete_stream("cam2") == 5


def test_ask_stream_yields_deltas_then_result(server: str) -> None:
    with LongWatchClient(server) as client:
        stream = client.ask_stream("cam1", "colour?")
        with pytest.raises(RuntimeError, match="iterated to its end"):
            _ = stream.result
        assert list(stream) == ["A red ", "car."]
        assert stream.result.answer == "A red car."


def test_errors_map_to_the_exception_tree(server: str) -> None:
    with LongWatchClient(server, retry=NO_WAIT) as client:
        with pytest.raises(NotFound, match="^no stream 'nope'$") as caught:
            client.get_stream("nope")
        assert caught.value.code == grpc.StatusCode.NOT_FOUND
        with pytest.raises(InvalidArgument, match="question is empty"):
            client.ask("cam1", "")
        with pytest.raises(AlreadyExists):
            list(client.ingest_file("cam1", server_path="/x.mp4"))
        with pytest.raises(NotFound):
            list(client.ask_stream("nope", "q"))


def test_unavailable_is_retried_on_idempotent_calls_only(server: str, fake: FakeLongWatch) -> None:
    fake.unavailable = {"ListStreams": 2, "DeleteStream": 1}
    with LongWatchClient(server, retry=NO_WAIT) as client:
        assert len(client.list_streams()) == 1
        with pytest.raises(Unavailable, match=f"^{server}: warming up$"):
            client.delete_stream("cam1")
    fake.unavailable = {"GetStream": 3}
    with LongWatchClient(server, retry=NO_WAIT) as client, pytest.raises(Unavailable):
        client.get_stream("cam1")


def test_wait_ready_gives_up_on_a_dead_server() -> None:
    with LongWatchClient("127.0.0.1:1") as client, pytest.raises(Unavailable, match="not serving after 0.3s"):
        client.wait_ready(timeout=0.3)


# --- the command ----------------------------------------------------------------------------


def run_cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main.main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


@pytest.mark.parametrize("command", ["", "serve", "ingest", "ask", "streams", "show", "delete", "demo"])
def test_help_needs_no_server(command: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        main.main([command, "--help"] if command else ["--help"])
    assert exited.value.code == 0
    assert "usage: longwatch" in capsys.readouterr().out


def test_server_flag_works_before_and_after_the_command(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LONGWATCH_SERVER", "envhost:1")
    parser = main.build_parser()
    assert parser.parse_args(["streams"]).server == "envhost:1"
    assert parser.parse_args(["--server", "a:1", "streams"]).server == "a:1"
    assert parser.parse_args(["streams", "--server", "b:2"]).server == "b:2"


@pytest.mark.parametrize(("text", "seconds"), [("90", 90.0), ("1:30", 90.0), ("1:02:03.5", 3723.5)])
def test_parse_seconds(text: str, seconds: float) -> None:
    assert cli.parse_seconds(text) == seconds


@pytest.mark.parametrize("text", ["", "abc", "1:2:3:4", "-5"])
def test_parse_seconds_rejects(text: str) -> None:
    with pytest.raises(argparse.ArgumentTypeError, match="expected seconds"):
        cli.parse_seconds(text)


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["ask", "cam1", "q", "--from", "10"], "--from and --to go together"),
        (["ask", "cam1", "q", "--from", "20", "--to", "10"], "is after --to"),
        (["ask", "cam1", "q", "--json", "--stream"], "not allowed with"),
        (["ingest", "x.mp4"], "--stream"),
    ],
)
def test_usage_errors_exit_2(argv: list[str], message: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        main.main(argv)
    assert exited.value.code == 2
    assert message in capsys.readouterr().err


def test_cli_ask(server: str, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run_cli(
        capsys, "--server", server, "ask", "cam1", "colour?", "--from", "1:00", "--to", "90"
    )
    assert (code, out) == (0, "A red car.\n  [1:00 - 1:30] score 0.75\n")
    code, out, _ = run_cli(capsys, "--server", server, "ask", "cam1", "colour?", "--json", "--top-k", "3")
    data = json.loads(out)
    assert code == 0 and data["answer"] == "A red car." and data["tokens_generated"] == 3
    assert data["evidence"] == [
        {"start_s": 0.0, "end_s": 2.0, "score": 0.75, "chunk_index": 0, "picture_times_s": []}
    ]
    code, out, _ = run_cli(capsys, "--server", server, "ask", "cam1", "colour?", "--stream")
    assert (code, out) == (0, "A red car.\n  [0:00 - 0:02] score 0.75\n")


def test_cli_streams_show_delete(server: str, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run_cli(capsys, "--server", server, "streams")
    assert code == 0 and out.splitlines()[1].split()[:3] == ["cam1", "ready", "0:03"]
    code, out, _ = run_cli(capsys, "--server", server, "streams", "--json")
    assert code == 0 and [s["stream_id"] for s in json.loads(out)] == ["cam1"]
    code, out, _ = run_cli(capsys, "--server", server, "show", "cam1", "--json")
    assert code == 0 and json.loads(out)["state"] == "ready"
    code, out, _ = run_cli(capsys, "--server", server, "delete", "cam1")
    assert (code, out) == (0, "deleted cam1 (5 keys)\n")
    code, out, err = run_cli(capsys, "--server", server, "show", "cam1")
    assert (code, out, err) == (1, "", "error: no stream 'cam1'\n")


def test_cli_ingest_uploads_the_file_in_pieces_or_names_one_on_the_server(
    server: str, fake: FakeLongWatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    video = tmp_path / "clip.mp4"
    content = bytes(range(256)) * 5000  # 1.28 MB: three pieces
    video.write_bytes(content)
    code, out, _ = run_cli(capsys, "--server", server, "ingest", str(video), "--stream", "clip")
    assert code == 0 and out.startswith("clip: ready, 0:03 of video in ")
    assert [(s.stream_id, s.name, data) for s, data in fake.uploaded] == [("clip", "clip.mp4", content)]
    code, _, _ = run_cli(
        capsys, "--server", server, "ingest", "/archive/cam1/day.mp4", "--stream", "there", "--on-server"
    )
    assert code == 0  # not a file here: the server reads it, inside its ingest roots
    sent = {r.stream_id: r for r in fake.ingested}
    assert sent["there"].WhichOneof("source") == "path" and sent["there"].path == "/archive/cam1/day.mp4"


def test_cli_ingest_reports_errors(server: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run_cli(
        capsys, "--server", server, "ingest", str(tmp_path / "missing.mp4"), "--stream", "x"
    )
    assert (code, err) == (1, f"error: no such file: {tmp_path / 'missing.mp4'}\n")
    video = tmp_path / "clip.mp4"
    video.write_bytes(b"x")
    code, _, err = run_cli(capsys, "--server", server, "ingest", str(video), "--stream", "cam1")
    assert (code, err) == (1, "error: stream 'cam1' exists\n")


def test_cli_unreachable_server(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run_cli(capsys, "--server", "127.0.0.1:1", "streams")
    assert code == 1 and out == ""
    assert err.startswith("error: 127.0.0.1:1: ") and err.count("\n") == 1


def test_error_messages_are_one_line() -> None:
    assert str(LongWatchError("x")) == "x" and LongWatchError("x").code == grpc.StatusCode.UNKNOWN


def test_printable_escapes_control_characters_but_keeps_text() -> None:
    from longwatch.clients.format import printable

    assert printable("a red car\nat 0:12\t(left)") == "a red car\nat 0:12\t(left)"
    assert printable("x\x1b[2Jy\x00z\r") == "x\\x1b[2Jy\\x00z\\r"
    assert printable("caf\u00e9 \ufffd") == "caf\u00e9 \\ufffd"


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--top-k", "-1"], "top_k must be a whole number from 0 to 4294967295, got -1"),
        (["--top-k", "5000000000"], "top_k must be a whole number from 0 to 4294967295, got 5000000000"),
        (["--max-new-tokens", "-3"], "max_new_tokens must be a whole number from 0 to 4294967295, got -3"),
    ],
)
def test_values_that_cannot_travel_are_one_line_errors(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = run_cli(capsys, "--server", "127.0.0.1:1", "ask", "cam1", "q?", *argv)
    assert (code, out, err) == (1, "", f"error: {message}\n")


def test_errors_under_json_are_json(capsys: pytest.CaptureFixture[str], server: str) -> None:
    code, out, err = run_cli(capsys, "--server", server, "show", "nope", "--json")
    assert code == 1 and err == ""
    assert json.loads(out) == {"error": "no stream 'nope'", "code": "NOT_FOUND"}
    code, out, _ = run_cli(capsys, "--server", "127.0.0.1:1", "--timeout", "2", "streams", "--json")
    assert code == 1 and json.loads(out)["code"] == "UNAVAILABLE"
