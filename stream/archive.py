"""Offline ingest of an archive file into a new stream, all or nothing."""

from __future__ import annotations

import io
import logging
import queue
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import closing, suppress
from dataclasses import dataclass
from pathlib import Path

from longwatch.memory.index import IndexRegistry
from longwatch.memory.store import ChunkStore
from longwatch.proto.streams import StreamRecord, StreamState, validate_stream_id
from longwatch.stream.decode import SampledFrame, VideoFileReader, probe_video
from longwatch.stream.errors import BadRequest
from longwatch.stream.pipeline import ModelRunner, StageTimes, StreamIngestor, forget_stream
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
    chunks_committed: int
    done: bool = False


def open_source(path: str | None, data: bytes | None) -> tuple[str | io.BytesIO, str]:
    """The reader's source and a display name; rejects a missing or unreadable path up front."""
    if data:
        return io.BytesIO(data), "upload"
    if not path:
        raise BadRequest("give either a path the server can read or the file's bytes")
    p = Path(path)
    if not p.is_file():
        raise BadRequest(f"no such file on the server: {path}")
    return str(p), p.name


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
) -> Iterator[ArchiveProgress]:
    """Ingest a file into a new stream, yielding progress after each committed chunk.

    The file is probed before anything is stored. If decoding fails part way (a truncated or
    corrupt file) or the client goes away, everything stored for the stream is deleted, so Ask
    never sees half an archive. `stage_times`, when given, accumulates the seconds each stage
    spent (they are logged at the end either way).
    """
    validate_stream_id(stream_id)
    source, name = open_source(path, data)
    info = probe_video(source)
    if isinstance(source, io.BytesIO):
        source.seek(0)
    now = time.time()
    store.create_stream(
        StreamRecord(
            stream_id=stream_id,
            source=f"file:{name}",
            state=StreamState.INGESTING,
            fps=config.fps,
            model=runner.lm.fingerprint,
            created_unix=now,
            updated_unix=now,
        )
    )
    try:
        yield from _run(
            stream_id,
            source,
            info.duration_s or 0.0,
            config,
            runner,
            store,
            indexes,
            is_cancelled,
            stage_times if stage_times is not None else StageTimes(),
        )
    except BaseException:
        # GeneratorExit (client gone) included: an archive is all or nothing.
        forget_stream(stream_id, runner, store, indexes)
        raise


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
) -> Iterator[ArchiveProgress]:
    started = time.perf_counter()
    reader = VideoFileReader(source, fps=config.fps)
    ingestor = StreamIngestor(stream_id, config, runner, store, indexes, stage_times=times)
    runner.compressor.start_stream(stream_id)

    def snapshot(done: bool = False) -> ArchiveProgress:
        t = ingestor.totals
        return ArchiveProgress(
            position_s=reader.position_s,
            duration_s=duration_s,
            frames_decoded=reader.frames_decoded,
            frames_sampled=t.frames_sampled,
            tokens_seen=t.tokens_seen,
            tokens_kept=t.tokens_kept,
            chunks_committed=ingestor.chunks_committed,
            done=done,
        )

    committed = 0
    # Closed explicitly, so the decoding thread stops as soon as ingest does, however it ends.
    with closing(decoded_ahead(reader, config.frames_per_chunk, times)) as frames:
        for frame in frames:
            if is_cancelled():
                raise BadRequest("ingest cancelled by the client")
            ingestor.push(frame)
            if ingestor.chunks_committed > committed:
                committed = ingestor.chunks_committed
                yield snapshot()
    ingestor.count_decoded(reader.frames_decoded)
    ingestor.finish()
    runner.compressor.end_stream(stream_id)
    store.set_state(stream_id, StreamState.READY)
    log.info(
        "ingested %s: %d chunks, %.1f s of video in %.1f s (%s)",
        stream_id,
        ingestor.chunks_committed,
        reader.position_s,
        time.perf_counter() - started,
        times.summary(),
    )
    yield snapshot(done=True)


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
