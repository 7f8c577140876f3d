"""Offline ingest of an archive file into a stream: interrupted ingests keep what they committed and resume.

Every chunk commits (with its retrieval vector, span and counters) in one Redis transaction before
its progress message goes out, so what the client saw acknowledged is stored. An ingest that stops
part way (the client goes away, the service stops or is killed, Redis stays down) leaves the
stream INTERRUPTED with its committed chunks answerable; `resume` continues it from the next
chunk, DiffFP comparing against the last committed frame, so that the finished stream equals an
uninterrupted ingest's chunk for chunk. A file that turns out unreadable part way is refused whole:
nothing of a new stream stays (a resumed one keeps what it had).
"""

from __future__ import annotations

import io
import logging
import os
import queue
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import closing, suppress
from dataclasses import dataclass
from functools import partial
from pathlib import Path

from longwatch.memory.index import IndexRegistry
from longwatch.memory.records import IngestCounters, StoreError, StreamExists
from longwatch.memory.store import ChunkStore, StoreRetry
from longwatch.proto.streams import StreamRecord, StreamState, validate_stored_id
from longwatch.stream import metrics
from longwatch.stream.decode import SampledFrame, VideoDecodeError, VideoFileReader, probe_video
from longwatch.stream.errors import BadRequest, NotReady, PermissionDenied, Stopping, StreamMissing
from longwatch.stream.pipeline import ModelRunner, StageTimes, StreamIngestor, forget_stream
from longwatch.stream.ray_ingest import RayPool
from longwatch.stream.segments import SegmentResult, expected_chunks, plan_segments
from longwatch.stream.settings import IngestConfig

log = logging.getLogger(__name__)


@dataclass
class ArchiveProgress:
    position_s: float
    duration_s: float
    frames_decoded: int
    frames_sampled: int
    tokens_seen: int
    tokens_kept: int
    chunks_committed: int  # the stream's, earlier runs of a resumed ingest included
    done: bool = False


def open_source(path: str | None, data: bytes | None) -> tuple[str | io.BytesIO, str]:
    """The reader's source and a display name; rejects a missing or unreadable path up front."""
    if data:
        return io.BytesIO(data), "upload"
    if not path:
        raise BadRequest("give either a path the server can read or the file's bytes")
    p = Path(path)
    shown = path if len(path) <= 200 else path[:200] + "..."
    try:
        # A regular file only: a FIFO or a device (/dev/zero) would block or never end.
        regular = p.is_file()
        if regular:
            with p.open("rb"):
                pass
    except OSError as e:
        raise BadRequest(f"cannot read {shown!r} on the server: {e.strerror}") from None
    if not regular:
        raise BadRequest(f"no such file on the server: {shown!r} (a regular file is needed)")
    return str(p), p.name


def resolve_server_path(path: str, roots: tuple[Path, ...]) -> str:
    """The real path of a server-side file a caller named, if it lies inside an ingest root.

    Symlinks and `..` are resolved before the check, so neither leads out of a root. A relative
    path is looked up in each root in turn. Refusals (PermissionDenied) name only the path the
    caller sent: nothing about what exists outside the roots, or where a symlink points.
    """
    shown = path if len(path) <= 200 else path[:200] + "..."
    if not roots:
        raise PermissionDenied(
            "this server reads no files of its own (it has no --ingest-root): upload the file instead"
        )
    if "\0" in path:
        raise BadRequest("a path may not contain NUL")
    real_roots = [os.path.realpath(root) for root in roots]
    candidates = [path] if os.path.isabs(path) else [os.path.join(root, path) for root in real_roots]
    for candidate in candidates:
        real = os.path.realpath(candidate)
        inside = any(real == root or real.startswith(root.rstrip(os.sep) + os.sep) for root in real_roots)
        if inside and (os.path.isabs(path) or os.path.exists(real)):
            return real
    raise PermissionDenied(f"{shown!r} is not inside one of this server's ingest roots")


def source_name(name: str) -> str:
    return f"file:{name}"


def resume_point(
    store: ChunkStore, stream_id: str, name: str, config: IngestConfig, fingerprint: str, busy: bool
) -> int:
    """The chunk an interrupted ingest of this file continues from; refused with why otherwise."""
    record = store.get_stream(stream_id)
    if record is None:
        raise StreamMissing(f"no stream {stream_id!r} to resume")
    interrupted = record.state == StreamState.INTERRUPTED or (
        record.state == StreamState.INGESTING and not busy
    )
    if not interrupted:
        raise NotReady(
            f"stream {stream_id!r} is {record.state}, not an interrupted ingest: nothing to resume"
        )
    if record.source != source_name(name):
        raise BadRequest(f"stream {stream_id!r} was ingested from {record.source}, not {source_name(name)}")
    if record.fps != config.fps:
        raise BadRequest(f"stream {stream_id!r} was sampled at {record.fps:g} fps, not {config.fps:g}")
    if record.model != fingerprint:
        raise NotReady(
            f"stream {stream_id!r} was ingested with model {record.model}, this server runs {fingerprint}"
        )
    return record.chunks


