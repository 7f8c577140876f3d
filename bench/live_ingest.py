"""How many frames a second one live stream sustains on this machine, over gRPC and over WebRTC.

    python bench/live_ingest.py                     # both, 640x480, built-in model
    python bench/live_ingest.py --mode grpc --frames 600 --size 320x240
    python bench/live_ingest.py --quick             # small and short (the test's smoke run)

grpc: IngestFrames with raw RGB footage-like frames stamped 1/fps apart and sampled at that fps
(every frame goes through the pipeline), sent as fast as the client can. With a queue larger than
the run nothing is dropped, so frames / wall time is the pipeline's own rate; a second run with
the default queue and frames paced in real time at `--fps` shows whether a camera at that rate
would lose frames. webrtc: the test pattern sent in real time at `--fps` for `--seconds` over a
loopback aiortc connection (encode, send, decode, sample at `--fps`), counting what arrived and
what was dropped; the sender encodes VP8 in the same process as the service, so its encoding
shares the service's cores (bench/live_streams.py keeps them apart). Starts its own service
(embedded Redis, the built-in model) in a temporary folder; WebRTC uses 127.0.0.1 only, at both
ends.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from common import add_json_out, emit_and_save, machine

from longwatch.clients.client import LiveFrame, LongWatchClient
from longwatch.clients.webrtc import TestPatternTrack, send_video
from longwatch.model.train.synthetic import SyntheticFootage
from longwatch.stream.server import LongWatchServer
from longwatch.stream.settings import IngestConfig, LiveConfig, ServiceSettings

LOOPBACK = ("127.0.0.1",)


@dataclass(frozen=True)
class Plan:
    modes: tuple[str, ...]  # "grpc", "webrtc"
    frames: int  # gRPC frames per run
    width: int
    height: int
    fps: float
    seconds: float  # WebRTC sending time


FULL = Plan(modes=("grpc", "webrtc"), frames=600, width=640, height=480, fps=30.0, seconds=10.0)
QUICK = Plan(modes=("grpc", "webrtc"), frames=24, width=320, height=240, fps=30.0, seconds=2.0)


def footage(n: int, width: int, height: int, fps: float) -> list[np.ndarray]:
    source = SyntheticFootage(seed=5, width=width, height=height, fps=fps)
    return [source.frame_at(i) for i in range(n)]


def grpc_run(
    server: LongWatchServer, stream_id: str, frames: list[np.ndarray], fps: float, paced: bool
) -> dict:
    def timed() -> Iterator[LiveFrame]:
        start = time.monotonic()
        for k, image in enumerate(frames):
            if paced:
                time.sleep(max(0.0, start + k / fps - time.monotonic()))
            yield LiveFrame(k / fps, rgb=image)

    with LongWatchClient(f"127.0.0.1:{server.port}") as client:
        t0 = time.perf_counter()
        final = list(client.ingest_frames(stream_id, timed()))[-1]
        wall = time.perf_counter() - t0
    s = final.stream
    return {
        "bench": "live_ingest",
        "mode": "grpc paced" if paced else "grpc as fast as possible",
        "size": f"{frames[0].shape[1]}x{frames[0].shape[0]}",
        "fps": fps,
        "sent": len(frames),
        "received": final.frames_received,
        "received_per_s": round(final.frames_received / wall, 1),
        "sampled": s.frames_sampled,
        "dropped": s.frames_dropped,
        "chunks": s.chunks,
        "wall_s": round(wall, 2),
    }


def webrtc_run(server: LongWatchServer, size: tuple[int, int], fps: float, seconds: float) -> dict:
    track = TestPatternTrack(*size, fps=fps)
    result = send_video(
        f"127.0.0.1:{server.http_port}", track, "bench-webrtc", seconds=seconds, ice_addresses=LOOPBACK
    )
    s = result.stream
    return {
        "bench": "live_ingest",
        "mode": "webrtc test pattern",
        "size": f"{size[0]}x{size[1]}",
        "fps": fps,
        "sent": result.frames_sent,
        "received": s["frames_decoded"],
        "received_per_s": round(s["frames_decoded"] / result.seconds, 1),
        "sampled": s["frames_sampled"],
        "dropped": s["frames_dropped"],
        "chunks": s["chunks"],
        "wall_s": round(result.seconds, 2),
    }


def settings(state_dir: Path, fps: float, queue_frames: int | None = None) -> ServiceSettings:
    """The built-in model's service, sampling every frame stamped 1/fps apart."""
    live = LiveConfig(ice_addresses=LOOPBACK)
    if queue_frames is not None:
        live = LiveConfig(queue_frames=queue_frames, ice_addresses=LOOPBACK)
    return ServiceSettings(port=0, http_port=0, state_dir=state_dir, ingest=IngestConfig(fps=fps), live=live)


def rows(plan: Plan) -> Iterator[dict]:
    with tempfile.TemporaryDirectory(prefix="bench-live-ingest-") as tmp:
        if "grpc" in plan.modes:
            frames = footage(plan.frames, plan.width, plan.height, plan.fps)
            # A queue larger than the run drops nothing (the pipeline's own rate); the default
            # queue, paced in real time, shows what a camera at `fps` would lose.
            for queue, paced in ((plan.frames + 1, False), (None, True)):
                with LongWatchServer(settings(Path(tmp), plan.fps, queue)) as server:
                    yield grpc_run(server, f"bench-grpc-{queue}", frames, plan.fps, paced) | machine()
        if "webrtc" in plan.modes:
            with LongWatchServer(settings(Path(tmp), plan.fps)) as server:
                yield webrtc_run(server, (plan.width, plan.height), plan.fps, plan.seconds) | machine()


def run(quick: bool = False, plan: Plan | None = None) -> list[dict]:
    return list(rows(plan or (QUICK if quick else FULL)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="small and short (smoke run)")
    parser.add_argument("--mode", choices=["grpc", "webrtc", "both"], default="both")
    parser.add_argument("--frames", type=int, default=FULL.frames)
    parser.add_argument("--size", default=f"{FULL.width}x{FULL.height}")
    parser.add_argument("--fps", type=float, default=FULL.fps)
    parser.add_argument("--seconds", type=float, default=FULL.seconds)
    add_json_out(parser)
    args = parser.parse_args()
    if args.quick:
        emit_and_save(run(quick=True), args.json_out)
        return
    width, height = (int(x) for x in args.size.split("x"))
    modes = ("grpc", "webrtc") if args.mode == "both" else (args.mode,)
    emit_and_save(run(plan=Plan(modes, args.frames, width, height, args.fps, args.seconds)), args.json_out)


if __name__ == "__main__":
    main()
