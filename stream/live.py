"""Live streams: frames that arrive over time, from WebRTC peers and gRPC IngestFrames calls.

Each connection feeds one stream through a `LiveSession`, which reuses the archive pipeline
(`StreamIngestor`: DiffFP, encoding, compression, commit) behind a bounded queue:

    the connection (gRPC thread or event loop)     the session's worker thread
    offer(t, image)                                queue.get()
      client time -> stream time (StreamClock)       StreamIngestor.push: a chunk commits
      TimeSampler keeps 1/fps                          when frames_per_chunk are pending
      pixels at the stream's reference size          the ingest state is saved after each commit
      queue.put_nowait, or drop and count            counters reach the store at least every 1 s

Backpressure. The queue holds `LiveConfig.queue_frames` sampled frames. When the pipeline falls
behind, a sampled frame that finds it full is dropped and counted (`frames_dropped`), so a
camera never waits on the model and memory stays bounded. Archives are read at the pipeline's
own pace and never drop.

Stream time. A connection's timestamps are its own (a WebRTC sender's clock starts anywhere; an
IngestFrames client may send wall-clock seconds). Its first frame lands at the stream's resume
point (0 for a new stream, the end of the last committed chunk after a reconnect) and later
frames keep their spacing: stream_t = resume + (t - t_first). Stream time never goes backwards:
IngestFrames refuses a timestamp before the previous one; a WebRTC sender's clock that jumps
back (its 32-bit RTP clock wraps after 13 h) is re-anchored at the last stream time.

Reconnects and restarts. When a connection ends, the pending frames commit as the last, partial
chunk and the stream is READY again. `IngestState` (resume time, reference frame size, DiffFP's
previous frame) is saved to `lw:{id}:ingest` after every commit, so a later connection with the
same id - in this process or after a restart - continues chunk numbering (from the record's chunk
count), stream time and DiffFP: its first frame is compared with the last committed frame, not
treated as a stream start. A process killed mid-stream loses only frames not yet committed;
its next start, or another replica once the stream's lease ran out (stream/leases.py), sets the
stream back to READY, and a sender that reconnects to any replica continues it.
"""

from __future__ import annotations

import json
import logging
import math
import queue
import secrets
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, replace

import torch
from safetensors.torch import load as load_safetensors_bytes
from safetensors.torch import save as save_safetensors_bytes

from longwatch.memory.chunk import ChunkCache
from longwatch.memory.index import IndexRegistry
from longwatch.memory.records import IngestCounters, StoreError, StreamExists
from longwatch.memory.serialization import safetensors_metadata
from longwatch.memory.store import ChunkStore
from longwatch.model.frames import grid_for
from longwatch.proto.streams import StreamRecord, StreamState, validate_stored_id
from longwatch.stream import metrics
from longwatch.stream.decode import SampledFrame, TimeSampler
from longwatch.stream.errors import BadRequest, NotReady, Stopping, StreamBusy, one_line
from longwatch.stream.images import FrameImage
from longwatch.stream.leases import Lease, LeaseKeeper
from longwatch.stream.pipeline import CommittedChunk, ModelRunner, StreamIngestor, forget_stream
from longwatch.stream.settings import IngestConfig, LiveConfig

log = logging.getLogger(__name__)

LIVE_SOURCE_PREFIX = "live:"
COUNTER_FLUSH_S = 1.0  # how stale the stored counters of a live stream may get
_INGEST_META = "longwatch.ingest"
_INGEST_VERSION = 1
_END = object()  # queue sentinel: the connection is over


# --- ingest state ---------------------------------------------------------------------------------


