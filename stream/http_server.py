"""The HTTP server beside gRPC: WebRTC signalling, the browser page and the JSON API the page uses.

aiortc needs asyncio and the gRPC server is synchronous, so this runs an aiohttp server on its
own event loop in a thread of the service process. Routes:

    GET  /                  the browser page (stream/static/index.html; its files under /static/)
    POST /offer             {"sdp", "type": "offer", "stream_id"?} -> {"sdp", "type": "answer", "stream_id"}
    GET  /api/streams       [stream, ...], the fields of ListStreams, state as "live"/"ready"/...
    GET  /api/streams/{id}  one stream
    GET  /api/streams/{id}/frames, /frames/{t}, /timeline, /video   its pictures, chunks, a link
                            to play its file (stream/media.py); GET /media/{token} plays it
    GET  /api/watches       the caller's watches
    POST /api/watches       {"stream_id"? ("" or none: all of yours), "question", "match"?, "webhook_url"?}
    DELETE /api/watches/ID  delete a watch
    GET  /api/watches/ID/events   server-sent events, one per watch event (resume: Last-Event-ID)
    POST /api/ask           {"stream_id", "question", "top_k"?, "max_new_tokens"?, "score_margin"?}
                            -> {"answer", "evidence": [{start_s, end_s, score, chunk_index}], ...}
                            or {"streams": [ids] ([]: all of yours), "question", "results"?, ...}
                            -> {"results": [{"stream_id", "score", "answer", "evidence"}], ...}

With a keys file, /offer and /api/ take `Authorization: Bearer <key>` as gRPC does (the page and
its files are open: the page asks for the key). Errors are {"error": "<one line>"} with the HTTP
status of the gRPC one the same error gets (400 bad input, 401 no or a wrong key, 403 a role that
may not, 404 unknown stream, 409 taken or busy or not ready, 429 a tenant's quota, 503 stopping,
507 Redis or the disk full, 500 a bug).
The page's files sit beside this module (stream/static/), served from the installed package.
"""

from __future__ import annotations

import asyncio
import importlib.resources
import json
import logging
import math
import ssl
import threading
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import grpc
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from longwatch.clients.ice import check_bindable
from longwatch.memory.store import ChunkStore
from longwatch.memory.watches import RedisWatchStore, WatchRecord, valid_event_id
from longwatch.proto.streams import LOCAL_TENANT, StreamRecord
from longwatch.stream import metrics
from longwatch.stream.across import DEFAULT_RESULTS, AcrossOutcome, AcrossParams, ask_across
from longwatch.stream.answering import AskOutcome, AskParams, QuestionAnswerer
from longwatch.stream.archive import resolve_server_path
from longwatch.stream.auth import Caller, KeyRing, Role
from longwatch.stream.errors import (
    BadRequest,
    PermissionDenied,
    QuotaExceeded,
    StreamMissing,
    one_line,
    status_for,
)
from longwatch.stream.live import LiveRegistry, new_stream_id
from longwatch.stream.media import MediaLinks
from longwatch.stream.pictures import PICTURE_FORMAT
from longwatch.stream.quotas import Quotas
from longwatch.stream.retention import shown
from longwatch.stream.service import callers_streams, find_pictures
from longwatch.stream.watching import tenant_watch, watch_for
from longwatch.stream.webhooks import event_json
from longwatch.stream.webrtc import WebRTCIngest

log = logging.getLogger(__name__)

MAX_BODY_BYTES = 1024 * 1024
START_TIMEOUT_S = 30.0
_HTTP_STATUS = {
    grpc.StatusCode.INVALID_ARGUMENT: 400,
    grpc.StatusCode.UNAUTHENTICATED: 401,
    grpc.StatusCode.PERMISSION_DENIED: 403,
    grpc.StatusCode.NOT_FOUND: 404,
    grpc.StatusCode.ALREADY_EXISTS: 409,
    grpc.StatusCode.FAILED_PRECONDITION: 409,
    grpc.StatusCode.ABORTED: 409,
    grpc.StatusCode.UNAVAILABLE: 503,
    grpc.StatusCode.RESOURCE_EXHAUSTED: 507,
    grpc.StatusCode.DATA_LOSS: 500,
}
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def static_dir() -> Path:
    """The browser page's folder, beside this module (package data of longwatch.stream)."""
    return Path(str(importlib.resources.files("longwatch.stream").joinpath("static")))