def ingest_archive(
    stream_id: str,
    path: str | None,
    data: bytes | None,
    config: IngestConfig,
    runner: ModelRunner,
    store: ChunkStore,
    indexes: IndexRegistry,
    is_cancelled: Callable[[], bool] = lambda: False,
    stage_times: StageTimes | None = None,
    resume: bool = False,
    stopping: Callable[[], bool] = lambda: False,
    retry: StoreRetry | None = None,
    busy: bool = False,
    name: str | None = None,
    source_path: str = "",
    fence: int | None = None,
    pool: RayPool | None = None,
) -> Iterator[ArchiveProgress]:
    """Ingest a file into a new stream (or, with resume, continue an interrupted one), yielding
    progress after each committed chunk.

    The file is probed before anything is stored. `is_cancelled` (the client went away) and
    `stopping` (the service is shutting down) end the ingest at the next frame, keeping what was
    committed (Stopping is raised for the second, with how to resume). `stage_times`, when given,
    accumulates the seconds each stage spent (they are logged at the end either way). busy: another
    ingest of this stream is running in this process (a stale INGESTING record is not then resumable).
    name: the file's name as the stream's source shows it (an upload's own name), instead of the
    path's. source_path: the file's path on the server when it stays there (an ingest root's), kept
    in the record so the page can play cited spans from it. fence: the stream lease's token, which
    every write carries (stream/leases.py). pool: Ray workers that make the chunks in segments
    (stream/ray_ingest.py); the file must then be one the server keeps (a path).
    """
    if pool is not None and (path is None or data):
        raise BadRequest(
            "an ingest over Ray reads a file the server keeps: upload it, or name one under an ingest root"
        )
    if pool is not None and runner.lm.config.mode == "raw" and runner.lm.config.raw_context == "stream":
        raise NotReady(
            "this model keeps raw K/V computed after every earlier chunk (raw_context stream): "
            "its chunks cannot be made in segments; ingest without --ray"
        )
    validate_stored_id(stream_id)
    source, opened_name = open_source(path, data)
    name = name or opened_name
    info = probe_video(source)
    if isinstance(source, io.BytesIO):
        source.seek(0)
    fingerprint = runner.lm.fingerprint
    if resume:
        first_chunk = resume_point(store, stream_id, name, config, fingerprint, busy)
        store.set_state(stream_id, StreamState.INGESTING, fence=fence)
    else:
        first_chunk = 0
        now = time.time()
        record = StreamRecord(
            stream_id=stream_id,
            source=source_name(name),
            source_path=source_path,
            state=StreamState.INGESTING,
            fps=config.fps,
            model=fingerprint,
            created_unix=now,
            updated_unix=now,
        )
        try:
            store.create_stream(record)
        except StreamExists as e:
            existing = store.get_stream(stream_id)
            if existing is not None and existing.state == StreamState.INTERRUPTED:
                raise StreamExists(
                    f"stream {stream_id!r} already exists, interrupted after {existing.chunks} chunks: "
                    "resume it (longwatch ingest --resume) or delete it"
                ) from None
            raise e
    retry = retry or StoreRetry()
    try:
        if pool is not None:
            assert path is not None
            yield from _run_segments(
                stream_id,
                path,
                info.duration_s or 0.0,
                config,
                store,
                indexes,
                lambda: is_cancelled() or stopping(),
                first_chunk,
                retry,
                fence,
                pool,
            )
            return
        yield from _run(
            stream_id,
            source,
            info.duration_s or 0.0,
            config,
            runner,
            store,
            indexes,
            lambda: is_cancelled() or stopping(),
            stage_times if stage_times is not None else StageTimes(),
            first_chunk,
            retry,
            fence,
        )
    except (VideoDecodeError, BadRequest) as e:
        if isinstance(e, _Stopped):
            _interrupted(store, stream_id, e.chunks, fence)
            if stopping():
                raise Stopping(
                    f"the server is stopping: ingest of {stream_id!r} stopped after {e.chunks} chunks; "
                    "resume it with longwatch ingest --resume"
                ) from None
            raise
        if resume:  # a resumed stream keeps what it had
            _interrupted(store, stream_id, None, fence)
        else:  # a new archive is all or nothing
            forget_stream(stream_id, runner, store, indexes)
        raise
    except GeneratorExit:  # the client went away: keep what was committed
        _interrupted(store, stream_id, None, fence)
        raise
    except StoreError:  # Redis stayed down past the retry, or the lease was lost: what reached it is kept
        _interrupted(store, stream_id, None, fence)
        raise
    except BaseException:
        if resume:
            _interrupted(store, stream_id, None, fence)
        else:
            forget_stream(stream_id, runner, store, indexes)
        raise
    finally:
        runner.compressor.end_stream(stream_id)