@dataclass
class IngestState:
    """What a live stream needs to continue after a disconnect or a restart (a few KB in Redis).

    resume_s: stream time where the next connection's first frame lands (end of the last chunk).
    frame_width, frame_height: the reference size every frame is scaled to (0 before any frame).
    diffp: DiffFP's previous frame, (grid_h/2, grid_w/2, 4 * 3 * 14 * 14) float32, or None.
    """

    resume_s: float = 0.0
    frame_width: int = 0
    frame_height: int = 0
    diffp: torch.Tensor | None = None

    def to_bytes(self) -> bytes:
        """safetensors bytes: the DiffFP tensor plus one JSON metadata entry (never pickle)."""
        tensors = {} if self.diffp is None else {"diffp": self.diffp.detach().cpu().contiguous()}
        meta = {
            "version": _INGEST_VERSION,
            "resume_s": self.resume_s,
            "frame_width": self.frame_width,
            "frame_height": self.frame_height,
        }
        return save_safetensors_bytes(tensors, metadata={_INGEST_META: json.dumps(meta)})

    @classmethod
    def from_bytes(cls, blob: bytes) -> IngestState:
        """Parse `to_bytes` output; ValueError (one line) for anything else."""
        try:
            meta = safetensors_metadata(blob, _INGEST_META, "ingest state")
            tensors = load_safetensors_bytes(blob)  # header + raw buffers; no pickle
            state = cls(
                resume_s=float(meta["resume_s"]),
                frame_width=int(meta["frame_width"]),
                frame_height=int(meta["frame_height"]),
                diffp=tensors.get("diffp"),
            )
        except Exception as e:  # noqa: BLE001 - any malformed blob is one kind of error here
            raise ValueError(f"not a longwatch ingest state ({type(e).__name__}: {one_line(e)})") from None
        if state.diffp is not None and state.diffp.ndim != 3:
            raise ValueError(f"ingest state's DiffFP tensor has shape {tuple(state.diffp.shape)}")
        return state


# --- stream time ----------------------------------------------------------------------------------


MAX_STREAM_TIME_S = 1e9  # about 31 years: a timestamp that lands further is a sender's bug


class StreamClock:
    """Maps one connection's timestamps to stream time: resume + (t - t_first), never backwards."""

    def __init__(self, resume_s: float) -> None:
        self._origin = resume_s  # stream time of the anchor frame
        self._anchor: float | None = None  # the anchor frame's own timestamp
        self._last_t = 0.0
        self.last_s = resume_s

    def to_stream(self, t: float, rebase_backwards: bool = False) -> float:
        """Stream time of a frame stamped `t`; a `t` before the previous one raises BadRequest,
        or with `rebase_backwards` starts a new anchor at the last stream time."""
        if not math.isfinite(t):
            raise BadRequest(f"frame timestamp must be a finite number of seconds, got {t}")
        if self._anchor is None:
            self._anchor = t
        elif t < self._last_t:
            if not rebase_backwards:
                raise BadRequest(
                    f"frame timestamps must not go backwards: {t:g} s came after {self._last_t:g} s"
                )
            self._origin, self._anchor = self.last_s, t
        stream_s = self._origin + (t - self._anchor)
        if not 0 <= stream_s <= MAX_STREAM_TIME_S:  # also an overflow to inf from two huge stamps
            raise BadRequest(
                f"frame timestamp {t:g} s puts the frame at {stream_s:g} s of stream time, "
                f"outside 0..{MAX_STREAM_TIME_S:g} s"
            )
        self._last_t = t
        self.last_s = stream_s
        return self.last_s


# --- one connection -------------------------------------------------------------------------------


@dataclass(frozen=True)
class LiveStats:
    """What one connection has done so far (not the stream's totals)."""

    stream_id: str
    frames_received: int = 0
    frames_sampled: int = 0  # sampled and queued for the pipeline
    frames_dropped: int = 0  # sampled, but the queue was full
    chunks_committed: int = 0
    position_s: float = 0.0  # stream time of the latest frame received


