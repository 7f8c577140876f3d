"""Ask under load: 20 Ask clients alone, then beside 3 live WebRTC streams at 30 fps and an archive ingest.

    python bench/load.py             # 60 s per phase (the figures)
    python bench/load.py --quick     # 6 s per phase, 4 clients, small streams (the tests run this)

One `longwatch serve` (the demo model, an embedded redis-server, WebRTC on 127.0.0.1). A
2-minute archive is ingested first and every Ask asks about it, so both phases ask the same
thing:
- alone: the Ask clients and nothing else, for the phase's seconds;
- beside: the same clients while 3 WebRTC senders (bench/live_streams.py's, in their own
  process: 1280x720 H.264 at 30 fps in real time) feed 3 live streams and a 30-minute archive is
  ingested over gRPC (cancelled at the phase's end if not done).
Each client loops AskStream with a 60 s deadline; first token is the time to the first message
(client side, what a user waits). Reported per phase: Asks answered, errors (any status but OK;
the goal is 0), first-token and whole-answer p50/p99; beside also each live stream's sampled
frames against the seconds it was sent and its dropped frames, and how far the archive got.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import grpc

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "tests"))
from common import bench_main, cached_file, machine, percentile  # noqa: E402
from live_streams import Clip, cached_clip  # noqa: E402
from service_process import ServeProcess  # noqa: E402

from longwatch.model.train.synthetic import write_video  # noqa: E402
from longwatch.proto import longwatch_pb2 as pb  # noqa: E402
from longwatch.proto import longwatch_pb2_grpc as pb_grpc  # noqa: E402

QUESTIONS = (
    "What colour is the square?",
    "When does the scene change?",
    "What moves across the frame?",
    "Is there a red object?",
    "What is in the top left corner?",
)
ASK_DEADLINE_S = 60.0


@dataclass(frozen=True)
class Plan:
    seconds: float
    clients: int
    streams: int
    clip: Clip
    archive_s: int  # length of the archive ingested beside


# The archive is long enough to be still ingesting when the phase ends (it is then cancelled).
FULL = Plan(seconds=60.0, clients=20, streams=3, clip=Clip(seconds=10.0), archive_s=1800)
QUICK = Plan(
    seconds=6.0,
    clients=4,
    streams=3,
    clip=Clip(seconds=1.0, width=320, height=180, keyframe_s=1.0),
    archive_s=60,
)


@dataclass
class AskFigures:
    first_token_s: list[float] = field(default_factory=list)
    total_s: list[float] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)


def ask_client(target: str, k: int, until: float, figures: AskFigures) -> None:
    """Ask again and again until `until` (monotonic); every answer's timings go into `figures`."""
    with grpc.insecure_channel(target) as channel:
        stub = pb_grpc.LongWatchStub(channel)
        n = 0
        while time.monotonic() < until:
            request = pb.AskRequest(stream_id="base", question=QUESTIONS[(k + n) % len(QUESTIONS)])
            n += 1
            t0 = time.perf_counter()
            first = None
            try:
                for _ in stub.AskStream(request, timeout=ASK_DEADLINE_S):
                    if first is None:
                        first = time.perf_counter() - t0
            except grpc.RpcError as e:
                with figures.lock:
                    figures.errors.append(f"{e.code().name}: {e.details()}")
                continue
            total = time.perf_counter() - t0
            with figures.lock:
                figures.first_token_s.append(first if first is not None else total)
                figures.total_s.append(total)


