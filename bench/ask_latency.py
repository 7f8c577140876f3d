"""Ask latency on streams of 10 min, 1 h and 4 h: longwatch (alpha 16 + top-k) against keep-raw full context.

    python bench/ask_latency.py            # 10 min, 1 h, 4 h; 20 questions each
    python bench/ask_latency.py --quick    # a smoke run: 1 and 2 min streams, 4 questions

Starts the real service in a temporary folder (embedded redis-server, gRPC on 127.0.0.1) with the
demo-model architecture (`new_base`: 56 px frames, 4 tokens each, 8 frames per chunk, alpha 16;
untrained: speed and bytes are those of a trained copy). Each stream is fed at 1 fps through
gRPC IngestFrames (raw footage-like frames, a queue larger than the stream, so nothing drops);
ingest time is not what this measures. Then every question goes over gRPC AskStream: time to
first token is when the first message (a text delta, or the final response for an empty answer)
reaches the client, total when the stream ends. The server's own per-stage timings of each answer
(question vector, FAISS search, Redis fetch and decode, re-pack, prefill, decode) come back in the
response and are reported as medians.

Baseline: a second server in keep-raw mode (every token of every chunk kept, each chunk computed
after all earlier ones) answering from every chunk (top_k 0): the native model on the whole stream
(exactly so with float storage). Both servers store K/V as the service does by default (each row
says which: int8 unless changed). Keep-raw ingest is quadratic in stream length; streams longer than --raw-max-minutes
are reported as not run, with the reason, rather than left out.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import bench_main, machine, percentile, timer  # noqa: E402

from longwatch.clients.client import LiveFrame, LongWatchClient  # noqa: E402
from longwatch.model.config import ModelConfig  # noqa: E402
from longwatch.model.train.synthetic import SyntheticFootage  # noqa: E402
from longwatch.model.train.trainer import new_base  # noqa: E402
from longwatch.proto import longwatch_pb2 as pb  # noqa: E402
from longwatch.proto import longwatch_pb2_grpc as pb_grpc  # noqa: E402
from longwatch.stream.server import LongWatchServer  # noqa: E402
from longwatch.stream.settings import LiveConfig, ServiceSettings  # noqa: E402

FULL_MINUTES = (10, 60, 240)
QUICK_MINUTES = (1, 2)
FRAME_SIZE = (112, 112)  # width, height: resized to the demo model's 56 x 56 grid (4 tokens)
DISTINCT_FRAMES = 900  # rendered once and looped: 15 minutes of footage before it repeats
SUBJECTS = ("red car", "person", "delivery van", "dog", "bicycle", "blue door", "truck", "umbrella")
TEMPLATES = (
    "When did the {s} appear?",
    "What colour was the {s}?",
    "Was there a {s} near the entrance?",
    "Describe what the {s} was doing.",
    "How many times did a {s} pass by?",
)


def questions(n: int) -> list[str]:
    """n varied questions (subject x template, no two alike)."""
    out = [t.format(s=s) for s in SUBJECTS for t in TEMPLATES]
    if n > len(out):
        raise ValueError(f"at most {len(out)} distinct questions, asked for {n}")
    return [out[(i * 7) % len(out)] for i in range(n)]


def footage(n: int) -> list[np.ndarray]:
    width, height = FRAME_SIZE
    source = SyntheticFootage(seed=11, width=width, height=height, fps=1.0)
    return [source.frame_at(i) for i in range(min(n, DISTINCT_FRAMES))]


def feed(server: LongWatchServer, stream_id: str, frames: list[np.ndarray], seconds: int) -> dict:
    """Ingest `seconds` of 1 fps footage over IngestFrames; returns the stream's final state."""

    def timed() -> Iterator[LiveFrame]:
        for k in range(seconds):
            yield LiveFrame(float(k), rgb=frames[k % len(frames)])

    with LongWatchClient(f"127.0.0.1:{server.port}", timeout=3600) as client:
        final = list(client.ingest_frames(stream_id, timed(), fps=1.0))[-1]
    s = final.stream
    if s.frames_dropped:
        raise RuntimeError(f"{stream_id}: {s.frames_dropped} frames dropped; the queue should hold them all")
    return {"chunks": s.chunks, "bytes_stored": s.bytes_stored, "tokens_kept": s.tokens_kept}


def ask_once(stub: pb_grpc.LongWatchStub, request: pb.AskRequest) -> tuple[float, float, pb.AskResponse]:
    """(time to first message, total) in ms as the client sees them, and the final response."""
    t0 = time.perf_counter()
    first = None
    response = None
    for message in stub.AskStream(request, timeout=600):
        if first is None:
            first = time.perf_counter()
        if message.HasField("response"):
            response = message.response
    total = time.perf_counter()
    if response is None or first is None:
        raise RuntimeError("AskStream ended without its final response")
    return (first - t0) * 1e3, (total - t0) * 1e3, response


