"""How many 720p30 WebRTC streams one service takes at once on this machine, no sampled frame dropped.

    python bench/live_streams.py                 # 1, 2, 3, 4, 6, 8, 12 senders, 20 s, until one fails
    python bench/live_streams.py --quick         # one sender for 2 s (the test's smoke run)
    python bench/live_streams.py --counts 3 4 --seconds 30

One `LongWatchServer` (embedded redis-server, the demo-model architecture from `new_base`: 56 px
frames, 8 frames a chunk, alpha 16, random weights; WebRTC on 127.0.0.1 only) takes N concurrent
aiortc senders, N = 1, 2, 3, 4, 6, 8, 12, each sending 1280x720 footage-like video
(`SyntheticFootage`: still scenes with sensor noise, pans, cuts) at 30 fps in real time over
loopback; the service samples each stream at 1 fps. A count passes when every stream had no
sampled frame dropped (the live queue never overflowed) and got a sampled frame for every second
it was sent but at most the last (so no second was lost in transport or decoding either); the
rounds stop at the first count that fails. `max_streams` is the largest count that passed.

What shares the two cores. The senders run in one separate process, so their CPU time is
measured apart from the service's (both are reported in cores: CPU seconds per second of
sending). To keep them cheap the video is H.264 encoded once (libx264, zerolatency, 1.5 Mbit/s,
a keyframe every 2 s; cached under ~/.cache/longwatch-bench/) and the senders send those packets
as they are (aiortc packetises and encrypts them; no encoder runs while measuring); a receiver's
keyframe request is answered with the clip's nearest earlier keyframe, as an encoder would with
a fresh one. A browser would spend its own machine's CPU on encoding. The service decodes every
frame of every stream (H.264, in aiortc's decoder threads), samples by time, and converts and
encodes only the sampled frames. The service's CPU counts its process (aiortc, decoding, the
pipeline, gRPC) and its redis-server child. Anything else running on the machine shares the
cores too: see load_avg_1m.
"""

from __future__ import annotations

import argparse
import asyncio
import fractions
import json
import math
import os
import resource
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

import av
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack
from common import add_json_out, cached_file, emit_and_save, machine, model_placement

from longwatch.clients.webrtc import FramePacer, WebRTCSender
from longwatch.model.config import ModelConfig
from longwatch.model.train.synthetic import SyntheticFootage

if TYPE_CHECKING:  # the senders' process runs this file too and must not pay for importing torch
    from longwatch.stream.server import LongWatchServer
    from longwatch.stream.settings import ServiceSettings

LOOPBACK = ("127.0.0.1",)  # WebRTC never leaves loopback, at both ends
VIDEO_CLOCK = 90_000  # RTP's video clock
SAMPLE_FPS = 1.0  # the demo model card's sampling rate
GOAL_STREAMS = 3


@dataclass(frozen=True)
class Clip:
    """The H.264 video every sender loops; its cache file is named after every field."""

    seconds: float
    width: int = 1280
    height: int = 720
    fps: int = 30
    bitrate: int = 1_500_000
    keyframe_s: float = 2.0
    seed: int = 7

    @property
    def file_name(self) -> str:
        return (
            f"live-seed{self.seed}-{self.width}x{self.height}-{self.fps}fps-{self.seconds:g}s-"
            f"{self.bitrate // 1000}k-gop{self.keyframe_s:g}s.ts"
        )


@dataclass(frozen=True)
class Plan:
    counts: tuple[int, ...]  # sender counts to try, in order; stops after the first that fails
    seconds: float  # how long each sender sends
    clip: Clip


# Past the goal the counts grow faster, to find the limit within a few minutes.
FULL = Plan(counts=(1, 2, 3, 4, 6, 8, 12), seconds=20.0, clip=Clip(seconds=10.0))
QUICK = Plan(counts=(1,), seconds=2.0, clip=Clip(seconds=1.0, keyframe_s=1.0))


# --- the video ----------------------------------------------------------------------------------


def cached_clip(clip: Clip, cache_dir: Path | None = None) -> Path:
    """The clip as an MPEG-TS file of H.264 in Annex-B form (what RTP carries), encoded on first use."""
    return cached_file(clip.file_name, lambda path: encode_clip(clip, path), cache_dir)


def encode_clip(clip: Clip, path: Path) -> None:
    source = SyntheticFootage(clip.seed, clip.width, clip.height, float(clip.fps))
    with av.open(str(path), mode="w", format="mpegts") as container:
        stream = container.add_stream("libx264", rate=clip.fps)
        stream.width, stream.height, stream.pix_fmt = clip.width, clip.height, "yuv420p"
        stream.bit_rate = clip.bitrate
        stream.gop_size = round(clip.keyframe_s * clip.fps)
        # What a WebRTC sender makes: no B-frames (frames leave in display order), baseline.
        stream.options = {"preset": "veryfast", "tune": "zerolatency", "profile": "baseline"}
        for i, image in enumerate(source.frames(clip.seconds)):
            frame = av.VideoFrame.from_ndarray(image, format="rgb24")
            frame.pts = i
            container.mux(stream.encode(frame))
        container.mux(stream.encode(None))


