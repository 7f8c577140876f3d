"""Pure functions that turn client results into text and JSON for the CLI.

Kept apart from the CLI so that each rendering is a function of its input alone and can be
tested on exact strings without a server.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from longwatch.clients.client import (
        AcrossResult,
        AskResult,
        EvidenceSpan,
        StreamSummary,
        WatchEvent,
        WatchSummary,
    )
    from longwatch.clients.webrtc import SendResult

_BYTE_UNITS = ("KiB", "MiB", "GiB", "TiB", "PiB")


def format_timestamp(seconds: float) -> str:
    """3723.5 -> "1:02:03.5", 12 -> "0:12": M:SS under an hour, H:MM:SS from there.

    Rounded to tenths first, so 59.96 reads "1:00" rather than "0:60.0"; the tenth is shown
    only when it is not zero.
    """
    if not math.isfinite(seconds):
        return "?"
    sign = "-" if seconds < 0 else ""
    tenths = round(abs(seconds) * 10)
    hours, rest = divmod(tenths, 36000)
    minutes, rest = divmod(rest, 600)
    secs, tenth = divmod(rest, 10)
    text = f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"
    return f"{sign}{text}.{tenth}" if tenth else f"{sign}{text}"


def format_bytes(n: int) -> str:
    """512 -> "512 B", 1258291 -> "1.2 MiB": binary units with one decimal."""
    if n < 1024:
        return f"{n} B"
    value = float(n)
    for unit in _BYTE_UNITS:
        value /= 1024
        if round(value, 1) < 1024 or unit == _BYTE_UNITS[-1]:
            return f"{value:.1f} {unit}"
    raise AssertionError("unreachable")  # the loop returns on its last unit


def format_span(start_s: float, end_s: float) -> str:
    return f"[{format_timestamp(start_s)} - {format_timestamp(end_s)}]"


def format_evidence(evidence: Sequence[EvidenceSpan]) -> str:
    """One line per span, "  [0:12 - 0:20] score 0.83"; empty when there is no evidence."""
    return "\n".join(f"  {format_span(e.start_s, e.end_s)} score {e.score:.2f}" for e in evidence)


def printable(text: str) -> str:
    """Text safe for a terminal: control characters (other than newline and tab) shown escaped.

    An untrained model emits arbitrary bytes; printed raw they clear lines and move the cursor.
    """
    return "".join(
        ch
        if ch in "\n\t" or (ch.isprintable() and ch != "\ufffd")
        else ch.encode("unicode_escape").decode("ascii")
        for ch in text
    )


def format_answer(result: AskResult) -> str:
    """The answer, then the evidence it cites, one span per line."""
    answer = printable(result.answer)
    evidence = format_evidence(result.evidence)
    return f"{answer}\n{evidence}" if evidence else answer


def answer_json(result: AskResult) -> dict[str, Any]:
    """What `ask --json` prints: answer, evidence [{start_s, end_s, score, chunk_index, picture_times_s}],
    timings, model."""
    return {
        "stream_id": result.stream_id,
        "answer": result.answer,
        "evidence": [e.to_json_dict() for e in result.evidence],
        "timings": dict(result.timings),
        "tokens_generated": result.tokens_generated,
        "model": result.model,
    }


def format_across(result: AcrossResult) -> str:
    """`ask --all`: each stream answered, best first ("1. cam-3 (score 41.20): a red circle") with
    its evidence; then how many streams were searched and which were skipped, and why."""
    blocks = []
    for rank, ranked in enumerate(result.results, 1):
        head = f"{rank}. {printable(ranked.stream_id)} (score {ranked.score:.2f}): {printable(ranked.result.answer)}"
        evidence = format_evidence(ranked.result.evidence)
        blocks.append(f"{head}\n{evidence}" if evidence else head)
    if not result.results:
        blocks.append("no stream has a chunk to answer from (in that time range)")
    tail = f"{result.streams_searched} streams searched"
    if result.skipped:
        tail += f", {len(result.skipped)} skipped:\n" + "\n".join(
            f"  {printable(sid)}: {printable(reason)}" for sid, reason in result.skipped
        )
    return "\n".join([*blocks, tail])


def across_json(result: AcrossResult) -> dict[str, Any]:
    """What `ask --all --json` prints: results best first, each `ask --json`'s object with its score."""
    return {
        "results": [{**answer_json(r.result), "score": r.score} for r in result.results],
        "streams_searched": result.streams_searched,
        "skipped": [{"stream_id": sid, "reason": reason} for sid, reason in result.skipped],
        "timings": dict(result.timings),
        "model": result.model,
    }


def format_watch_start(watch: WatchSummary) -> str:
    """What `longwatch watch` says first (on stderr): the watch, and how to pick it up again."""
    where = f"stream {printable(watch.stream_id)}" if watch.stream_id else "every stream of yours"
    return (
        f"watching {where} for {printable(watch.question)!r} (watch {watch.watch_id}; "
        f"pick it up again with `longwatch watch --resume {watch.watch_id} --after LAST_EVENT`)"
    )


def format_watch_event(event: WatchEvent) -> str:
    """One event a line: "1733390000000-0 yard [4:56 - 5:04] score -36.50: yes" ("[4:56 - 5:01 so
    far]" for one told before its chunk was committed)."""
    span = format_span(event.start_s, event.end_s)
    if event.pending:
        span = span[:-1] + " so far]"
    return f"{event.event_id} {printable(event.stream_id)} {span} score {event.score:.2f}: {printable(event.answer)}"