def outcome_json(stream_id: str, outcome: AskOutcome) -> dict[str, Any]:
    """The same shape `longwatch ask --json` prints."""
    return {
        "stream_id": stream_id,
        "answer": outcome.answer,
        "evidence": [
            {
                "start_s": e.start_s,
                "end_s": e.end_s,
                "score": e.score,
                "chunk_index": e.index,
                "picture_times_s": e.picture_times,
            }
            for e in outcome.evidence
        ],
        "timings": outcome.timings_ms,
        "tokens_generated": outcome.tokens_generated,
        "model": outcome.model,
    }


def across_json(caller: Caller, outcome: AcrossOutcome) -> dict[str, Any]:
    """The same shape `longwatch ask --all --json` prints."""
    return {
        "results": [
            {**outcome_json(caller.public_id(r.stream_id), r.outcome), "score": r.score}
            for r in outcome.results
        ],
        "streams_searched": outcome.streams_searched,
        "skipped": [
            {"stream_id": caller.public_id(s.stream_id), "reason": caller.public_text(s.reason)}
            for s in outcome.skipped
        ],
        "timings": outcome.timings_ms,
        "model": outcome.model,
    }


def watch_json(caller: Caller, watch: WatchRecord) -> dict[str, Any]:
    """The same shape `longwatch watches --json` prints."""
    return {
        "watch_id": caller.public_id(watch.watch_id),
        "stream_id": caller.public_id(watch.stream_id) if watch.stream_id else "",
        "question": watch.question,
        "match": watch.match,
        "webhook_url": watch.webhook_url,
        "created_unix": watch.created_unix,
        "chunks_checked": watch.chunks_checked,
        "events": watch.events,
        "last_event_id": watch.last_event_id,
        "webhook_delivered_id": watch.webhook_delivered_id,
    }


def _error_response(exc: Exception, caller: Caller | None) -> web.Response:
    metrics.count_store_error(exc)
    code = status_for(exc)
    if code is None:
        log.error("internal error serving HTTP: %s", one_line(exc), exc_info=exc)
    status = _HTTP_STATUS.get(code, 500) if code is not None else 500
    if isinstance(exc, QuotaExceeded):  # the caller's own limit, not a full server
        status = 429
    message = one_line(exc) if code is not None else f"internal error: {one_line(exc)}"
    if caller is not None:
        message = caller.public_text(message)
    headers = {"WWW-Authenticate": "Bearer"} if status == 401 else None
    return web.json_response({"error": message}, status=status, headers=headers)


API_PATHS = ("/api/", "/offer")  # answered in JSON, errors too
SSE_POLL_S = 0.5  # a watch's event stream looks for new events this often
SSE_KEEPALIVE_S = 15.0  # and says it is there this often when none come (proxies close quiet streams)
CALLER = web.RequestKey("longwatch.caller", Caller)  # where a request keeps its authenticated Caller


