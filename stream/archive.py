"""Offline ingest of an archive file into a new stream, all or nothing."""

from __future__ import annotations

import io
import logging
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from longwatch.memory.index import IndexRegistry
from longwatch.memory.records import StreamRecord, StreamState, validate_stream_id
from longwatch.memory.store import ChunkStore
from longwatch.stream.decode import VideoFileReader, probe_video
from longwatch.stream.errors import BadRequest
from longwatch.stream.pipeline import ModelRunner, StreamIngestor
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
) -> Iterator[ArchiveProgress]:
    """Ingest a file into a new stream, yielding progress after each committed chunk.

    The file is probed before anything is stored. If decoding fails part way (a truncated or
    corrupt file) or the client goes away, everything stored for the stream is deleted, so Ask
    never sees half an archive.
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
            stream_id, source, info.duration_s or 0.0, config, runner, store, indexes, is_cancelled
        )
    except BaseException:
        # GeneratorExit (client gone) included: an archive is all or nothing.
        store.delete_stream(stream_id)
        indexes.drop(stream_id)
        runner.compressor.end_stream(stream_id)
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
) -> Iterator[ArchiveProgress]:
    reader = VideoFileReader(source, fps=config.fps)
    ingestor = StreamIngestor(stream_id, config, runner, store, indexes)
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
    for frame in reader:
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
    log.info("ingested %s: %d chunks, %.1f s", stream_id, ingestor.chunks_committed, reader.position_s)
    yield snapshot(done=True)
