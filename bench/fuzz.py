"""Throw generated bad input at a running service; every call must end in a clear status, nothing hangs.

    python bench/fuzz.py             # 10,000+ inputs (the figures)
    python bench/fuzz.py --quick     # about 1,000 (the tests run this)
    python bench/fuzz.py --seed 7    # another sequence (the default is fixed: a run is repeatable)

One `longwatch serve` (the demo model, an embedded redis-server). Hypothesis generates, per family:
- rpc: every RPC with random field values (ids, questions, top_k, ranges, NaN and infinite
  numbers, paths of files that are no video, devices and a FIFO, upload names and pieces);
- bytes: random bytes sent as the serialized request of every RPC;
- video: real files in six containers and codecs, mutated (bytes flipped, cut, zeroed, repeated,
  spliced into each other) and uploaded, in one IngestFile message or by IngestUpload in pieces;
- frames: IngestFrames calls of mutated JPEG/PNG/GIF frames, raw frames of wrong sizes,
  timestamps that are NaN, infinite or go backwards;
- http: random JSON, bytes and mutated SDP offers to every HTTP route, and paths that do not exist;
- planted: a stream copied in Redis then corrupted (record fields, wrong key types, chunk blobs,
  vectors, spans, ingest state, the stream set), then read, asked, resumed and deleted.

What each input must do: end within its deadline with a status a client can act on (OK,
INVALID_ARGUMENT, NOT_FOUND, ALREADY_EXISTS, FAILED_PRECONDITION, RESOURCE_EXHAUSTED, OUT_OF_RANGE,
PERMISSION_DENIED for paths outside the ingest root, DATA_LOSS for planted corruption; HTTP
2xx/4xx) and a one-line message, never INTERNAL, UNKNOWN or
a timeout; the service stays up. Every 200 inputs and at the end a stream ingested first (never
touched by the fuzzer) must hold the same bytes and answer the same; at the end the service's log
holds no traceback and its open files are back near where they started. Failures are collected,
not stopped at, and printed with their input.
"""

from __future__ import annotations

import argparse
import dataclasses
import io
import json
import os
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import av
import grpc
import redis
from hypothesis import HealthCheck, given, seed, settings
from hypothesis import strategies as st

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "tests"))
from common import add_json_out, emit_and_save, machine  # noqa: E402
from footage import encode_still  # noqa: E402
from service_process import ServeProcess  # noqa: E402

from longwatch.memory.serialization import chunk_from_bytes, chunk_to_bytes  # noqa: E402
from longwatch.model.train.synthetic import SyntheticFootage, write_video  # noqa: E402
from longwatch.proto import longwatch_pb2 as pb  # noqa: E402
from longwatch.proto import longwatch_pb2_grpc as pb_grpc  # noqa: E402

KEEPER = "keeper"  # ingested first, never touched: must hold the same bytes and answer the same
VICTIM = "victim"  # ingested first, fair game (asked, deleted, re-created by the fuzzer)
LIVE = "f0"  # a live stream fed first over IngestFrames, fair game too
QUESTION = "What colour is the square?"
SERVICE = "/longwatch.v1.LongWatch/"
ACCEPTED = {
    grpc.StatusCode.OK,
    grpc.StatusCode.INVALID_ARGUMENT,
    grpc.StatusCode.NOT_FOUND,
    grpc.StatusCode.ALREADY_EXISTS,
    grpc.StatusCode.FAILED_PRECONDITION,
    grpc.StatusCode.RESOURCE_EXHAUSTED,
    grpc.StatusCode.OUT_OF_RANGE,
    grpc.StatusCode.PERMISSION_DENIED,  # a server-side path outside the ingest root
}
DEADLINE_S = 60.0
# inputs per family: (full, quick)
COUNTS = {
    "rpc": (4000, 350),
    "bytes": (1500, 150),
    "video": (1000, 80),
    "frames": (1500, 150),
    "http": (1500, 200),
    "planted": (600, 70),
}
SETTINGS = {
    "database": None,
    "deadline": None,
    "suppress_health_check": list(HealthCheck),
    "print_blob": False,
}