def clip_packets(path: Path) -> tuple[list[bytes], list[int]]:
    """The clip's access units in order, as Annex-B bytes, and the indexes of its keyframes."""
    with av.open(str(path)) as container:
        packets = [p for p in container.demux(video=0) if p.size]
    keyframes = [k for k, p in enumerate(packets) if p.is_keyframe]
    if not keyframes or keyframes[0] != 0:
        raise ValueError(f"{path} does not start with a keyframe")
    return [bytes(p) for p in packets], keyframes


class PacketTrack(MediaStreamTrack):
    """Sends pre-encoded video packets in a loop at `fps`, paced in real time like a camera.

    A keyframe request (the receiver lost one: see `forward_keyframe_requests`) is answered as a
    browser's encoder would, with a keyframe next: playback jumps back to the start of the
    current group of pictures, so up to `Clip.keyframe_s` of the footage repeats.
    """

    kind = "video"

    def __init__(self, packets: list[bytes], keyframes: list[int], fps: int) -> None:
        super().__init__()
        self.packets, self.keyframes, self.fps = packets, keyframes, fps
        self.keyframes_requested = 0
        self._n = 0  # frames sent
        self._position = 0  # index into packets of the next one to send
        self._keyframe_due = False
        self._pacer = FramePacer(self.fps)

    def request_keyframe(self) -> None:
        self.keyframes_requested += 1
        self._keyframe_due = True

    async def recv(self) -> av.Packet:
        if self.readyState != "live":
            raise MediaStreamError
        await self._pacer.wait(self._n)
        if self._keyframe_due:
            self._keyframe_due = False
            self._position = max(k for k in self.keyframes if k <= self._position)
        packet = av.Packet(self.packets[self._position])
        packet.pts = self._n * VIDEO_CLOCK // self.fps
        packet.time_base = fractions.Fraction(1, VIDEO_CLOCK)
        self._n += 1
        self._position = (self._position + 1) % len(self.packets)
        return packet


# --- the senders' process -----------------------------------------------------------------------


async def send_all(
    http: str, clip: tuple[list[bytes], list[int]], fps: int, count: int, seconds: float, tag: str
) -> list[dict]:
    tracks = [PacketTrack(*clip, fps) for _ in range(count)]
    senders = [
        WebRTCSender(http, track, f"{tag}-{k}", ice_addresses=LOOPBACK, video_codec="H264")
        for k, track in enumerate(tracks)
    ]
    results = await asyncio.gather(*(s.run(seconds) for s in senders))
    return [
        {"frames_sent": r.frames_sent, "seconds": r.seconds, "keyframes_requested": t.keyframes_requested}
        | r.stream
        for r, t in zip(results, tracks, strict=True)
    ]


def senders_main(args: argparse.Namespace) -> None:
    """`--send`: run the senders, then print one JSON object with their results and CPU time.

    The CPU time counts from the first offer to the last stream's end (imports and reading the
    clip are left out): what the senders cost while the service works.
    """
    clip = clip_packets(Path(args.clip))
    cpu0 = process_cpu_s()
    streams = asyncio.run(send_all(args.http, clip, args.fps, args.count, args.seconds, args.tag))
    print(json.dumps({"streams": streams, "cpu_s": process_cpu_s() - cpu0}))


# --- the service's side -------------------------------------------------------------------------


def demo_model(folder: Path) -> Path:
    """The demo model's folder: the shipped one when present, else an untrained copy built here."""
    shipped = Path(__file__).resolve().parent.parent / "model" / "demo" / "base"
    if (shipped / "config.json").is_file():
        return shipped
    from longwatch.model.train.trainer import new_base

    return new_base(folder / "demo-base", seed=0, system_prompt=ModelConfig().system_prompt)


def process_cpu_s(pid: int | None = None) -> float:
    """CPU seconds (user + system) of this process, or of child `pid` (from /proc)."""
    if pid is None:
        usage = resource.getrusage(resource.RUSAGE_SELF)
        return usage.ru_utime + usage.ru_stime
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime, stime


