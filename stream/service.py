"""The gRPC face of longwatch: request validation, status codes, protobuf conversion. No logic of its own."""

from __future__ import annotations

import dataclasses
import functools
import inspect
import logging
import math
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import closing, contextmanager
from typing import Any, TypeVar

import grpc
from google.protobuf.message import DecodeError, Message

from longwatch.memory.index import IndexRegistry
from longwatch.memory.records import CorruptData, Picture
from longwatch.memory.store import ChunkStore, RedisChunkStore
from longwatch.memory.watches import RedisWatchStore, WatchEventRecord, WatchRecord, valid_event_id
from longwatch.proto import longwatch_pb2 as pb
from longwatch.proto import longwatch_pb2_grpc as pb_grpc
from longwatch.proto.streams import StreamRecord, StreamState
from longwatch.stream import metrics
from longwatch.stream.across import DEFAULT_RESULTS, AcrossOutcome, AcrossParams, ask_across
from longwatch.stream.answering import AskOutcome, AskParams, QuestionAnswerer
from longwatch.stream.archive import ArchiveProgress, ingest_archive, resolve_server_path
from longwatch.stream.auth import LOCAL_ADMIN, Caller, KeyRing, Role
from longwatch.stream.errors import (
    BadRequest,
    CallEnded,
    NotReady,
    PermissionDenied,
    QuotaExceeded,
    Stopping,
    StreamBusy,
    StreamMissing,
    Unauthenticated,
    one_line,
    status_for,
)
from longwatch.stream.images import EncodedImage, FrameImage, RawImage, check_bytes
from longwatch.stream.leases import LeaseKeeper
from longwatch.stream.live import LiveRegistry, LiveStats, new_stream_id
from longwatch.stream.pictures import PICTURE_FORMAT
from longwatch.stream.pipeline import ModelRunner, forget_stream
from longwatch.stream.quotas import Quotas
from longwatch.stream.ray_ingest import RayPool
from longwatch.stream.retention import shown
from longwatch.stream.settings import MAX_FPS, MIN_FPS, LiveConfig, ServiceSettings
from longwatch.stream.uploads import UploadSpool, upload_name
from longwatch.stream.watching import tenant_watch, watch_for

SERVICE_NAME = pb.DESCRIPTOR.services_by_name["LongWatch"].full_name  # longwatch.v1.LongWatch
log = logging.getLogger(__name__)
F = TypeVar("F", bound=Callable[..., Any])