class Fuzz:
    """The service under test, the inputs sent so far, and the failures they found."""

    def __init__(self, serve: ServeProcess, tmp: Path) -> None:
        self.serve = serve
        self.tmp = tmp
        self.channel = grpc.insecure_channel(
            serve.target, options=[("grpc.max_send_message_length", 64 << 20)]
        )
        self.stub = pb_grpc.LongWatchStub(self.channel)
        url = serve.wait_for(r"embedded redis-server pid \d+ serving (\S+)", 10).group(1)
        self.redis = redis.Redis.from_url(url)
        self.inputs: Counter[str] = Counter()
        self.codes: dict[str, Counter[str]] = {}  # family -> status -> inputs
        self.failures: list[str] = []
        self.slowest: dict[str, float] = {}
        self.examples: dict[tuple[str, str], str] = {}  # (family, status) -> the first input and message
        self.n = 0
        self.keeper_state: dict[bytes, bytes] = {}
        self.keeper_answer = ""
        self.kept: dict[str, dict[bytes, bytes]] = {}  # victim and live stream, keys DUMPed after ingest
        self.victim_video = b""  # the victim's file: what a resume of a planted stream sends
        self.http_peers: list[str] = []  # streams of offers the HTTP fuzzing got answers to

    # --- the checks every input goes through -------------------------------------------------------

    def call(self, family: str, what: str, fn: Callable[[], object], accepted: set = ACCEPTED) -> object:
        """Run one input; record its status; a failure is kept with `what` describing the input."""
        self.n += 1
        self.inputs[family] += 1
        t0 = time.perf_counter()
        result: object = None
        try:
            result = fn()
            code, message = grpc.StatusCode.OK, ""
        except grpc.RpcError as e:
            code, message = e.code(), e.details() or ""
        seconds = time.perf_counter() - t0
        self.slowest[family] = max(self.slowest.get(family, 0.0), seconds)
        code_name = f"HTTP {result.status}" if isinstance(result, HttpReply) else code.name
        self.codes.setdefault(family, Counter())[code_name] += 1
        self.examples.setdefault((family, code_name), f"{message[:120]} <- {what[:120]}")
        if code not in accepted:
            self.fail(family, f"{code.name} {message[:200]!r}", what)
        elif "\n" in message or "Traceback" in message:
            self.fail(family, f"{code.name} message is not one line: {message[:200]!r}", what)
        self.after_input(family, what)
        return result

    def fail(self, family: str, problem: str, what: str) -> None:
        self.failures.append(f"[{family}] {problem} <- {what[:300]}")

    def after_input(self, family: str, what: str) -> None:
        if self.serve.proc is not None and self.serve.proc.poll() is not None:
            raise SystemExit(f"the service died after [{family}] {what[:300]}\n{self.serve.output[-3000:]}")
        if self.n % 200 == 0:
            self.check_keeper(f"after input {self.n}")
            print(f"fuzz: {self.n} inputs, {len(self.failures)} failures", file=sys.stderr, flush=True)

    def restore(self) -> None:
        """Put the victim and the live stream back as their ingest left them if an input deleted one."""
        for sid, keys in self.kept.items():
            if self.redis.exists(f"lw:{{{sid}}}:stream"):
                continue
            pipe = self.redis.pipeline()
            for key, dumped in keys.items():
                pipe.restore(key, 0, dumped, replace=True)
            pipe.sadd("lw:streams", sid)
            pipe.execute()

    def snapshot(self, sid: str) -> dict[bytes, bytes]:
        return {k: self.redis.dump(k) for k in self.redis.scan_iter(f"lw:{{{sid}}}:*")}

    # --- the untouched stream -------------------------------------------------------------------

    def keeper_keys(self) -> dict[bytes, bytes]:
        return {k: self.redis.dump(k) for k in sorted(self.redis.scan_iter(f"lw:{{{KEEPER}}}:*"))}

    def ask_keeper(self) -> str:
        request = pb.AskRequest(stream_id=KEEPER, question=QUESTION, max_new_tokens=24)
        return self.stub.Ask(request, timeout=DEADLINE_S).answer

    def check_keeper(self, when: str) -> None:
        state = self.keeper_keys()
        if state != self.keeper_state:
            self.fail("keeper", "the untouched stream's keys changed", when)
            self.keeper_state = state
        answer = self.ask_keeper()
        if answer != self.keeper_answer:
            self.fail("keeper", f"the untouched stream answers {answer!r}, not {self.keeper_answer!r}", when)

    def open_fds(self) -> int:
        assert self.serve.proc is not None
        return len(os.listdir(f"/proc/{self.serve.proc.pid}/fd"))


# --- strategies -------------------------------------------------------------------------------------

FIELD_NAMES = [
    "stream_id", "state", "source", "duration_s", "frames_decoded", "frames_sampled", "frames_kept",
    "tokens_seen", "tokens_kept", "chunks", "bytes_stored", "fps", "model", "created_unix",
    "updated_unix", "frames_dropped", "kv_storage", "frames_lost", "frames_pending",
]  # fmt: skip
numbers = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from([0.0, -1.0, 1e-300, 1e300, 60.0, 60.0001, 2.5, float("nan"), float("inf")]),
)
uint32 = st.one_of(st.integers(0, 2**32 - 1), st.sampled_from([0, 1, 2, 4, 1000, 2**31, 2**32 - 1]))
small = st.one_of(st.integers(0, 64), uint32)  # mostly in range: the calls get past validation
# Streams that exist (the victim has chunks: asking it runs the model) drawn as often as bad ids.
known_ids = st.sampled_from([VICTIM, VICTIM, LIVE, LIVE, "f1"])
stream_ids = st.one_of(
    known_ids,
    st.sampled_from(["", ".", "..", "a" * 128, "a" * 129, "lw:{x}", "x y", "é", "a\x00"]),
    st.text(max_size=140),
    st.from_regex(r"[A-Za-z0-9._-]{1,128}", fullmatch=True),
).filter(lambda s: s != KEEPER)
questions = st.one_of(
    st.sampled_from([QUESTION, "When did the square turn red?", "What is at the top left?"]),
    st.sampled_from(["", " ", "\x00", "at what second?", "x" * 5000, "\u202e" * 50]),
    st.text(max_size=300),
)