def format_watches(watches: Sequence[WatchSummary]) -> str:
    """A table of watches: id, what it watches, its question, chunks checked, events."""
    if not watches:
        return "no watches"
    rows = [
        (
            w.watch_id,
            printable(w.stream_id) or "(all)",
            printable(w.question),
            str(w.chunks_checked),
            str(w.events),
            "webhook" if w.webhook_url else "",
        )
        for w in watches
    ]
    return format_table(("watch", "stream", "question", "checked", "events", ""), rows, left_aligned=3)


_TABLE_HEADERS = (
    "id",
    "state",
    "duration",
    "frames kept/sampled",
    "tokens kept/seen",
    "chunks",
    "bytes",
    "dropped",
)
_LEFT_ALIGNED = 2  # id and state read left to right; the numbers line up on the right


def _stream_row(s: StreamSummary) -> tuple[str, ...]:
    return (
        s.stream_id,
        s.state,
        format_timestamp(s.duration_s),
        f"{s.frames_kept}/{s.frames_sampled}",
        f"{s.tokens_kept}/{s.tokens_seen}",
        str(s.chunks),
        format_bytes(s.bytes_stored),
        str(s.frames_dropped),
    )


def format_table(headers: Sequence[str], rows: Sequence[Sequence[str]], left_aligned: int) -> str:
    """Columns separated by two spaces; the first `left_aligned` columns are left-aligned."""
    widths = [max(len(r[i]) for r in [headers, *rows]) for i in range(len(headers))]

    def line(cells: Sequence[str]) -> str:
        padded = (
            c.ljust(w) if i < left_aligned else c.rjust(w)
            for i, (c, w) in enumerate(zip(cells, widths, strict=True))
        )
        return "  ".join(padded).rstrip()

    return "\n".join(line(r) for r in [headers, *rows])


def format_streams_table(streams: Sequence[StreamSummary]) -> str:
    if not streams:
        return "no streams"
    return format_table(_TABLE_HEADERS, [_stream_row(s) for s in streams], _LEFT_ALIGNED)


def format_retention(max_age_s: float, max_bytes: int) -> str:
    """ "7 days, 2.0 GB" / "keeps everything": the retention in force."""
    parts = []
    if max_age_s:
        days = max_age_s / 86400
        parts.append(f"{days:g} days" if days >= 1 else f"{format_timestamp(max_age_s)} after commit")
    if max_bytes:
        parts.append(f"{max_bytes / 1e9:.3g} GB")
    return ", ".join(parts) or "keeps everything"


def format_stored(s: StreamSummary) -> str:
    """ "12.0 MiB (9.5 MiB on disk; 3.1 MiB dropped)": what a stream holds, where, what went."""
    notes = [f"{format_bytes(s.bytes_cold)} on disk"] if s.bytes_cold else []
    notes += [f"{format_bytes(s.bytes_dropped)} dropped"] if s.bytes_dropped else []
    return format_bytes(s.bytes_stored) + (f" ({'; '.join(notes)})" if notes else "")


def format_stream(s: StreamSummary) -> str:
    """`longwatch show`: one "key: value" line per field, counts paired the way the table pairs them."""
    fields = [
        ("stream", s.stream_id),
        ("state", s.state),
        ("source", s.source or "-"),
        ("duration", format_timestamp(s.duration_s)),
        ("fps", f"{s.fps:g}"),
        ("frames", f"{s.frames_kept} kept / {s.frames_sampled} sampled / {s.frames_decoded} decoded"),
        ("dropped", str(s.frames_dropped)),
        ("lost", str(s.frames_lost)),
        ("tokens", f"{s.tokens_kept} kept / {s.tokens_seen} seen"),
        (
            "chunks",
            str(s.chunks) + (f" ({s.chunks_dropped} dropped by retention)" if s.chunks_dropped else ""),
        ),
        ("stored", format_stored(s)),
        ("retention", format_retention(s.retention_age_s, s.retention_bytes)),
        ("model", s.model or "-"),
    ]
    width = max(len(k) for k, _ in fields) + 1
    return "\n".join(f"{(k + ':').ljust(width)} {v}" for k, v in fields)


def format_send_summary(r: SendResult) -> str:
    """The line `longwatch stream` ends with: what was sent, then what the service holds."""
    s = r.stream
    why = "interrupted" if r.interrupted else "done"
    if r.reconnects:
        why += f", {r.reconnects} reconnect{'s' * (r.reconnects > 1)}, ending on {r.server}"
    return (
        f"{r.stream_id}: sent {r.frames_sent} frames in {r.seconds:.1f}s ({why}); the service holds "
        f"{format_timestamp(float(s.get('duration_s', 0.0)))} of video in {s.get('chunks', 0)} chunks, "
        f"{s.get('frames_kept', 0)}/{s.get('frames_sampled', 0)} frames kept, "
        f"{s.get('frames_dropped', 0)} dropped, state {s.get('state', '?')}"
    )


def format_ingest_summary(s: StreamSummary, elapsed_s: float) -> str:
    """The line `longwatch ingest` ends with."""
    return (
        f"{s.stream_id}: {s.state}, {format_timestamp(s.duration_s)} of video in {elapsed_s:.1f}s, "
        f"{s.chunks} chunks, {s.frames_kept}/{s.frames_sampled} frames kept, "
        f"{s.tokens_kept}/{s.tokens_seen} tokens kept, {format_bytes(s.bytes_stored)} stored"
    )
