"""Crash an archive ingest again and again; after each restart check that nothing acknowledged was lost.

    python bench/crash.py            # 24 crash points over one ingest
    python bench/crash.py --quick    # 4 points (the tests run this)

One `longwatch serve` per crash (embedded redis-server, a state folder of its own), the same
archive ingested with --resume each time. A crash point is SIGKILL of the service either right
after the client received the kth progress message of that run, or from inside the service at a
chunk's commit (LONGWATCH_CRASH_AT: the transaction queued but not sent, or committed but not yet
acknowledged). After every restart:
- every chunk the client saw acknowledged is stored, byte-equal to the same chunk of a clean run;
- no partial or duplicate chunk: blob, vector and span indices are the same 0..n-1, and the record
  counts n chunks;
- the killed service's redis-server is gone (or was stopped by the next start as left behind).
At the end the resumed stream equals the clean run chunk for chunk, byte for byte.
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

import redis

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "tests"))
from common import bench_main, cached_file, machine  # noqa: E402
from service_process import ServeProcess, gone  # noqa: E402

from longwatch.clients.client import LongWatchClient, LongWatchError  # noqa: E402
from longwatch.model.train.synthetic import write_video  # noqa: E402

STREAM = "yard"
FPS = 8.0  # sampled from a 10 fps file: many small chunks for the demo model
QUICK_POINTS = [("progress", 2), ("commit-before-exec", 3), ("commit-after-exec", 2), ("progress", 1)]
FULL_POINTS = [
    ("progress", 1),
    ("commit-before-exec", 1),
    ("progress", 3),
    ("commit-after-exec", 1),
    ("progress", 2),
    ("commit-before-exec", 4),
    ("progress", 5),
    ("commit-after-exec", 3),
    ("progress", 1),
    ("commit-before-exec", 2),
    ("progress", 4),
    ("commit-after-exec", 5),
    ("progress", 2),
    ("commit-before-exec", 6),
    ("progress", 6),
    ("commit-after-exec", 2),
    ("progress", 1),
    ("commit-before-exec", 3),
    ("progress", 3),
    ("commit-after-exec", 4),
    ("progress", 2),
    ("commit-before-exec", 5),
    ("progress", 4),
    ("commit-after-exec", 1),
]


def stored(url: str) -> tuple[dict[int, bytes], int]:
    """Chunk blobs by index, checked for gaps, partial and duplicate chunks; and the record's count."""
    client = redis.Redis.from_url(url)
    try:
        spans = sorted(int(i) for i in client.hkeys(f"lw:{{{STREAM}}}:spans"))
        vectors = sorted(int(i) for i in client.hkeys(f"lw:{{{STREAM}}}:vectors"))
        names = sorted(int(k.rsplit(b":", 1)[1]) for k in client.scan_iter(f"lw:{{{STREAM}}}:chunk:*"))
        if not spans == vectors == names == list(range(len(spans))):
            raise AssertionError(f"chunks do not line up: spans {spans}, vectors {vectors}, blobs {names}")
        recorded = int(client.hget(f"lw:{{{STREAM}}}:stream", "chunks") or 0)
        return {i: client.get(f"lw:{{{STREAM}}}:chunk:{i}") for i in spans}, recorded
    finally:
        client.close()


def redis_url(serve: ServeProcess) -> str:
    return serve.wait_for(r"embedded redis-server pid \d+ serving (\S+)", 10).group(1)


def ingest(serve: ServeProcess, video: Path, resume: bool, kill_after: int | None) -> list[int]:
    """The chunk counts acknowledged to the client, until the end or the crash."""
    acked: list[int] = []
    with LongWatchClient(serve.target, timeout=300) as client:
        try:
            for p in client.ingest_file(STREAM, path=str(video), fps=FPS, resume=resume):
                acked.append(p.chunks_committed)
                if kill_after is not None and len(acked) == kill_after:
                    serve.kill()
                    break
        except LongWatchError:
            pass  # the service killed itself at a crash point: UNAVAILABLE
    return acked


def run(quick: bool = False) -> list[dict]:
    points = QUICK_POINTS if quick else FULL_POINTS
    seconds = 120 if quick else 300
    video = cached_file(
        f"crash-{seconds}s-320x180-10fps.mp4", lambda p: write_video(p, seconds, 10, 320, 180, seed=5)
    )
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="lw-crash-") as tmp_name:
        tmp = Path(tmp_name)
        with ServeProcess(tmp / "clean") as serve:
            ingest(serve, video, resume=False, kill_after=None)
            clean, _ = stored(redis_url(serve))
        state = tmp / "crashed"
        acked_max, checks, redis_left, resumes = 0, 0, 0, 0
        previous_redis: int | None = None
        for n, (point, k) in enumerate(points):
            env = {"LONGWATCH_CRASH_AT": f"{point}:{k}"} if point != "progress" else {}
            serve = ServeProcess(state, env=env).start()
            try:
                if previous_redis is not None and not gone(previous_redis, timeout=0):
                    redis_left += 1  # still there: the start just now stopped it as left behind
                blobs, recorded = stored(redis_url(serve))
                if len(blobs) < acked_max or recorded != len(blobs):
                    raise AssertionError(
                        f"after crash {n}: {len(blobs)} chunks stored, {acked_max} were acknowledged"
                    )
                if any(blobs[i] != clean[i] for i in blobs):
                    raise AssertionError(f"after crash {n}: a stored chunk differs from the clean run's")
                checks += len(blobs)
                previous_redis = serve.redis_pid
                acked = ingest(serve, video, resume=n > 0, kill_after=k if point == "progress" else None)
                resumes += n > 0
                acked_max = max([acked_max, *acked])
                if acked and acked[-1] == len(clean):
                    raise AssertionError(f"the ingest finished before crash point {n}; use a longer video")
                serve.wait(timeout=60)
            finally:
                serve.stop()
        with ServeProcess(state) as serve:
            final = ingest(serve, video, resume=True, kill_after=None)
            blobs, recorded = stored(redis_url(serve))
    identical = blobs == clean and recorded == len(clean)
    if not identical:
        raise AssertionError("the resumed stream differs from the clean run")
    return [
        {
            "bench": "crash",
            "crash_points": len(points),
            "of_which_inside_a_commit": sum(p != "progress" for p, _ in points),
            "chunks_in_stream": len(clean),
            "acknowledged_before_the_last_crash": acked_max,
            "stored_chunks_checked_against_clean": checks,
            "resumes": resumes + 1,
            "redis_left_behind_and_stopped": redis_left,
            "final_chunks": final[-1] if final else None,
            "identical_to_clean_run": identical,
            "seconds": round(time.perf_counter() - t0, 1),
            "load_avg_1m": machine()["load_avg_1m"],
        }
    ]


def main() -> None:
    print("machine: " + str(machine()), file=sys.stderr)
    bench_main(run, __doc__.split("\n")[0])


if __name__ == "__main__":
    main()