class _Stopped(BadRequest):
    """The ingest was told to stop (client gone, service stopping) after `chunks` chunks."""

    def __init__(self, chunks: int) -> None:
        super().__init__(f"ingest stopped after {chunks} chunks")
        self.chunks = chunks


def _interrupted(store: ChunkStore, stream_id: str, chunks: int | None, fence: int | None) -> None:
    """Mark an ingest interrupted; if Redis is down, the next start (or another replica's storage
    sweep) settles it (stream/leases.py: settle_orphaned_streams)."""
    try:
        store.set_state(stream_id, StreamState.INTERRUPTED, fence=fence)
    except StoreError as e:
        log.warning("could not mark %s interrupted (%s); the next start will", stream_id, e)
        return
    log.info(
        "ingest of %s interrupted%s; its committed chunks stay",
        stream_id,
        "" if chunks is None else f" after {chunks} chunks",
    )


def _run(
    stream_id: str,
    source: str | io.BytesIO,
    duration_s: float,
    config: IngestConfig,
    runner: ModelRunner,
    store: ChunkStore,
    indexes: IndexRegistry,
    is_cancelled: Callable[[], bool],
    times: StageTimes,
    first_chunk: int,
    retry: StoreRetry,
    fence: int | None,
) -> Iterator[ArchiveProgress]:
    started = time.perf_counter()
    reader = VideoFileReader(source, fps=config.fps)
    ingestor = StreamIngestor(
        stream_id,
        config,
        runner,
        store,
        indexes,
        first_chunk_index=first_chunk,
        stage_times=times,
        retry=retry,
        give_up=is_cancelled,
        fence=fence,
    )
    runner.compressor.start_stream(stream_id)
    skip = first_chunk * config.frames_per_chunk  # sampled frames the committed chunks hold

    def snapshot(done: bool = False) -> ArchiveProgress:
        t = ingestor.totals
        return ArchiveProgress(
            position_s=reader.position_s,
            duration_s=duration_s,
            frames_decoded=reader.frames_decoded,
            frames_sampled=t.frames_sampled,
            tokens_seen=t.tokens_seen,
            tokens_kept=t.tokens_kept,
            chunks_committed=first_chunk + ingestor.chunks_committed,
            done=done,
        )

    committed = 0
    # Closed explicitly, so the decoding thread stops as soon as ingest does, however it ends.
    # Decoding starts at the keyframe before the last committed frame (decode.py's seek); that
    # frame is DiffFP's reference, and no committed frame before it is converted.
    with closing(
        decoded_ahead(reader.frames(first=max(0, skip - 1), seek=True), config.frames_per_chunk, times)
    ) as frames:
        for frame in frames:
            if frame.index < skip:
                ingestor.continue_after(frame)
                continue
            if is_cancelled():
                raise _Stopped(first_chunk + ingestor.chunks_committed)
            ingestor.push(frame)
            if ingestor.chunks_committed > committed:
                committed = ingestor.chunks_committed
                yield snapshot()
    ingestor.count_decoded(reader.frames_decoded)
    ingestor.finish()
    store.set_state(stream_id, StreamState.READY, fence=fence)
    log.info(
        "ingested %s: %d chunks%s, %.1f s of video in %.1f s (%s)",
        stream_id,
        first_chunk + ingestor.chunks_committed,
        f" ({first_chunk} before resuming)" if first_chunk else "",
        reader.position_s,
        time.perf_counter() - started,
        times.summary(),
    )
    yield snapshot(done=True)