@web.middleware
async def _errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Expected errors become their status with a one-line JSON message; bugs become 500."""
    try:
        return await handler(request)
    except web.HTTPException as exc:
        if exc.status < 400 or not request.path.startswith(API_PATHS):
            raise
        # aiohttp's own refusals (no such route, wrong method, body too large) in the API's form
        where = f"{request.method} {request.path!r:.200}"  # repr: a path may hold a newline
        return web.json_response({"error": f"{exc.reason}: {where}"}, status=exc.status)
    except Exception as exc:  # noqa: BLE001 - mapped to a status
        return _error_response(exc, request.get(CALLER))


async def _json_body(request: web.Request) -> dict[str, Any]:
    try:
        body = await request.json()
    except ValueError:
        raise BadRequest("request body must be a JSON object") from None
    if not isinstance(body, dict):
        raise BadRequest("request body must be a JSON object")
    return body


def _optional_str(body: dict[str, Any], key: str) -> str | None:
    value = body.get(key)
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        raise BadRequest(f"{key} must be a string, got {type(value).__name__}")
    return value


def _optional(body: dict[str, Any], key: str, kinds: type | tuple[type, ...], what: str) -> Any:
    """body[key] if it is one of `kinds` (JSON true/false is not a number), None if absent."""
    value = body.get(key)
    if value is not None and (isinstance(value, bool) or not isinstance(value, kinds)):
        raise BadRequest(f"{key} must be {what}, got {value!r:.40}")
    return value


def _seconds(query: Any, key: str, default: float) -> float:
    """A time (or count) in a query string: a finite number >= 0."""
    raw = query.get(key)
    if raw is None or raw == "":
        return default
    try:
        value = float(raw)
    except ValueError:
        raise BadRequest(f"{key} must be a number, got {raw!r:.40}") from None
    if not (math.isfinite(value) and value >= 0):
        raise BadRequest(f"{key} must be a finite number >= 0, got {raw!r:.40}")
    return value


def _optional_int(body: dict[str, Any], key: str, default: int) -> int:
    value = _optional(body, key, int, "an integer")
    return default if value is None else value


def _optional_number(body: dict[str, Any], key: str) -> float | None:
    value = _optional(body, key, (int, float), "a number")
    return None if value is None else float(value)


class LiveHttpServer:
    """aiohttp on a private event loop thread; `start()` returns the bound port, `stop()` closes all.

    top_k, max_new_tokens: defaults for /api/ask, as for gRPC Ask.
    ice_addresses: the addresses WebRTC peers may use (LiveConfig.ice_addresses; None: all).
    """

    def __init__(
        self,
        host: str,
        port: int,
        registry: LiveRegistry,
        answerer: QuestionAnswerer,
        store: ChunkStore,
        top_k: int,
        max_new_tokens: int,
        ice_addresses: tuple[str, ...] | None = None,
        keys: KeyRing | None = None,
        ssl_context: ssl.SSLContext | None = None,
        quotas: Quotas | None = None,
        ingest_roots: tuple[Path, ...] = (),
        watches: RedisWatchStore | None = None,
        max_question_chars: int = 1000,
    ) -> None:
        self.host, self.port = host, port
        self.watches = watches
        self.max_question_chars = max_question_chars
        self._closing = False  # set at stop: event streams end
        self.keys = keys or KeyRing(None)
        self.ssl_context = ssl_context
        self.quotas = quotas or Quotas(self.keys, store)
        self.ingest_roots = ingest_roots
        self.media = MediaLinks()
        self.answerer = answerer
        self.store = store
        self.top_k, self.max_new_tokens = top_k, max_new_tokens
        self.webrtc = WebRTCIngest(registry, ice_addresses)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._runner: web.AppRunner | None = None

    # --- lifecycle ---

    def start(self) -> int:
        loop = asyncio.new_event_loop()
        self._loop = loop
        self._thread = threading.Thread(target=loop.run_forever, name="longwatch-http", daemon=True)
        self._thread.start()
        self.port = asyncio.run_coroutine_threadsafe(self._start(), loop).result(timeout=START_TIMEOUT_S)
        return self.port

    def stop(self, timeout: float = 15.0) -> None:
        """Close every peer (their streams' last chunks commit), then the server and the loop."""
        loop, thread = self._loop, self._thread
        if loop is None or thread is None:
            return
        try:
            asyncio.run_coroutine_threadsafe(self._shutdown(), loop).result(timeout=timeout)
        finally:
            loop.call_soon_threadsafe(loop.stop)
            thread.join(timeout=timeout)
            if not thread.is_alive():
                loop.close()
            self._loop = self._thread = None

    async def _start(self) -> int:
        if self.webrtc.ice_addresses is not None:
            check_bindable(self.webrtc.ice_addresses)  # a typo fails here, not as silent ICE failures
        app = web.Application(client_max_size=MAX_BODY_BYTES, middlewares=[_errors, self._authenticate])
        app.add_routes(
            [
                web.get("/", self._page),
                web.post("/offer", self._offer),
                web.get("/api/streams", self._streams),
                web.get("/api/streams/{stream_id}", self._stream),
                web.get("/api/streams/{stream_id}/frames", self._frames),
                web.get("/api/streams/{stream_id}/timeline", self._timeline),
                web.get("/api/streams/{stream_id}/video", self._video_link),
                web.get("/media/{token}", self._media),
                web.get("/api/streams/{stream_id}/frames/{at}", self._frame),
                web.post("/api/ask", self._ask),
                web.get("/api/watches", self._list_watches),
                web.post("/api/watches", self._new_watch),
                web.delete("/api/watches/{watch_id}", self._delete_watch),
                web.get("/api/watches/{watch_id}/events", self._watch_events),
                web.get("/metrics", self._metrics),
                web.static("/static", static_dir()),
            ]
        )
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.port, ssl_context=self.ssl_context)
        try:
            await site.start()
        except OSError as e:
            raise OSError(e.errno, f"HTTP port {self.host}:{self.port} (--http-port): {e.strerror}") from e
        return int(self._runner.addresses[0][1])

    async def _shutdown(self) -> None:
        self._closing = True
        await self.webrtc.close_all()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        await asyncio.get_running_loop().shutdown_default_executor()

    # --- routes ---

    @web.middleware
    async def _authenticate(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        """The API's caller, from `Authorization: Bearer <key>`; the page and its files are open."""
        if request.path.startswith(API_PATHS):
            request[CALLER] = self.keys.authenticate(request.headers.get("Authorization"))
        return await handler(request)

    @staticmethod
    def _caller(request: web.Request, role: Role, action: str) -> Caller:
        caller: Caller = request[CALLER]
        caller.require(role, action)
        return caller

    async def _page(self, request: web.Request) -> web.StreamResponse:
        return web.FileResponse(static_dir() / "index.html", headers={"Cache-Control": "no-cache"})

    async def _metrics(self, request: web.Request) -> web.Response:
        """Prometheus' text format; with keys, for the server's own (local) tenant's keys only."""
        caller = self.keys.authenticate(request.headers.get("Authorization"))
        if caller.tenant != LOCAL_TENANT:
            raise PermissionDenied(
                f"/metrics covers every tenant: it takes keys of the {LOCAL_TENANT!r} tenant (the server's own)"
            )
        body = await asyncio.to_thread(generate_latest)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def _offer(self, request: web.Request) -> web.Response:
        caller = self._caller(request, Role.WRITER, "send live video")
        body = await _json_body(request)
        stored_id = caller.stored_id(_optional_str(body, "stream_id") or new_stream_id())
        await asyncio.to_thread(self._check_live, caller, stored_id)
        sdp, stored_id = await self.webrtc.accept_offer(body.get("sdp"), body.get("type"), stored_id)
        log.info("WebRTC offer from %s accepted for stream %s", request.remote, stored_id)
        return web.json_response({"sdp": sdp, "type": "answer", "stream_id": caller.public_id(stored_id)})

    async def _streams(self, request: web.Request) -> web.Response:
        caller = self._caller(request, Role.READER, "list streams")
        records = await asyncio.to_thread(self.store.list_streams)
        return web.json_response(
            [shown(r, caller, self.keys).to_json_dict() for r in records if caller.owns(r.stream_id)]
        )

    async def _stream(self, request: web.Request) -> web.Response:
        caller = self._caller(request, Role.READER, "read streams")
        record = await asyncio.to_thread(self._record, caller, request.match_info["stream_id"])
        return web.json_response(shown(record, caller, self.keys).to_json_dict())

    async def _frames(self, request: web.Request) -> web.Response:
        """{"frames": [{time_s, chunk_index, url}]}: the pictures between ?from= and ?to= (seconds)."""
        caller = self._caller(request, Role.READER, "read streams")
        stream_id = request.match_info["stream_id"]
        stored_id = (await asyncio.to_thread(self._record, caller, stream_id)).stream_id
        query = request.query
        from_s, to_s = _seconds(query, "from", 0.0), _seconds(query, "to", 1e12)
        max_frames = int(_seconds(query, "max", 0))
        pictures = await asyncio.to_thread(
            find_pictures, self.store, stored_id, from_s, to_s, max_frames, False
        )
        return web.json_response(
            {
                "frames": [
                    {
                        "time_s": p.time_s,
                        "chunk_index": p.index,
                        "url": f"/api/streams/{stream_id}/frames/{p.time_s!r}",
                    }
                    for p in pictures
                ]
            }
        )

    async def _frame(self, request: web.Request) -> web.Response:
        """The picture nearest a time (seconds) as image/jpeg."""
        caller = self._caller(request, Role.READER, "read streams")
        stream_id = request.match_info["stream_id"]
        stored_id = (await asyncio.to_thread(self._record, caller, stream_id)).stream_id
        at = _seconds({"at": request.match_info["at"]}, "at", 0.0)
        found = await asyncio.to_thread(find_pictures, self.store, stored_id, at, at, 1, True)
        if not found:
            raise StreamMissing(f"stream {stream_id!r} has no pictures (is --thumbnails off?)")
        return web.Response(
            body=found[0].image,
            content_type=f"image/{PICTURE_FORMAT}",
            headers={"X-Frame-Time": repr(found[0].time_s), "Cache-Control": "private, max-age=3600"},
        )

    async def _timeline(self, request: web.Request) -> web.Response:
        """{duration_s, chunks: [[index, start_s, end_s]], chunks_dropped, frames_dropped}: for the
        page's timeline (gaps between chunks and what was dropped visible)."""
        caller = self._caller(request, Role.READER, "read streams")
        record = await asyncio.to_thread(self._record, caller, request.match_info["stream_id"])
        spans = await asyncio.to_thread(self.store.chunk_spans, record.stream_id)
        return web.json_response(
            {
                "duration_s": record.duration_s,
                "chunks": [[s.index, s.start_s, s.end_s] for s in spans],
                "chunks_dropped": record.chunks_dropped,
                "frames_dropped": record.frames_dropped,
            }
        )

    async def _video_link(self, request: web.Request) -> web.Response:
        """{"url", "expires_unix"}: a link to play the archive's own file (stream/media.py)."""
        caller = self._caller(request, Role.READER, "read streams")
        stream_id = request.match_info["stream_id"]
        record = await asyncio.to_thread(self._record, caller, stream_id)
        if not record.source_path:
            raise StreamMissing(f"stream {stream_id!r} has no file on the server to play (uploaded, or live)")
        token, expires = self.media.token(record.stream_id)
        return web.json_response({"url": f"/media/{token}", "expires_unix": expires})

    async def _media(self, request: web.Request) -> web.StreamResponse:
        """The file a link names, with HTTP ranges; any bad link is a plain 404."""
        stored_id = self.media.stream_of(request.match_info["token"])
        record = await asyncio.to_thread(self.store.get_stream, stored_id) if stored_id else None
        try:
            if record is None or not record.source_path:
                raise ValueError("no such stream or file")
            path = resolve_server_path(record.source_path, self.ingest_roots)  # still inside a root
            if not Path(path).is_file():
                raise ValueError("the file is gone")
        except (ValueError, PermissionDenied):
            raise web.HTTPNotFound() from None
        return web.FileResponse(path, headers={"Cache-Control": "private, max-age=3600"})

    def _record(self, caller: Caller, stream_id: str) -> StreamRecord:
        """The caller's stream by the id it knows; another tenant's is as missing as none."""
        record = self.store.get_stream(caller.stored_id(stream_id))
        if record is None:
            raise StreamMissing(f"no stream {stream_id!r}")
        return record

    async def _ask(self, request: web.Request) -> web.Response:
        caller = self._caller(request, Role.READER, "ask")
        body = await _json_body(request)
        stream_id = _optional_str(body, "stream_id")
        question = body.get("question")
        if not isinstance(question, str):
            raise BadRequest("question must be a string")
        if "streams" in body:
            if stream_id is not None:
                raise BadRequest("give stream_id (one stream) or streams (several), not both")
            return await self._ask_across(caller, body, question)
        if stream_id is None:
            raise BadRequest("stream_id is required (or streams: a list of stream ids, [] for all of yours)")
        params = AskParams(
            stream_id=caller.stored_id(stream_id),
            question=question,
            top_k=_optional_int(body, "top_k", self.top_k),
            max_new_tokens=_optional_int(body, "max_new_tokens", self.max_new_tokens),
            score_margin=_optional_number(body, "score_margin"),
        )
        outcome = await asyncio.to_thread(self._answer, caller, params)
        return web.json_response(outcome_json(stream_id, outcome))

    async def _ask_across(self, caller: Caller, body: dict[str, Any], question: str) -> web.Response:
        streams = body["streams"]
        if not isinstance(streams, list) or not all(isinstance(s, str) for s in streams):
            raise BadRequest("streams must be a list of stream ids ([] for every stream of yours)")
        params = AcrossParams(
            question=question,
            results=_optional_int(body, "results", DEFAULT_RESULTS),
            top_k=_optional_int(body, "top_k", self.top_k),
            max_new_tokens=_optional_int(body, "max_new_tokens", self.max_new_tokens),
            score_margin=_optional_number(body, "score_margin"),
        )
        outcome = await asyncio.to_thread(self._answer_across, caller, params, streams)
        return web.json_response(across_json(caller, outcome))

    def _answer_across(self, caller: Caller, params: AcrossParams, streams: list[str]) -> AcrossOutcome:
        with self.quotas.asking(caller):
            outcome = ask_across(self.answerer, params, callers_streams(self.store, caller, streams))
        if outcome.results:
            metrics.asked(outcome.results[0].stream_id, outcome.timings_ms)
        return outcome

    def _answer(self, caller: Caller, params: AskParams) -> AskOutcome:
        with self.quotas.asking(caller):
            deltas, outcome = self.answerer.ask(params)
            for _ in deltas:
                pass
        metrics.asked(params.stream_id, outcome.timings_ms)
        return outcome

    # --- watches ---

    def _watch_store(self) -> RedisWatchStore:
        if self.watches is None:
            raise StreamMissing("this server keeps no watches")
        return self.watches

    async def _list_watches(self, request: web.Request) -> web.Response:
        caller = self._caller(request, Role.READER, "list watches")
        watches = await asyncio.to_thread(self._watch_store().list)
        return web.json_response([watch_json(caller, w) for w in watches if w.tenant == caller.tenant])

    async def _new_watch(self, request: web.Request) -> web.Response:
        caller = self._caller(request, Role.READER, "watch streams")
        body = await _json_body(request)
        question = body.get("question")
        if not isinstance(question, str):
            raise BadRequest("question must be a string")
        watch = await asyncio.to_thread(
            watch_for,
            caller,
            self.store,
            self._watch_store(),
            _optional_str(body, "stream_id") or "",
            question,
            _optional_str(body, "match") or "",
            _optional_str(body, "webhook_url") or "",
            self.max_question_chars,
        )
        return web.json_response(watch_json(caller, watch), status=201)

    async def _delete_watch(self, request: web.Request) -> web.Response:
        caller = self._caller(request, Role.WRITER, "delete watches")
        watch = await asyncio.to_thread(self._callers_watch, caller, request.match_info["watch_id"])
        await asyncio.to_thread(self._watch_store().delete, watch.watch_id)
        return web.json_response(watch_json(caller, watch))

    def _callers_watch(self, caller: Caller, watch_id: str) -> WatchRecord:
        return tenant_watch(self._watch_store(), caller.tenant, caller.stored_id(watch_id))

    async def _watch_events(self, request: web.Request) -> web.StreamResponse:
        """Server-sent events: `id: EVENT_ID`, `event: watch`, `data: {event JSON}` each; a browser's
        EventSource resumes by itself after the last id it saw (Last-Event-ID), and so may anyone
        (or ?after=ID). A comment every 15 s keeps proxies from closing a quiet stream."""
        caller = self._caller(request, Role.READER, "watch streams")
        watch = await asyncio.to_thread(self._callers_watch, caller, request.match_info["watch_id"])
        after = request.headers.get("Last-Event-ID") or request.query.get("after", "")
        if not valid_event_id(after):
            raise BadRequest(f"the last event id must look like 1733390000000-0, got {after!r}")
        response = web.StreamResponse(
            headers={
                "Content-Type": "text/event-stream",
                "Cache-Control": "no-cache",
                "X-Accel-Buffering": "no",
            }
        )
        await response.prepare(request)
        store = self._watch_store()
        quiet = 0.0
        while not self._closing and request.transport is not None and not request.transport.is_closing():
            # A quick read, then a wait on the loop: no executor thread is held between events,
            # so any number of pages may follow watches.
            events = await asyncio.to_thread(store.events_after, watch.watch_id, after, 100)
            for event in events:
                data = json.dumps(event_json(watch, event))
                await response.write(f"id: {event.event_id}\nevent: watch\ndata: {data}\n\n".encode())
                after = event.event_id
            quiet = 0.0 if events else quiet + SSE_POLL_S
            if quiet >= SSE_KEEPALIVE_S:
                await response.write(b": still watching\n\n")
                quiet = 0.0
            if not events:
                await asyncio.sleep(SSE_POLL_S)
        return response

    def _check_live(self, caller: Caller, stored_id: str) -> None:
        self.quotas.check_live(caller)
        self.quotas.check_new_stream(caller, stored_id)
