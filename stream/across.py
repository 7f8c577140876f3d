"""Ask across streams: which of these streams shows what the question asks about, and what it says.

The question's retrieval vector is computed once and searched in every chosen stream's FAISS
index. Scores compare across streams: every chunk vector comes from the same decoder's keys at
the same layers, and every stream is scored against the same question vector (streams of
another model are skipped, never mixed in). Streams are ranked by their best chunk; the best
`results` are answered in that order, each from its own retrieved chunks exactly as Ask would.

Cost grows with the number of streams only through the search (one round trip for every
stream's index version, then a flat scan per stream); the answer's first token is one question
pass, the searches and one stream's prefill, whatever the number of streams.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from contextlib import closing
from dataclasses import dataclass, field

from longwatch.proto.streams import StreamRecord
from longwatch.stream.answering import AskOutcome, AskParams, QuestionAnswerer
from longwatch.stream.errors import BadRequest, NotReady

MAX_RESULTS = 16
DEFAULT_RESULTS = 3


@dataclass
class AcrossParams:
    """One question over many streams. results: streams answered, best first (1..MAX_RESULTS);
    the rest as Ask's (top_k chunks retrieved per stream)."""

    question: str
    results: int
    top_k: int
    max_new_tokens: int
    time_range: tuple[float, float] | None = None
    score_margin: float | None = None


@dataclass
class StreamAnswer:
    """One ranked result: the stream, its best chunk's score, and Ask's outcome on it."""

    stream_id: str
    score: float
    outcome: AskOutcome


@dataclass
class SkippedStream:
    stream_id: str
    reason: str


@dataclass
class AcrossOutcome:
    results: list[StreamAnswer] = field(default_factory=list)  # best first
    streams_searched: int = 0
    skipped: list[SkippedStream] = field(default_factory=list)
    timings_ms: dict[str, float] = field(default_factory=dict)
    model: str = ""


def ask_across(
    answerer: QuestionAnswerer,
    params: AcrossParams,
    streams: Sequence[StreamRecord],
    between_steps: Callable[[], None] = lambda: None,
) -> AcrossOutcome:
    """Rank `streams` (the caller's, chosen at the edge) for the question and answer the best.

    A stream that cannot be asked (no chunks yet, another model's) is skipped with its reason;
    one with no chunk in the time range is searched and finds nothing. Raises BadRequest for a
    bad request and NotReady when no stream could be searched at all. `between_steps` runs
    between the answers' steps (the edge stops a call whose caller went away there).
    """
    if not 1 <= params.results <= MAX_RESULTS:
        raise BadRequest(f"results must be in 1..{MAX_RESULTS}, got {params.results}")
    if params.top_k == 0:
        raise BadRequest("top_k 0 (every chunk) is for one stream's Ask; across streams give 1 or more")
    template = _ask_params("", params)
    answerer.check_request(template)
    params.question = template.question  # as validated: stripped
    t0 = time.perf_counter()
    outcome = AcrossOutcome(model=answerer.runner.lm.fingerprint)
    searchable: list[StreamRecord] = []
    for record in streams:
        why = answerer.unanswerable(record)
        if why is None and record.chunks == 0:  # LIVE with nothing committed: nothing to rank yet
            why = NotReady(f"stream {record.stream_id!r} has no committed chunks yet")
        if why is None:
            searchable.append(record)
        else:
            outcome.skipped.append(SkippedStream(record.stream_id, str(why)))
    if not searchable:
        raise NotReady(f"none of the {len(streams)} streams can be asked yet")
    t_question = time.perf_counter()
    qvec = answerer.question_vector(template.question)
    t_search = time.perf_counter()
    versions = answerer.store.index_versions([r.stream_id for r in searchable])
    ranked: list[tuple[float, StreamRecord, AskParams, list[tuple[int, float]]]] = []
    for record, version in zip(searchable, versions, strict=True):
        ask = _ask_params(record.stream_id, params)
        allowed = answerer.candidates(record.stream_id, params.time_range)
        hits = answerer.retrieve(record, ask, qvec, allowed, version)
        if hits:
            ranked.append((max(score for _, score in hits), record, ask, hits))
    ranked.sort(key=lambda r: (-r[0], r[1].stream_id))
    t1 = time.perf_counter()
    outcome.streams_searched = len(searchable)
    search = {
        "retrieve_ms": (t1 - t0) * 1e3,
        "question_ms": (t_search - t_question) * 1e3,
        "search_ms": (t1 - t_search) * 1e3,
    }
    for score, record, ask, hits in ranked[: params.results]:
        try:
            deltas, answer = answerer.answer(record, ask, qvec, hits, t0, search)
        except NotReady as e:  # its chunks were dropped by retention since the search
            outcome.skipped.append(SkippedStream(record.stream_id, str(e)))
            continue
        with closing(deltas):
            for _ in deltas:
                between_steps()
        outcome.results.append(StreamAnswer(record.stream_id, score, answer))
    first = outcome.results[0].outcome.timings_ms if outcome.results else {}
    outcome.timings_ms = {
        **search,
        "first_token_ms": first.get("first_token_ms", 0.0),
        "total_ms": (time.perf_counter() - t0) * 1e3,
    }
    return outcome


def _ask_params(stream_id: str, params: AcrossParams) -> AskParams:
    return AskParams(
        stream_id=stream_id,
        question=params.question,
        top_k=params.top_k,
        max_new_tokens=params.max_new_tokens,
        time_range=params.time_range,
        score_margin=params.score_margin,
    )