class LiveSession:
    """One connection feeding one live stream: the feeding side is `offer`, then `close`.

    `offer` is called from one thread (or one event loop) at a time; `close` and `preview` may
    come from any thread. The worker thread owns the StreamIngestor; `_lock` keeps `preview`
    from reading it mid-commit.
    """

    def __init__(
        self,
        stream_id: str,
        config: IngestConfig,
        limits: LiveConfig,
        ingestor: StreamIngestor,
        state: IngestState,
        on_end: Callable[[LiveSession], None],
        created: bool = False,
    ) -> None:
        self.stream_id = stream_id
        self.created = created  # this session made the stream (it did not exist before)
        self.config = config
        self.ingestor = ingestor
        self.state = state
        self._on_end = on_end
        self._clock = StreamClock(state.resume_s)
        self._sampler = TimeSampler(config.fps)
        self._queue: queue.Queue[object] = queue.Queue(maxsize=limits.queue_frames)
        self._lock = threading.Lock()  # the ingestor: worker (push, commit) vs preview
        self._counts_lock = threading.Lock()  # stats and unstored counts: feeder vs worker
        self._close_lock = threading.Lock()
        self._stats = LiveStats(stream_id)
        self._unstored = IngestCounters()  # received and dropped counts the ingestor has not taken yet
        self._next_sample = 0
        self._last_stored = time.monotonic()
        self._error: BaseException | None = None
        self._closing = False
        self._closed = False
        ingestor.on_commit = self._on_commit
        self._worker = threading.Thread(target=self._work, name=f"live-{stream_id}", daemon=True)
        self._worker.start()

    # --- the feeding side ---

    def offer(self, t: float, image: FrameImage, *, rebase_backwards: bool = False) -> bool:
        """Take one frame stamped `t` (the sender's seconds); True if it was sampled and queued.

        Raises BadRequest for bad input (the frames before it stay), the worker's error if the
        pipeline failed, and Stopping once the session is closed.
        """
        self._check_open()
        t_stream = self._clock.to_stream(t, rebase_backwards)
        with self._counts_lock:
            self._unstored.frames_decoded += 1
            self._stats = replace(
                self._stats, frames_received=self._stats.frames_received + 1, position_s=t_stream
            )
        if not self._sampler.offer(t_stream):
            return False
        frame = SampledFrame(self._next_sample, t_stream, image.rgb(*self._reference_size(image)))
        self._next_sample += 1
        try:
            self._queue.put_nowait(frame)
        except queue.Full:
            with self._counts_lock:
                self._unstored.frames_dropped += 1
                self._stats = replace(self._stats, frames_dropped=self._stats.frames_dropped + 1)
            metrics.FRAMES_DROPPED.labels(metrics.tenant_of(self.stream_id)).inc()
            return False
        with self._counts_lock:
            self._stats = replace(self._stats, frames_sampled=self._stats.frames_sampled + 1)
        return True

    def stats(self) -> LiveStats:
        with self._counts_lock:
            return self._stats

    def pending_frames(self) -> tuple[int, int]:
        """(the next chunk's index, its sampled frames so far): what `preview` would compress."""
        with self._lock:
            return self.ingestor.next_index, len(self.ingestor.pending)

    def preview(self) -> ChunkCache | None:
        """The frames not yet committed, compressed into a throwaway chunk (see StreamIngestor.preview).

        Pauses the worker for one chunk's compression; the queue absorbs the frames meanwhile.
        """
        with self._lock:
            return self.ingestor.preview()

    def close(self) -> None:
        """End of the connection: pending frames commit as the last chunk; the stream is READY again.

        Blocks until the worker is done (one chunk's compression at most); a second caller (the
        server stopping while the connection ends) waits for the first to finish. Nothing is
        raised: the connection is over either way, and the worker's error, if any, was logged.
        """
        self._closing = True  # offer() refuses from here on
        with self._close_lock:
            if self._closed:
                return
            try:
                self._put_end()
                self._worker.join()
            finally:
                self._closed = True
                self._on_end(self)
        s = self.stats()
        log.info(
            "live stream %s ended: %d frames received, %d sampled, %d dropped, %d chunks committed",
            self.stream_id,
            s.frames_received,
            s.frames_sampled,
            s.frames_dropped,
            s.chunks_committed,
        )

    def _check_open(self) -> None:
        if self._error is not None:
            raise self._error
        if self._closing:
            raise Stopping(f"live stream {self.stream_id!r} takes no more frames: its session was closed")

    def _reference_size(self, image: FrameImage) -> tuple[int, int]:
        """The stream's frame size, fixed by its first frame ever (kept across reconnects)."""
        if not self.state.frame_width:
            self.state.frame_width, self.state.frame_height = image.size()
        return self.state.frame_width, self.state.frame_height

    def _put_end(self) -> None:
        """Queue the end marker; waits for room while the worker drains (never if it has died)."""
        while self._worker.is_alive():
            try:
                self._queue.put(_END, timeout=0.1)
                return
            except queue.Full:
                continue

    # --- the worker ---

    def _work(self) -> None:
        """Feed queued frames to the ingestor until the end marker, then commit the rest.

        Wakes at least every COUNTER_FLUSH_S so the received and dropped counts reach the store
        while no chunk commits (a stream whose frames are all being dropped still shows it).
        """
        try:
            while True:
                try:
                    item = self._queue.get(timeout=COUNTER_FLUSH_S)
                except queue.Empty:
                    item = None
                if item is _END:
                    break
                with self._lock:
                    self._take_counts()
                    if isinstance(item, SampledFrame):
                        self.ingestor.push(item)
                    if time.monotonic() - self._last_stored >= COUNTER_FLUSH_S:
                        self._store_counters()
            with self._lock:
                self._take_counts()
                self.ingestor.finish()  # commits the last partial chunk (saving the state)
                self._save_state()
                self.ingestor.store.add_counters(
                    self.stream_id, IngestCounters(), pending=0, fence=self.ingestor.fence
                )
        except BaseException as exc:  # noqa: BLE001 - handed to the feeding side by offer()
            self._error = exc
            log.error("live stream %s stopped: %s", self.stream_id, one_line(exc))

    def _take_counts(self) -> None:
        """Move the feeding side's counts into the ingestor's, to be stored with the next write."""
        with self._counts_lock:
            taken, self._unstored = self._unstored, IngestCounters()
        c = self.ingestor.counters
        c.frames_decoded += taken.frames_decoded
        c.frames_dropped += taken.frames_dropped

    def _pending(self) -> int:
        """Sampled frames not yet in a committed chunk: the ingestor's and those still queued."""
        return len(self.ingestor.pending) + self._queue.qsize()

    def _store_counters(self) -> None:
        """The counts so far, and how many sampled frames a crash now would lose."""
        self.ingestor.store.add_counters(
            self.stream_id, self.ingestor.counters, pending=self._pending(), fence=self.ingestor.fence
        )
        self.ingestor.counters = IngestCounters()
        self._last_stored = time.monotonic()

    def _on_commit(self, chunk: CommittedChunk) -> None:
        self.state.resume_s = chunk.end_s
        self.state.diffp = self.ingestor.pruner.state()
        self._save_state()
        self._last_stored = time.monotonic()
        with self._counts_lock:
            self._stats = replace(self._stats, chunks_committed=self._stats.chunks_committed + 1)

    def _save_state(self) -> None:
        self.ingestor.store.put_ingest_state(self.stream_id, self.state.to_bytes(), fence=self.ingestor.fence)


