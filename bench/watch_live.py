"""Standing questions on live needle streams: events right, false alarms per hour, delay.

    python bench/watch_live.py            # 10 h of haystack with 10 needles, then 5 min in real time
    python bench/watch_live.py --quick    # 20 min with 2 needles, then 20 s in real time
    python bench/watch_live.py --yes-no   # each watch asks "Did a red circle appear?" (match "yes")

The real service in a temporary folder (embedded redis-server, gRPC on 127.0.0.1), the demo model
as served. Needles are the demo model's, each inside one chunk, each with its own phrase; for each,
one watch on the stream: "What appeared in the video?" with the needle's phrase as the match, or
with --yes-no the yes/no question a user would ask ("Did a red circle appear?", match "yes").

Accuracy: one stream of synthetic footage fed over gRPC IngestFrames as fast as the service takes
it (bench/ten_hours.py's sender). An event of a needle's watch on the needle's chunk is a hit; any
other event of that watch is a false alarm. Reported: needles with their event, and false alarms
per hour of haystack (over every watch: each asks its question of every chunk).

Delay: a second stream sent in real time at 1 fps, needles at known times; each watch's events
read as they come over gRPC Watch. Delay = when the event reached the client minus when the
needle's first frame was sent: the rest of the needle's chunk (the watch reads committed chunks:
at most 8 s at 1 fps), the commit, the check (every 0.5 s) and the answer.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from common import bench_main, machine  # noqa: E402
from ten_hours import FRAMES_PER_CHUNK, Sender  # noqa: E402

from longwatch.clients.client import LiveFrame, LongWatchClient, WatchEvent, WatchEvents  # noqa: E402
from longwatch.model.train.needles import Needle, random_needle, yes_no_question  # noqa: E402
from longwatch.model.train.synthetic import SyntheticFootage  # noqa: E402
from longwatch.stream.server import LongWatchServer  # noqa: E402
from longwatch.stream.settings import IngestConfig, LiveConfig, ServiceSettings  # noqa: E402

QUESTION = "What appeared in the video?"


def watch_question(needle: Needle, yes_no: bool) -> tuple[str, str]:
    """(question, match) of the watch waiting for `needle`."""
    return (yes_no_question(needle), "yes") if yes_no else (QUESTION, needle.phrase())


def distinct_needles(seconds: int, count: int, seed: int) -> list[Needle]:
    """`count` needles with different phrases, one in each of `count` equal parts of the stream,
    each 2 s into a random chunk of its part (lasting 1-3 s: inside that chunk)."""
    rng = np.random.default_rng(seed)
    chunks = seconds // FRAMES_PER_CHUNK
    needles: list[Needle] = []
    for k in range(count):
        lo, hi = chunks * k // count, chunks * (k + 1) // count
        chunk = int(rng.integers(max(lo + 1, 3), hi - 1))  # after the watches begin (chunk 2)
        needles.append(new_phrase(rng, chunk * FRAMES_PER_CHUNK + 2, needles))
    return needles


def new_phrase(rng: np.random.Generator, start_s: float, taken: list[Needle]) -> Needle:
    """A needle at start_s whose phrase no needle in `taken` has (each watch waits for one)."""
    while True:
        needle = random_needle(rng, start_s, 56, 56)
        if needle.phrase() not in {n.phrase() for n in taken}:
            return needle


def collect(events: WatchEvents, into: list[tuple[float, WatchEvent]]) -> None:
    """Read a watch's events on a thread of their own, each with when it arrived."""

    def read() -> None:
        for event in events:
            into.append((time.monotonic(), event))

    threading.Thread(target=read, daemon=True).start()


def watch_all(client: LongWatchClient, stream_id: str, needles: list[Needle], yes_no: bool) -> list[str]:
    ids = []
    for needle in needles:
        question, match = watch_question(needle, yes_no)
        with client.watch(stream_id, question, match=match) as events:
            ids.append(events.first().watch_id)
    return ids


def events_of(client: LongWatchClient, watch_id: str) -> list[WatchEvent]:
    count = next(w.events for w in client.list_watches() if w.watch_id == watch_id)
    with client.watch(watch_id=watch_id) as events:
        return [next(events) for _ in range(count)]


