"""Standing questions over real gRPC, a real redis-server and the demo model: events when a chunk
answers, kept in Redis across restarts and replicas, resumed without gaps or repeats, and
delivered to a webhook (a real HTTP server on loopback) through its failures."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import grpc
import pytest
from service_settings import loopback_settings

from longwatch.clients import main
from longwatch.clients.client import (
    InvalidArgument,
    LiveFrame,
    LongWatchClient,
    LongWatchError,
    NotFound,
    WatchEvent,
    WatchEvents,
)
from longwatch.model.train.needles import NeedleVideo, make_needle_video, seed_for
from longwatch.model.train.synthetic import SyntheticFootage
from longwatch.stream.server import LongWatchServer
from longwatch.stream.settings import IngestConfig, ServiceSettings
from longwatch.stream.watching import answer_matches, cannot_match

QUESTION = "What appeared in the video?"  # the demo model knows no yes/no question: match its answer
WAIT_S = 60


def settings(state_dir: Path, redis_url: str) -> ServiceSettings:
    return loopback_settings(
        state_dir,
        redis_url,
        ingest=IngestConfig(fps=1.0, frames_per_chunk=8, max_tokens_per_frame=4),  # the demo model's
    )


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("watch")


@pytest.fixture(scope="module")
def needles(folder: Path) -> list[tuple[NeedleVideo, Path]]:
    # Needles at 19-20 s for 1-3 s: inside chunk 2 (16-24 s), so one chunk sees each.
    videos = [make_needle_video(seed_for("eval", 900 + k), 100, 0.2) for k in range(3)]
    return [(v, v.write(folder / v.file_name)) for v in videos]


@pytest.fixture(scope="module")
def haystack(folder: Path) -> Path:
    return SyntheticFootage(seed_for("eval", 500), 56, 56, 1.0).write(folder / "hay.mp4", 100)


@pytest.fixture
def server(tmp_path: Path, redis_url: str) -> Iterator[LongWatchServer]:
    with LongWatchServer(settings(tmp_path / "a", redis_url)) as srv:
        yield srv


def connect(server: LongWatchServer | list[LongWatchServer]) -> LongWatchClient:
    servers = server if isinstance(server, list) else [server]
    c = LongWatchClient([f"127.0.0.1:{s.port}" for s in servers], timeout=120)
    c.wait_ready(timeout=10)
    return c


def collect(events: WatchEvents, into: list[WatchEvent]) -> threading.Thread:
    def read() -> None:
        for event in events:
            into.append(event)

    thread = threading.Thread(target=read, daemon=True)
    thread.start()
    return thread


def wait_for(condition: Any, what: str) -> None:
    deadline = time.monotonic() + WAIT_S
    while not condition():
        assert time.monotonic() < deadline, f"no {what} in {WAIT_S} s"
        time.sleep(0.1)


def test_answers_match_by_their_first_words() -> None:
    assert answer_matches("Yes.", "yes") and answer_matches("yes, a red circle", "YES")
    assert not answer_matches("no", "yes") and not answer_matches("yesterday", "yes")
    assert answer_matches("a red circle", "a red circle") and not answer_matches("a red", "a red circle")
    # Decoding stops as soon as a finished word differs: a word still being written may go on.
    assert cannot_match("no", "yes") is False  # its last word may still grow ("no" ... "noon")
    assert cannot_match("no ", "yes") and cannot_match("no,", "yes")
    assert not cannot_match("ye", "yes") and not cannot_match("yes, a", "yes")
    assert cannot_match("a blue ", "a red circle") and not cannot_match("a red ci", "a red circle")


def test_a_model_that_says_what_it_saw_first_is_matched_by_its_answers_last_words() -> None:
    assert answer_matches("a red circle, yes", "yes", verdict_last=True)
    assert answer_matches("The digit 7, YES.", "yes", verdict_last=True)
    assert not answer_matches("a red circle, no", "yes", verdict_last=True)
    assert not answer_matches("yes, a red circle", "yes", verdict_last=True)
    assert not answer_matches("nothing, no", "yes", verdict_last=True) and not answer_matches("", "yes", True)
    # The verdict comes last: no answer is given up on before it ends.
    assert not cannot_match("a blue square,", "yes", verdict_last=True)


def test_an_event_for_the_chunk_that_answers_and_none_for_the_rest(
    server: LongWatchServer, needles: list[tuple[NeedleVideo, Path]], haystack: Path
) -> None:
    video, path = needles[0]
    with connect(server) as c:
        got: list[WatchEvent] = []
        with c.watch(None, QUESTION, match=video.needle.phrase()) as events:
            watch = events.first()
            assert watch.stream_id == "" and watch.question == QUESTION and watch.events == 0
            collect(events, got)
            list(c.ingest_file("cam", path=path))
            list(c.ingest_file("hay", path=haystack))
            chunks = c.get_stream("cam").chunks + c.get_stream("hay").chunks
            wait_for(lambda: c.list_watches()[0].chunks_checked == chunks, "check of every chunk")
            wait_for(lambda: len(got) >= 1, "event")
            time.sleep(1)  # nothing more comes
        assert [(e.stream_id, e.chunk_index) for e in got] == [("cam", 2)]
        event = got[0]
        assert event.start_s <= video.needle.start_s < event.end_s
        assert event.answer == video.needle.phrase() and event.watch_id == watch.watch_id
        listed = c.list_watches()[0]
        assert (listed.events, listed.last_event_id) == (1, event.event_id)
        # A stream deleted and made again under its id is checked from its start again.
        c.delete_stream("cam")
        list(c.ingest_file("cam", path=path))
        with c.watch(watch_id=watch.watch_id, after_event_id=event.event_id) as resumed:
            again = next(resumed)
        assert (again.stream_id, again.chunk_index) == ("cam", 2) and again.event_id > event.event_id


def test_a_live_stream_s_event_comes_before_its_chunk_is_committed_and_only_once(
    server: LongWatchServer, needles: list[tuple[NeedleVideo, Path]]
) -> None:
    video, _ = needles[0]  # the needle at 19-20 s: chunk 2 holds frames 16-23
    footage = video.footage()
    held = threading.Event()

    def frames() -> Iterator[LiveFrame]:
        for i in range(40):
            if i == 22:
                held.wait(WAIT_S)  # chunk 2 stays open (frames 16-21) until the event came
            yield LiveFrame(float(i), rgb=footage.frame_at(i))

    with connect(server) as c, connect(server) as sender:
        got: list[WatchEvent] = []
        with c.watch(None, QUESTION, match=video.needle.phrase()) as events:
            events.first()
            collect(events, got)
            feed = threading.Thread(target=lambda: list(sender.ingest_frames("door", frames(), fps=1.0)))
            feed.start()
            try:
                wait_for(lambda: got, "event from frames not yet committed")
                assert c.get_stream("door").chunks == 2  # chunk 2 is not committed yet
            finally:
                held.set()
                feed.join(timeout=WAIT_S)
            wait_for(lambda: c.list_watches()[0].chunks_checked == 5, "check of the 5 chunks")
            time.sleep(1)
        (event,) = got  # the committed chunk 2 added no second event
        assert event.pending and (event.stream_id, event.chunk_index) == ("door", 2)
        assert event.start_s == 16 and event.start_s <= video.needle.start_s < event.end_s < 24
        assert c.list_watches()[0].events == 1


def test_a_watch_outlives_its_caller_and_a_restart_and_resumes_without_gaps_or_repeats(
    tmp_path: Path, redis_url: str, needles: list[tuple[NeedleVideo, Path]]
) -> None:
    with LongWatchServer(settings(tmp_path / "a", redis_url)) as srv, connect(srv) as c:
        first = c.watch(None, QUESTION, match=needles[0][0].needle.phrase())
        watch = first.first()
        first.close()  # no one is watching from here on
        list(c.ingest_file("one", path=needles[0][1]))
        wait_for(lambda: c.list_watches()[0].events == 1, "event while no one watched")
    # A new process on the same Redis: the watch is there, checks go on where they stopped.
    with LongWatchServer(settings(tmp_path / "b", redis_url)) as srv, connect(srv) as c:
        assert [w.watch_id for w in c.list_watches()] == [watch.watch_id]
        with c.watch(watch_id=watch.watch_id) as resumed:  # from the start: the event kept
            seen = next(resumed)
        assert seen.stream_id == "one"
        chunks_one = c.get_stream("one").chunks
        assert c.list_watches()[0].chunks_checked == chunks_one  # none checked twice
        # The same needle again in another stream: only the new event after the last one seen.
        list(c.ingest_file("two", path=needles[0][1]))
        with c.watch(watch_id=watch.watch_id, after_event_id=seen.event_id) as resumed:
            nxt = next(resumed)
        assert nxt.stream_id == "two" and nxt.event_id > seen.event_id
        wait_for(lambda: c.list_watches()[0].chunks_checked == 2 * chunks_one, "checks")
        assert c.list_watches()[0].events == 2


def test_a_watcher_whose_replica_stops_goes_on_on_another(
    tmp_path: Path, redis_url: str, needles: list[tuple[NeedleVideo, Path]]
) -> None:
    video, path = needles[1]
    a = LongWatchServer(settings(tmp_path / "a", redis_url)).start()
    b = LongWatchServer(settings(tmp_path / "b", redis_url)).start()
    try:
        with connect([a, b]) as watcher, connect(b) as writer:
            got: list[WatchEvent] = []
            events = watcher.watch(None, QUESTION, match=video.needle.phrase(), reconnect_s=30)
            events.first()
            reader = collect(events, got)
            list(writer.ingest_file("first", path=path))
            wait_for(lambda: len(got) == 1, "first event")
            a.stop()  # the watcher's server goes away: it resumes on b after the event it saw
            list(writer.ingest_file("second", path=path))
            wait_for(lambda: len(got) == 2, "second event")
            time.sleep(1.5)
            events.close()
            reader.join(timeout=10)
        assert [e.stream_id for e in got] == ["first", "second"]  # nothing missed, nothing twice
        assert got[0].event_id < got[1].event_id
    finally:
        a.stop()
        b.stop()


class Receiver(BaseHTTPRequestHandler):
    """A webhook receiver that refuses its first `refuse` POSTs with 503."""

    refuse = 2
    bodies: list[dict[str, Any]] = []
    attempts = 0

    def do_POST(self) -> None:  # noqa: N802 - http.server's name
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        type(self).attempts += 1
        if type(self).attempts <= type(self).refuse:
            self.send_response(503)
        else:
            type(self).bodies.append(body)
            self.send_response(204)
        self.end_headers()

    def log_message(self, *args: Any) -> None:
        pass


def test_a_webhook_gets_every_event_once_in_order_through_failures(
    server: LongWatchServer, needles: list[tuple[NeedleVideo, Path]]
) -> None:
    receiver = ThreadingHTTPServer(("127.0.0.1", 0), Receiver)
    threading.Thread(target=receiver.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{receiver.server_address[1]}/hook"
    try:
        with connect(server) as c:
            with c.watch(None, QUESTION, match=needles[2][0].needle.phrase(), webhook_url=url) as events:
                watch = events.first()
            list(c.ingest_file("x", path=needles[2][1]))
            list(c.ingest_file("y", path=needles[2][1]))
            wait_for(lambda: len(Receiver.bodies) == 2, "webhook deliveries")
            listed = c.list_watches()[0]
            assert listed.webhook_delivered_id == listed.last_event_id
    finally:
        receiver.shutdown()
    assert Receiver.attempts == 4  # two refused, then each event once
    assert [b["stream_id"] for b in Receiver.bodies] == ["x", "y"]
    assert all(b["watch_id"] == watch.watch_id and b["question"] == QUESTION for b in Receiver.bodies)
    assert Receiver.bodies[0]["event_id"] < Receiver.bodies[1]["event_id"]


def test_bad_watches_are_refused_and_deleting_one_ends_it(server: LongWatchServer, haystack: Path) -> None:
    with connect(server) as c:
        list(c.ingest_file("hay", path=haystack))
        cases = [
            (dict(stream_id="nope", question=QUESTION), NotFound, "no stream 'nope'"),
            (dict(stream_id="hay", question="  "), InvalidArgument, "question is empty"),
            (dict(stream_id="hay", question=QUESTION, webhook_url="ftp://x"), InvalidArgument, "webhook_url"),
            (dict(stream_id="hay", question=QUESTION, match="!!"), InvalidArgument, "match must hold a word"),
            (dict(watch_id="wnothere"), NotFound, "no watch 'wnothere'"),
            (
                dict(stream_id="hay", question=QUESTION, after_event_id="later"),
                InvalidArgument,
                "after_event_id",
            ),
        ]
        for kwargs, error, message in cases:
            with pytest.raises(error, match=message), c.watch(**kwargs) as events:
                events.first()
        assert c.list_watches() == []  # nothing was made by the refused ones
        events = c.watch("hay", QUESTION)
        watch = events.first()
        got: list[WatchEvent] = []
        failure: list[BaseException] = []

        def read() -> None:
            try:
                got.extend(events)
            except BaseException as e:  # noqa: BLE001 - what the watcher sees, asserted below
                failure.append(e)

        thread = threading.Thread(target=read, daemon=True)
        thread.start()
        assert c.delete_watch(watch.watch_id).watch_id == watch.watch_id
        thread.join(timeout=15)
        assert not thread.is_alive() and isinstance(failure[0], NotFound)
        assert "was deleted" in str(failure[0])
        assert c.list_watches() == []
        with pytest.raises(NotFound):
            c.delete_watch(watch.watch_id)


def test_watch_calls_take_at_most_half_the_servers_threads(server: LongWatchServer, haystack: Path) -> None:
    """Each open Watch call holds a gRPC thread: past half of them (2 of this server's 4) a new one
    is refused at once, naming the ways that do not hold one, and nothing is made for it."""
    with connect(server) as c:
        list(c.ingest_file("hay", path=haystack))
        first, second = c.watch("hay", QUESTION), c.watch("hay", QUESTION)
        first.first(), second.first()
        with pytest.raises(LongWatchError) as refused, c.watch("hay", QUESTION) as third:
            third.first()
        assert refused.value.code == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "Watch calls open" in str(refused.value) and "/api/watches/ID/events" in str(refused.value)
        assert len(c.list_watches()) == 2
        first.close()
        deadline = time.monotonic() + WAIT_S
        while True:  # the server frees the thread once it sees the call has ended (within 1 s)
            try:
                with c.watch("hay", QUESTION) as fourth:
                    fourth.first()
                break
            except LongWatchError:
                assert time.monotonic() < deadline
                time.sleep(0.2)
        second.close()


def test_the_cli_prints_a_line_per_event_and_lists_and_deletes_watches(
    server: LongWatchServer, needles: list[tuple[NeedleVideo, Path]], capsys: pytest.CaptureFixture[str]
) -> None:
    video, path = needles[0]
    target = f"127.0.0.1:{server.port}"
    watcher = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "longwatch.clients.main",
            "--server",
            target,
            "watch",
            "--all",
            QUESTION,
            "--match",
            video.needle.phrase(),
            "--json",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        started = watcher.stderr.readline() if watcher.stderr else ""
        assert started.startswith("watching every stream of yours for 'What appeared in the video?'")
        with connect(server) as c:
            list(c.ingest_file("cli", path=path))
        line = watcher.stdout.readline() if watcher.stdout else ""
        event = json.loads(line)
        assert event["stream_id"] == "cli" and event["answer"] == video.needle.phrase()
    finally:
        watcher.terminate()
        watcher.wait(timeout=10)
    assert main.main(["--server", target, "watches", "--json"]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert len(listed) == 1 and listed[0]["events"] == 1 and listed[0]["stream_id"] == ""
    assert main.main(["--server", target, "unwatch", listed[0]["watch_id"]]) == 0
    assert "deleted watch" in capsys.readouterr().out
    assert main.main(["--server", target, "watches"]) == 0
    assert capsys.readouterr().out.strip() == "no watches"
    with pytest.raises(SystemExit):
        main.main(["--server", target, "watch", "cam"])  # no question


def http(
    server: LongWatchServer, method: str, path: str, body: Any = None, headers: dict | None = None
) -> Any:
    request = urllib.request.Request(
        f"http://127.0.0.1:{server.http_port}{path}",
        data=None if body is None else json.dumps(body).encode(),
        method=method,
        headers={"Content-Type": "application/json", **(headers or {})},
    )
    return urllib.request.urlopen(request, timeout=30)


def sse_events(reply: Any, n: int) -> list[tuple[str, dict]]:
    """The next n server-sent events of an open reply: (id, data)."""
    events: list[tuple[str, dict]] = []
    event_id, data = "", ""
    while len(events) < n:
        line = reply.readline().decode().rstrip("\n")
        if line.startswith("id: "):
            event_id = line[4:]
        elif line.startswith("data: "):
            data = line[6:]
        elif line == "" and data:
            events.append((event_id, json.loads(data)))
            event_id, data = "", ""
    return events


def test_the_http_api_makes_watches_and_streams_their_events(
    server: LongWatchServer, needles: list[tuple[NeedleVideo, Path]]
) -> None:
    video, path = needles[1]
    with http(
        server, "POST", "/api/watches", {"question": QUESTION, "match": video.needle.phrase()}
    ) as reply:
        assert reply.status == 201
        watch = json.loads(reply.read())
    assert watch["stream_id"] == "" and watch["question"] == QUESTION
    with connect(server) as c:
        list(c.ingest_file("web1", path=path))
        list(c.ingest_file("web2", path=path))
    events_path = f"/api/watches/{watch['watch_id']}/events"
    with http(server, "GET", events_path) as reply:
        assert reply.headers["Content-Type"].startswith("text/event-stream")
        (first_id, first), (second_id, second) = sse_events(reply, 2)
    assert (first["stream_id"], second["stream_id"]) == ("web1", "web2")
    assert first["event_id"] == first_id and first["answer"] == video.needle.phrase()
    # A browser's EventSource resumes with Last-Event-ID: only what came after.
    with http(server, "GET", events_path, headers={"Last-Event-ID": first_id}) as reply:
        assert sse_events(reply, 1)[0][0] == second_id
    with http(server, "GET", "/api/watches") as reply:
        (listed,) = json.loads(reply.read())
    assert listed["events"] == 2 and listed["last_event_id"] == second_id
    with pytest.raises(urllib.error.HTTPError) as bad:
        http(server, "GET", events_path, headers={"Last-Event-ID": "soon"})
    assert bad.value.code == 400 and "last event id" in json.loads(bad.value.read())["error"]
    with http(server, "DELETE", f"/api/watches/{watch['watch_id']}") as reply:
        assert json.loads(reply.read())["watch_id"] == watch["watch_id"]
    with pytest.raises(urllib.error.HTTPError) as gone:
        http(server, "GET", events_path)
    assert gone.value.code == 404


def test_the_browser_page_makes_a_watch_and_shows_its_events_as_they_come(
    server: LongWatchServer, needles: list[tuple[NeedleVideo, Path]]
) -> None:
    from browser import chromium_driver
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    video, path = needles[2]
    driver = chromium_driver()
    try:
        driver.get(f"http://127.0.0.1:{server.http_port}/")
        driver.find_element(By.ID, "watch-question").send_keys(QUESTION)
        driver.find_element(By.ID, "watch-match").send_keys(video.needle.phrase())
        driver.find_element(By.ID, "watch").click()
        WebDriverWait(driver, 30).until(lambda d: "following" in d.find_element(By.ID, "watch-status").text)
        with connect(server) as c:
            list(c.ingest_file("page", path=path))
        item = WebDriverWait(driver, 60).until(lambda d: d.find_elements(By.CSS_SELECTOR, "#watch-events li"))
        assert item[0].text.startswith("page · 0:16 – 0:24") and video.needle.phrase() in item[0].text
        options = [o.text for o in driver.find_elements(By.CSS_SELECTOR, "#watches option")]
        assert any(QUESTION in o for o in options)
    finally:
        driver.quit()