# load_ms: the Redis fetch (one MGET) and decode of the chunks; prefill_ms includes repack_ms.
STAGES = ("question_ms", "search_ms", "load_ms", "repack_ms", "prefill_ms", "first_token_ms")


def measure(
    server: LongWatchServer, stream_id: str, qs: list[str], top_k: int | None, warmup: int = 2
) -> dict:
    """TTFT / total percentiles over `qs`, plus the server's median per-stage timings."""
    with grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        stub = pb_grpc.LongWatchStub(channel)

        def request(q: str) -> pb.AskRequest:
            r = pb.AskRequest(stream_id=stream_id, question=q)
            if top_k is not None:
                r.top_k = top_k
            return r

        for q in qs[:warmup]:
            ask_once(stub, request(q))
        ttft, total, stages, context, generated = [], [], {s: [] for s in STAGES}, [], []
        for q in qs:
            first_ms, total_ms, response = ask_once(stub, request(q))
            ttft.append(first_ms)
            total.append(total_ms)
            for s in STAGES:
                stages[s].append(getattr(response.timings, s, 0.0))
            context.append(len(response.evidence))
            generated.append(response.tokens_generated)
    row = {
        "questions": len(qs),
        "chunks_in_context": int(np.median(context)),
        "ttft_p50_ms": percentile(ttft, 50),
        "ttft_p95_ms": percentile(ttft, 95),
        "total_p50_ms": percentile(total, 50),
        "total_p95_ms": percentile(total, 95),
        "tokens_generated_mean": float(np.mean(generated)),
    }
    row.update({f"server_{s.removesuffix('_ms')}_p50_ms": percentile(v, 50) for s, v in stages.items()})
    return row


def start_server(state_dir: Path, model: ModelConfig, longest_s: int) -> LongWatchServer:
    settings = ServiceSettings(
        port=0,
        http_port=0,
        state_dir=state_dir,
        ingest_explicit=frozenset(),  # ingest settings from the model's card (DEMO_CARD)
        live=LiveConfig(queue_frames=longest_s + 1, ice_addresses=("127.0.0.1",)),
        model=model,
    )
    return LongWatchServer(settings).start()


def bench_mode(
    tmp: Path, model: ModelConfig, minutes: tuple[int, ...], qs: list[str], raw_max_minutes: float
) -> list[dict]:
    mode = model.mode
    system = "longwatch" if mode == "summary" else "keep-raw-full"
    frames = footage(max(minutes) * 60)
    rows = []
    server = start_server(tmp / f"state-{mode}", model, max(minutes) * 60)
    try:
        for m in minutes:
            row = {
                "bench": "ask_latency",
                "system": system,
                "stream_min": m,
                "kv_storage": server.settings.kv_storage,
            }
            if mode == "raw" and m > raw_max_minutes:
                row["skipped"] = (
                    f"keep-raw ingest is quadratic in stream length (each chunk attends to every earlier "
                    f"token); {m} min is over --raw-max-minutes {raw_max_minutes:g}"
                )
                rows.append(row)
                continue
            sid = f"{system}-{m}min"
            with timer() as t:
                row.update(feed(server, sid, frames, m * 60))
            row["ingest_s"] = round(t["s"], 1)
            # Keep-raw answers from every chunk (top_k 0): the full-context baseline.
            row.update(measure(server, sid, qs, top_k=0 if mode == "raw" else None))
            rows.append(row)
            print(f"  {system} {m} min: ttft p50 {row['ttft_p50_ms']:.1f} ms", file=sys.stderr, flush=True)
    finally:
        server.stop()
    return rows


def run(
    quick: bool = False, raw_max_minutes: float = 60, device: str = "cpu", dtype: str = "float32"
) -> list[dict]:
    minutes = QUICK_MINUTES if quick else FULL_MINUTES
    qs = questions(4 if quick else 20)
    with tempfile.TemporaryDirectory(prefix="lw-ask-") as tmp_name:
        tmp = Path(tmp_name)
        model = new_base(tmp / "demo-base", seed=0, system_prompt=ModelConfig().system_prompt)
        rows = []
        for mode in ("summary", "raw"):
            config = ModelConfig(path=model, mode=mode, device=device, dtype=dtype)
            rows += bench_mode(tmp, config, minutes, qs, raw_max_minutes)
    info = machine()
    for row in rows:
        row["load_avg_1m"] = info["load_avg_1m"]
    return rows


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--raw-max-minutes", type=float, default=60, help="longest stream the keep-raw baseline ingests"
    )
    parser.add_argument(
        "--device", default=os.environ.get("LONGWATCH_DEVICE", "cpu"), help="LONGWATCH_DEVICE"
    )
    parser.add_argument(
        "--dtype",
        default=os.environ.get("LONGWATCH_DTYPE", "float32"),
        choices=["float32", "bfloat16", "float16"],
        help="LONGWATCH_DTYPE",
    )


def main() -> None:
    print("machine: " + str(machine()), file=sys.stderr)
    bench_main(run, __doc__.split("\n")[0], add_arguments)


if __name__ == "__main__":
    main()