class CallGate:
    """The calls in flight, and the gate that closes to new ones when the service stops.

    Stopping closes the gate (new calls: UNAVAILABLE), lets the calls inside finish (an ingest
    stops at its next frame, keeping what it committed), and only then do Redis and gRPC go.
    """

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._active = 0
        self.closed = False

    @contextmanager
    def call(self) -> Iterator[None]:
        with self._cond:
            if self.closed:
                raise Stopping("the server is shutting down; try again once it is back")
            self._active += 1
        try:
            yield
        finally:
            with self._cond:
                self._active -= 1
                self._cond.notify_all()

    def close(self) -> None:
        with self._cond:
            self.closed = True

    def drain(self, timeout: float) -> int:
        """Wait up to `timeout` s for the calls inside to end; returns how many are still running."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while self._active and (left := deadline - time.monotonic()) > 0:
                self._cond.wait(left)
            return self._active


# The least role each method needs (stream/auth.py): readers ask, writers ingest, admins delete.
METHOD_ROLES: dict[str, Role] = {
    "IngestFile": Role.WRITER,
    "IngestUpload": Role.WRITER,
    "IngestFrames": Role.WRITER,
    "Ask": Role.READER,
    "AskStream": Role.READER,
    "AskAcross": Role.READER,
    "GetStream": Role.READER,
    "ListStreams": Role.READER,
    "DeleteStream": Role.ADMIN,
    "SetRetention": Role.WRITER,
    "GetFrames": Role.READER,
    "Watch": Role.READER,  # a webhook needs a writer (checked in Watch)
    "ListWatches": Role.READER,
    "DeleteWatch": Role.WRITER,
}
MAX_FRAMES = 100  # GetFrames' default and most pictures per call
WATCH_WAIT_MS = 1000  # how long a Watch call waits for an event before looking at its caller again


def _abort_on_error(method: F) -> F:
    """Map expected errors to their status with a one-line message; anything else is INTERNAL.

    Every call passes the service's CallGate: counted while it runs, refused once it has closed.
    Messages show the caller's streams by the ids it knows them by (no tenant prefix).
    """

    def handle(context: grpc.ServicerContext, caller: Caller, exc: Exception) -> None:
        if isinstance(exc, CallEnded):  # the caller is gone: only the log hears about it
            log.info("%s", one_line(exc))
        metrics.count_store_error(exc)
        code = status_for(exc)
        if code is None:
            log.exception("internal error in %s (tenant %s)", method.__name__, caller.tenant)
            context.abort(grpc.StatusCode.INTERNAL, f"internal error: {caller.public_text(one_line(exc))}")
        context.abort(code, caller.public_text(one_line(exc)))

    if inspect.isgeneratorfunction(method):

        @functools.wraps(method)
        def stream_wrapper(
            self: Any, request: Any, context: grpc.ServicerContext, caller: Caller = LOCAL_ADMIN
        ) -> Iterator[Any]:
            try:
                with self.gate.call():
                    yield from method(self, request, context, caller)
            except Exception as exc:  # noqa: BLE001 - mapped to a status
                handle(context, caller, exc)

        return stream_wrapper  # type: ignore[return-value]

    @functools.wraps(method)
    def unary_wrapper(
        self: Any, request: Any, context: grpc.ServicerContext, caller: Caller = LOCAL_ADMIN
    ) -> Any:
        try:
            with self.gate.call():
                return method(self, request, context, caller)
        except Exception as exc:  # noqa: BLE001 - mapped to a status
            handle(context, caller, exc)

    return unary_wrapper  # type: ignore[return-value]


def _once(fn: Callable[[], object]) -> Callable[[], None]:
    """`fn`, run the first time only, whichever thread calls first."""
    lock = threading.Lock()
    done = False

    def once() -> None:
        nonlocal done
        with lock:
            if done:
                return
            done = True
        fn()

    return once


def _check_caller(context: grpc.ServicerContext, method: str, stream_id: str, outcome: AskOutcome) -> None:
    """Between an answer's steps: stop it, freeing the model, once its caller cancelled or its
    deadline passed (gRPC has already told the caller; nothing more is sent)."""
    if context.is_active():
        return
    why = "its deadline passed" if (context.time_remaining() or 0) <= 0 else "the caller cancelled"
    raise CallEnded(f"{method} on {stream_id!r} stopped after {outcome.tokens_generated} tokens: {why}")


def _progress(stream_id: str, p: ArchiveProgress) -> pb.IngestProgress:
    return pb.IngestProgress(stream_id=stream_id, **dataclasses.asdict(p))


def _ask_response(stream_id: str, outcome: AskOutcome) -> pb.AskResponse:
    return pb.AskResponse(
        stream_id=stream_id,
        answer=outcome.answer,
        evidence=[
            pb.Evidence(
                start_s=e.start_s,
                end_s=e.end_s,
                score=e.score,
                chunk_index=e.index,
                picture_times_s=e.picture_times,
            )
            for e in outcome.evidence
        ],
        timings=pb.AskTimings(**outcome.timings_ms),
        tokens_generated=outcome.tokens_generated,
        model=outcome.model,
    )


def _across_response(caller: Caller, outcome: AcrossOutcome) -> pb.AskAcrossResponse:
    return pb.AskAcrossResponse(
        results=[
            pb.AskAcrossResult(
                score=r.score, response=_ask_response(caller.public_id(r.stream_id), r.outcome)
            )
            for r in outcome.results
        ],
        streams_searched=outcome.streams_searched,
        skipped=[
            pb.SkippedStream(stream_id=caller.public_id(s.stream_id), reason=caller.public_text(s.reason))
            for s in outcome.skipped
        ],
        timings=pb.AskTimings(**outcome.timings_ms),
        model=outcome.model,
    )


def watch_info(caller: Caller, watch: WatchRecord) -> pb.WatchInfo:
    return pb.WatchInfo(
        watch_id=caller.public_id(watch.watch_id),
        stream_id=caller.public_id(watch.stream_id) if watch.stream_id else "",
        question=watch.question,
        match=watch.match,
        webhook_url=watch.webhook_url,
        created_unix=watch.created_unix,
        chunks_checked=watch.chunks_checked,
        events=watch.events,
        last_event_id=watch.last_event_id,
        webhook_delivered_id=watch.webhook_delivered_id,
    )


def _watch_event(caller: Caller, event: WatchEventRecord) -> pb.WatchEvent:
    return pb.WatchEvent(
        event_id=event.event_id,
        stream_id=caller.public_id(event.stream_id),
        chunk_index=event.chunk_index,
        start_s=event.start_s,
        end_s=event.end_s,
        answer=event.answer,
        score=event.score,
        checked_unix=event.checked_unix,
        pending=event.pending,
    )


def callers_streams(store: ChunkStore, caller: Caller, stream_ids: Sequence[str]) -> list[StreamRecord]:
    """The streams a cross-stream question names (each once, in order; NOT_FOUND for one the caller
    has not), or every stream of the caller's when it names none."""
    if not stream_ids:
        return [r for r in store.list_streams() if caller.owns(r.stream_id)]
    records = []
    for sid in dict.fromkeys(caller.stored_id(s) for s in stream_ids):
        record = store.get_stream(sid)
        if record is None:
            raise StreamMissing(f"no stream {sid!r}")
        records.append(record)
    return records


