"""How many frames a second one live stream sustains on this machine, over gRPC and over WebRTC.

    python bench/live_ingest.py                     # both, 640x480, built-in model
    python bench/live_ingest.py --mode grpc --frames 600 --size 320x240

grpc: IngestFrames with raw RGB footage-like frames stamped 1/fps apart and sampled at that fps
(every frame goes through the pipeline), sent as fast as the client can. With a queue larger than
the run nothing is dropped, so frames / wall time is the pipeline's own rate; a second run with
the default queue and frames paced in real time at `--fps` shows whether a camera at that rate
would lose frames. webrtc: the test pattern sent in real time at `--fps` for `--seconds` over a
loopback aiortc connection (encode, send, decode, sample at `--fps`), counting what arrived and
what was dropped. Starts its own service (embedded Redis, built-in model) in a temporary folder;
WebRTC uses 127.0.0.1 only, at both ends.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from longwatch.clients.client import LiveFrame, LongWatchClient
from longwatch.clients.webrtc import TestPatternTrack, send_video
from longwatch.model.synthetic import SyntheticFootage
from longwatch.stream.server import LongWatchServer
from longwatch.stream.settings import IngestConfig, LiveConfig, ServiceSettings

LOOPBACK = ("127.0.0.1",)


def footage(n: int, width: int, height: int, fps: float) -> list[np.ndarray]:
    source = SyntheticFootage(seed=5, width=width, height=height, fps=fps)
    return [source.frame_at(i) for i in range(n)]


def grpc_run(
    server: LongWatchServer, stream_id: str, frames: list[np.ndarray], fps: float, paced: bool
) -> None:
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
    how = f"paced at {fps:g} fps" if paced else "as fast as possible"
    print(
        f"grpc {how}: {final.frames_received} frames in {wall:.2f} s = {final.frames_received / wall:.1f} frames/s "
        f"received, {s.frames_sampled} through the pipeline, {s.frames_dropped} dropped, {s.chunks} chunks"
    )


def webrtc_run(server: LongWatchServer, size: tuple[int, int], fps: float, seconds: float) -> None:
    track = TestPatternTrack(*size, fps=fps)
    result = send_video(
        f"127.0.0.1:{server.http_port}", track, "bench-webrtc", seconds=seconds, ice_addresses=LOOPBACK
    )
    s = result.stream
    print(
        f"webrtc {size[0]}x{size[1]} at {fps:g} fps for {result.seconds:.1f} s: {result.frames_sent} sent, "
        f"{s['frames_decoded']} received ({s['frames_decoded'] / result.seconds:.1f}/s), "
        f"{s['frames_sampled']} through the pipeline, {s['frames_dropped']} dropped"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--mode", choices=["grpc", "webrtc", "both"], default="both")
    parser.add_argument("--frames", type=int, default=600)
    parser.add_argument("--size", default="640x480")
    parser.add_argument("--fps", type=float, default=30.0)
    parser.add_argument("--seconds", type=float, default=10.0)
    args = parser.parse_args()
    width, height = (int(x) for x in args.size.split("x"))
    ingest = IngestConfig(fps=args.fps)  # every frame stamped 1/fps apart is sampled
    with tempfile.TemporaryDirectory() as tmp:
        for queue, paced in ((args.frames + 1, False), (LiveConfig().queue_frames, True)):
            if args.mode == "webrtc":
                break
            live = LiveConfig(queue_frames=queue, ice_addresses=LOOPBACK)
            settings = ServiceSettings(port=0, http_port=0, state_dir=Path(tmp), ingest=ingest, live=live)
            with LongWatchServer(settings) as server:
                frames = footage(args.frames, width, height, args.fps)
                grpc_run(server, f"bench-grpc-{queue}", frames, args.fps, paced)
        if args.mode != "grpc":
            live = LiveConfig(ice_addresses=LOOPBACK)
            settings = ServiceSettings(port=0, http_port=0, state_dir=Path(tmp), ingest=ingest, live=live)
            with LongWatchServer(settings) as server:
                webrtc_run(server, (width, height), args.fps, args.seconds)


if __name__ == "__main__":
    main()
