"""Ask across streams over real gRPC, HTTP and the CLI: six streams of the demo model's footage, a
needle in one; the question finds that stream first and answers from the needle's chunk."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from service_settings import loopback_settings

from longwatch.clients import main
from longwatch.clients.client import InvalidArgument, LongWatchClient, NotFound
from longwatch.memory.redis_server import EmbeddedRedis
from longwatch.memory.store import open_store
from longwatch.model.train.needles import NeedleVideo, make_needle_video, questions_for, seed_for
from longwatch.model.train.synthetic import SyntheticFootage
from longwatch.proto.streams import StreamRecord, StreamState
from longwatch.stream.server import LongWatchServer
from longwatch.stream.settings import IngestConfig

SECONDS = 120
HAYSTACKS = [f"hay{k}" for k in range(5)]


@pytest.fixture(scope="module")
def needle() -> NeedleVideo:
    return make_needle_video(seed_for("eval", 900), SECONDS, 0.5)


@pytest.fixture(scope="module")
def server(
    tmp_path_factory: pytest.TempPathFactory, module_redis: EmbeddedRedis, needle: NeedleVideo
) -> Iterator[LongWatchServer]:
    folder = tmp_path_factory.mktemp("across")
    settings = loopback_settings(
        folder / "state",
        module_redis.url,
        score_margin=None,  # the demo model's card
        ingest=IngestConfig(fps=1.0, frames_per_chunk=8, max_tokens_per_frame=4),  # the demo model's
    )
    with LongWatchServer(settings) as srv, connect(srv) as c:
        for k, stream_id in enumerate(HAYSTACKS):
            footage = SyntheticFootage(seed_for("eval", 500 + k), 56, 56, 1.0)
            list(c.ingest_file(stream_id, path=footage.write(folder / f"{stream_id}.mp4", SECONDS)))
        list(c.ingest_file("needle", path=needle.write(folder / needle.file_name)))
        yield srv


def connect(server: LongWatchServer) -> LongWatchClient:
    c = LongWatchClient(f"127.0.0.1:{server.port}", timeout=120)
    c.wait_ready(timeout=10)
    return c


def test_the_stream_that_saw_it_comes_first_with_its_answer(
    server: LongWatchServer, needle: NeedleVideo
) -> None:
    with connect(server) as c:
        for qa in questions_for(needle.needle).values():
            result = c.ask_across(qa.question, max_new_tokens=8)
            assert result.streams_searched == 6 and result.skipped == []
            assert len(result.results) == 3  # the server's default
            scores = [r.score for r in result.results]
            assert scores == sorted(scores, reverse=True)
            best = result.results[0]
            assert best.stream_id == "needle", [(r.stream_id, r.score) for r in result.results]
            assert best.result.answer == qa.answer
            assert any(e.start_s <= needle.needle.start_s < e.end_s for e in best.result.evidence)
            assert best.score == max(e.score for e in best.result.evidence)
            # Each result is what Ask on that stream answers (the same retrieval, the same chunks).
            alone = c.ask(best.stream_id, qa.question, max_new_tokens=8)
            assert alone.answer == best.result.answer
            assert [e.chunk_index for e in alone.evidence] == [e.chunk_index for e in best.result.evidence]
            assert 0 < result.timings["first_token_ms"] <= result.timings["total_ms"]


def test_named_streams_only_and_the_time_range_in_each(server: LongWatchServer, needle: NeedleVideo) -> None:
    question = questions_for(needle.needle)["what"].question
    with connect(server) as c:
        result = c.ask_across(question, ["hay1", "hay3", "hay1"], results=16, max_new_tokens=2)
        assert result.streams_searched == 2
        assert sorted(r.stream_id for r in result.results) == ["hay1", "hay3"]
        # A time range before the needle: the needle stream is searched there only.
        before = (0.0, needle.needle.start_s - 16)
        result = c.ask_across(question, results=6, time_range=before, max_new_tokens=2)
        assert len(result.results) == 6
        for r in result.results:
            assert all(e.start_s < before[1] for e in r.result.evidence)


def test_bad_requests_are_refused_and_unready_streams_skipped(
    server: LongWatchServer, module_redis: EmbeddedRedis
) -> None:
    with connect(server) as c:
        with pytest.raises(NotFound, match="no stream 'nope'"):
            c.ask_across("What appeared in the video?", ["hay0", "nope"])
        with pytest.raises(InvalidArgument, match=r"results must be in 1\.\.16"):
            c.ask_across("What appeared in the video?", results=17)
        with pytest.raises(InvalidArgument, match="question is empty"):
            c.ask_across("   ")
        with pytest.raises(InvalidArgument, match="top_k 0"):
            c.ask_across("What appeared in the video?", top_k=0)
        # A stream with nothing committed yet (an ingest that just began) is skipped, and said so.
        store = open_store(module_redis.url)
        try:
            store.create_stream(StreamRecord("starting", source="file:x.mp4", state=StreamState.INGESTING))
            result = c.ask_across("What appeared in the video?", max_new_tokens=1)
            assert result.streams_searched == 6
            assert [sid for sid, _ in result.skipped] == ["starting"]
            assert "no committed chunks yet" in result.skipped[0][1]
        finally:
            store.delete_stream("starting")
            store.close()
        assert c.get_stream("needle").chunks == SECONDS // 8  # refusals changed nothing


def test_the_cli_and_the_http_api_answer_across_streams(
    server: LongWatchServer, needle: NeedleVideo, capsys: pytest.CaptureFixture[str]
) -> None:
    qa = questions_for(needle.needle)["colour"]
    target = ["--server", f"127.0.0.1:{server.port}"]
    assert main.main([*target, "ask", "--all", qa.question, "--json", "--results", "2"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert [r["stream_id"] for r in printed["results"]][0] == "needle"
    first = printed["results"][0]
    assert (
        first["answer"] == qa.answer and first["evidence"] and first["score"] > printed["results"][1]["score"]
    )
    assert main.main([*target, "ask", "--streams", "needle,hay0", qa.question]) == 0
    text = capsys.readouterr().out
    assert text.startswith(f"1. needle (score {first['score']:.2f}): {qa.answer}\n")
    assert "2 streams searched" in text
    # Usage errors are the CLI's own, before any call.
    with pytest.raises(SystemExit):
        main.main([*target, "ask", "needle", "--all", qa.question])

    status, reply = post(server, {"streams": [], "question": qa.question, "results": 2, "max_new_tokens": 4})
    assert status == 200
    assert [r["stream_id"] for r in reply["results"]][0] == "needle"
    assert reply["results"][0]["answer"] == qa.answer and reply["streams_searched"] == 6
    status, reply = post(server, {"streams": "needle", "question": qa.question})
    assert status == 400 and "streams must be a list" in reply["error"]
    status, reply = post(server, {"streams": ["nope"], "question": qa.question})
    assert status == 404 and "nope" in reply["error"]


def post(server: LongWatchServer, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
    request = urllib.request.Request(
        f"http://127.0.0.1:{server.http_port}/api/ask",
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json"},
        method="POST",
    )
    try:
        with urllib.request.urlopen(request, timeout=60) as reply:
            return reply.status, json.loads(reply.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def test_a_stream_made_after_the_indexes_loaded_is_searched(server: LongWatchServer, tmp_path: Path) -> None:
    """A stream made after every index was loaded is searched by the next question."""
    with connect(server) as c:
        c.ask_across("What appeared in the video?", max_new_tokens=1)  # every index loaded
        video = make_needle_video(seed_for("eval", 903), 64, 0.5)
        list(c.ingest_file("late", path=video.write(tmp_path / video.file_name)))
        try:
            result = c.ask_across(questions_for(video.needle)["what"].question, max_new_tokens=8)
            assert result.streams_searched == 7
            # Both needle streams saw something; each answers from its needle's chunk.
            assert {r.stream_id for r in result.results[:2]} == {"late", "needle"}
            late = next(r.result for r in result.results if r.stream_id == "late")
            assert any(e.start_s <= video.needle.start_s < e.end_s for e in late.evidence)
        finally:
            c.delete_stream("late")