def find_pictures(
    store: ChunkStore, stored_id: str, from_s: float, to_s: float, max_frames: int, nearest: bool
) -> list[Picture]:
    """GetFrames' pictures (also the HTTP API's): those between two times, or the one nearest a time."""
    if not all(math.isfinite(t) for t in (from_s, to_s)):
        raise BadRequest(f"times must be finite numbers of seconds, got {from_s} and {to_s}")
    if nearest:
        picture = store.picture_at(stored_id, from_s)
        return [] if picture is None else [picture]
    if to_s < from_s:
        raise BadRequest(f"to_s ({to_s:g}) is before from_s ({from_s:g})")
    if max_frames > MAX_FRAMES:
        raise BadRequest(f"max_frames is at most {MAX_FRAMES}, got {max_frames}")
    return store.get_pictures(stored_id, from_s, to_s)[: max_frames or MAX_FRAMES]


def check_fps(fps: float) -> float:
    """A requested sampling rate: 0 (the default) or in [MIN_FPS, MAX_FPS]; NaN and the rest are refused."""
    if not (fps == 0 or MIN_FPS <= fps <= MAX_FPS):
        raise BadRequest(f"fps must be in [{MIN_FPS:g}, {MAX_FPS:g}] (or 0 for the server's), got {fps}")
    return fps


def _live_start(request: pb.IngestFramesRequest | None) -> pb.LiveStart:
    if request is None or request.WhichOneof("kind") != "start":
        raise BadRequest("the first IngestFrames message must be `start`, naming the stream")
    check_fps(request.start.fps)
    return request.start


def live_frame(request: pb.IngestFramesRequest, limits: LiveConfig) -> tuple[float, FrameImage]:
    """A frame message's timestamp and image; cheap checks now, decoding only if it is sampled."""
    if request.WhichOneof("kind") != "frame":
        raise BadRequest("only the first message may be `start`; every later one must be a `frame`")
    frame = request.frame
    kind = frame.WhichOneof("image")
    if kind == "raw":
        check_bytes(len(frame.raw.rgb), limits)
        return frame.timestamp_s, RawImage(frame.raw.rgb, frame.raw.width, frame.raw.height, limits)
    if kind == "encoded":
        check_bytes(len(frame.encoded), limits)
        return frame.timestamp_s, EncodedImage(frame.encoded, limits)
    raise BadRequest("a frame needs an image: `encoded` (JPEG or PNG bytes) or `raw` (RGB and its size)")


def _live_progress(stats: LiveStats, caller: Caller, done: bool = False) -> pb.LiveProgress:
    return pb.LiveProgress(
        stream_id=caller.public_id(stats.stream_id),
        frames_received=stats.frames_received,
        frames_sampled=stats.frames_sampled,
        frames_dropped=stats.frames_dropped,
        chunks_committed=stats.chunks_committed,
        position_s=stats.position_s,
        done=done,
    )