def _run_segments(
    stream_id: str,
    path: str,
    duration_s: float,
    config: IngestConfig,
    store: ChunkStore,
    indexes: IndexRegistry,
    is_cancelled: Callable[[], bool],
    first_chunk: int,
    retry: StoreRetry,
    fence: int | None,
    pool: RayPool,
) -> Iterator[ArchiveProgress]:
    """_run's work done by Ray workers in segments (stream/segments.py), committed here in order."""
    started = time.perf_counter()
    plan = plan_segments(first_chunk, expected_chunks(duration_s, config), pool.workers)
    refs = pool.run(path, stream_id, config, plan)
    totals = IngestCounters()
    next_index, position = first_chunk, 0.0
    ended: SegmentResult | None = None

    def progress(done: bool = False) -> ArchiveProgress:
        return ArchiveProgress(
            position_s=position,
            duration_s=duration_s,
            frames_decoded=totals.frames_decoded,
            frames_sampled=totals.frames_sampled,
            tokens_seen=totals.tokens_seen,
            tokens_kept=totals.tokens_kept,
            chunks_committed=next_index,
            done=done,
        )

    try:
        for n, ((first, count), ref) in enumerate(zip(plan, refs, strict=True)):
            result = pool.wait(ref, is_cancelled)
            if result is None:
                raise _Stopped(next_index)
            indices = [c.index for c in result.chunks]
            if (
                indices != list(range(first, first + len(indices)))
                or first != next_index
                or (count and not result.reached_end and len(indices) != count)
            ):
                raise RuntimeError(
                    f"segment {n} of {stream_id} made chunks {indices[:4]}..., not from {next_index}"
                )
            for made in result.chunks:
                if is_cancelled():
                    raise _Stopped(next_index)
                chunk = made.chunk(name=f"chunk {made.index} of a Ray segment")
                counters, pictures = IngestCounters(**made.counters), made.picture_list()
                t0 = time.perf_counter()
                written = retry.call(
                    partial(store.commit_chunk, chunk, counters, pictures, fence=fence), is_cancelled
                )
                metrics.chunk_committed(
                    stream_id, "archive", chunk.n_frames, written, time.perf_counter() - t0
                )
                vector = chunk.retrieval.numpy()
                retry.call(partial(indexes.add, stream_id, chunk.index, vector), is_cancelled)
                for name, delta in counters.items():
                    setattr(totals, name, getattr(totals, name) + delta)
                next_index, position = next_index + 1, chunk.end_s
                yield progress()
            if result.reached_end:
                ended = result
                break
    finally:
        pool.cancel(refs)  # segments past the file's end, or all that remain if this stopped
    assert ended is not None  # the last segment is open-ended: it always reaches the end
    trailing = IngestCounters(**ended.trailing)
    if trailing.items():
        store.add_counters(stream_id, trailing, fence=fence)
        totals.frames_decoded += trailing.frames_decoded
    store.set_state(stream_id, StreamState.READY, fence=fence)
    log.info(
        "ingested %s over Ray (%d segments, %d workers): %d chunks%s in %.1f s",
        stream_id,
        len(plan),
        pool.workers,
        next_index,
        f" ({first_chunk} before resuming)" if first_chunk else "",
        time.perf_counter() - started,
    )
    position = max(position, duration_s)
    yield progress(done=True)


def timed_frames(frames: Iterable[SampledFrame], times: StageTimes) -> Iterator[SampledFrame]:
    """`frames`, with the time spent producing each one counted as decoding; closes them when done."""
    it = iter(frames)
    try:
        while True:
            with times.measure("decode"):
                frame = next(it, None)
            if frame is None:
                return
            yield frame
    finally:
        close = getattr(it, "close", None)
        if close is not None:
            close()


@dataclass
class _Ended:
    """What the decoding thread hands over last: None when the file ended, else what it raised."""

    error: BaseException | None


def decoded_ahead(frames: Iterable[SampledFrame], depth: int, times: StageTimes) -> Iterator[SampledFrame]:
    """`frames` decoded on a thread of their own, at most `depth` frames ahead of the consumer.

    PyAV decodes and converts colours without the GIL, and torch computes without it, so the next
    chunk decodes while this one is encoded and compressed; the bounded queue keeps memory flat.
    An error while decoding is raised here after the frames before it; closing this generator
    (the consumer failed or went away) stops the thread, which closes the source.
    """
    handoff: queue.Queue[SampledFrame | _Ended] = queue.Queue(maxsize=max(1, depth))
    stop = threading.Event()

    def produce() -> None:
        try:
            with closing(timed_frames(frames, times)) as timed:
                for frame in timed:
                    handoff.put(frame)
                    if stop.is_set():
                        return
            handoff.put(_Ended(None))
        except BaseException as e:  # noqa: BLE001 - handed to the consumer, raised there
            handoff.put(_Ended(e))

    thread = threading.Thread(target=produce, name="longwatch-decode", daemon=True)
    thread.start()
    try:
        while True:
            item = handoff.get()
            if isinstance(item, _Ended):
                if item.error is not None:
                    raise item.error
                return
            yield item
    finally:
        stop.set()
        while thread.is_alive():  # unblock a producer waiting on a full queue
            with suppress(queue.Empty):
                handoff.get(timeout=0.05)
        thread.join()
