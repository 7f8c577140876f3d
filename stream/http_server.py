"""The HTTP server beside gRPC: WebRTC signalling, the browser page and the JSON API the page uses.

aiortc needs asyncio and the gRPC server is synchronous, so this runs an aiohttp server on its
own event loop in a thread of the service process. Routes:

    GET  /                  the browser page (stream/static/index.html; its files under /static/)
    POST /offer             {"sdp", "type": "offer", "stream_id"?} -> {"sdp", "type": "answer", "stream_id"}
    GET  /api/streams       [stream, ...], the fields of ListStreams, state as "live"/"ready"/...
    GET  /api/streams/{id}  one stream
    POST /api/ask           {"stream_id", "question", "top_k"?, "max_new_tokens"?, "score_margin"?}
                            -> {"answer", "evidence": [{start_s, end_s, score, chunk_index}], ...}

Errors are {"error": "<one line>"} with the HTTP status of the gRPC one the same error gets
(400 bad input, 404 unknown stream, 409 taken or busy or not ready, 503 stopping, 500 a bug).
The page's files sit beside this module (stream/static/), served from the installed package.
"""

from __future__ import annotations

import asyncio
import importlib.resources
import logging
import threading
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import grpc
from aiohttp import web

from longwatch.clients.ice import check_bindable
from longwatch.memory.store import ChunkStore
from longwatch.stream.answering import AskOutcome, AskParams, QuestionAnswerer
from longwatch.stream.errors import BadRequest, StreamMissing, one_line, status_for
from longwatch.stream.live import LiveRegistry
from longwatch.stream.webrtc import WebRTCIngest

log = logging.getLogger(__name__)

MAX_BODY_BYTES = 1024 * 1024
START_TIMEOUT_S = 30.0
_HTTP_STATUS = {
    grpc.StatusCode.INVALID_ARGUMENT: 400,
    grpc.StatusCode.NOT_FOUND: 404,
    grpc.StatusCode.ALREADY_EXISTS: 409,
    grpc.StatusCode.FAILED_PRECONDITION: 409,
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
            {"start_s": e.start_s, "end_s": e.end_s, "score": e.score, "chunk_index": e.index}
            for e in outcome.evidence
        ],
        "timings": outcome.timings_ms,
        "tokens_generated": outcome.tokens_generated,
        "model": outcome.model,
    }


def _error_response(exc: Exception) -> web.Response:
    code = status_for(exc)
    if code is None:
        log.error("internal error serving HTTP: %s", one_line(exc), exc_info=exc)
    status = _HTTP_STATUS.get(code, 500) if code is not None else 500
    message = one_line(exc) if code is not None else f"internal error: {one_line(exc)}"
    return web.json_response({"error": message}, status=status)


API_PATHS = ("/api/", "/offer")  # answered in JSON, errors too


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
        return _error_response(exc)


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
    ) -> None:
        self.host, self.port = host, port
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
        app = web.Application(client_max_size=MAX_BODY_BYTES, middlewares=[_errors])
        app.add_routes(
            [
                web.get("/", self._page),
                web.post("/offer", self._offer),
                web.get("/api/streams", self._streams),
                web.get("/api/streams/{stream_id}", self._stream),
                web.post("/api/ask", self._ask),
                web.static("/static", static_dir()),
            ]
        )
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.port)
        try:
            await site.start()
        except OSError as e:
            raise OSError(e.errno, f"HTTP port {self.host}:{self.port} (--http-port): {e.strerror}") from e
        return int(self._runner.addresses[0][1])

    async def _shutdown(self) -> None:
        await self.webrtc.close_all()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        await asyncio.get_running_loop().shutdown_default_executor()

    # --- routes ---

    async def _page(self, request: web.Request) -> web.StreamResponse:
        return web.FileResponse(static_dir() / "index.html", headers={"Cache-Control": "no-cache"})

    async def _offer(self, request: web.Request) -> web.Response:
        body = await _json_body(request)
        sdp, stream_id = await self.webrtc.accept_offer(
            body.get("sdp"), body.get("type"), _optional_str(body, "stream_id")
        )
        log.info("WebRTC offer from %s accepted for stream %s", request.remote, stream_id)
        return web.json_response({"sdp": sdp, "type": "answer", "stream_id": stream_id})

    async def _streams(self, request: web.Request) -> web.Response:
        records = await asyncio.to_thread(self.store.list_streams)
        return web.json_response([r.to_json_dict() for r in records])

    async def _stream(self, request: web.Request) -> web.Response:
        stream_id = request.match_info["stream_id"]
        record = await asyncio.to_thread(self.store.get_stream, stream_id)
        if record is None:
            raise StreamMissing(f"no stream {stream_id!r}")
        return web.json_response(record.to_json_dict())

    async def _ask(self, request: web.Request) -> web.Response:
        body = await _json_body(request)
        stream_id = _optional_str(body, "stream_id")
        question = body.get("question")
        if stream_id is None:
            raise BadRequest("stream_id is required")
        if not isinstance(question, str):
            raise BadRequest("question must be a string")
        params = AskParams(
            stream_id=stream_id,
            question=question,
            top_k=_optional_int(body, "top_k", self.top_k),
            max_new_tokens=_optional_int(body, "max_new_tokens", self.max_new_tokens),
            score_margin=_optional_number(body, "score_margin"),
        )
        outcome = await asyncio.to_thread(self._answer, params)
        return web.json_response(outcome_json(stream_id, outcome))

    def _answer(self, params: AskParams) -> AskOutcome:
        deltas, outcome = self.answerer.ask(params)
        for _ in deltas:
            pass
        return outcome