class LongWatchService(pb_grpc.LongWatchServicer):
    def __init__(
        self,
        settings: ServiceSettings,
        runner: ModelRunner,
        store: ChunkStore,
        indexes: IndexRegistry,
        leases: LeaseKeeper,
        keys: KeyRing | None = None,
    ) -> None:
        self.settings = settings
        self.leases = leases
        self.ray_pool: RayPool | None = None  # the server sets it with --ray
        self.keys = keys or KeyRing(None)
        self.uploads = UploadSpool(settings.state_dir / "uploads")
        self.runner = runner
        self.store = store
        self.indexes = indexes
        self.gate = CallGate()
        self._ingesting: set[str] = set()  # streams an IngestFile of this process is feeding
        self._ingesting_lock = threading.Lock()
        self.live = LiveRegistry(settings.ingest, settings.live, runner, store, indexes, leases)
        if not isinstance(store, RedisChunkStore):
            raise TypeError("the service needs a RedisChunkStore: watches live beside the streams")
        self.watches = RedisWatchStore(store.client)
        # Each Watch call holds one of gRPC's threads for as long as it is open: at most half of
        # them, so watchers can never keep the other calls waiting.
        self._watch_calls = threading.BoundedSemaphore(max(2, settings.workers // 2))
        self.quotas = Quotas(self.keys, store)
        self.answerer = QuestionAnswerer(
            runner,
            store,
            indexes,
            settings.max_question_chars,
            live=self.live,
            recent_chunks=settings.live.recent_chunks,
            score_margin=settings.score_margin or 0.0,
        )

    def _record(self, stored_id: str) -> StreamRecord:
        """A stream by its stored id (Caller.stored_id); another tenant's is as missing as none."""
        record = self.store.get_stream(stored_id)
        if record is None:
            raise StreamMissing(f"no stream {stored_id!r}")
        return self._as_it_is(record)

    def _public(self, caller: Caller, record: StreamRecord) -> pb.StreamInfo:
        """A stream as its caller knows it: by the id it gave, with the retention in force."""
        return shown(record, caller, self.keys).to_proto()

    def _as_it_is(self, record: StreamRecord) -> StreamRecord:
        """An archive no ingest of this process feeds is interrupted, whatever Redis last took
        (a Redis refusing writes could not be told; the next start settles it there)."""
        if record.state == StreamState.INGESTING and not self.is_ingesting(record.stream_id):
            return dataclasses.replace(record, state=StreamState.INTERRUPTED)
        return record

    @_abort_on_error
    def IngestFile(
        self, request: pb.IngestFileRequest, context: grpc.ServicerContext, caller: Caller
    ) -> Iterator[pb.IngestProgress]:
        if request.WhichOneof("source") == "path":
            path = resolve_server_path(request.path, self.settings.security.ingest_roots)
            self._check_ingest(caller, caller.stored_id(request.stream_id), request.resume)
            yield from self._ingest(
                caller,
                request.stream_id,
                request.fps,
                request.resume,
                context,
                path,
                stays=True,
                ray=request.ray,
            )
            return
        # The file's bytes in this message: spooled like an upload in pieces, under the same limit.
        self._check_ingest(caller, caller.stored_id(request.stream_id), request.resume)
        limit = self.keys.limits(caller.tenant).max_upload_bytes
        with self.uploads.receive([request.data], limit, "the upload") as spooled:
            yield from self._ingest(
                caller,
                request.stream_id,
                request.fps,
                request.resume,
                context,
                str(spooled),
                "upload",
                ray=request.ray,
            )

    @_abort_on_error
    def IngestUpload(
        self,
        request_iterator: Iterator[pb.IngestUploadRequest],
        context: grpc.ServicerContext,
        caller: Caller,
    ) -> Iterator[pb.IngestProgress]:
        first = next(request_iterator, None)
        if first is None or first.WhichOneof("kind") != "start":
            raise BadRequest("the first IngestUpload message must be `start`, naming the stream")
        start = first.start
        check_fps(start.fps)
        self._check_ingest(caller, caller.stored_id(start.stream_id), start.resume)  # before the file comes
        name = upload_name(start.name)

        def pieces() -> Iterator[bytes]:
            try:
                for n, request in enumerate(request_iterator, start=1):
                    if request.WhichOneof("kind") != "piece":
                        raise BadRequest(
                            f"message {n}: only the first message may be `start`; later ones are pieces"
                        )
                    yield request.piece
            except grpc.RpcError:  # gRPC ended the call: the client went away, or sent too large a piece
                raise CallEnded(
                    f"upload of {name!r} into {start.stream_id!r} ended by gRPC before its end"
                ) from None

        limit = self.keys.limits(caller.tenant).max_upload_bytes
        with self.uploads.receive(pieces(), limit, f"upload {name!r}") as path:
            yield from self._ingest(
                caller, start.stream_id, start.fps, start.resume, context, str(path), name, ray=start.ray
            )

    def _ingest(
        self,
        caller: Caller,
        stream_id: str,
        fps: float,
        resume: bool,
        context: grpc.ServicerContext,
        path: str,
        name: str | None = None,
        stays: bool = False,
        ray: bool = False,
    ) -> Iterator[pb.IngestProgress]:
        """An archive ingest of a file on the server (an ingest root's, or a spooled upload), as
        progress messages; `name` is what the stream's source shows (else the file's own name);
        stays: the file stays where it is (an ingest root's), so the stream records its path.
        ray: make the chunks over the server's Ray workers (stream/ray_ingest.py)."""
        if ray and self.ray_pool is None:
            raise NotReady("this server has no Ray workers: start it with `serve --ray ADDRESS`")
        base = self.settings.ingest
        check_fps(fps)
        config = dataclasses.replace(base, fps=fps or base.fps)
        sid = caller.stored_id(stream_id)  # its quotas were checked before the file was taken
        with self._ingesting_lock:
            busy = sid in self._ingesting
            if busy and resume:
                raise StreamBusy(f"stream {sid!r} is being ingested now")
            self._ingesting.add(sid)
        lease = None
        try:
            # Not while this process ingests it: the ingest below is refused then (StreamExists).
            lease = None if busy else self.leases.take(sid)
            progress = ingest_archive(
                sid,
                path,
                None,
                config,
                self.runner,
                self.store,
                self.indexes,
                is_cancelled=lambda: not context.is_active(),
                resume=resume,
                stopping=lambda: self.gate.closed,
                busy=busy,
                name=name,
                source_path=path if stays else "",
                fence=lease.token if lease else None,
                pool=self.ray_pool if ray else None,
            )
            with closing(progress):  # closed early (a quota): the ingest keeps what it committed
                for p in progress:
                    msg = _progress(stream_id, p)
                    if p.done:
                        msg.stream.CopyFrom(self._public(caller, self._record(sid)))
                    else:
                        self.quotas.check_stored(caller)
                    yield msg
        finally:
            if lease is not None:
                self.leases.release(lease)
            if not busy:
                with self._ingesting_lock:
                    self._ingesting.discard(sid)

    def _check_ingest(self, caller: Caller, stored_id: str, resume: bool) -> None:
        if resume:
            self.quotas.check_stored(caller)
        else:
            self.quotas.check_new_stream(caller, stored_id)

    def is_ingesting(self, stream_id: str) -> bool:
        with self._ingesting_lock:
            return stream_id in self._ingesting

    @_abort_on_error
    def IngestFrames(
        self,
        request_iterator: Iterator[pb.IngestFramesRequest],
        context: grpc.ServicerContext,
        caller: Caller,
    ) -> Iterator[pb.LiveProgress]:
        """One call feeds one live stream; whatever ends the call, the last partial chunk commits."""
        start = _live_start(next(request_iterator, None))
        sid = caller.stored_id(start.stream_id or new_stream_id())
        self.quotas.check_live(caller)
        self.quotas.check_new_stream(caller, sid)
        session = self.live.open(sid, source="live:grpc", fps=start.fps or None)
        committed = 0
        try:
            for n, request in enumerate(request_iterator, start=1):
                try:
                    session.offer(*live_frame(request, self.settings.live))
                except BadRequest as e:
                    raise BadRequest(f"frame {n}: {e}") from e
                stats = session.stats()
                if stats.chunks_committed > committed:
                    committed = stats.chunks_committed
                    self.quotas.check_stored(caller)
                    yield _live_progress(stats, caller)
        except grpc.RpcError:
            if context.is_active():
                raise
            log.info("live stream %s: the IngestFrames client went away", session.stream_id)
            return
        finally:
            session.close()
        final = _live_progress(session.stats(), caller, done=True)
        record = self.store.get_stream(session.stream_id)
        if record is not None:  # None: a new stream that got no frame is not kept
            final.stream.CopyFrom(self._public(caller, record))
        yield final

    def _ask_params(self, request: pb.AskRequest, caller: Caller) -> AskParams:
        stored_id = caller.stored_id(request.stream_id)
        time_range = None
        if request.HasField("time_range"):
            time_range = (request.time_range.start_s, request.time_range.end_s)
        return AskParams(
            stream_id=stored_id,
            question=request.question,
            top_k=request.top_k if request.HasField("top_k") else self.settings.top_k,
            max_new_tokens=request.max_new_tokens or self.settings.max_new_tokens,
            time_range=time_range,
            score_margin=request.score_margin if request.HasField("score_margin") else None,
        )

    @_abort_on_error
    def Ask(self, request: pb.AskRequest, context: grpc.ServicerContext, caller: Caller) -> pb.AskResponse:
        params = self._ask_params(request, caller)
        with self.quotas.asking(caller):
            deltas, outcome = self.answerer.ask(params)
            with closing(deltas):
                for _ in deltas:
                    _check_caller(context, "Ask", request.stream_id, outcome)
        metrics.asked(params.stream_id, outcome.timings_ms)
        return _ask_response(request.stream_id, outcome)

    @_abort_on_error
    def AskStream(
        self, request: pb.AskRequest, context: grpc.ServicerContext, caller: Caller
    ) -> Iterator[pb.AskStreamResponse]:
        params = self._ask_params(request, caller)
        with self.quotas.asking(caller):
            deltas, outcome = self.answerer.ask(params)
            with closing(deltas):
                for delta in deltas:
                    _check_caller(context, "AskStream", request.stream_id, outcome)
                    try:
                        yield pb.AskStreamResponse(delta=delta)
                    except GeneratorExit:  # gRPC dropped the call (cancelled, deadline): stop now
                        log.info(
                            "AskStream on %r stopped after %d tokens: the call ended",
                            request.stream_id,
                            outcome.tokens_generated,
                        )
                        raise
        metrics.asked(params.stream_id, outcome.timings_ms)
        yield pb.AskStreamResponse(response=_ask_response(request.stream_id, outcome))

    @_abort_on_error
    def AskAcross(
        self, request: pb.AskAcrossRequest, context: grpc.ServicerContext, caller: Caller
    ) -> pb.AskAcrossResponse:
        time_range = None
        if request.HasField("time_range"):
            time_range = (request.time_range.start_s, request.time_range.end_s)
        params = AcrossParams(
            question=request.question,
            results=request.results or DEFAULT_RESULTS,
            top_k=request.top_k if request.HasField("top_k") else self.settings.top_k,
            max_new_tokens=request.max_new_tokens or self.settings.max_new_tokens,
            time_range=time_range,
            score_margin=request.score_margin if request.HasField("score_margin") else None,
        )
        streams = callers_streams(self.store, caller, request.stream_ids)
        progress = AskOutcome()  # only for the message of a call that ended part way
        with self.quotas.asking(caller):
            outcome = ask_across(
                self.answerer,
                params,
                streams,
                lambda: _check_caller(context, "AskAcross", f"{len(streams)} streams", progress),
            )
        if outcome.results:  # one question: counted once, under the first result's tenant (the caller's)
            metrics.asked(outcome.results[0].stream_id, outcome.timings_ms)
        return _across_response(caller, outcome)

    @_abort_on_error
    def Watch(
        self, request: pb.WatchRequest, context: grpc.ServicerContext, caller: Caller
    ) -> Iterator[pb.WatchEvent]:
        after = request.after_event_id
        if not valid_event_id(after):
            raise BadRequest(f"after_event_id must be an event id such as 1733390000000-0, got {after!r}")
        if request.WhichOneof("kind") is None:
            raise BadRequest("Watch needs `new` (a question to watch for) or `watch_id` (a watch to resume)")
        if not self._watch_calls.acquire(blocking=False):
            raise QuotaExceeded(
                f"this server has {max(2, self.settings.workers // 2)} Watch calls open, its most: "
                "follow the watch over HTTP (GET /api/watches/ID/events) or a webhook, or another replica"
            )
        # Given back the moment the call ends (the caller hung up), not when the loop notices it.
        give_back = _once(self._watch_calls.release)
        if not context.add_callback(give_back):
            give_back()  # the call has ended already
        try:
            yield from self._watch(request, context, caller, after)
        finally:
            give_back()

    def _watch(
        self, request: pb.WatchRequest, context: grpc.ServicerContext, caller: Caller, after: str
    ) -> Iterator[pb.WatchEvent]:
        if request.WhichOneof("kind") == "new":
            new = request.new
            watch = watch_for(
                caller,
                self.store,
                self.watches,
                new.stream_id,
                new.question,
                new.match,
                new.webhook_url,
                self.settings.max_question_chars,
            )
        else:
            watch = tenant_watch(self.watches, caller.tenant, caller.stored_id(request.watch_id))
        yield pb.WatchEvent(watch=watch_info(caller, watch))
        rounds = 0
        while context.is_active() and not self.gate.closed:
            events = self.watches.events_after(watch.watch_id, after, block_ms=WATCH_WAIT_MS)
            for event in events:
                yield _watch_event(caller, event)
                after = event.event_id
            rounds += 1
            if not events and rounds % 5 == 0 and self.watches.get(watch.watch_id) is None:
                raise StreamMissing(f"watch {watch.watch_id!r} was deleted")
        if self.gate.closed:
            raise Stopping(
                f"the server is shutting down: resume watch {watch.watch_id!r} after event {after or 'none'} "
                "on another server (or this one once it is back)"
            )

    @_abort_on_error
    def ListWatches(
        self, request: pb.ListWatchesRequest, context: grpc.ServicerContext, caller: Caller
    ) -> pb.ListWatchesResponse:
        mine = [w for w in self.watches.list() if w.tenant == caller.tenant]
        return pb.ListWatchesResponse(watches=[watch_info(caller, w) for w in mine])

    @_abort_on_error
    def DeleteWatch(
        self, request: pb.DeleteWatchRequest, context: grpc.ServicerContext, caller: Caller
    ) -> pb.WatchInfo:
        watch = tenant_watch(self.watches, caller.tenant, caller.stored_id(request.watch_id))
        self.watches.delete(watch.watch_id)
        log.info("watch %s deleted by %s", watch.watch_id, caller.key_id or "the local admin")
        return watch_info(caller, watch)

    @_abort_on_error
    def GetStream(
        self, request: pb.GetStreamRequest, context: grpc.ServicerContext, caller: Caller
    ) -> pb.StreamInfo:
        return self._public(caller, self._record(caller.stored_id(request.stream_id)))

    @_abort_on_error
    def ListStreams(
        self, request: pb.ListStreamsRequest, context: grpc.ServicerContext, caller: Caller
    ) -> pb.ListStreamsResponse:
        mine = [r for r in self.store.list_streams() if caller.owns(r.stream_id)]
        return pb.ListStreamsResponse(streams=[self._public(caller, self._as_it_is(r)) for r in mine])

    @_abort_on_error
    def GetFrames(
        self, request: pb.GetFramesRequest, context: grpc.ServicerContext, caller: Caller
    ) -> pb.GetFramesResponse:
        sid = caller.stored_id(request.stream_id)
        self._record(sid)
        pictures = find_pictures(
            self.store, sid, request.from_s, request.to_s, request.max_frames, request.nearest
        )
        return pb.GetFramesResponse(
            frames=[
                pb.Picture(time_s=p.time_s, chunk_index=p.index, image=p.image, format=PICTURE_FORMAT)
                for p in pictures
            ]
        )

    @_abort_on_error
    def SetRetention(
        self, request: pb.SetRetentionRequest, context: grpc.ServicerContext, caller: Caller
    ) -> pb.StreamInfo:
        sid = caller.stored_id(request.stream_id)
        if not (math.isfinite(request.max_age_s) and request.max_age_s >= 0):
            raise BadRequest(f"max_age_s must be a number of seconds >= 0, got {request.max_age_s}")
        self._record(sid)
        self.store.set_retention(sid, request.max_age_s, request.max_bytes)
        log.info("retention of %s set to %g s, %d bytes", sid, request.max_age_s, request.max_bytes)
        return self._public(caller, self._record(sid))

    @_abort_on_error
    def DeleteStream(
        self, request: pb.DeleteStreamRequest, context: grpc.ServicerContext, caller: Caller
    ) -> pb.DeleteStreamResponse:
        sid = caller.stored_id(request.stream_id)
        try:
            self._record(sid)
        except CorruptData as e:  # what cannot be read can still be removed
            log.warning("deleting stream %r, whose record is corrupt: %s", sid, one_line(e))
        if self.live.is_live(sid):
            raise StreamBusy(f"stream {request.stream_id!r} is live: end its connection before deleting it")
        deleted = forget_stream(sid, self.runner, self.store, self.indexes)
        log.info("stream %s deleted by %s", sid, caller.key_id or "the local admin")
        return pb.DeleteStreamResponse(keys_deleted=deleted)


# --- registration -------------------------------------------------------------------------------------


def add_to_server(service: LongWatchService, server: grpc.Server, keys: KeyRing | None = None) -> None:
    """Register the service's methods, each authenticating its caller and parsing its own requests.

    The caller comes from the `authorization: Bearer <key>` metadata (`keys`; None or a ring
    without a file: everyone is the local admin) and must hold the method's role (METHOD_ROLES):
    UNAUTHENTICATED or PERMISSION_DENIED otherwise, before the request is even parsed.
    The generated `add_LongWatchServicer_to_server` lets gRPC parse requests, and gRPC answers
    bytes that are no message with INTERNAL ("Exception deserializing request!") and a logged
    traceback. Here the bytes reach the method, and a request that does not parse is the
    client's error: INVALID_ARGUMENT, one line.
    """
    keys = keys or KeyRing(None)
    handlers: dict[str, grpc.RpcMethodHandler] = {}
    for method in pb.DESCRIPTOR.services_by_name["LongWatch"].methods:
        request_type = getattr(pb, method.input_type.name)
        response_type = getattr(pb, method.output_type.name)
        behavior = getattr(service, method.name)
        kind = (method.client_streaming, method.server_streaming)
        make = {
            (False, False): grpc.unary_unary_rpc_method_handler,
            (False, True): grpc.unary_stream_rpc_method_handler,
            (True, True): grpc.stream_stream_rpc_method_handler,
        }[kind]
        handlers[method.name] = make(
            _authenticating(_parsing(behavior, request_type, *kind), keys, method.name),
            response_serializer=response_type.SerializeToString,
        )
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE_NAME, handlers),))
    server.add_registered_method_handlers(SERVICE_NAME, handlers)


