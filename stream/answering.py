"""Ask: retrieve a stream's relevant chunks and decode an answer from their caches.

For a stream that a connection is feeding now (LIVE), Ask also takes its latest committed
chunk(s) and its frames not yet committed, compressed on the spot into a chunk that is never
stored (`LiveView.pending_chunk`): a question about what the camera sees now is answered from
what it saw last, whatever retrieval ranks first. Those chunks are cited in the evidence like the
retrieved ones, with their retrieval score computed the same way.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Protocol

import torch

from longwatch.memory.chunk import ChunkCache
from longwatch.memory.index import IndexRegistry
from longwatch.memory.records import ChunkNotFound
from longwatch.memory.store import ChunkStore
from longwatch.model.answer import AnswerStream, question_vector
from longwatch.model.retrieval import within_margin
from longwatch.proto.streams import StreamRecord, StreamState
from longwatch.stream.errors import BadRequest, NotReady, StreamMissing
from longwatch.stream.model_lock import ASK
from longwatch.stream.pipeline import ModelRunner

MAX_TOP_K = 64  # top_k 0 asks for every committed chunk (full context)
MAX_NEW_TOKENS = 512


@dataclass
class AskParams:
    """top_k: chunks to retrieve, 1..MAX_TOP_K, or 0 for every committed chunk (in time order)."""

    stream_id: str
    question: str
    top_k: int
    max_new_tokens: int
    time_range: tuple[float, float] | None = None
    score_margin: float | None = None  # None: the answerer's


@dataclass
class EvidenceChunk:
    index: int
    start_s: float
    end_s: float
    score: float
    picture_times: list[float] = field(default_factory=list)  # its pictures (GetFrames), if any


@dataclass
class AskOutcome:
    answer: str = ""
    evidence: list[EvidenceChunk] = field(default_factory=list)
    timings_ms: dict[str, float] = field(default_factory=dict)
    tokens_generated: int = 0
    model: str = ""


def validate_question(question: str, max_chars: int) -> str:
    q = question.strip()
    if not q:
        raise BadRequest("question is empty")
    if len(q) > max_chars:
        raise BadRequest(f"question is {len(q)} characters, the limit is {max_chars}")
    return q


class LiveView(Protocol):
    """What Ask needs from the live streams (stream.live.LiveRegistry)."""

    def pending_chunk(self, stream_id: str) -> ChunkCache | None:
        """The stream's frames not yet committed as a throwaway chunk, or None."""
        ...


