"""A small typed client for the longwatch gRPC service.

Everything that crosses this module's boundary is a plain Python value: results are
dataclasses, and every gRPC failure becomes a `LongWatchError` carrying the server's one-line
message, so callers never handle `grpc.RpcError` or protobuf messages (except the raw
`IngestProgress` stream, whose fields are already flat).

    with LongWatchClient("localhost:50051") as client:
        for progress in client.ingest_file("cam1", path="/videos/cam1.mp4"):
            ...
        print(client.ask("cam1", "What colour is the car?").answer)
"""

from __future__ import annotations

import dataclasses
import ipaddress
import os
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any, TypeVar

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from longwatch.clients.credentials import NO_CREDENTIALS, Credentials
from longwatch.proto import longwatch_pb2 as pb
from longwatch.proto import longwatch_pb2_grpc as pb_grpc
from longwatch.proto.streams import StreamRecord

if TYPE_CHECKING:
    import numpy as np

DEFAULT_TARGET = "localhost:50051"
RECONNECT_PAUSE_S = 0.2
PER_REPLICA_WAIT_S = 2.0  # how long a reconnect waits for one of several replicas before the next


def parse_targets(target: str | Sequence[str]) -> list[str]:
    """ "a:1,b:2" or ["a:1", "b:2"] -> ["a:1", "b:2"]; ValueError for none."""
    parts = target.split(",") if isinstance(target, str) else list(target)
    targets = [t.strip() for t in parts if t.strip()]
    if not targets:
        raise ValueError(f"no server address in {target!r}")
    return targets


DEFAULT_HTTP_SERVER = "localhost:8080"  # the service's HTTP side: WebRTC signalling and the browser page

T = TypeVar("T")
M = TypeVar("M")


# --- errors ---------------------------------------------------------------------------------


class LongWatchError(Exception):
    """Any failure of a longwatch call; `.code` is the gRPC status the server (or channel) gave."""

    default_code = grpc.StatusCode.UNKNOWN

    def __init__(self, message: str, code: grpc.StatusCode | None = None) -> None:
        super().__init__(message)
        self.code: grpc.StatusCode = code or self.default_code

    @property
    def message(self) -> str:
        return str(self)


class NotFound(LongWatchError):
    """No stream with that id."""

    default_code = grpc.StatusCode.NOT_FOUND


class InvalidArgument(LongWatchError, ValueError):
    """The request was rejected as malformed; also a ValueError, since it is one."""

    default_code = grpc.StatusCode.INVALID_ARGUMENT


class AlreadyExists(LongWatchError):
    """A stream with that id exists already (ingest never overwrites)."""

    default_code = grpc.StatusCode.ALREADY_EXISTS


class Unavailable(LongWatchError):
    """The server could not be reached or is not serving; the only error that is retried."""

    default_code = grpc.StatusCode.UNAVAILABLE


class Unauthenticated(LongWatchError):
    """The server wants an API key and got none, or one it does not accept."""

    default_code = grpc.StatusCode.UNAUTHENTICATED


class PermissionDenied(LongWatchError):
    """The key's role may not do this (or a server-side path lies outside the ingest roots)."""

    default_code = grpc.StatusCode.PERMISSION_DENIED


_ERROR_TYPES: dict[grpc.StatusCode, type[LongWatchError]] = {
    cls.default_code: cls
    for cls in (NotFound, InvalidArgument, AlreadyExists, Unavailable, Unauthenticated, PermissionDenied)
}


def error_from_rpc(err: grpc.RpcError, target: str) -> LongWatchError:
    """Map a grpc.RpcError to the exception tree, keeping only the first line of its details.

    Connection failures name the target, since grpc's own text does not say which server.
    """
    code = err.code() if isinstance(err, grpc.Call) else grpc.StatusCode.UNKNOWN
    details = err.details() if isinstance(err, grpc.Call) else str(err)
    message = _first_line(details or "") or code.name.lower().replace("_", " ")
    if code == grpc.StatusCode.UNAVAILABLE:
        message = f"{target}: {message}"
    return _ERROR_TYPES.get(code, LongWatchError)(message, code)


def _first_line(text: str) -> str:
    return text.strip().split("\n", 1)[0].strip()


# --- retries --------------------------------------------------------------------------------