def run_senders(server: LongWatchServer, clip: Clip, clip_path: Path, count: int, seconds: float) -> dict:
    """One round: `count` senders at once; the service's and the senders' CPU and every stream."""
    redis_pid = server.redis.pid if server.redis is not None else None
    cpu0, redis0, t0 = process_cpu_s(), process_cpu_s(redis_pid) if redis_pid else 0.0, time.perf_counter()
    command = [
        sys.executable,
        __file__,
        "--send",
        "--http",
        f"127.0.0.1:{server.http_port}",
        "--clip",
        str(clip_path),
        "--fps",
        str(clip.fps),
        "--count",
        str(count),
        "--seconds",
        str(seconds),
        "--tag",
        f"bench-n{count}",
    ]
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"the senders failed (exit {done.returncode}): {done.stderr.strip()[-2000:]}")
    wall = time.perf_counter() - t0
    service_cpu = process_cpu_s() - cpu0
    redis_cpu = (process_cpu_s(redis_pid) - redis0) if redis_pid else 0.0
    senders = json.loads(done.stdout.strip().splitlines()[-1])
    return round_row(count, clip, senders, service_cpu + redis_cpu, wall)


def round_row(count: int, clip: Clip, senders: dict, service_cpu_s: float, wall_s: float) -> dict:
    """One round's row; cores are CPU seconds per second of sending (the longest sender's)."""
    streams = senders["streams"]
    seconds = max(float(s["seconds"]) for s in streams)
    # The sampling slots the frames sent cover; one may go unfilled at the connection's close
    # (the sender stops mid-slot, the last frames in flight are cut) without any fault.
    expected = [math.ceil(s["frames_sent"] / clip.fps * SAMPLE_FPS) for s in streams]
    sampled = [int(s["frames_sampled"]) for s in streams]
    dropped = [int(s["frames_dropped"]) for s in streams]
    whole = all(d == 0 for d in dropped) and all(n >= e - 1 for n, e in zip(sampled, expected, strict=True))
    return {
        "bench": "live_streams",
        "streams": count,
        "seconds": round(seconds, 1),
        "frame": f"{clip.width}x{clip.height}@{clip.fps}",
        "sent": [int(s["frames_sent"]) for s in streams],
        "received": [int(s["frames_decoded"]) for s in streams],
        "sampled": sampled,
        "expected_samples": expected,
        "dropped": dropped,
        "chunks": [int(s["chunks"]) for s in streams],
        "keyframes_requested": [int(s["keyframes_requested"]) for s in streams],
        "no_sample_lost": whole,
        "service_cpu_s": round(service_cpu_s, 2),
        "service_cores": round(service_cpu_s / seconds, 3),
        "sender_cores": round(senders["cpu_s"] / seconds, 3),
        "wall_s": round(wall_s, 1),
    }


def service_settings(state_dir: Path, model: Path) -> ServiceSettings:
    from longwatch.stream.settings import LiveConfig, ServiceSettings

    return ServiceSettings(
        port=0,
        http_port=0,
        state_dir=state_dir,
        model=ModelConfig(path=model, **model_placement()),
        ingest_explicit=frozenset(),  # the model card's ingest settings (1 fps, 8 frames a chunk)
        live=LiveConfig(ice_addresses=LOOPBACK),
    )


def rounds(plan: Plan) -> Iterator[dict]:
    from longwatch.stream.server import LongWatchServer

    clip_path = cached_clip(plan.clip)
    with tempfile.TemporaryDirectory(prefix="bench-live-") as tmp:
        settings = service_settings(Path(tmp), demo_model(Path(tmp)))
        with LongWatchServer(settings) as server:
            for count in plan.counts:
                row = run_senders(server, plan.clip, clip_path, count, plan.seconds)
                yield row | machine()
                if not row["no_sample_lost"]:
                    break


def run(quick: bool = False, plan: Plan | None = None) -> list[dict]:
    rows = list(rounds(plan or (QUICK if quick else FULL)))
    passed = [r["streams"] for r in rows if r["no_sample_lost"]]
    failed = [r["streams"] for r in rows if not r["no_sample_lost"]]
    for row in rows:
        row["max_streams"] = max(passed, default=0)  # the largest count tried that lost nothing
        row["first_failed"] = min(failed, default=None)  # None: the limit is above the counts tried
        row["goal_streams"] = GOAL_STREAMS
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="one sender for 2 s (smoke run)")
    parser.add_argument("--counts", type=int, nargs="+", help="sender counts to try (default 1..6)")
    parser.add_argument("--seconds", type=float, help="seconds each sender sends (default 20)")
    # The senders' own process (started by the benchmark itself).
    parser.add_argument("--send", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--http", help=argparse.SUPPRESS)
    parser.add_argument("--clip", help=argparse.SUPPRESS)
    parser.add_argument("--fps", type=int, default=30, help=argparse.SUPPRESS)
    parser.add_argument("--count", type=int, default=1, help=argparse.SUPPRESS)
    parser.add_argument("--tag", default="bench", help=argparse.SUPPRESS)
    add_json_out(parser)
    args = parser.parse_args()
    if args.send:
        senders_main(args)
        return
    plan = QUICK if args.quick else FULL
    plan = replace(plan, counts=tuple(args.counts or plan.counts), seconds=args.seconds or plan.seconds)
    emit_and_save(run(plan=plan), args.json_out)


if __name__ == "__main__":
    main()