class QuestionAnswerer:
    """Runs Ask against the store, the stream indexes and the model (and the live streams, if any).

    recent_chunks: latest committed chunks always added for a LIVE stream.
    score_margin: retrieved chunks scoring more than this below the best are left out (0: none
        are; ServiceSettings refuses a negative one), so a question whose answer one chunk holds is decoded from that chunk, not beside
        top-k - 1 others that only look like it.
    """

    def __init__(
        self,
        runner: ModelRunner,
        store: ChunkStore,
        indexes: IndexRegistry,
        max_question_chars: int,
        live: LiveView | None = None,
        recent_chunks: int = 1,
        score_margin: float = 0.0,
    ) -> None:
        self.runner = runner
        self.store = store
        self.indexes = indexes
        self.max_question_chars = max_question_chars
        self.live = live
        self.recent_chunks = recent_chunks
        self.score_margin = score_margin

    def check_request(self, params: AskParams) -> None:
        """Validate what a request asks for (question, counts, time range), before any work."""
        params.question = validate_question(params.question, self.max_question_chars)
        if not 0 <= params.top_k <= MAX_TOP_K:
            raise BadRequest(f"top_k must be in 1..{MAX_TOP_K}, or 0 for every chunk, got {params.top_k}")
        if params.score_margin is not None and not params.score_margin >= 0:  # NaN too
            raise BadRequest(f"score_margin must be >= 0, got {params.score_margin}")
        if not 1 <= params.max_new_tokens <= MAX_NEW_TOKENS:
            raise BadRequest(f"max_new_tokens must be in 1..{MAX_NEW_TOKENS}, got {params.max_new_tokens}")
        if params.time_range is not None:
            start, end = params.time_range
            if not 0 <= start < end:
                raise BadRequest(f"time range must satisfy 0 <= start < end, got {start}..{end}")

    def unanswerable(self, record: StreamRecord) -> NotReady | None:
        """Why the stream cannot be asked now (no chunks yet, another model's), or None."""
        if record.chunks == 0 and record.state != StreamState.LIVE:
            return NotReady(f"stream {record.stream_id!r} has no committed chunks yet")
        if record.model != self.runner.lm.fingerprint:
            return NotReady(
                f"stream {record.stream_id!r} was ingested with model {record.model}, "
                f"this server runs {self.runner.lm.fingerprint}: ingest it again"
            )
        return None

    def check(self, params: AskParams) -> StreamRecord:
        """Validate a request before any work; returns the stream's record."""
        self.check_request(params)
        record = self.store.get_stream(params.stream_id)
        if record is None:
            raise StreamMissing(f"no stream {params.stream_id!r}")
        if (why := self.unanswerable(record)) is not None:
            raise why
        return record

    def question_vector(self, question: str) -> torch.Tensor:
        """The question's in-model retrieval vector (retrieval_dim,), one short model pass."""
        with self.runner.lock.hold(ASK):
            return question_vector(self.runner.lm, question)

    def retrieve(
        self,
        record: StreamRecord,
        params: AskParams,
        qvec: torch.Tensor,
        allowed: set[int] | None,
        version: str | None = None,
    ) -> list[tuple[int, float]]:
        """The stream's committed chunks for the question: (chunk index, score), best first, within
        the score margin. allowed: the candidates (`candidates`: those in the time range, None
        for all). version: the stream's index_version if already read (IndexRegistry.current)."""
        if not record.chunks or allowed == set():
            return []
        index = self.indexes.current(params.stream_id, version)  # with other replicas' commits
        hits = index.search(qvec.numpy(), params.top_k or len(index), allowed)
        margin = self.score_margin if params.score_margin is None else params.score_margin
        if params.top_k and margin:  # top_k 0 asks for every chunk: all are kept
            hits = within_margin(hits, margin)
        return hits

    def candidates(self, stream_id: str, time_range: tuple[float, float] | None) -> set[int] | None:
        """Committed chunks overlapping the time range (maybe none); None without a range."""
        if time_range is None:
            return None
        start, end = time_range
        return {s.index for s in self.store.chunk_spans(stream_id) if s.end_s > start and s.start_s < end}

    def _live_extras(
        self, record: StreamRecord, retrieved: set[int], time_range: tuple[float, float] | None
    ) -> tuple[list[ChunkCache], ChunkCache | None]:
        """A LIVE stream's latest committed chunks not retrieved already, and its pending chunk."""
        if record.state != StreamState.LIVE:
            return [], None
        first = max(0, record.chunks - self.recent_chunks)
        recent = [i for i in range(first, record.chunks) if i not in retrieved]
        chunks = self._kept_chunks(record.stream_id, recent)
        pending = self.live.pending_chunk(record.stream_id) if self.live is not None else None
        if time_range is not None:
            chunks = [c for c in chunks if _overlaps(c, time_range)]
            pending = pending if pending is not None and _overlaps(pending, time_range) else None
        return chunks, pending

    @staticmethod
    def _nothing_to_answer_from(record: StreamRecord, time_range: tuple[float, float] | None) -> Exception:
        if time_range is not None and record.chunks:
            start, end = time_range
            return BadRequest(f"no chunk of stream {record.stream_id!r} overlaps {start:.1f}-{end:.1f} s")
        return NotReady(f"stream {record.stream_id!r} has no committed chunks yet")

    def _kept_chunks(self, stream_id: str, indices: list[int]) -> list[ChunkCache]:
        """The chunks, less any that retention dropped since they were found (their spans are gone
        too); a chunk missing with its span still there is lost data (ChunkNotFound, DATA_LOSS)."""
        try:
            return self.store.get_chunks(stream_id, indices)
        except ChunkNotFound:
            kept = {s.index for s in self.store.chunk_spans(stream_id)}
            return self.store.get_chunks(stream_id, [i for i in indices if i in kept])

    def ask(self, params: AskParams) -> tuple[Iterator[str], AskOutcome]:
        """Returns (text deltas, outcome); the outcome is complete once the deltas are exhausted.

        Stopping early (closing the deltas) frees the model at once; `outcome.tokens_generated`
        then says how far the answer got.
        """
        t0 = time.perf_counter()
        record = self.check(params)
        allowed = self.candidates(params.stream_id, params.time_range)
        if allowed == set() and record.state != StreamState.LIVE:
            raise self._nothing_to_answer_from(record, params.time_range)  # before any model work
        t_question = time.perf_counter()
        qvec = self.question_vector(params.question)
        t_search = time.perf_counter()
        hits = self.retrieve(record, params, qvec, allowed)
        t1 = time.perf_counter()
        timings = {
            "retrieve_ms": (t1 - t0) * 1e3,
            "question_ms": (t_search - t_question) * 1e3,
            "search_ms": (t1 - t_search) * 1e3,
        }
        return self.answer(record, params, qvec, hits, t0, timings)

    def answer(
        self,
        record: StreamRecord,
        params: AskParams,
        qvec: torch.Tensor,
        hits: list[tuple[int, float]],
        t0: float,
        timings: dict[str, float],
    ) -> tuple[Iterator[str], AskOutcome]:
        """Decode the answer from the retrieved chunks (and a LIVE stream's latest): (text deltas,
        outcome), as ask(). t0 is when the request came (its first token is timed from there);
        timings, those taken so far."""
        outcome = AskOutcome(model=self.runner.lm.fingerprint)
        t1 = time.perf_counter()
        scores = dict(hits)
        recent, pending = self._live_extras(record, set(scores), params.time_range)
        chunks = self._kept_chunks(params.stream_id, sorted(scores)) + recent
        chunks += [pending] if pending is not None else []
        if not chunks:
            raise self._nothing_to_answer_from(record, params.time_range)
        chunks.sort(key=lambda c: c.index)  # time order: chunk indices increase with time
        t2 = time.perf_counter()
        pictures = self.store.picture_times(params.stream_id, [c.index for c in chunks])
        outcome.evidence = [
            EvidenceChunk(
                c.index,
                c.start_s,
                c.end_s,
                scores[c.index] if c.index in scores else _score(qvec, c),
                pictures.get(c.index, []),
            )
            for c in chunks
        ]
        stream = AnswerStream(self.runner.lm, chunks, params.question, params.max_new_tokens)

        def deltas() -> Iterator[str]:
            # The model lock is held for each step of the answer, never while a delta travels to
            # the client: a slow reader holds up no one, other answers and ingest interleave, and
            # an answer whose caller stops reading stops at its next step.
            steps = iter(stream)
            try:
                while True:
                    with self.runner.lock.hold(ASK):
                        delta = next(steps, None)
                    outcome.tokens_generated = stream.stats.tokens_generated
                    if delta is None:
                        break
                    yield delta
            finally:
                steps.close()
            s = stream.stats
            outcome.answer = stream.text
            outcome.tokens_generated = s.tokens_generated
            outcome.timings_ms = {
                **timings,
                "load_ms": (t2 - t1) * 1e3,
                "repack_ms": s.repack_ms,
                "prefill_ms": s.prefill_ms,
                "first_token_ms": (t2 - t0) * 1e3 + s.first_token_ms,
                "generate_ms": s.generate_ms,
                "total_ms": (time.perf_counter() - t0) * 1e3,
            }

        return deltas(), outcome


def _overlaps(chunk: ChunkCache, time_range: tuple[float, float]) -> bool:
    return chunk.end_s > time_range[0] and chunk.start_s < time_range[1]


def _score(qvec: torch.Tensor, chunk: ChunkCache) -> float:
    """The retrieval score of a chunk that was added rather than retrieved (same inner product)."""
    return float(qvec.float() @ chunk.retrieval.float())
