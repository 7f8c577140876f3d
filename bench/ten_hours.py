"""A 10-hour live stream through the service: Ask at 10 min / 1 h / 4 h / 10 h, memory, the tier.

    python bench/ten_hours.py              # 36,000 frames (10 h at 1 fps) in each of 4 streams
    python bench/ten_hours.py --quick      # 4 minutes of stream, checkpoints at 1 and 4 min

One `longwatch serve` process (the demo model, its embedded redis-server, the cold tier under its
state folder with a hot window of `--hot-window` wall-clock seconds) takes one stream of synthetic
footage (the demo model's 56 px haystack generator) over gRPC IngestFrames, as fast as the service
takes it: the sender holds back while more than 48 sampled frames wait (the live queue holds 64),
so no frame is dropped. Each stream holds one needle (the demo model's: it was trained on one
needle a video, and its questions name only the needle's kind) at a random point, inside one chunk.

At each checkpoint of the first stream the sender stops once every frame so far is committed, and
this process asks the needle's three questions and 7 more over gRPC AskStream: time to first
token as the client sees it, the FAISS search as the service times it; then it reads the
service's resident memory, redis-server's used memory, and the stream's bytes in Redis and in the
cold tier. At the end of every stream it scores the needle's three answers (`longwatch eval`'s
judge: the kind and colour exactly, the time within 2 s); the other streams run straight through,
for more needles at 10 h.
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
import redis

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "tests"))
from common import bench_main, machine, percentile  # noqa: E402
from service_process import ServeProcess  # noqa: E402
from soak import rss_mb  # noqa: E402

from longwatch.clients.client import LiveFrame, LongWatchClient  # noqa: E402
from longwatch.model.train.needles import Needle, judge, questions_for, random_needle  # noqa: E402
from longwatch.model.train.synthetic import SyntheticFootage  # noqa: E402
from longwatch.proto import longwatch_pb2 as pb  # noqa: E402
from longwatch.proto import longwatch_pb2_grpc as pb_grpc  # noqa: E402

CHECKPOINTS_S = (600, 3600, 14400, 36000)
QUICK_CHECKPOINTS_S = (64, 240)
STREAMS = 4
OTHER_QUESTIONS = (
    "What appeared in the video?",
    "What colour was the circle?",
    "When did the square appear?",
    "What colour was the digit?",
    "When did the cross appear?",
    "What colour was the triangle?",
    "When did the digit appear?",
)
FRAMES_PER_CHUNK = 8
HELD_BACK = 48  # sampled frames the sender lets wait in the service (its live queue holds 64)


def place_needle(seconds: int, seed: int) -> Needle:
    """A needle 2 s into a random chunk of the stream (it lasts 1-3 s: inside that chunk)."""
    rng = np.random.default_rng(seed)
    chunk = int(rng.integers(1, seconds // FRAMES_PER_CHUNK - 1))
    return random_needle(rng, chunk * FRAMES_PER_CHUNK + 2, 56, 56)


class Sender:
    """Feeds one stream frame by frame; stops at each checkpoint until told to go on, and at its end."""

    def __init__(
        self,
        target: str,
        stream_id: str,
        footage: SyntheticFootage,
        seconds: int,
        checkpoints: tuple[int, ...],
    ) -> None:
        self.stream_id = stream_id
        self.footage = footage
        self.seconds = seconds
        self.checkpoints = set(checkpoints)
        self.committed = 0  # chunks, as GetStream last said
        self.dropped = 0
        self.at_checkpoint = threading.Event()
        self.go_on = threading.Event()
        self.client = LongWatchClient(target, timeout=600)
        self.reader = LongWatchClient(target, timeout=60)  # GetStream while the sender waits
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _frames(self) -> Iterator[LiveFrame]:
        for i in range(self.seconds):
            if i in self.checkpoints:
                self._checkpoint(i)
            if i - self.committed * FRAMES_PER_CHUNK > HELD_BACK:
                self._wait_committed(i - HELD_BACK)
            yield LiveFrame(float(i), rgb=self.footage.frame_at(i))
        self._checkpoint(self.seconds)  # the last: the stream's end, before the call ends

    def _checkpoint(self, frames: int) -> None:
        self._wait_committed(frames)
        self.at_checkpoint.set()
        self.go_on.wait()
        self.go_on.clear()

    def _wait_committed(self, frames: int) -> None:
        """Until chunks hold the first `frames` frames. Progress messages come only as frames
        arrive, so a sender that waits asks GetStream."""
        while True:
            self.committed = int(self.reader.get_stream(self.stream_id).chunks)
            if self.committed * FRAMES_PER_CHUNK >= frames:
                return
            time.sleep(0.02)

    def _run(self) -> None:
        for progress in self.client.ingest_frames(self.stream_id, self._frames(), fps=1.0):
            self.dropped = int(progress.frames_dropped)

    def start(self) -> None:
        self.thread.start()

    def close(self) -> None:
        self.thread.join(timeout=120)
        self.client.close()
        self.reader.close()


def ask(stub: pb_grpc.LongWatchStub, stream_id: str, question: str) -> tuple[float, pb.AskResponse]:
    """Time to the first message as the client sees it (ms), and the final response."""
    t0 = time.perf_counter()
    first = None
    response = None
    request = pb.AskRequest(stream_id=stream_id, question=question, max_new_tokens=8)
    for message in stub.AskStream(request, timeout=600):
        if first is None:
            first = time.perf_counter()
        if message.HasField("response"):
            response = message.response
    assert first is not None and response is not None
    return (first - t0) * 1e3, response


def run(quick: bool = False, hot_window: float = 60.0, streams: int = STREAMS) -> list[dict]:
    checkpoints = QUICK_CHECKPOINTS_S if quick else CHECKPOINTS_S
    seconds = checkpoints[-1]
    streams = 1 if quick else streams
    rows: list[dict] = []
    right: list[bool] = []
    misses: list[str] = []  # question, answer, expected, the chunks read
    args = ("--live-queue", "64", "--hot-window", str(hot_window), "--retention-interval", "15")
    with (
        tempfile.TemporaryDirectory(prefix="lw-10h-") as tmp,
        ServeProcess(Path(tmp) / "state", *args) as serve,
        LongWatchClient(serve.target, timeout=600) as client,
    ):
        assert serve.proc is not None
        url = serve.wait_for(r"embedded redis-server pid \d+ serving (\S+)", 10).group(1)
        r = redis.Redis.from_url(url)
        stub = pb_grpc.LongWatchStub(client._channels[client.target])
        for k in range(streams):
            stream_id = f"ten-hours-{k}"
            needle = place_needle(seconds, seed=20261205 + k)
            footage = SyntheticFootage(seed=31 + k, width=56, height=56, fps=1.0, overlays=[needle])
            needle_qas = list(questions_for(needle).values())
            questions = [qa.question for qa in needle_qas] + list(OTHER_QUESTIONS)
            stops = checkpoints if k == 0 else checkpoints[-1:]
            sender = Sender(serve.target, stream_id, footage, seconds, stops[:-1])
            t0 = time.monotonic()
            sender.start()
            for checkpoint in stops:
                sender.at_checkpoint.wait()
                sender.at_checkpoint.clear()
                wall = time.monotonic() - t0
                answers = [ask(stub, stream_id, q) for q in questions]
                if checkpoint == seconds:
                    for qa, (_, resp) in zip(needle_qas, answers[:3], strict=True):
                        right.append(judge(qa.kind, resp.answer, needle))
                        if not right[-1]:
                            cited = ", ".join(f"{e.start_s:.0f}-{e.end_s:.0f}" for e in resp.evidence)
                            misses.append(f"{qa.question} {resp.answer!r} for {qa.answer!r} (read {cited} s)")
                if k == 0:
                    rows.append(checkpoint_row(client, r, serve, stream_id, checkpoint, answers, wall))
                    rows[-1]["frames_dropped"] = sender.dropped
                    print(f"ten_hours: {rows[-1]}", file=sys.stderr, flush=True)
                sender.go_on.set()
            sender.close()
            print(f"ten_hours: stream {k} done in {time.monotonic() - t0:.0f} s", file=sys.stderr, flush=True)
        last = rows[-1]
        last["needle_streams"] = streams
        last["needle_questions"] = len(right)
        last["needle_right_pct"] = round(100 * sum(right) / len(right), 1)
        last["needle_misses"] = misses
        last["service_rss_mb_after_all"] = round(rss_mb(serve.proc.pid))
        last["redis_used_mb_after_all"] = round(r.info("memory")["used_memory"] / 2**20, 1)
        r.close()
    return rows


def checkpoint_row(
    client: LongWatchClient,
    r: redis.Redis,
    serve: ServeProcess,
    stream_id: str,
    checkpoint: int,
    answers: list[tuple[float, pb.AskResponse]],
    wall: float,
) -> dict:
    assert serve.proc is not None
    stream = client.get_stream(stream_id)
    first = [ms for ms, _ in answers]
    search = [resp.timings.search_ms for _, resp in answers]
    return {
        "bench": "ten_hours",
        "stream_h": round(checkpoint / 3600, 2),
        "chunks": int(stream.chunks),
        "first_token_p50_ms": round(statistics.median(first), 1),
        "first_token_p90_ms": round(percentile(first, 90), 1),
        "faiss_search_p50_ms": round(statistics.median(search), 2),
        "service_rss_mb": round(rss_mb(serve.proc.pid)),
        "redis_used_mb": round(r.info("memory")["used_memory"] / 2**20, 1),
        "bytes_in_redis_mb": round((stream.bytes_stored - stream.bytes_cold) / 2**20, 1),
        "bytes_cold_mb": round(stream.bytes_cold / 2**20, 1),
        "wall_s": round(wall),
        "load_avg_1m": machine()["load_avg_1m"],
    }


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--hot-window", type=float, default=60.0, help="wall-clock seconds chunks stay in Redis"
    )
    parser.add_argument("--streams", type=int, default=STREAMS, help="10-hour streams, one needle each")


def main() -> None:
    print("machine: " + str(machine()), file=sys.stderr)
    bench_main(run, __doc__.splitlines()[0], add_arguments)  # --quick: 4 minutes of stream


if __name__ == "__main__":
    main()