def caller_of(context: grpc.ServicerContext, keys: KeyRing) -> Caller:
    """Who sent this call, by its `authorization` metadata (gRPC lower-cases metadata keys)."""
    header = next((v for k, v in context.invocation_metadata() or () if k == "authorization"), None)
    return keys.authenticate(header if isinstance(header, str) else None)


def _authenticating(behavior: Callable, keys: KeyRing, name: str) -> Callable:
    """`behavior`, called with its caller, once the caller is known and holds the method's role."""

    def authenticated(request: Any, context: grpc.ServicerContext) -> Any:  # bytes, or their iterator
        try:
            caller = caller_of(context, keys)
            caller.require(METHOD_ROLES[name], f"call {name}")
        except (Unauthenticated, PermissionDenied) as e:
            context.abort(status_for(e), str(e))
            raise  # not reached: abort raises
        return behavior(request, context, caller)

    return authenticated


def _parse(request_type: type[Message], raw: bytes) -> Message:
    try:
        return request_type.FromString(raw)
    except DecodeError as e:
        raise BadRequest(f"the request is not a valid {request_type.__name__} message ({e})") from None


def _parsing(
    behavior: Callable, request_type: type[Message], client_streaming: bool, server_streaming: bool
) -> Callable:
    """`behavior` taking the request's bytes; a request that does not parse is INVALID_ARGUMENT."""
    if client_streaming:  # parsed one by one as the method reads them: inside its error mapping

        def streaming(raw_requests: Iterator[bytes], context: grpc.ServicerContext, caller: Caller) -> Any:
            return behavior((_parse(request_type, raw) for raw in raw_requests), context, caller)

        return streaming

    def parsed(raw: bytes, context: grpc.ServicerContext) -> Message:
        try:
            return _parse(request_type, raw)
        except BadRequest as e:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(e))
            raise  # not reached: abort raises

    if server_streaming:

        def unary_stream(raw: bytes, context: grpc.ServicerContext, caller: Caller) -> Iterator[Message]:
            yield from behavior(parsed(raw, context), context, caller)

        return unary_stream

    def unary_unary(raw: bytes, context: grpc.ServicerContext, caller: Caller) -> Message:
        return behavior(parsed(raw, context), context, caller)

    return unary_unary