# --- the registry ---------------------------------------------------------------------------------


class LiveRegistry:
    """The live streams being fed now, at most one connection per stream; owned by the server."""

    def __init__(
        self,
        ingest: IngestConfig,
        limits: LiveConfig,
        runner: ModelRunner,
        store: ChunkStore,
        indexes: IndexRegistry,
        leases: LeaseKeeper,
    ) -> None:
        self.ingest = ingest
        self.limits = limits
        self.runner = runner
        self.store = store
        self.indexes = indexes
        self.leases = leases
        self._sessions: dict[str, LiveSession] = {}
        self._leases: dict[str, Lease] = {}  # the lease each session writes under
        self._lock = threading.Lock()
        self._stopping = False

    def open(self, stream_id: str | None, source: str, fps: float | None = None) -> LiveSession:
        """Start feeding a stream: a new live stream, or the continuation of an earlier one.

        stream_id None generates one. fps None (or 0) means the stream's own rate, or the
        server's for a new stream. Raises StreamBusy if a connection already feeds it,
        StreamExists if the id is an archive, NotReady if it was made by another model.
        """
        sid = validate_stored_id(stream_id or new_stream_id())
        with self._lock:
            if self._stopping:
                raise Stopping("the server is stopping and takes no new live streams")
            if sid in self._sessions:
                raise StreamBusy(f"stream {sid!r} is already being fed by another live connection")
            lease = self.leases.take(sid)  # LeaseHeld while another replica feeds it
            try:
                session = self._start(sid, source, fps or None, lease.token)
            except BaseException:
                self.leases.release(lease)
                raise
            self._sessions[sid] = session
            self._leases[sid] = lease
        log.info("live stream %s started (%s, %g fps)", sid, source, session.config.fps)
        return session

    def get(self, stream_id: str) -> LiveSession | None:
        with self._lock:
            return self._sessions.get(stream_id)

    def is_live(self, stream_id: str) -> bool:
        return self.get(stream_id) is not None

    def live_ids(self) -> list[str]:
        """The streams a connection feeds now."""
        with self._lock:
            return list(self._sessions)

    def pending_frames(self, stream_id: str) -> tuple[int, int] | None:
        """A live stream's next chunk index and its frames not yet committed; None if not live here."""
        session = self.get(stream_id)
        return None if session is None else session.pending_frames()

    def pending_chunk(self, stream_id: str) -> ChunkCache | None:
        """A live stream's frames not yet committed, as a throwaway chunk (for Ask); else None."""
        session = self.get(stream_id)
        return None if session is None else session.preview()

    def close_all(self) -> None:
        """Server stop: refuse new connections, end every session (their last chunks commit)."""
        with self._lock:
            self._stopping = True
            sessions = list(self._sessions.values())
        for session in sessions:
            session.close()

    def _start(self, sid: str, source: str, fps: float | None, fence: int) -> LiveSession:
        record = self.store.get_stream(sid)
        if record is None:
            config = self._config(fps)
            self._create(sid, source, config)
            state, first_chunk = IngestState(), 0
        else:
            config = self._config(self._check_resumable(record, fps))
            if record.state == StreamState.LIVE:  # its last writer died (this lease is ours now)
                self.store.settle_orphaned(sid, self.leases.replica_id)
                record = self.store.get_stream(sid) or record
            state = self._load_state(record, config)
            self.store.set_state(sid, StreamState.LIVE, fence=fence)
            first_chunk = record.chunks
        ingestor = StreamIngestor(
            sid,
            config,
            self.runner,
            self.store,
            self.indexes,
            first_chunk_index=first_chunk,
            source="live",
            fence=fence,
        )
        if state.diffp is not None:
            ingestor.pruner.load_state(state.diffp)
        return LiveSession(sid, config, self.limits, ingestor, state, self._end, created=record is None)

    def _config(self, fps: float | None) -> IngestConfig:
        try:
            return replace(self.ingest, fps=fps or self.ingest.fps)
        except ValueError as e:
            raise BadRequest(str(e)) from None

    def _create(self, sid: str, source: str, config: IngestConfig) -> None:
        now = time.time()
        record = StreamRecord(
            stream_id=sid,
            source=source,
            state=StreamState.LIVE,
            fps=config.fps,
            model=self.runner.lm.fingerprint,
            created_unix=now,
            updated_unix=now,
        )
        self.store.create_stream(record)
        self.runner.compressor.start_stream(sid)

    def _check_resumable(self, record: StreamRecord, fps: float | None) -> float:
        """The fps to continue `record` at; raises when it cannot take live frames."""
        sid = record.stream_id
        if not record.source.startswith(LIVE_SOURCE_PREFIX):
            raise StreamExists(
                f"stream {sid!r} is an archive ({record.source}): live frames go to live streams only"
            )
        if record.model != self.runner.lm.fingerprint:
            raise NotReady(
                f"stream {sid!r} was ingested with model {record.model}, this server runs "
                f"{self.runner.lm.fingerprint}: use a new stream id"
            )
        if fps is not None and not math.isclose(fps, record.fps):
            raise BadRequest(f"stream {sid!r} samples at {record.fps:g} fps; continue it at that rate")
        return record.fps

    def _load_state(self, record: StreamRecord, config: IngestConfig) -> IngestState:
        """The saved state, checked against the current token grid; a fresh one if unusable."""
        sid = record.stream_id
        blob = self.store.get_ingest_state(sid)
        try:
            state = IngestState() if blob is None else IngestState.from_bytes(blob)
        except ValueError as e:
            log.warning("live stream %s: ingest state unusable (%s); DiffFP restarts", sid, e)
            state = IngestState()
        # Never before what is committed (the state is saved just after each commit).
        state.resume_s = max(state.resume_s, record.duration_s)
        if state.diffp is not None and not _grid_matches(state, config):
            log.warning("live stream %s: token grid changed since its last connection; DiffFP restarts", sid)
            state.diffp = None
        return state

    def _end(self, session: LiveSession) -> None:
        """A session is over: its stream is READY again, or removed if this session created it and
        never sampled a frame (a failed offer, a call that sent no frames leave nothing behind).

        Done under the registry's lock together with unregistering the session, so a reconnect
        cannot slip in between and be marked READY while it is live, or be refused as busy
        after the stream already reads READY.
        """
        sid = session.stream_id
        with self._lock:
            try:
                if session.created and session.stats().frames_sampled == 0:
                    forget_stream(sid, self.runner, self.store, self.indexes)
                else:
                    self.store.set_state(sid, StreamState.READY, fence=session.ingestor.fence)
            except StoreError as e:
                log.error("live stream %s: could not mark it ended: %s", sid, one_line(e))
            finally:
                if self._sessions.get(sid) is session:
                    del self._sessions[sid]
                    self.leases.release(self._leases.pop(sid))


def _grid_matches(state: IngestState, config: IngestConfig) -> bool:
    """Whether the saved DiffFP frame has the token layout this server gives the stream's frames."""
    if not state.frame_width or state.diffp is None:
        return False
    grid = grid_for(state.frame_height, state.frame_width, config.max_tokens_per_frame)
    m = grid.merge_size
    return tuple(state.diffp.shape) == (grid.grid_h // m, grid.grid_w // m, grid.patch_dim * m * m)


def new_stream_id() -> str:
    """A fresh id for a live stream whose sender named none."""
    return f"cam-{secrets.token_hex(4)}"
