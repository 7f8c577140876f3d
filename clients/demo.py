"""`longwatch demo`: the whole path on embedded defaults, end to end, over real gRPC.

Starts the service (its own redis-server, the built-in model), ingests a generated
footage-like video with a progress bar, asks a few questions, prints answers with the time
spans they came from, and stops everything it started.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import time
from pathlib import Path

from tqdm import tqdm

from longwatch.clients.client import LongWatchClient, NotFound
from longwatch.clients.format import format_evidence, format_streams_table, printable

DEMO_STREAM = "demo"
DEMO_SECONDS = 600
DEMO_QUESTIONS = (
    "What happens in this video?",
    "When does the camera pan?",
    "What colour is the moving object?",
)
UNTRAINED_NOTE = (
    "note: the built-in model is a tiny VideoLLaMA3 with random weights, so its answers are\n"
    "      noise; the retrieval, the evidence spans and the timings are real."
)


def sample_video(state_dir: Path, seconds: int = DEMO_SECONDS) -> Path:
    """A generated footage-like video (still scenes, pans, cuts), made once and kept."""
    from longwatch.model.synthetic import write_video

    path = state_dir / "samples" / f"demo-{seconds}s.mp4"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name("partial-" + path.name)
        with tqdm(total=seconds, unit="s", desc="writing sample video", leave=False) as bar:
            write_video(
                tmp,
                seconds=seconds,
                fps=10,
                width=320,
                height=180,
                seed=7,
                progress=lambda t: bar.update(t - bar.n),
            )
        tmp.replace(path)
    return path


def _ingest(client: LongWatchClient, path: Path) -> None:
    with contextlib.suppress(NotFound):
        client.delete_stream(DEMO_STREAM)
    bar = tqdm(
        total=1.0,
        unit="s",
        desc=f"ingesting {path.name}",
        bar_format="{l_bar}{bar}| {n:.0f}/{total:.0f} s {postfix}",
    )
    with bar:
        for p in client.ingest_file(DEMO_STREAM, path=str(path.resolve())):
            bar.total = max(p.duration_s, p.position_s, 1.0)
            bar.n = p.position_s
            bar.set_postfix(chunks=p.chunks_committed, tokens=f"{p.tokens_kept}/{p.tokens_seen}")


def run_demo(args: argparse.Namespace) -> int:
    from longwatch.stream.server import LongWatchServer
    from longwatch.stream.settings import settings_from_args

    settings = settings_from_args(args)
    settings.port = 0  # any free port: the demo must not collide with a running `longwatch serve`
    settings.host = "127.0.0.1"
    print(f"longwatch demo: state in {settings.state_dir}", flush=True)
    video = sample_video(settings.state_dir)
    t0 = time.perf_counter()
    with LongWatchServer(settings) as server:
        print(
            f"service up on 127.0.0.1:{server.port} in {time.perf_counter() - t0:.1f} s (redis {server.redis_url})"
        )
        with LongWatchClient(f"127.0.0.1:{server.port}") as client:
            client.wait_ready(timeout=30)
            t1 = time.perf_counter()
            _ingest(client, video)
            print(f"ingested {DEMO_SECONDS} s of video in {time.perf_counter() - t1:.1f} s")
            print(format_streams_table(client.list_streams()))
            print()
            print(UNTRAINED_NOTE)
            for question in DEMO_QUESTIONS:
                result = client.ask(DEMO_STREAM, question)
                # One line per answer: an untrained model's output is mostly control bytes and newlines.
                answer = printable(result.answer).replace("\n", "\\n")
                print(f"\nQ: {question}\nA: {answer[:160]}")
                print(format_evidence(result.evidence))
                print(
                    f"   ({result.timings.get('total_ms', 0.0):.0f} ms, first token {result.timings.get('first_token_ms', 0.0):.0f} ms)"
                )
    sys.stdout.flush()
    return 0
