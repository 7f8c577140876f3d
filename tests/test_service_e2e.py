"""End to end over real gRPC on loopback, a real redis-server, real video files and the real model code."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import grpc
import pytest
import redis
from footage import cut_at_packet, cut_in_half, real_clip, write_audio_only

from longwatch.clients import main
from longwatch.clients.client import (
    AlreadyExists,
    InvalidArgument,
    LongWatchClient,
    LongWatchError,
    NotFound,
)
from longwatch.memory.redis_server import EmbeddedRedis
from longwatch.model.config import ModelConfig
from longwatch.model.loading import DEMO_MODEL_DIR
from longwatch.model.train.needles import make_needle_video, questions_for, seed_for
from longwatch.model.train.synthetic import SyntheticFootage, write_video
from longwatch.stream.server import LongWatchServer
from longwatch.stream.settings import IngestConfig, LiveConfig, ServiceSettings, score_margin_for_model

DEMO_CARD = json.loads((DEMO_MODEL_DIR / "base" / "longwatch.json").read_text())

GENERATED_SECONDS = 240


@pytest.fixture(scope="module")
def videos(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("videos")
    generated = write_video(
        folder / "generated.mp4", seconds=GENERATED_SECONDS, fps=10, width=320, height=180, seed=3
    )
    # Index first: a cut file still opens, decodes for a while, then fails part way through ingest.
    faststart = SyntheticFootage(seed=4, width=320, height=180, fps=10).write(
        folder / "fs.mp4", 120, faststart=True
    )
    bad_text = folder / "notes.mp4"
    bad_text.write_text("this is not a video\n" * 50)
    return {
        "generated": generated,
        "real": real_clip("bikes.mp4"),
        "text": bad_text,
        "audio": write_audio_only(folder / "tone.m4a"),
        "truncated": cut_in_half(generated, folder / "truncated.mp4"),
        "truncated-midway": cut_in_half(faststart, folder / "truncated-midway.mp4"),
        "truncated-on-packet": cut_at_packet(faststart, folder / "truncated-on-packet.mp4"),
    }


def make_settings(state_dir: Path, redis_url: str | None) -> ServiceSettings:
    return ServiceSettings(
        port=0,
        http_port=0,
        redis_url=redis_url,
        state_dir=state_dir,
        workers=4,
        score_margin=0.0,  # plain top-k: these tests count the chunks Ask retrieves
        ingest=IngestConfig(fps=1.0, frames_per_chunk=8, max_tokens_per_frame=16),
        live=LiveConfig(ice_addresses=("127.0.0.1",)),  # WebRTC, unused here, kept on loopback
    )


@pytest.fixture(scope="module")
def server(state_dir: Path, module_redis: EmbeddedRedis) -> Iterator[LongWatchServer]:
    with LongWatchServer(make_settings(state_dir, module_redis.url)) as srv:
        yield srv


@pytest.fixture(scope="module")
def gen_progress(server: LongWatchServer, videos: dict[str, Path]) -> list:
    """The generated video ingested once as stream "gen"; the progress messages it sent."""
    with LongWatchClient(f"127.0.0.1:{server.port}", timeout=120) as c:
        c.wait_ready(timeout=10)
        return list(c.ingest_file("gen", path=str(videos["generated"])))


@pytest.fixture
def gen(gen_progress: list) -> str:
    return "gen"


def stream_keys(redis_url: str, stream_id: str) -> list[bytes]:
    r = redis.Redis.from_url(redis_url)
    try:
        return list(r.scan_iter(match=f"lw:{{{stream_id}}}:*"))
    finally:
        r.close()


def ingest(client: LongWatchClient, stream_id: str, path: Path) -> list:
    return list(client.ingest_file(stream_id, path=str(path)))


def test_ingest_generated_video_and_ask(gen_progress: list, client: LongWatchClient) -> None:
    progress = gen_progress
    assert progress[-1].done and not any(p.done for p in progress[:-1])
    assert [p.chunks_committed for p in progress[:-1]] == sorted(p.chunks_committed for p in progress[:-1])
    info = client.get_stream("gen")
    assert info.state == "ready"
    assert info.frames_sampled == GENERATED_SECONDS
    assert info.chunks == GENERATED_SECONDS // 8
    assert abs(info.duration_s - GENERATED_SECONDS) <= 1.0
    assert 0 < info.tokens_kept < info.tokens_seen  # DiffFP pruned the still scenes
    assert info.bytes_stored > 0

    result = client.ask("gen", "What happens in this video?", top_k=3, max_new_tokens=8)
    assert isinstance(result.answer, str)
    assert 1 <= result.tokens_generated <= 8
    assert len(result.evidence) == 3
    starts = [e.start_s for e in result.evidence]
    assert starts == sorted(starts)
    for e in result.evidence:
        assert 0.0 <= e.start_s < e.end_s <= GENERATED_SECONDS + 1.0
    assert result.timings["total_ms"] >= result.timings["prefill_ms"] > 0


def test_ingest_real_clip_by_upload_and_ask_stream(videos: dict[str, Path], client: LongWatchClient) -> None:
    data = Path(videos["real"]).read_bytes()
    progress = list(client.ingest_file("bikes", data=data, fps=2.0))
    info = progress[-1].stream
    assert progress[-1].done and info.chunks >= 1
    assert info.source == "file:upload"
    stream = client.ask_stream("bikes", "Who is riding?", max_new_tokens=6)
    text = "".join(stream)
    assert text == stream.result.answer
    assert all(0.0 <= e.start_s < e.end_s <= info.duration_s + 1e-6 for e in stream.result.evidence)


def test_time_range_limits_evidence(gen: str, client: LongWatchClient) -> None:
    result = client.ask("gen", "What is on screen?", top_k=8, time_range=(40.0, 80.0), max_new_tokens=2)
    assert result.evidence
    assert all(e.end_s > 40.0 and e.start_s < 80.0 for e in result.evidence)
    with pytest.raises(InvalidArgument, match="overlaps"):
        client.ask("gen", "What is on screen?", time_range=(5000.0, 6000.0))


def test_cli_ask_json_and_streams(
    gen: str, server: LongWatchServer, capsys: pytest.CaptureFixture[str]
) -> None:
    target = f"127.0.0.1:{server.port}"
    assert main.main(["--server", target, "ask", "gen", "Where is the camera?", "--json"]) == 0
    answer = json.loads(capsys.readouterr().out)
    assert isinstance(answer["answer"], str)
    assert answer["evidence"] and {"start_s", "end_s", "score"} <= set(answer["evidence"][0])
    assert main.main(["--server", target, "streams", "--json"]) == 0
    listed = {s["stream_id"]: s for s in json.loads(capsys.readouterr().out)}
    assert listed["gen"]["chunks"] == GENERATED_SECONDS // 8


@pytest.mark.parametrize(
    ("video", "reason"),
    [
        ("text", "not a decodable video"),
        ("audio", "no video stream"),
        ("truncated", "truncated"),
        ("truncated-midway", "truncated"),
        ("truncated-on-packet", "truncated"),
    ],
)
def test_bad_files_are_rejected_and_leave_nothing(
    gen: str,
    videos: dict[str, Path],
    client: LongWatchClient,
    module_redis: EmbeddedRedis,
    video: str,
    reason: str,
) -> None:
    committed_before_failure = []
    with pytest.raises(InvalidArgument, match=reason) as err:
        for p in client.ingest_file(f"bad-{video}", path=str(videos[video])):
            committed_before_failure.append(p.chunks_committed)
    if video.startswith("truncated-"):
        # These fail part way: chunks were committed, then removed with the stream.
        assert committed_before_failure and committed_before_failure[-1] > 0
    assert "\n" not in err.value.message
    assert stream_keys(module_redis.url, f"bad-{video}") == []
    assert f"bad-{video}" not in {s.stream_id for s in client.list_streams()}
    with pytest.raises(NotFound):
        client.ask(f"bad-{video}", "anything?")
    # The service keeps serving what it already holds.
    assert client.ask("gen", "Still there?", max_new_tokens=2).evidence


@pytest.mark.parametrize(
    ("question", "message"),
    [("", "question is empty"), ("   ", "question is empty"), ("x" * 2001, "limit is 2000")],
)
def test_bad_questions(gen: str, client: LongWatchClient, question: str, message: str) -> None:
    with pytest.raises(InvalidArgument, match=message):
        client.ask("gen", question)


def test_bad_requests(gen: str, videos: dict[str, Path], client: LongWatchClient) -> None:
    with pytest.raises(NotFound, match="no stream 'nope'"):
        client.ask("nope", "hello?")
    with pytest.raises(NotFound):
        client.get_stream("nope")
    with pytest.raises(NotFound):
        client.delete_stream("nope")
    with pytest.raises(InvalidArgument, match="stream id"):
        client.ask("has{brace}", "hello?")
    with pytest.raises(InvalidArgument, match="top_k"):
        client.ask("gen", "hello?", top_k=65)  # 0 is valid: every chunk
    with pytest.raises(InvalidArgument, match="no such file"):
        ingest(client, "missing-file", Path("/nonexistent/video.mp4"))
    with pytest.raises(AlreadyExists):
        ingest(client, "gen", Path(videos["generated"]))
    # 2.2e-313 (subnormal, found by the fuzzer) once made a chunk end at infinity: INTERNAL.
    for fps in (61.0, float("nan"), -1.0, float("inf"), 2.2250738585e-313, 0.0009):
        with pytest.raises(InvalidArgument, match=r"fps must be in \[0.001, 60\]"):
            for _ in client.ingest_file("fast", path=str(videos["generated"]), fps=fps):
                pass
    assert client.get_stream("gen").chunks == GENERATED_SECONDS // 8  # the refused re-ingest lost nothing
    assert "fast" not in {s.stream_id for s in client.list_streams()}


def test_restart_keeps_streams_answerable(
    gen: str, server: LongWatchServer, state_dir: Path, module_redis: EmbeddedRedis
) -> None:
    before = {s.stream_id: s for s in LongWatchClient(f"127.0.0.1:{server.port}").list_streams()}
    with (
        LongWatchServer(make_settings(state_dir, module_redis.url)) as second,
        LongWatchClient(f"127.0.0.1:{second.port}", timeout=60) as c,
    ):
        c.wait_ready(timeout=10)
        after = {s.stream_id: s for s in c.list_streams()}
        assert after.keys() == before.keys()
        assert after["gen"].chunks == before["gen"].chunks
        result = c.ask("gen", "What happens?", top_k=2, max_new_tokens=3)
        assert len(result.evidence) == 2


def test_delete_removes_every_key(
    gen: str, videos: dict[str, Path], client: LongWatchClient, module_redis: EmbeddedRedis
) -> None:
    progress = list(client.ingest_file("to-delete", path=str(videos["real"])))
    assert progress[-1].done
    assert stream_keys(module_redis.url, "to-delete")
    other_keys = stream_keys(module_redis.url, "gen")
    assert client.delete_stream("to-delete") > 0
    assert stream_keys(module_redis.url, "to-delete") == []
    assert stream_keys(module_redis.url, "gen") == other_keys
    with pytest.raises(NotFound):
        client.get_stream("to-delete")


def test_embedded_redis_default_persists_across_restarts(videos: dict[str, Path], tmp_path: Path) -> None:
    """No REDIS_URL: the service runs its own redis-server, keeps data in the state dir, reaps it on stop."""
    settings = make_settings(tmp_path, None)
    with LongWatchServer(settings) as first:
        pid = first.redis.pid
        with LongWatchClient(f"127.0.0.1:{first.port}", timeout=60) as c:
            ingest(c, "cam", Path(videos["real"]))
    assert not Path(f"/proc/{pid}").exists() or "zombie" in Path(f"/proc/{pid}/status").read_text()
    with LongWatchServer(settings) as second, LongWatchClient(f"127.0.0.1:{second.port}", timeout=60) as c:
        assert [s.stream_id for s in c.list_streams()] == ["cam"]
        assert c.ask("cam", "What is there?", max_new_tokens=2).evidence


def test_errors_carry_grpc_status(client: LongWatchClient) -> None:
    with pytest.raises(LongWatchError) as err:
        client.get_stream("nope")
    assert err.value.code == grpc.StatusCode.NOT_FOUND


def test_health_and_reflection_are_served(server: LongWatchServer) -> None:
    from grpc_health.v1 import health_pb2, health_pb2_grpc
    from grpc_reflection.v1alpha.proto_reflection_descriptor_database import ProtoReflectionDescriptorDatabase

    with grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        services = set(ProtoReflectionDescriptorDatabase(channel).get_services())
        assert {"longwatch.v1.LongWatch", "grpc.health.v1.Health"} <= services
        check = health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(service="longwatch.v1.LongWatch"), timeout=5
        )
        assert check.status == health_pb2.HealthCheckResponse.SERVING


def test_a_score_margin_leaves_out_chunks_that_only_rank_next(
    module_redis: EmbeddedRedis, tmp_path: Path
) -> None:
    video = make_needle_video(seed_for("eval", 7), 120, 0.5)
    path = video.write(tmp_path / video.file_name)
    settings = replace(
        make_settings(tmp_path / "state", module_redis.url),
        score_margin=None,  # none set: the demo model's card says
        ingest=IngestConfig(fps=1.0, frames_per_chunk=8, max_tokens_per_frame=4),  # the demo model's
    )
    needle = video.needle
    with LongWatchServer(settings) as srv, LongWatchClient(f"127.0.0.1:{srv.port}", timeout=120) as c:
        margin = srv.settings.score_margin
        assert margin == DEMO_CARD["score_margin"] > 0
        c.wait_ready(timeout=10)
        ingest(c, "margin", path)
        question = questions_for(needle)["colour"].question
        result = c.ask("margin", question, top_k=4, max_new_tokens=4)
        best = max(e.score for e in result.evidence)
        assert all(e.score >= best - margin for e in result.evidence)
        assert any(e.start_s <= needle.start_s < e.end_s for e in result.evidence)
        # The demo model scores the needle's chunk far above the other 14: they are left out.
        assert len(result.evidence) < 4
        # top_k 0 still asks for every chunk.
        assert len(c.ask("margin", question, top_k=0, max_new_tokens=1).evidence) == 15
        # A request may set its own margin: 0 keeps all top_k, a negative one is refused.
        assert len(c.ask("margin", question, top_k=4, max_new_tokens=1, score_margin=0.0).evidence) == 4
        with pytest.raises(InvalidArgument, match="score_margin must be >= 0"):
            c.ask("margin", question, score_margin=-1.0)


def test_the_score_margin_served_is_the_one_set_else_the_cards_in_summary_mode() -> None:
    card = {"score_margin": 5.0}
    summary, raw = ServiceSettings(), ServiceSettings(model=ModelConfig(mode="raw"))
    assert score_margin_for_model(summary, card) == 5.0
    assert score_margin_for_model(summary, {}) == 0.0  # a card without one: plain top-k
    assert score_margin_for_model(replace(summary, score_margin=0.0), card) == 0.0  # set: wins
    assert score_margin_for_model(replace(raw, score_margin=2.0), card) == 2.0
    # Keep-raw scores are on another scale: the card's margin is not theirs.
    assert score_margin_for_model(raw, card) == 0.0
    with pytest.raises(ValueError, match="score margin must be >= 0"):
        ServiceSettings(score_margin=-1.0)
    # On the command line: one line, before anything starts.
    assert main.main(["serve", "--score-margin", "-1"]) == 2
