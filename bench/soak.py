"""A long run: one live WebRTC stream and an Ask every few seconds; do memory and open files stay flat?

    python bench/soak.py                 # 30 minutes (the figures)
    python bench/soak.py --minutes 5
    python bench/soak.py --quick         # 20 s (the tests run this)

One `longwatch serve` (the demo model, an embedded redis-server) takes one WebRTC sender
(bench/live_streams.py's, in its own process: 1280x720 H.264 at 30 fps in real time) for the
whole run, and this process asks about the live stream every `ask_every_s` seconds. Every 10 s it
samples the service's resident memory and open files, redis-server's memory (used_memory: what
it holds; used_memory_rss: what the process takes) and the stream's bytes_stored. Reported: each
figure's slope per hour by least squares over the run after its first tenth (start-up and the
first chunks are not a leak), and redis' used_memory minus bytes_stored: the stream's own data
grows by design, anything else growing would be a leak.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import threading
import time
from pathlib import Path

import grpc
import redis

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "tests"))
from common import add_json_out, emit_and_save, machine  # noqa: E402
from live_streams import Clip, cached_clip  # noqa: E402
from load import senders_result, start_senders_for  # noqa: E402
from service_process import ServeProcess  # noqa: E402

from longwatch.proto import longwatch_pb2 as pb  # noqa: E402
from longwatch.proto import longwatch_pb2_grpc as pb_grpc  # noqa: E402

TAG = "soak"
STREAM = "soak-0"  # the sender's stream: its tag and its number


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def open_files(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def slope_per_hour(times: list[float], values: list[float]) -> float:
    """Least-squares slope of values against times (s), per hour."""
    n = len(times)
    if n < 2:
        return 0.0
    mt, mv = sum(times) / n, sum(values) / n
    var = sum((t - mt) ** 2 for t in times)
    if var == 0:
        return 0.0
    return sum((t - mt) * (v - mv) for t, v in zip(times, values, strict=True)) / var * 3600


def asker(target: str, until: float, every_s: float, counts: dict) -> None:
    with grpc.insecure_channel(target) as channel:
        stub = pb_grpc.LongWatchStub(channel)
        while time.monotonic() < until:
            t0 = time.monotonic()
            try:
                stub.Ask(pb.AskRequest(stream_id=STREAM, question="What is in view now?"), timeout=60)
                counts["asks"] += 1
            except grpc.RpcError as e:
                # NOT_FOUND or FAILED_PRECONDITION before the stream's first frame or chunk
                early = counts["asks"] == 0 and e.code() in (
                    grpc.StatusCode.NOT_FOUND,
                    grpc.StatusCode.FAILED_PRECONDITION,
                )
                if not early:
                    counts["errors"] += 1
                    counts["first_error"] = counts["first_error"] or f"{e.code().name}: {e.details()}"
            time.sleep(max(0.0, every_s - (time.monotonic() - t0)))


def run(quick: bool = False, minutes: float = 30.0, ask_every_s: float = 5.0) -> list[dict]:
    seconds = 20.0 if quick else minutes * 60
    sample_every_s = 2.0 if quick else 10.0
    clip = Clip(seconds=1.0, width=320, height=180, keyframe_s=1.0) if quick else Clip(seconds=10.0)
    clip_path = cached_clip(clip)
    samples: list[dict] = []
    counts = {"asks": 0, "errors": 0, "first_error": None}
    with tempfile.TemporaryDirectory(prefix="lw-soak-") as tmp, ServeProcess(Path(tmp) / "state") as serve:
        assert serve.proc is not None and serve.redis_pid is not None
        url = serve.wait_for(r"embedded redis-server pid \d+ serving (\S+)", 10).group(1)
        r = redis.Redis.from_url(url)
        senders = start_senders_for(serve, clip, clip_path, 1, seconds, tag=TAG)
        t0 = time.monotonic()
        ask_thread = threading.Thread(
            target=asker, args=(serve.target, t0 + seconds, ask_every_s, counts), daemon=True
        )
        ask_thread.start()
        while time.monotonic() - t0 < seconds:
            time.sleep(min(sample_every_s, max(0.0, seconds - (time.monotonic() - t0))))
            memory = r.info("memory")
            stored = sum(int(r.hget(key, "bytes_stored") or 0) for key in r.scan_iter("lw:{*}:stream"))
            samples.append(
                {
                    "t": time.monotonic() - t0,
                    "service_rss_mb": rss_mb(serve.proc.pid),
                    "service_open_files": open_files(serve.proc.pid),
                    "redis_open_files": open_files(serve.redis_pid),
                    "redis_used_mb": memory["used_memory"] / 2**20,
                    "redis_rss_mb": memory["used_memory_rss"] / 2**20,
                    "bytes_stored_mb": stored / 2**20,
                }
            )
            print(f"soak: {json.dumps(samples[-1])}", file=sys.stderr, flush=True)
        ask_thread.join(90)
        (stream,) = senders_result(senders, 120)
        tracebacks = serve.output.count("Traceback")
        r.close()
    steady = samples[len(samples) // 10 :]
    times = [s["t"] for s in steady]

    def slope(key: str) -> float:
        return round(slope_per_hour(times, [s[key] for s in steady]), 2)

    first, last = samples[0], samples[-1]
    return [
        {
            "bench": "soak",
            "minutes": round(seconds / 60, 1),
            "samples": len(samples),
            "asks": counts["asks"],
            "ask_errors": counts["errors"],
            "first_error": counts["first_error"],
            "frames_sent": int(stream["frames_sent"]),
            "frames_sampled": int(stream["frames_sampled"]),
            "frames_dropped": int(stream["frames_dropped"]),
            "chunks": int(stream["chunks"]),
            "service_rss_mb_first_last": [round(first["service_rss_mb"]), round(last["service_rss_mb"])],
            "service_rss_mb_per_h": slope("service_rss_mb"),
            "service_open_files_first_last": [first["service_open_files"], last["service_open_files"]],
            "service_open_files_per_h": slope("service_open_files"),
            "redis_open_files_per_h": slope("redis_open_files"),
            "redis_used_mb_per_h": slope("redis_used_mb"),
            "bytes_stored_mb_per_h": slope("bytes_stored_mb"),
            "redis_used_minus_stored_mb_per_h": round(
                slope_per_hour(times, [s["redis_used_mb"] - s["bytes_stored_mb"] for s in steady]), 2
            ),
            "redis_rss_mb_per_h": slope("redis_rss_mb"),
            "service_tracebacks": tracebacks,
            "load_avg_1m": machine()["load_avg_1m"],
        }
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="20 s instead of 30 minutes")
    parser.add_argument("--minutes", type=float, default=30.0)
    parser.add_argument("--ask-every-s", type=float, default=5.0)
    add_json_out(parser)
    args = parser.parse_args()
    print("machine: " + str(machine()), file=sys.stderr)
    emit_and_save(run(args.quick, args.minutes, args.ask_every_s), args.json_out)


if __name__ == "__main__":
    main()