@dataclass(frozen=True)
class RetryPolicy:
    """How often an idempotent call is retried after UNAVAILABLE, and how long to wait between.

    attempts: total tries including the first (1 disables retries).
    backoff_s: wait before the first retry; each later wait is `multiplier` times longer,
        capped at max_backoff_s.
    sleep: injectable so tests need not wait.
    """

    attempts: int = 3
    backoff_s: float = 0.25
    multiplier: float = 2.0
    max_backoff_s: float = 2.0
    sleep: Callable[[float], None] = field(default=time.sleep, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.attempts < 1:
            raise ValueError(f"attempts must be >= 1, got {self.attempts}")
        if self.backoff_s < 0 or self.max_backoff_s < 0 or self.multiplier < 1:
            raise ValueError(
                f"expected backoff_s >= 0, max_backoff_s >= 0, multiplier >= 1; got "
                f"{self.backoff_s}, {self.max_backoff_s}, {self.multiplier}"
            )

    def delay(self, retry: int) -> float:
        """Seconds to wait before retry number `retry` (0 for the first retry)."""
        return min(self.max_backoff_s, self.backoff_s * self.multiplier**retry)

    def call(self, fn: Callable[[], T]) -> T:
        """Run fn, retrying on Unavailable until attempts are used up; other errors pass through."""
        failures = 0
        while True:
            try:
                return fn()
            except Unavailable:
                failures += 1
                if failures >= self.attempts:
                    raise
                self.sleep(self.delay(failures - 1))


NO_RETRY = RetryPolicy(attempts=1)


# --- results --------------------------------------------------------------------------------


@dataclass(frozen=True)
class EvidenceSpan:
    """A stretch of stream time the answer was decoded from."""

    start_s: float
    end_s: float
    score: float
    chunk_index: int
    picture_times_s: tuple[float, ...] = ()  # the chunk's pictures, for get_frames / frame_at

    @classmethod
    def from_proto(cls, evidence: pb.Evidence) -> EvidenceSpan:
        # score is a float32 on the wire; 7 significant digits show 0.83, not 0.8299999833.
        score = float(f"{evidence.score:.7g}")
        return cls(
            evidence.start_s, evidence.end_s, score, evidence.chunk_index, tuple(evidence.picture_times_s)
        )

    def to_json_dict(self) -> dict[str, Any]:
        return {**asdict(self), "picture_times_s": list(self.picture_times_s)}


@dataclass(frozen=True)
class AskResult:
    """An answer, the evidence it cites, and where the time went (timings in milliseconds)."""

    answer: str
    evidence: list[EvidenceSpan]
    timings: dict[str, float]
    tokens_generated: int
    model: str
    stream_id: str = ""

    @classmethod
    def from_proto(cls, response: pb.AskResponse) -> AskResult:
        timings = {f.name: getattr(response.timings, f.name) for f in pb.AskTimings.DESCRIPTOR.fields}
        return cls(
            answer=response.answer,
            evidence=[EvidenceSpan.from_proto(e) for e in response.evidence],
            timings=timings,
            tokens_generated=response.tokens_generated,
            model=response.model,
            stream_id=response.stream_id,
        )

    def to_json_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class RankedAnswer:
    """One stream's place in a cross-stream answer: its best chunk's score, and Ask's result on it."""

    score: float
    result: AskResult

    @property
    def stream_id(self) -> str:
        return self.result.stream_id


@dataclass(frozen=True)
class AcrossResult:
    """AskAcross: the streams that answer best, best first; the streams searched and skipped
    (stream id, reason); where the time went (milliseconds)."""

    results: list[RankedAnswer]
    streams_searched: int
    skipped: list[tuple[str, str]]
    timings: dict[str, float]
    model: str

    @classmethod
    def from_proto(cls, response: pb.AskAcrossResponse) -> AcrossResult:
        timings = {f.name: getattr(response.timings, f.name) for f in pb.AskTimings.DESCRIPTOR.fields}
        return cls(
            results=[
                RankedAnswer(float(f"{r.score:.7g}"), AskResult.from_proto(r.response))
                for r in response.results
            ],
            streams_searched=response.streams_searched,
            skipped=[(s.stream_id, s.reason) for s in response.skipped],
            timings=timings,
            model=response.model,
        )


@dataclass(frozen=True)
class WatchSummary:
    """A standing question: its id, what it watches (stream_id "" for all of yours), how far it got."""

    watch_id: str
    stream_id: str
    question: str
    match: str
    webhook_url: str
    created_unix: float
    chunks_checked: int
    events: int
    last_event_id: str
    webhook_delivered_id: str

    @classmethod
    def from_proto(cls, info: pb.WatchInfo) -> WatchSummary:
        return cls(**{f.name: getattr(info, f.name) for f in pb.WatchInfo.DESCRIPTOR.fields})

    def to_json_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class WatchEvent:
    """A chunk whose answer to the watch's question matched: where, what, and its score."""

    watch_id: str
    event_id: str
    stream_id: str
    chunk_index: int
    start_s: float
    end_s: float
    answer: str
    score: float
    checked_unix: float
    pending: bool = False  # from frames not yet in a chunk (the span is the chunk so far)

    @classmethod
    def from_proto(cls, watch_id: str, event: pb.WatchEvent) -> WatchEvent:
        return cls(
            watch_id=watch_id,
            event_id=event.event_id,
            stream_id=event.stream_id,
            chunk_index=event.chunk_index,
            start_s=event.start_s,
            end_s=event.end_s,
            answer=event.answer,
            score=float(f"{event.score:.7g}"),
            checked_unix=event.checked_unix,
            pending=event.pending,
        )

    def to_json_dict(self) -> dict[str, Any]:
        return asdict(self)


class WatchEvents(Iterator[WatchEvent]):
    """A watch's events as they come; `.watch` is the watch once the server answered (`first()`
    waits for that). Endless: stop by closing it (or leaving its `with`). With reconnect_s > 0 a
    server that goes away is waited for (or the next replica) and the watch resumed after the
    last event seen: nothing is missed and nothing comes twice."""

    def __init__(self, client: LongWatchClient, request: pb.WatchRequest, reconnect_s: float) -> None:
        self._client = client
        self._request = request
        self._reconnect_s = reconnect_s
        self.watch: WatchSummary | None = None
        self.last_event_id = request.after_event_id
        self._call: Any = None  # the Watch call in flight; close() cancels it from any thread
        self._closed = False
        self._messages = self._run()

    def _run(self) -> Iterator[WatchSummary | WatchEvent]:
        """The watch (first, and again after each reconnect), then its events."""
        while not self._closed:
            try:
                with self._client._rpc_errors():
                    self._call = self._client._stub.Watch(self._request)
                    if self._closed:  # closed while the call was being made
                        self._call.cancel()
                    for message in self._call:
                        if message.HasField("watch"):
                            self.watch = WatchSummary.from_proto(message.watch)
                            yield self.watch
                        elif self.watch is not None:
                            event = WatchEvent.from_proto(self.watch.watch_id, message)
                            self.last_event_id = event.event_id
                            yield event
                return
            except LongWatchError as e:
                if self._closed and e.code == grpc.StatusCode.CANCELLED:
                    return
                if not isinstance(e, Unavailable) or self._reconnect_s <= 0 or self.watch is None:
                    raise
                self._client._reconnect(time.monotonic() + self._reconnect_s)
                self._request = pb.WatchRequest(
                    watch_id=self.watch.watch_id, after_event_id=self.last_event_id
                )
            finally:
                if self._call is not None:
                    self._call.cancel()  # a no-op once the call has ended

    def first(self) -> WatchSummary:
        """The watch, created or resumed, once the server has it."""
        while self.watch is None:
            if next(self._messages, None) is None:
                raise LongWatchError("the watch ended before the server answered", grpc.StatusCode.UNKNOWN)
        return self.watch

    def __next__(self) -> WatchEvent:
        while True:
            message = next(self._messages)
            if isinstance(message, WatchEvent):
                return message

    def close(self) -> None:
        """End the watch call (from any thread); iterating then stops. The watch itself stays
        (delete_watch removes it)."""
        self._closed = True
        if self._call is not None:
            self._call.cancel()

    def __enter__(self) -> WatchEvents:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


@dataclass(frozen=True)
class Frame:
    """A picture the service kept of a sampled frame: its stream time, chunk and image bytes."""

    time_s: float
    chunk_index: int
    image: bytes
    format: str = "jpeg"

    @classmethod
    def from_proto(cls, picture: pb.Picture) -> Frame:
        return cls(picture.time_s, picture.chunk_index, bytes(picture.image), picture.format or "jpeg")


# What the server reports about one stream: the one definition both ends share (proto/streams.py).
StreamSummary = StreamRecord


class AskStream(Iterator[str]):
    """The answer's text deltas as they are generated; `.result` is the full AskResult after the end.

    Closing it (or breaking out of a `with` block) cancels the call on the server.
    """

    def __init__(self, messages: Iterator[pb.AskStreamResponse]) -> None:
        self._messages = messages
        self._result: AskResult | None = None

    def __iter__(self) -> AskStream:
        return self

    def __next__(self) -> str:
        for message in self._messages:
            if message.HasField("response"):
                self._result = AskResult.from_proto(message.response)
            if message.delta:
                return message.delta
        if self._result is None:
            raise LongWatchError("AskStream ended without its final response", grpc.StatusCode.INTERNAL)
        raise StopIteration

    @property
    def result(self) -> AskResult:
        if self._result is None:
            raise RuntimeError("AskStream.result is known only once the stream is iterated to its end")
        return self._result

    def close(self) -> None:
        self._messages.close()  # type: ignore[attr-defined]  # a generator; closing cancels the call

    def __enter__(self) -> AskStream:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


@dataclass(frozen=True)
class LiveFrame:
    """One frame for `ingest_frames`: its time and either its pixels or an image file's bytes.

    timestamp_s: seconds on the sender's own clock, never decreasing within one call; the first
        frame of a call lands where the stream left off and later ones keep their spacing.
    rgb: (height, width, 3) uint8 RGB pixels (sent raw: width * height * 3 bytes).
    encoded: the bytes of a JPEG or PNG image (decoded by the server, only if it samples it).
    """

    timestamp_s: float
    rgb: np.ndarray | None = None
    encoded: bytes | None = None

    def to_proto(self) -> pb.Frame:
        if (self.rgb is None) == (self.encoded is None):
            raise InvalidArgument("a LiveFrame needs exactly one of rgb= or encoded=")
        if self.encoded is not None:
            return pb.Frame(timestamp_s=self.timestamp_s, encoded=self.encoded)
        import numpy as np  # only senders of raw frames pay for it

        pixels = np.ascontiguousarray(self.rgb, dtype=np.uint8)
        if pixels.ndim != 3 or pixels.shape[2] != 3:
            raise InvalidArgument(f"rgb must be (height, width, 3) uint8, got shape {pixels.shape}")
        height, width = pixels.shape[:2]
        raw = pb.RawFrame(rgb=pixels.tobytes(), width=width, height=height)
        return pb.Frame(timestamp_s=self.timestamp_s, raw=raw)


# --- requests -------------------------------------------------------------------------------


UPLOAD_PIECE_BYTES = 512 << 10  # what one IngestUpload message carries: under any server's 1 MB cap


def upload_requests(
    stream_id: str, name: str, pieces: Iterable[bytes], fps: float, resume: bool = False, ray: bool = False
) -> Iterator[pb.IngestUploadRequest]:
    """IngestUpload's messages: `start`, then the file's pieces as they are read."""
    start = pb.UploadStart(stream_id=stream_id, name=name, fps=fps, resume=resume, ray=ray)
    yield pb.IngestUploadRequest(start=start)
    for piece in pieces:
        yield pb.IngestUploadRequest(piece=piece)


def file_pieces(path: str | os.PathLike[str]) -> Iterator[bytes]:
    """A file's bytes in UPLOAD_PIECE_BYTES pieces, read as they are sent (memory stays flat)."""
    with open(path, "rb") as f:
        while piece := f.read(UPLOAD_PIECE_BYTES):
            yield piece


def bytes_pieces(data: bytes) -> Iterator[bytes]:
    view = memoryview(data)
    for at in range(0, len(data), UPLOAD_PIECE_BYTES):
        yield bytes(view[at : at + UPLOAD_PIECE_BYTES])


def ask_request(
    stream_id: str,
    question: str,
    top_k: int | None = None,
    time_range: tuple[float, float] | None = None,
    max_new_tokens: int = 0,
    score_margin: float | None = None,
) -> pb.AskRequest:
    """top_k and score_margin None and max_new_tokens 0 leave the choice to the server's defaults.

    Values that cannot travel (a negative count, one past 32 bits) are InvalidArgument here; the
    server says which limits it takes.
    """
    _check_count("max_new_tokens", max_new_tokens)
    if top_k is not None:
        _check_count("top_k", top_k)
    request = pb.AskRequest(stream_id=stream_id, question=question, max_new_tokens=max_new_tokens)
    if top_k is not None:
        request.top_k = top_k
    if score_margin is not None:
        request.score_margin = score_margin
    if time_range is not None:
        start_s, end_s = time_range
        request.time_range.CopyFrom(pb.TimeRange(start_s=start_s, end_s=end_s))
    return request


_UINT32_MAX = 2**32 - 1


def _check_count(name: str, value: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= _UINT32_MAX:
        raise InvalidArgument(f"{name} must be a whole number from 0 to {_UINT32_MAX}, got {value!r}")


def is_loopback_target(target: str) -> bool:
    """Whether a gRPC target names this machine (so the server can read our file paths).

    Understands host:port, [v6]:port, bare hosts, and the dns:///, ipv4:, ipv6: and unix: schemes.
    """
    if target.startswith(("unix:", "unix-abstract:")):
        return True
    for scheme in ("dns:///", "dns:", "ipv4:", "ipv6:"):
        if target.startswith(scheme):
            target = target[len(scheme) :]
            break
    host = _target_host(target)
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _target_host(target: str) -> str:
    if target.startswith("["):
        return target[1 : target.find("]")] if "]" in target else target
    if target.count(":") == 1:
        return target.split(":", 1)[0]
    return target  # a bare host, or a bare IPv6 address


class _CallOver(threading.Event):
    """Set once an IngestFrames call has ended: its request generator stops taking frames."""


class _SharedFrames:
    """One frames iterator shared by the calls of a reconnecting stream, taken one at a time.

    gRPC pulls requests on a thread of its own; when a call dies that thread may still be inside
    next(), so a lock keeps the next call from pulling at the same time.
    """

    def __init__(self, frames: Iterable[LiveFrame]) -> None:
        self._frames = iter(frames)
        self._lock = threading.Lock()
        self.exhausted = False

    def until(self, over: threading.Event) -> Iterator[LiveFrame]:
        while not over.is_set():
            with self._lock:
                frame = next(self._frames, None)
            if frame is None:
                self.exhausted = True
                return
            yield frame


# --- the client -----------------------------------------------------------------------------


class LongWatchClient:
    """A connection to a longwatch server, or to any of several replicas of one.

    target: "host:port", or several ("a:50051,b:50051", or a list): replicas serving one Redis.
        Calls go to one at a time; when it is UNAVAILABLE, the idempotent calls retry on the next,
        and a reconnecting live stream (ingest_frames) goes on on the next that serves.
    timeout: deadline in seconds for each unary call and AskStream (None waits as long as it
        takes). IngestFile has no deadline: it lasts as long as decoding the video does.
    retry: applied to UNAVAILABLE on the idempotent calls (Ask, GetStream, ListStreams) only;
        ingest and delete are never repeated behind the caller's back.
    api_key: the key a server with keys wants (sent as `authorization: Bearer <key>`).
    credentials: the key and TLS settings together (clients/credentials.py); api_key overrides
        its key.
    """

    def __init__(
        self,
        target: str | Sequence[str] = DEFAULT_TARGET,
        timeout: float | None = None,
        retry: RetryPolicy | None = None,
        api_key: str | None = None,
        credentials: Credentials = NO_CREDENTIALS,
    ) -> None:
        self.targets = parse_targets(target)
        self._at = 0
        self.timeout = timeout
        self.retry = retry if retry is not None else RetryPolicy()
        if api_key is not None:
            credentials = dataclasses.replace(credentials, api_key=api_key)
        self.credentials = credentials
        self._channels: dict[str, grpc.Channel] = {}
        self._connect()

    @property
    def target(self) -> str:
        """The server calls go to now."""
        return self.targets[self._at]

    def _connect(self) -> None:
        if self.target not in self._channels:
            # Uploads (IngestFileRequest.data) can be large; the server enforces its own limit.
            self._channels[self.target] = self.credentials.grpc_channel(
                self.target, options=[("grpc.max_send_message_length", -1)]
            )
        channel = self._channels[self.target]
        self._stub = pb_grpc.LongWatchStub(channel)
        self._health = health_pb2_grpc.HealthStub(channel)

    def _fail_over(self) -> None:
        """Calls go to the next replica from here on (with one target: the same one)."""
        self._at = (self._at + 1) % len(self.targets)
        self._connect()

    def __repr__(self) -> str:
        return f"LongWatchClient(target={','.join(self.targets)!r}, timeout={self.timeout!r})"

    def __enter__(self) -> LongWatchClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        for channel in self._channels.values():
            channel.close()

    # --- calls ---

    def ingest_file(
        self,
        stream_id: str,
        path: str | os.PathLike[str] | None = None,
        data: bytes | None = None,
        fps: float = 0.0,
        resume: bool = False,
        server_path: str | None = None,
        ray: bool = False,
    ) -> Iterator[pb.IngestProgress]:
        """Progress messages of a new stream's ingest; the last has done=True and `.stream` set.

        Exactly one of: `path`, a file on this machine, uploaded in pieces as the call goes;
        `data`, the file's bytes, uploaded the same way; `server_path`, a file the server reads
        itself, inside one of its ingest roots (`serve --ingest-root`; else PERMISSION_DENIED).
        Each message follows a committed chunk. The call starts when iteration does; abandoning
        the iterator cancels it, and the stream keeps what was committed (state "interrupted").
        resume: continue an interrupted ingest of the same file from its last committed chunk.
        ray: the server makes the chunks in segments over its Ray workers (`serve --ray`); the
        stream is the same chunk for chunk.
        """
        if sum(x is not None for x in (path, data, server_path)) != 1:
            raise InvalidArgument("ingest_file needs exactly one of path=, data= or server_path=")
        if server_path is not None:
            request = pb.IngestFileRequest(
                stream_id=stream_id, path=server_path, fps=fps, resume=resume, ray=ray
            )
            return self._server_stream(self._stub.IngestFile, request, timeout=None)
        if path is not None:
            if not os.path.isfile(path):
                raise InvalidArgument(f"no such file: {os.fspath(path)}")
            requests = upload_requests(stream_id, os.path.basename(path), file_pieces(path), fps, resume, ray)
        else:
            assert data is not None
            requests = upload_requests(stream_id, "upload", bytes_pieces(data), fps, resume, ray)
        return self._server_stream(self._stub.IngestUpload, requests, timeout=None)

    def ingest_frames(
        self, stream_id: str, frames: Iterable[LiveFrame], fps: float = 0.0, reconnect_s: float = 0.0
    ) -> Iterator[pb.LiveProgress]:
        """Feed a live stream (new, or continued) frame by frame over gRPC.

        Yields progress as chunks commit (noticed as frames arrive, so one message may cover
        several); the last message has done=True and `.stream` set, once `frames` is exhausted
        and the stream's last partial chunk is committed. `frames` is read on gRPC's sending
        thread as the call goes; it may be endless (a camera). fps 0
        keeps the stream's own rate (the server's default for a new stream). Abandoning the
        iterator cancels the call; the server still commits what it received. If `frames`
        raises, the call ends there (what was sent is committed) and the error is re-raised
        after the last progress message, instead of gRPC's anonymous CANCELLED.

        reconnect_s > 0: if the service goes away mid-stream (UNAVAILABLE: killed, restarting),
        wait up to that long for it (or, with several targets, the next replica) to serve again,
        then go on with a new call on the rest of `frames`: the stream continues where its
        committed chunks end. Frames that had not reached a chunk are lost; the service counts
        them (the final message's `stream.frames_lost`). Another replica takes the stream over
        once the dead one's lease runs out (`serve --lease-ttl`); until then it answers
        UNAVAILABLE and the client tries again.
        """
        failed: list[Exception] = []
        source = _SharedFrames(frames)

        def requests(call: _CallOver) -> Iterator[pb.IngestFramesRequest]:
            yield pb.IngestFramesRequest(start=pb.LiveStart(stream_id=stream_id, fps=fps))
            try:
                for frame in source.until(call):
                    yield pb.IngestFramesRequest(frame=frame.to_proto())
            except Exception as exc:  # noqa: BLE001 - re-raised to the caller below
                failed.append(exc)

        def progress() -> Iterator[pb.LiveProgress]:
            deadline = time.monotonic() + reconnect_s
            while True:
                call = _CallOver()
                try:
                    yield from self._server_stream(self._stub.IngestFrames, requests(call), timeout=None)
                except Unavailable:
                    call.set()
                    if source.exhausted or failed or time.monotonic() >= deadline:
                        raise
                    self._reconnect(deadline)
                    continue
                finally:
                    call.set()
                break
            if failed:
                raise failed[0]

        return progress()

    def ask(
        self,
        stream_id: str,
        question: str,
        top_k: int | None = None,
        time_range: tuple[float, float] | None = None,
        max_new_tokens: int = 0,
        score_margin: float | None = None,
    ) -> AskResult:
        request = ask_request(stream_id, question, top_k, time_range, max_new_tokens, score_margin)
        return AskResult.from_proto(self._unary(lambda stub: stub.Ask, request, idempotent=True))

    def ask_stream(
        self,
        stream_id: str,
        question: str,
        top_k: int | None = None,
        time_range: tuple[float, float] | None = None,
        max_new_tokens: int = 0,
        score_margin: float | None = None,
    ) -> AskStream:
        """Like ask, yielding text as it is generated; not retried, as text may already be shown."""
        request = ask_request(stream_id, question, top_k, time_range, max_new_tokens, score_margin)
        return AskStream(self._server_stream(self._stub.AskStream, request, timeout=self.timeout))

    def ask_across(
        self,
        question: str,
        stream_ids: Sequence[str] = (),
        results: int = 0,
        top_k: int | None = None,
        time_range: tuple[float, float] | None = None,
        max_new_tokens: int = 0,
        score_margin: float | None = None,
    ) -> AcrossResult:
        """Ask one question of many streams (none named: every stream of the caller's); the best
        `results` streams (0: the server's 3) come back answered, best first."""
        one = ask_request("", question, top_k, time_range, max_new_tokens, score_margin)  # checked as Ask's
        _check_count("results", results)
        request = pb.AskAcrossRequest(
            question=question, stream_ids=list(stream_ids), results=results, max_new_tokens=max_new_tokens
        )
        if one.HasField("top_k"):
            request.top_k = one.top_k
        if one.HasField("score_margin"):
            request.score_margin = one.score_margin
        if one.HasField("time_range"):
            request.time_range.CopyFrom(one.time_range)
        return AcrossResult.from_proto(self._unary(lambda stub: stub.AskAcross, request, idempotent=True))

    def watch(
        self,
        stream_id: str | None = None,
        question: str = "",
        match: str = "",
        webhook_url: str = "",
        watch_id: str | None = None,
        after_event_id: str = "",
        reconnect_s: float = 0.0,
    ) -> WatchEvents:
        """A new standing question on a stream (None: every stream of yours), or the watch
        `watch_id` resumed after `after_event_id`; iterate for its events (see WatchEvents).
        An event is a chunk whose answer starts with `match` (the server's "yes" when empty)."""
        if watch_id is not None:
            request = pb.WatchRequest(watch_id=watch_id, after_event_id=after_event_id)
        else:
            new = pb.NewWatch(
                stream_id=stream_id or "", question=question, match=match, webhook_url=webhook_url
            )
            request = pb.WatchRequest(new=new, after_event_id=after_event_id)
        return WatchEvents(self, request, reconnect_s)

    def list_watches(self) -> list[WatchSummary]:
        response = self._unary(lambda stub: stub.ListWatches, pb.ListWatchesRequest(), idempotent=True)
        return [WatchSummary.from_proto(w) for w in response.watches]

    def delete_watch(self, watch_id: str) -> WatchSummary:
        request = pb.DeleteWatchRequest(watch_id=watch_id)
        return WatchSummary.from_proto(self._unary(lambda stub: stub.DeleteWatch, request, idempotent=False))

    def get_stream(self, stream_id: str) -> StreamSummary:
        request = pb.GetStreamRequest(stream_id=stream_id)
        return StreamSummary.from_proto(self._unary(lambda stub: stub.GetStream, request, idempotent=True))

    def list_streams(self) -> list[StreamSummary]:
        response = self._unary(lambda stub: stub.ListStreams, pb.ListStreamsRequest(), idempotent=True)
        return [StreamSummary.from_proto(info) for info in response.streams]

    def delete_stream(self, stream_id: str) -> int:
        """Remove a stream; returns the number of Redis keys deleted."""
        request = pb.DeleteStreamRequest(stream_id=stream_id)
        return int(self._unary(lambda stub: stub.DeleteStream, request, idempotent=False).keys_deleted)

    def get_frames(self, stream_id: str, from_s: float, to_s: float, max_frames: int = 0) -> list[Frame]:
        """The pictures kept between two stream times, in time order (at most max_frames; 0: 100)."""
        _check_count("max_frames", max_frames)
        request = pb.GetFramesRequest(stream_id=stream_id, from_s=from_s, to_s=to_s, max_frames=max_frames)
        return [
            Frame.from_proto(p)
            for p in self._unary(lambda stub: stub.GetFrames, request, idempotent=True).frames
        ]

    def frame_at(self, stream_id: str, at_s: float) -> Frame | None:
        """The picture nearest a stream time, or None if the stream keeps none."""
        request = pb.GetFramesRequest(stream_id=stream_id, from_s=at_s, to_s=at_s, nearest=True)
        frames = self._unary(lambda stub: stub.GetFrames, request, idempotent=True).frames
        return Frame.from_proto(frames[0]) if frames else None

    def set_retention(self, stream_id: str, max_age_s: float = 0.0, max_bytes: int = 0) -> StreamSummary:
        """Keep a stream's chunks at most max_age_s after their commit and/or at most max_bytes of
        them (the oldest go first); 0 takes its tenant's or the server's. Returns the stream, with
        the retention now in force."""
        if isinstance(max_bytes, bool) or not isinstance(max_bytes, int) or not 0 <= max_bytes < 2**63:
            raise InvalidArgument(f"max_bytes must be a whole number of bytes >= 0, got {max_bytes!r}")
        request = pb.SetRetentionRequest(stream_id=stream_id, max_age_s=max_age_s, max_bytes=max_bytes)
        return StreamSummary.from_proto(self._unary(lambda stub: stub.SetRetention, request, idempotent=True))

    def wait_ready(self, timeout: float, service: str = "", poll_s: float = 0.1) -> None:
        """Block until the standard health service reports SERVING; Unavailable after timeout.

        service "" asks about the server as a whole. A server without the health service,
        or one that does not know `service`, fails at once instead of waiting out the timeout.
        """
        deadline = time.monotonic() + timeout
        last = "no answer"
        while (remaining := deadline - time.monotonic()) > 0:
            status = self._health_status(service, remaining)
            if status == health_pb2.HealthCheckResponse.SERVING:
                return
            last = (
                "not connected"
                if status is None
                else health_pb2.HealthCheckResponse.ServingStatus.Name(status)
            )
            time.sleep(min(poll_s, max(0.0, deadline - time.monotonic())))
        raise Unavailable(f"{self.target}: not serving after {timeout:g}s ({last})")

    # --- plumbing ---

    def _health_status(self, service: str, remaining: float) -> int | None:
        """The health status, or None while the server cannot be reached yet."""
        request = health_pb2.HealthCheckRequest(service=service)
        try:
            return int(self._health.Check(request, timeout=remaining, wait_for_ready=True).status)
        except grpc.RpcError as err:
            code = err.code() if isinstance(err, grpc.Call) else None
            if code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
                return None
            raise error_from_rpc(err, self.target) from err

    @contextmanager
    def _rpc_errors(self) -> Iterator[None]:
        """The one place grpc.RpcError becomes a LongWatchError."""
        try:
            yield
        except grpc.RpcError as err:
            raise error_from_rpc(err, self.target) from err

    def _unary(
        self, method: Callable[[pb_grpc.LongWatchStub], Callable[..., T]], request: Any, *, idempotent: bool
    ) -> T:
        def once() -> T:
            try:
                with self._rpc_errors():
                    return method(self._stub)(request, timeout=self.timeout)
            except Unavailable:
                self._fail_over()  # the retry, if any, asks the next replica
                raise

        return self.retry.call(once) if idempotent else once()

    def _reconnect(self, deadline: float) -> None:
        """Until the next target serves (the same one, with one target), or `deadline`."""
        while True:
            time.sleep(RECONNECT_PAUSE_S)  # a replica that refuses the stream for now is not hammered
            self._fail_over()
            left = deadline - time.monotonic()
            try:
                self.wait_ready(
                    timeout=max(0.1, min(left, PER_REPLICA_WAIT_S) if len(self.targets) > 1 else left)
                )
                return
            except Unavailable:
                if time.monotonic() >= deadline:
                    raise

    def _server_stream(
        self, method: Callable[..., Iterator[M]], request: Any, timeout: float | None
    ) -> Iterator[M]:
        """Start a server-streaming call lazily; stopping early cancels it on the server."""
        call = None
        try:
            with self._rpc_errors():
                call = method(request, timeout=timeout)
                yield from call
        finally:
            if call is not None:
                call.cancel()  # type: ignore[attr-defined]  # a no-op once the call has finished