def ask_phase(target: str, clients: int, seconds: float) -> AskFigures:
    figures = AskFigures()
    until = time.monotonic() + seconds
    threads = [
        threading.Thread(target=ask_client, args=(target, k, until, figures), daemon=True)
        for k in range(clients)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join(seconds + ASK_DEADLINE_S + 30)
    return figures


def phase_row(name: str, plan: Plan, figures: AskFigures, seconds: float) -> dict:
    ft, tot = figures.first_token_s, figures.total_s

    def ms(values: list[float], q: float) -> float | None:
        return round(percentile(values, q) * 1e3, 1) if values else None

    return {
        "bench": "load",
        "phase": name,
        "ask_clients": plan.clients,
        "seconds": round(seconds, 1),
        "asks": len(tot),
        "asks_per_s": round(len(tot) / seconds, 2),
        "errors": len(figures.errors),
        "first_error": figures.errors[0] if figures.errors else None,
        "first_token_p50_ms": ms(ft, 50),
        "first_token_p99_ms": ms(ft, 99),
        "answer_p50_ms": ms(tot, 50),
        "answer_p99_ms": ms(tot, 99),
    }


class Archive(threading.Thread):
    """An IngestFile of a long archive beside the load; stopped (cancelled) at the phase's end."""

    def __init__(self, target: str, path: Path) -> None:
        super().__init__(daemon=True)
        self.target, self.path = target, path
        self.position_s = 0.0
        self.chunks = 0
        self.finished = False
        self.seconds = 0.0  # from the call's start to its end or cancellation
        self.error: str | None = None
        self._call: grpc.Future | None = None
        self._stopping = threading.Event()

    def run(self) -> None:
        t0 = time.perf_counter()
        with grpc.insecure_channel(self.target) as channel:
            stub = pb_grpc.LongWatchStub(channel)
            self._call = stub.IngestFile(pb.IngestFileRequest(stream_id="archive", path=str(self.path)))
            try:
                for p in self._call:
                    self.position_s, self.chunks = p.position_s, p.chunks_committed
                    self.finished = p.done
            except grpc.RpcError as e:
                if not (self._stopping.is_set() and e.code() == grpc.StatusCode.CANCELLED):
                    self.error = f"{e.code().name}: {e.details()}"
            self.seconds = time.perf_counter() - t0

    def stop(self) -> None:
        self._stopping.set()
        if self._call is not None:
            self._call.cancel()
        self.join(30)


def start_senders_for(
    serve: ServeProcess, clip: Clip, clip_path: Path, count: int, seconds: float, tag: str
) -> subprocess.Popen:
    """bench/live_streams.py's WebRTC senders in their own process; its last stdout line is JSON."""
    command = [
        sys.executable,
        str(HERE / "live_streams.py"),
        "--send",
        "--http",
        f"127.0.0.1:{serve.http_port}",
    ]
    command += ["--clip", str(clip_path), "--fps", str(clip.fps), "--count", str(count)]
    command += ["--seconds", str(seconds), "--tag", tag]
    return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def senders_result(senders: subprocess.Popen, timeout: float) -> list[dict]:
    out, err = senders.communicate(timeout=timeout)
    if senders.returncode != 0:
        raise RuntimeError(f"the senders failed (exit {senders.returncode}): {err.strip()[-2000:]}")
    return json.loads(out.strip().splitlines()[-1])["streams"]


def run(quick: bool = False) -> list[dict]:
    plan = QUICK if quick else FULL
    clip_path = cached_clip(plan.clip)
    base = cached_file(
        "load-base-120s-320x180-10fps.mp4", lambda p: write_video(p, 120, 10, 320, 180, seed=11)
    )
    archive = cached_file(
        f"load-archive-{plan.archive_s}s-320x180-10fps.mp4",
        lambda p: write_video(p, plan.archive_s, 10, 320, 180, seed=12),
    )
    with (
        tempfile.TemporaryDirectory(prefix="lw-load-") as tmp,
        ServeProcess(
            Path(tmp) / "state", "--ingest-root", str(archive.parent), "--ingest-root", str(base.parent)
        ) as serve,
    ):
        with grpc.insecure_channel(serve.target) as channel:
            stub = pb_grpc.LongWatchStub(channel)
            list(stub.IngestFile(pb.IngestFileRequest(stream_id="base", path=str(base)), timeout=600))
            stub.Ask(pb.AskRequest(stream_id="base", question=QUESTIONS[0]), timeout=60)  # warm up

        t0 = time.perf_counter()
        alone = ask_phase(serve.target, plan.clients, plan.seconds)
        rows = [phase_row("alone", plan, alone, time.perf_counter() - t0)]

        lead_s = 3.0  # the senders connect and the archive starts before the Asks do
        senders = start_senders_for(
            serve, plan.clip, clip_path, plan.streams, plan.seconds + 2 * lead_s, "load"
        )
        ingest = Archive(serve.target, archive)
        ingest.start()
        time.sleep(lead_s)
        t0 = time.perf_counter()
        beside = ask_phase(serve.target, plan.clients, plan.seconds)
        beside_s = time.perf_counter() - t0
        ingest.stop()
        streams = senders_result(senders, plan.seconds + 120)
        tracebacks = serve.output.count("Traceback")
    row = phase_row("beside", plan, beside, beside_s)
    row |= {
        "live_streams": len(streams),
        "live_frames_sent": [int(s["frames_sent"]) for s in streams],
        "live_sampled": [int(s["frames_sampled"]) for s in streams],
        # one sampled frame per second sent (the demo card's 1 fps); the last may be cut at the close
        "live_expected_samples": [round(float(s["frames_sent"]) / plan.clip.fps) for s in streams],
        "live_dropped": [int(s["frames_dropped"]) for s in streams],
        "archive_video_s": round(ingest.position_s, 1),
        "archive_chunks": ingest.chunks,
        "archive_finished_before_the_end": ingest.finished,
        "archive_wall_s": round(ingest.seconds, 1),
        "archive_error": ingest.error,
        "service_tracebacks": tracebacks,
    }
    rows.append(row)
    load = machine()["load_avg_1m"]
    for r in rows:
        r["load_avg_1m"] = load
    return rows


def main() -> None:
    print("machine: " + str(machine()), file=sys.stderr)
    bench_main(run, __doc__.split("\n")[0])


if __name__ == "__main__":
    main()