def special_paths(tmp: Path) -> list[str]:
    fifo = tmp / "a-fifo"
    if not fifo.exists():
        os.mkfifo(fifo)
    (tmp / "not-a-video.mp4").write_bytes(b"\x00" * 4096)
    (tmp / "empty.mp4").write_bytes(b"")
    return [
        str(fifo), "/dev/zero", "/dev/null", "/dev/urandom", "/proc/self/mem", "/", "/etc/passwd",
        str(tmp), str(tmp / "not-a-video.mp4"), str(tmp / "empty.mp4"), str(tmp / "missing.mp4"),
        "", "relative.mp4", "\x00", "a" * 5000,
    ]  # fmt: skip


def mutated(data: bytes) -> st.SearchStrategy[bytes]:
    """`data` cut, with bytes flipped, zeroed, repeated or random bytes put in."""
    n = len(data)

    @st.composite
    def strategy(draw: st.DrawFn) -> bytes:
        out = bytearray(data)
        for _ in range(draw(st.integers(1, 4))):
            kind = draw(st.sampled_from(["flip", "cut", "zero", "repeat", "insert", "head"]))
            if not out:
                break
            at = draw(st.integers(0, len(out) - 1))
            size = draw(st.integers(1, max(1, min(len(out) - at, n // 4 + 1))))
            if kind == "flip":
                for _ in range(draw(st.integers(1, 16))):
                    i = draw(st.integers(0, len(out) - 1))
                    out[i] ^= 1 << draw(st.integers(0, 7))
            elif kind == "cut":
                del out[at:]
            elif kind == "zero":
                out[at : at + size] = bytes(size)
            elif kind == "repeat":
                out[at:at] = out[at : at + size]
            elif kind == "insert":
                out[at:at] = draw(st.binary(min_size=1, max_size=256))
            else:  # keep only the head: a container whose index is missing
                del out[max(1, size) :]
        return bytes(out)

    return strategy()


# --- footage ------------------------------------------------------------------------------------------


def clips(tmp: Path) -> dict[str, bytes]:
    """Short real videos in several containers and codecs."""
    footage = SyntheticFootage(3, 96, 64, 10)
    frames = [footage.frame_at(i) for i in range(15)]  # (64, 96, 3) uint8 each
    out = {}
    for name, fmt, codec, pix in [
        ("h264.mp4", "mp4", "libx264", "yuv420p"),
        ("vp9.webm", "webm", "libvpx-vp9", "yuv420p"),
        ("mpeg4.mkv", "matroska", "mpeg4", "yuv420p"),
        ("mjpeg.avi", "avi", "mjpeg", "yuvj420p"),
        ("mpeg2.mpg", "mpeg", "mpeg2video", "yuv420p"),
        ("gif.gif", "gif", "gif", "rgb8"),
    ]:
        buf = io.BytesIO()
        with av.open(buf, "w", format=fmt) as container:
            stream = container.add_stream(codec, rate=10)
            stream.width, stream.height, stream.pix_fmt = 96, 64, pix
            for rgb in frames:
                frame = av.VideoFrame.from_ndarray(rgb, format="rgb24").reformat(format=pix)
                for packet in stream.encode(frame):
                    container.mux(packet)
            for packet in stream.encode(None):
                container.mux(packet)
        out[name] = buf.getvalue()
    return out


def sdp_offer() -> str:
    """A real offer (aiortc's), the base the SDP mutations start from."""
    import asyncio

    from aiortc import RTCPeerConnection

    async def make() -> str:
        pc = RTCPeerConnection()
        pc.addTransceiver("video", direction="sendonly")
        await pc.setLocalDescription(await pc.createOffer())
        sdp = pc.localDescription.sdp
        await pc.close()
        return sdp

    return asyncio.run(make())


def feed_live(stub: pb_grpc.LongWatchStub, sid: str, frames: int, t0: float = 0.0) -> list[pb.LiveProgress]:
    """`frames` raw frames of footage at 4 per second into live stream `sid` over IngestFrames."""
    footage = SyntheticFootage(6, 96, 64, 4)
    messages = [pb.IngestFramesRequest(start=pb.LiveStart(stream_id=sid))]
    for i in range(frames):
        raw = pb.RawFrame(rgb=footage.frame_at(i).tobytes(), width=96, height=64)
        messages.append(pb.IngestFramesRequest(frame=pb.Frame(timestamp_s=t0 + i / 4, raw=raw)))
    return list(stub.IngestFrames(iter(messages), timeout=DEADLINE_S))


# --- the families -------------------------------------------------------------------------------------


def fuzz_rpc(f: Fuzz, count: int, paths: list[str]) -> None:
    time_ranges = st.one_of(st.none(), st.tuples(numbers, numbers))
    asks = st.fixed_dictionaries(
        {
            "stream_id": stream_ids,
            "question": questions,
            "top_k": st.one_of(st.none(), small),
            "time_range": time_ranges,
            "max_new_tokens": small,
            "score_margin": st.one_of(st.none(), numbers),
        }
    )
    calls = st.one_of(
        st.tuples(st.just("Ask"), asks),
        st.tuples(st.just("AskStream"), asks),
        st.tuples(st.just("GetStream"), stream_ids),
        st.tuples(st.just("ListStreams"), st.none()),
        st.tuples(st.just("DeleteStream"), stream_ids),
        st.tuples(
            st.just("IngestFile"),
            st.tuples(
                stream_ids, st.one_of(st.sampled_from(paths), st.text(max_size=64)), numbers, st.booleans()
            ),
        ),
        st.tuples(st.just("IngestFrames"), st.tuples(stream_ids, numbers)),
        st.tuples(
            st.just("IngestUpload"),
            st.tuples(
                stream_ids, st.text(max_size=300), numbers, st.booleans(), st.lists(st.binary(max_size=64))
            ),
        ),
    )

    @settings(max_examples=count, **SETTINGS)
    @given(calls)
    def run(call: tuple[str, object]) -> None:
        name, args = call
        f.restore()
        f.call("rpc", repr(call)[:300], lambda: send_rpc(f, name, args))

    run()


def ask_request(a: dict) -> pb.AskRequest:
    request = pb.AskRequest(stream_id=a["stream_id"], question=a["question"])
    request.max_new_tokens = min(a["max_new_tokens"], 2**32 - 1)
    if a["top_k"] is not None:
        request.top_k = a["top_k"]
    if a["time_range"] is not None:
        request.time_range.start_s, request.time_range.end_s = a["time_range"]
    if a["score_margin"] is not None:
        request.score_margin = a["score_margin"]
    return request


def send_rpc(f: Fuzz, name: str, args: object) -> object:
    s = f.stub
    if name == "Ask":
        return s.Ask(ask_request(args), timeout=DEADLINE_S)
    if name == "AskStream":
        return list(s.AskStream(ask_request(args), timeout=DEADLINE_S))
    if name == "GetStream":
        return s.GetStream(pb.GetStreamRequest(stream_id=args), timeout=DEADLINE_S)
    if name == "ListStreams":
        return s.ListStreams(pb.ListStreamsRequest(), timeout=DEADLINE_S)
    if name == "DeleteStream":
        return s.DeleteStream(pb.DeleteStreamRequest(stream_id=args), timeout=DEADLINE_S)
    if name == "IngestFile":
        sid, path, fps, resume = args
        request = pb.IngestFileRequest(stream_id=sid, path=path, fps=fps, resume=resume)
        return list(s.IngestFile(request, timeout=DEADLINE_S))
    if name == "IngestUpload":
        sid, file_name, fps, resume, pieces = args
        first = pb.IngestUploadRequest(
            start=pb.UploadStart(stream_id=sid, name=file_name, fps=fps, resume=resume)
        )
        rest = [pb.IngestUploadRequest(piece=p) for p in pieces]
        return list(s.IngestUpload(iter([first, *rest]), timeout=DEADLINE_S))
    sid, fps = args
    start = pb.IngestFramesRequest(start=pb.LiveStart(stream_id=sid, fps=fps))
    return list(s.IngestFrames(iter([start]), timeout=DEADLINE_S))


RPC_KINDS = {
    "Ask": "unary_unary",
    "AskStream": "unary_stream",
    "GetStream": "unary_unary",
    "ListStreams": "unary_unary",
    "DeleteStream": "unary_unary",
    "IngestFile": "unary_stream",
    "IngestUpload": "stream_stream",
    "IngestFrames": "stream_stream",
}


def fuzz_bytes(f: Fuzz, count: int) -> None:
    """Random bytes as the request: undecodable ones must be INVALID_ARGUMENT, not INTERNAL."""

    @settings(max_examples=count, **SETTINGS)
    @given(st.sampled_from(sorted(RPC_KINDS)), st.lists(st.binary(max_size=300), min_size=1, max_size=3))
    def run(name: str, messages: list[bytes]) -> None:
        kind = RPC_KINDS[name]
        method = getattr(f.channel, kind)(SERVICE + name)  # no serializers: bytes as they are

        def send() -> object:
            if kind == "unary_unary":
                return method(messages[0], timeout=DEADLINE_S)
            if kind == "unary_stream":
                return list(method(messages[0], timeout=DEADLINE_S))
            return list(method(iter(messages), timeout=DEADLINE_S))

        f.call("bytes", f"{name} {messages!r}"[:300], send)

    run()


def fuzz_video(f: Fuzz, count: int, videos: dict[str, bytes]) -> None:
    names = sorted(videos)
    inputs = st.one_of(
        *(st.tuples(st.just(name), mutated(videos[name])) for name in names),
        st.tuples(st.just("spliced"), st.tuples(st.sampled_from(names), st.sampled_from(names)).map(
            lambda ab: videos[ab[0]][: len(videos[ab[0]]) // 2] + videos[ab[1]][len(videos[ab[1]]) // 2 :]
        )),
        st.tuples(st.just("random"), st.binary(max_size=4096)),
    )  # fmt: skip
    fps = st.sampled_from([0.0, 1.0, 2.5, 10.0, 60.0])

    @settings(max_examples=count, **SETTINGS)
    @given(inputs, fps, st.sampled_from([0, 1000, 65536]))
    def run(video: tuple[str, bytes], rate: float, piece: int) -> None:
        """piece 0: the bytes in one IngestFile message; else by IngestUpload in pieces of that size."""
        name, data = video
        sid = f"v{f.n}"
        if piece:
            start = pb.IngestUploadRequest(start=pb.UploadStart(stream_id=sid, name=name, fps=rate))
            pieces = [pb.IngestUploadRequest(piece=data[i : i + piece]) for i in range(0, len(data), piece)]
            send = lambda: list(f.stub.IngestUpload(iter([start, *pieces]), timeout=DEADLINE_S))  # noqa: E731
        else:
            request = pb.IngestFileRequest(stream_id=sid, data=data, fps=rate)
            send = lambda: list(f.stub.IngestFile(request, timeout=DEADLINE_S))  # noqa: E731
        f.call("video", f"{name} ({len(data)} bytes) fps {rate} pieces {piece or 'none'}", send)
        forget(f, sid)

    run()


def forget(f: Fuzz, sid: str) -> None:
    """Delete a stream a fuzz input made (not an input itself: it must simply work)."""
    try:
        f.stub.DeleteStream(pb.DeleteStreamRequest(stream_id=sid), timeout=DEADLINE_S)
    except grpc.RpcError as e:
        if e.code() != grpc.StatusCode.NOT_FOUND:
            f.fail("cleanup", f"DeleteStream {sid!r}: {e.code().name} {e.details()!r}", sid)


def fuzz_frames(f: Fuzz, count: int) -> None:
    footage = SyntheticFootage(4, 96, 64, 10)
    rgb = footage.frame_at(0)
    bases = {codec: encode_still(rgb, codec) for codec in ("png", "mjpeg", "gif", "bmp")}
    encoded = st.one_of(
        *(mutated(b) for b in bases.values()),
        st.sampled_from(list(bases.values())),
        st.binary(max_size=512),
    )
    dims = st.one_of(st.integers(0, 5000), st.sampled_from([0, 1, 2, 64, 96, 2**31, 2**32 - 1]))
    raw = st.tuples(dims, dims, st.booleans()).map(
        lambda whf: pb.RawFrame(
            width=whf[0],
            height=whf[1],
            rgb=bytes(whf[0] * whf[1] * 3) if whf[2] and whf[0] * whf[1] <= 1 << 20 else b"x",
        )
    )
    frames = st.lists(
        st.tuples(
            numbers,
            st.one_of(encoded.map(lambda b: ("encoded", b)), raw.map(lambda r: ("raw", r)), st.none()),
        ),
        max_size=6,
    )
    starts = st.tuples(st.one_of(st.just(""), stream_ids), st.sampled_from([0.0, 1.0, 10.0, 60.0]))
    extra_start = st.booleans()

    @settings(max_examples=count, **SETTINGS)
    @given(starts, frames, extra_start)
    def run(start: tuple[str, float], items: list, second_start: bool) -> None:
        sid, rate = start
        sid = sid or ""
        messages = [pb.IngestFramesRequest(start=pb.LiveStart(stream_id=sid, fps=rate))]
        for t, image in items:
            frame = pb.Frame(timestamp_s=t)
            if image is not None:
                if image[0] == "encoded":
                    frame.encoded = image[1]
                else:
                    frame.raw.CopyFrom(image[1])
            messages.append(pb.IngestFramesRequest(frame=frame))
        if second_start:
            messages.insert(len(messages) // 2 + 1, messages[0])
        what = f"start {sid!r} fps {rate}, {len(items)} frames {[(t, i and i[0]) for t, i in items]}"
        replies = f.call(
            "frames", what, lambda: list(f.stub.IngestFrames(iter(messages), timeout=DEADLINE_S))
        )
        made = [r.stream_id for r in replies or [] if r.stream_id]
        if made and made[-1] not in (VICTIM, LIVE, "f1"):
            forget(f, made[-1])

    run()


def fuzz_http(f: Fuzz, count: int, offer: str) -> None:
    base = f"http://127.0.0.1:{f.serve.http_port}"
    json_values = st.recursive(
        st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=40),
        lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4),
        max_leaves=12,
    )
    ask_bodies = st.fixed_dictionaries(
        {},
        optional={
            "stream_id": st.one_of(stream_ids, json_values),
            "question": st.one_of(questions, json_values),
            "top_k": st.one_of(st.integers(-(2**40), 2**40), json_values),
            "max_new_tokens": st.one_of(st.integers(-(2**40), 2**40), json_values),
            "score_margin": st.one_of(st.floats(allow_nan=False), json_values),
        },
    ).map(json.dumps)
    sdp_lines = offer.splitlines()
    sdps = st.one_of(
        st.lists(st.sampled_from(sdp_lines), max_size=len(sdp_lines)).map("\r\n".join),
        mutated(offer.encode()).map(lambda b: b.decode("utf-8", "replace")),
        st.text(max_size=200),
        st.just(offer),
    )
    offer_bodies = st.fixed_dictionaries(
        {"sdp": sdps},
        optional={"type": st.sampled_from(["offer", "answer", "", "pranswer"]), "stream_id": stream_ids},
    ).map(json.dumps)
    bodies = st.one_of(json_values.map(json.dumps), st.binary(max_size=300))
    requests = st.one_of(
        st.tuples(st.just("POST"), st.just("/api/ask"), st.one_of(ask_bodies, bodies)),
        st.tuples(st.just("POST"), st.just("/offer"), st.one_of(offer_bodies, bodies)),
        st.tuples(st.just("GET"), st.just("/api/streams"), st.just(b"")),
        st.tuples(
            st.just("GET"),
            stream_ids.map(lambda s: "/api/streams/" + urllib.request.quote(s, safe="")),
            st.just(b""),
        ),
        st.tuples(
            st.sampled_from(["GET", "POST", "PUT", "DELETE"]),
            st.one_of(
                st.sampled_from(
                    ["/", "/static/index.html", "/static/../../etc/passwd", "/static/x", "/nope"]
                ),
                st.text(max_size=40).map(lambda s: "/" + urllib.request.quote(s, safe="/")),
            ),
            bodies,
        ),
    )

    @settings(max_examples=count, **SETTINGS)
    @given(requests)
    def run(request: tuple[str, str, str | bytes]) -> None:
        method, path, body = request
        data = body.encode() if isinstance(body, str) else body
        f.call("http", f"{method} {path} {data[:200]!r}", lambda: send_http(f, base, method, path, data))

    run()


@dataclasses.dataclass
class HttpReply:
    status: int


def send_http(f: Fuzz, base: str, method: str, path: str, data: bytes, data_loss: bool = False) -> HttpReply:
    """One request; a failure raises HttpStatus. data_loss: a 500 for corrupt stored data is right."""
    request = urllib.request.Request(base + path, data=data or None, method=method)
    request.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(request, timeout=DEADLINE_S) as response:
            status, text = response.status, response.read()
    except urllib.error.HTTPError as e:
        status, text = e.code, e.read()
    # A bug's 500 says {"error": "internal error: ..."}; corrupt data's 500 names the data (which a
    # planted value may make say anything, "internal error" included, further along).
    if status >= 500 and not (
        data_loss and status == 500 and not text.startswith(b'{"error": "internal error')
    ):
        raise HttpStatus(f"HTTP {status}: {text[:200]!r}")
    if status >= 400 and path.startswith(("/api/", "/offer")):
        try:
            message = json.loads(text)["error"]
        except (ValueError, KeyError, TypeError):
            raise HttpStatus(f"HTTP {status} without a JSON error: {text[:200]!r}") from None
        if "\n" in message:
            raise HttpStatus(f"HTTP {status} message is not one line: {message[:200]!r}")
    if path == "/offer" and status == 200:
        sid = json.loads(text)["stream_id"]
        f.http_peers.append(sid)
    return HttpReply(status)


class HttpStatus(grpc.RpcError):
    """An HTTP reply the fuzzer counts as a failure (5xx, or an error without a one-line JSON message)."""

    def __init__(self, message: str) -> None:
        self.message = message

    def code(self) -> grpc.StatusCode:
        return grpc.StatusCode.INTERNAL

    def details(self) -> str:
        return self.message


def fuzz_planted(f: Fuzz, count: int) -> None:
    """Copy the victim or the live stream under a new id, corrupt one thing of it in Redis, then
    use it every way a client can: read, list, ask, resume or continue, and delete it."""
    templates = {}
    for sid in (VICTIM, LIVE):
        keys = f.kept[sid]
        kv_storage = (f.redis.hget(f"lw:{{{sid}}}:stream", "kv_storage") or b"float").decode()
        blobs = {k: chunk_from_bytes(f.redis.get(k), name=k.decode()) for k in keys if b":chunk:" in k}
        templates[sid] = (keys, blobs, kv_storage)
    corruptions = st.one_of(
        st.tuples(st.just("field"), st.sampled_from(FIELD_NAMES + ["junk"]), st.binary(max_size=40)),
        st.tuples(st.just("drop-field"), st.sampled_from(FIELD_NAMES), st.none()),
        st.tuples(st.just("wrong-type"), st.sampled_from(["stream", "spans", "vectors", "chunk:0", "ingest"]), st.none()),
        st.tuples(st.just("blob"), st.integers(0, 1), mutated(b"x" * 64)),  # replaced below by a mutated blob
        st.tuples(st.just("no-blob"), st.integers(0, 1), st.none()),
        st.tuples(st.just("vector"), st.one_of(st.sampled_from(["0", "1", "-1", "x", "99"]), st.text(max_size=5)), st.binary(max_size=64)),
        st.tuples(st.just("span"), st.one_of(st.sampled_from(["0", "1", "7"]), st.text(max_size=5)), st.one_of(
            st.binary(max_size=40), st.sampled_from([b"[NaN, 1]", b"[5, 1]", b"[1e999, 2]", b"{}", b"[1]", b"null"])
        )),
        st.tuples(st.just("ingest"), st.none(), st.binary(max_size=200)),
        st.tuples(st.just("set-member"), st.none(), st.binary(min_size=1, max_size=40)),
    )  # fmt: skip
    mutate_blob = st.data()
    uses = st.lists(
        st.sampled_from(
            ["GetStream", "ListStreams", "Ask", "AskStream", "Resume", "HttpGet", "HttpList", "HttpAsk"]
        ),
        min_size=1,
        max_size=4,
    )

    @settings(max_examples=count, **SETTINGS)
    @given(st.sampled_from([VICTIM, LIVE]), corruptions, uses, mutate_blob)
    def run(source: str, corruption: tuple, calls: list[str], data: st.DataObject) -> None:
        f.restore()
        sid = f"p{f.n}"
        plant(f, sid, source, *templates[source])
        kind, where, value = corruption
        r, prefix = f.redis, f"lw:{{{sid}}}:"
        if kind == "field":
            r.hset(prefix + "stream", where, value)
        elif kind == "drop-field":
            r.hdel(prefix + "stream", where)
        elif kind == "wrong-type":
            r.delete(prefix + where)
            r.rpush(prefix + where, b"x")
        elif kind == "blob":
            key = (prefix + f"chunk:{where}").encode()
            if r.exists(key):
                r.set(key, data.draw(mutated(r.get(key))))
        elif kind == "no-blob":
            r.delete(prefix + f"chunk:{where}")
        elif kind == "vector":
            r.hset(prefix + "vectors", where, value)
        elif kind == "span":
            r.hset(prefix + "spans", where, value)
        elif kind == "ingest":
            r.set(prefix + "ingest", value)
        else:
            r.sadd("lw:streams", value)
        accepted = ACCEPTED | {grpc.StatusCode.DATA_LOSS}
        for name in calls:
            what = f"{name} after {kind} {where!r} {value!r} of a copy of {source}"[:300]
            f.call("planted", what, lambda name=name: use_planted(f, sid, name), accepted)
        try:  # a corrupt stream must still be deletable, and leave nothing behind
            f.stub.DeleteStream(pb.DeleteStreamRequest(stream_id=sid), timeout=DEADLINE_S)
        except grpc.RpcError as e:
            if e.code() != grpc.StatusCode.NOT_FOUND or r.exists(prefix + "stream"):
                f.fail("planted", f"DeleteStream: {e.code().name} {e.details()!r}", f"after {kind} {where!r}")
        left = list(r.scan_iter(prefix + "*"))
        if left:
            f.fail("planted", f"keys left after DeleteStream: {left[:4]}", f"after {kind} {where!r}")
        if kind == "set-member":
            r.srem("lw:streams", value)

    run()


def plant(f: Fuzz, sid: str, source: str, template: dict[bytes, bytes], blobs: dict, kv_storage: str) -> None:
    """`source`'s keys under `sid`: the record and chunk blobs rewritten to name it."""
    pipe = f.redis.pipeline()
    for key, dumped in template.items():
        new = key.replace(f"{{{source}}}".encode(), f"{{{sid}}}".encode())
        if key in blobs:
            chunk = dataclasses.replace(blobs[key], stream_id=sid)
            pipe.set(new, chunk_to_bytes(chunk, kv_storage))
        else:
            pipe.restore(new, 0, dumped, replace=True)
    pipe.hset(f"lw:{{{sid}}}:stream", "stream_id", sid)
    pipe.sadd("lw:streams", sid)
    pipe.execute()


def use_planted(f: Fuzz, sid: str, name: str) -> object:
    s = f.stub
    base = f"http://127.0.0.1:{f.serve.http_port}"
    if name == "GetStream":
        return s.GetStream(pb.GetStreamRequest(stream_id=sid), timeout=DEADLINE_S)
    if name == "ListStreams":
        return s.ListStreams(pb.ListStreamsRequest(), timeout=DEADLINE_S)
    if name in ("Ask", "AskStream"):
        request = pb.AskRequest(stream_id=sid, question=QUESTION, max_new_tokens=8)
        return (
            s.Ask(request, timeout=DEADLINE_S)
            if name == "Ask"
            else list(s.AskStream(request, timeout=DEADLINE_S))
        )
    if name == "Continue":
        return feed_live(s, sid, frames=3, t0=1000.0)
    if name == "Resume":
        request = pb.IngestFileRequest(stream_id=sid, data=f.victim_video, resume=True)
        return list(s.IngestFile(request, timeout=DEADLINE_S))
    if name == "HttpGet":
        return send_http(f, base, "GET", f"/api/streams/{sid}", b"", data_loss=True)
    if name == "HttpList":
        return send_http(f, base, "GET", "/api/streams", b"", data_loss=True)
    body = json.dumps({"stream_id": sid, "question": QUESTION, "max_new_tokens": 8}).encode()
    return send_http(f, base, "POST", "/api/ask", body, data_loss=True)


# --- the run ------------------------------------------------------------------------------------------


def run(quick: bool = False, seed_value: int = 0) -> list[dict]:
    counts = {family: pair[1 if quick else 0] for family, pair in COUNTS.items()}
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="lw-fuzz-") as tmp_name:
        tmp = Path(tmp_name)
        keeper_video = write_video(tmp / "keeper.mp4", 12, 10, 96, 64, seed=1)
        victim_video = write_video(tmp / "victim.mp4", 12, 10, 96, 64, seed=2)
        # The temporary folder is the service's ingest root: server-side paths in it are read.
        with ServeProcess(tmp / "state", "--fps", "2", "--ingest-root", str(tmp)) as serve:
            f = Fuzz(serve, tmp)
            f.victim_video = victim_video.read_bytes()
            for sid, video in ((KEEPER, keeper_video), (VICTIM, victim_video)):
                list(f.stub.IngestFile(pb.IngestFileRequest(stream_id=sid, path=str(video)), timeout=120))
            f.keeper_state, f.keeper_answer = f.keeper_keys(), f.ask_keeper()
            feed_live(f.stub, LIVE, frames=40)
            f.kept = {sid: f.snapshot(sid) for sid in (VICTIM, LIVE)}
            fds_before = f.open_fds()
            families: list[tuple[str, Callable[[], None]]] = [
                ("rpc", lambda: fuzz_rpc(f, counts["rpc"], special_paths(tmp))),
                ("bytes", lambda: fuzz_bytes(f, counts["bytes"])),
                ("video", lambda: fuzz_video(f, counts["video"], clips(tmp))),
                ("frames", lambda: fuzz_frames(f, counts["frames"])),
                ("http", lambda: fuzz_http(f, counts["http"], sdp_offer())),
                ("planted", lambda: fuzz_planted(f, counts["planted"])),
            ]
            for family, fuzz in families:
                t = time.perf_counter()
                seed(seed_value)(fuzz)()
                print(
                    f"fuzz: {family}: {f.inputs[family]} inputs in {time.perf_counter() - t:.0f} s",
                    file=sys.stderr,
                )
            f.check_keeper("at the end")
            wait_for_peers(f)
            fds_after = f.open_fds()
            tracebacks = serve.output.count("Traceback")
            if tracebacks:
                f.fail("log", f"{tracebacks} tracebacks in the service's log", "")
                print_tracebacks(serve.output)
            if fds_after > fds_before + 16:
                f.fail("health", f"open files {fds_before} -> {fds_after}", "after every input")
            listing = f.call(
                "end", "ListStreams at the end", lambda: f.stub.ListStreams(pb.ListStreamsRequest())
            )
            listed = len(listing.streams) if listing is not None else None
            f.channel.close()
    for (family, code), example in sorted(f.examples.items()):
        print(f"example [{family}] {code}: {example}", file=sys.stderr)
    for failure in f.failures:
        print("FAIL " + failure, file=sys.stderr)
    return [
        {
            "bench": "fuzz",
            "inputs": sum(f.inputs.values()),
            **{f"inputs_{k}": v for k, v in f.inputs.items()},
            "statuses": {k: dict(c.most_common()) for k, c in f.codes.items()},
            "slowest_s": {k: round(v, 2) for k, v in f.slowest.items()},
            "failures": len(f.failures),
            "service_open_files_before_after": [fds_before, fds_after],
            "streams_listed_at_end": listed,
            "seed": seed_value,
            "seconds": round(time.perf_counter() - t0, 1),
            "load_avg_1m": machine()["load_avg_1m"],
        }
    ]


def wait_for_peers(f: Fuzz) -> None:
    """Until no stream is live: WebRTC offers the fuzzer never connected close after the service's
    connect timeout (30 s), and only then are their sockets expected back."""
    deadline = time.monotonic() + 45
    while time.monotonic() < deadline:
        streams = f.stub.ListStreams(pb.ListStreamsRequest(), timeout=DEADLINE_S).streams
        if not any(s.state == pb.STREAM_STATE_LIVE for s in streams):
            return
        time.sleep(1)
    f.fail("health", "streams still live 45 s after the last input", str(f.http_peers[-5:]))


def print_tracebacks(log: str) -> None:
    """Each different traceback in the service's log once (keyed by its last line), to stderr."""
    seen: dict[str, str] = {}
    for block in log.split("Traceback (most recent call last):")[1:]:
        lines = [line for line in block.splitlines() if line.strip()]
        last = next((line for line in lines if not line.startswith(" ")), lines[-1] if lines else "")
        seen.setdefault(last, "\n".join(lines[:40]))
    for text in seen.values():
        print("SERVICE TRACEBACK\n" + text, file=sys.stderr)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="about 1,000 inputs instead of 10,000")
    parser.add_argument("--seed", type=int, default=0, help="Hypothesis seed (default 0: repeatable)")
    add_json_out(parser)
    args = parser.parse_args()
    print("machine: " + str(machine()), file=sys.stderr)
    rows = emit_and_save(run(quick=args.quick, seed_value=args.seed), args.json_out)
    if rows[0]["failures"]:
        raise SystemExit(f"{rows[0]['failures']} failures (listed above)")


if __name__ == "__main__":
    main()