def accuracy(server: LongWatchServer, seconds: int, count: int, yes_no: bool = False) -> dict:
    needles = distinct_needles(seconds, count, seed=51)
    footage = SyntheticFootage(seed=52, width=56, height=56, fps=1.0, overlays=needles)
    target = f"127.0.0.1:{server.port}"
    with LongWatchClient(target, timeout=600) as client:
        # The stream must exist to be watched: its first chunk comes first, then the watches.
        sender = Sender(target, "needles", footage, seconds, (FRAMES_PER_CHUNK * 2,))
        t0 = time.monotonic()
        sender.start()
        sender.at_checkpoint.wait()
        sender.at_checkpoint.clear()
        watch_ids = watch_all(client, "needles", needles, yes_no)
        checked_from = client.get_stream("needles").chunks  # each watch checks what comes after it
        sender.go_on.set()
        sender.at_checkpoint.wait()  # the stream's end
        chunks = client.get_stream("needles").chunks
        while any(w.chunks_checked < chunks - checked_from for w in client.list_watches()):
            time.sleep(0.2)
        wall = time.monotonic() - t0
        sender.go_on.set()
        sender.close()
        hits = alarms = 0
        for needle, watch_id in zip(needles, watch_ids, strict=True):
            for event in events_of(client, watch_id):
                if event.start_s <= needle.start_s < event.end_s:
                    hits += 1
                else:
                    alarms += 1
    haystack_h = seconds / 3600
    return {
        "bench": "watch_live",
        "part": "accuracy",
        "question": "yes/no" if yes_no else "what appeared",
        "stream_h": round(haystack_h, 2),
        "needles": count,
        "watches": count,
        "needles_with_event": hits,
        "hit_pct": round(100 * hits / count, 1),
        "false_alarms": alarms,
        "false_alarms_per_watch_hour": round(alarms / count / haystack_h, 2),
        "chunk_checks": count * (chunks - checked_from),
        "wall_s": round(wall),
        "load_avg_1m": machine()["load_avg_1m"],
    }


def delay(server: LongWatchServer, seconds: int, needle_times: tuple[int, ...], yes_no: bool = False) -> dict:
    rng = np.random.default_rng(61)
    needles: list[Needle] = []
    for t in needle_times:
        needles.append(new_phrase(rng, t, needles))
    footage = SyntheticFootage(seed=62, width=56, height=56, fps=1.0, overlays=needles)
    target = f"127.0.0.1:{server.port}"
    sent_at: dict[int, float] = {}
    started = threading.Event()

    def frames() -> Iterator[LiveFrame]:
        t0 = time.monotonic()
        for i in range(seconds):
            time.sleep(max(0.0, t0 + i - time.monotonic()))  # real time: a frame a second
            sent_at[i] = time.monotonic()
            yield LiveFrame(float(i), rgb=footage.frame_at(i))
            if i == FRAMES_PER_CHUNK:
                started.set()

    got: dict[str, list[tuple[float, WatchEvent]]] = {}
    with LongWatchClient(target, timeout=600) as client, LongWatchClient(target, timeout=600) as sender:
        feed = threading.Thread(target=lambda: list(sender.ingest_frames("realtime", frames(), fps=1.0)))
        feed.start()
        started.wait()
        readers = []
        for needle in needles:
            question, match = watch_question(needle, yes_no)
            events = client.watch("realtime", question, match=match)
            got[events.first().watch_id] = []
            collect(events, got[events.first().watch_id])
            readers.append(events)
        feed.join()
        time.sleep(2)
        for events in readers:
            events.close()
    delays = []
    missed = 0
    for needle, events in zip(needles, got.values(), strict=True):
        hits = [at for at, e in events if e.start_s <= needle.start_s < e.end_s]
        if hits:
            delays.append(hits[0] - sent_at[int(needle.start_s)])
        else:
            missed += 1
    return {
        "bench": "watch_live",
        "part": "delay (real time)",
        "question": "yes/no" if yes_no else "what appeared",
        "stream_h": round(seconds / 3600, 3),
        "needles": len(needles),
        "needles_with_event": len(delays),
        "delay_p50_s": round(statistics.median(delays), 2) if delays else None,
        "delay_max_s": round(max(delays), 2) if delays else None,
        "load_avg_1m": machine()["load_avg_1m"],
    }


def run(quick: bool = False, yes_no: bool = False) -> list[dict]:
    with tempfile.TemporaryDirectory(prefix="lw-watch-") as tmp:
        settings = ServiceSettings(
            port=0,
            http_port=0,
            state_dir=Path(tmp) / "state",
            ingest=IngestConfig(fps=1.0, frames_per_chunk=8, max_tokens_per_frame=4),  # the demo model's
            live=LiveConfig(queue_frames=64, ice_addresses=("127.0.0.1",)),
        )
        with LongWatchServer(settings) as server:
            if quick:
                return [accuracy(server, 1200, 2, yes_no), delay(server, 20, (11,), yes_no)]
            return [accuracy(server, 36000, 10, yes_no), delay(server, 300, (42, 101, 165, 230), yes_no)]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--yes-no", action="store_true", help='watches ask "Did a red circle appear?" and match "yes"'
    )


def main() -> None:
    print("machine: " + str(machine()), file=sys.stderr)
    bench_main(run, __doc__.splitlines()[0], add_arguments)


if __name__ == "__main__":
    main()
