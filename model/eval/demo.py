"""`longwatch demo`: the whole path on embedded defaults, end to end, over real gRPC.

Starts the service (its own redis-server, the built-in model), ingests a generated
footage-like video with a progress bar, asks a few questions, prints answers with the time
spans they came from, and stops everything it started.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from tqdm import tqdm

from longwatch.clients.client import LongWatchClient, NotFound
from longwatch.clients.format import format_evidence, format_streams_table, printable
from longwatch.model.loading import DEMO_MODEL_NAME

DEMO_STREAM = "demo"
DEMO_SECONDS = 600
UNTRAINED_NOTE = (
    "note: the built-in model is a tiny VideoLLaMA3 with random weights, so its answers are\n"
    "      noise; the retrieval, the evidence spans and the timings are real."
)


@dataclass
class DemoQuestion:
    question: str
    expected: str = ""  # empty: no right answer to compare with
    kind: str = ""


@dataclass
class DemoPlan:
    """What the demo ingests and asks; depends on whether the built-in model is trained."""

    video: Path
    questions: list[DemoQuestion]
    note: str = ""
    needle: object = None  # needles.Needle when the video has one

    def judge(self, q: DemoQuestion, answer: str) -> str:
        if self.needle is None or not q.kind:
            return ""
        from longwatch.model.train.needles import judge

        return "right" if judge(q.kind, answer, self.needle) else f"wrong, expected {q.expected!r}"


def _write(tmp_path: Path, seconds: int, write: Callable[..., Path]) -> None:
    with tqdm(total=seconds, unit="s", desc="writing sample video", leave=False) as bar:
        write(tmp_path, progress=lambda t: bar.update(t - bar.n))


def needle_plan(state_dir: Path) -> DemoPlan:
    """For the trained demo model: a 10-minute haystack with one needle, and the three questions about it."""
    from longwatch.model.train.needles import make_needle_video, questions_for, seed_for
    from longwatch.model.train.synthetic import write_once

    video = make_needle_video(seed_for("eval", 10**6), DEMO_SECONDS, depth=0.6)
    path = write_once(state_dir / "samples" / video.file_name, lambda p: _write(p, DEMO_SECONDS, video.write))
    qs = [DemoQuestion(qa.question, qa.answer, kind) for kind, qa in questions_for(video.needle).items()]
    return DemoPlan(path, qs, needle=video.needle)


def footage_plan(state_dir: Path) -> DemoPlan:
    """For an untrained model: footage-like video (still scenes, pans, cuts) and open questions."""
    from longwatch.model.train.synthetic import write_once, write_video

    path = write_once(
        state_dir / "samples" / f"demo-{DEMO_SECONDS}s.mp4",
        lambda p: _write(
            p, DEMO_SECONDS, lambda q, progress: write_video(q, DEMO_SECONDS, 10, 320, 180, 7, progress)
        ),
    )
    questions = [
        "What happens in this video?",
        "When does the camera pan?",
        "What colour is the moving object?",
    ]
    return DemoPlan(path, [DemoQuestion(q) for q in questions], note=UNTRAINED_NOTE)


def demo_plan(state_dir: Path, model_name: str) -> DemoPlan:
    return needle_plan(state_dir) if model_name == DEMO_MODEL_NAME else footage_plan(state_dir)


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
    settings.http_port = 0
    settings.host = "127.0.0.1"
    settings.live = dataclasses.replace(settings.live, ice_addresses=("127.0.0.1",))  # WebRTC too
    samples = settings.state_dir
    # Its own Redis data, beside a `longwatch serve` that may be running on the same state folder.
    settings.state_dir = settings.state_dir / "demo"
    print(f"longwatch demo: state in {settings.state_dir}", flush=True)
    t0 = time.perf_counter()
    with LongWatchServer(settings) as server:
        plan = demo_plan(samples, server.model_name)
        print(
            f"service up on 127.0.0.1:{server.port} in {time.perf_counter() - t0:.1f} s, model {server.model_name}"
        )
        with LongWatchClient(f"127.0.0.1:{server.port}") as client:
            client.wait_ready(timeout=30)
            t1 = time.perf_counter()
            _ingest(client, plan.video)
            print(f"ingested {DEMO_SECONDS} s of video in {time.perf_counter() - t1:.1f} s")
            print(format_streams_table(client.list_streams()))
            if plan.note:
                print(f"\n{plan.note}")
            for q in plan.questions:
                _ask(client, plan, q)
    sys.stdout.flush()
    return 0


def _ask(client: LongWatchClient, plan: DemoPlan, q: DemoQuestion) -> None:
    result = client.ask(DEMO_STREAM, q.question)
    # One line per answer: an untrained model's output is mostly control bytes and newlines.
    answer = printable(result.answer).replace("\n", "\\n")
    verdict = plan.judge(q, result.answer)
    print(f"\nQ: {q.question}\nA: {answer[:160]}" + (f"   [{verdict}]" if verdict else ""))
    print(format_evidence(result.evidence))
    timings = result.timings
    print(
        f"   ({timings.get('total_ms', 0.0):.0f} ms, first token {timings.get('first_token_ms', 0.0):.0f} ms)"
    )
