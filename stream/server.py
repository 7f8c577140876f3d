"""Lifecycle of the service: Redis (embedded or given), model, gRPC and HTTP servers, graceful stop.

Stop order: the HTTP server first (its WebRTC peers close and their streams' last chunks
commit), then the remaining live sessions (IngestFrames calls end with UNAVAILABLE after their
last chunk commits), then gRPC (in-flight calls get the grace period), then Redis.
"""

from __future__ import annotations

import logging
import signal
import threading
from concurrent import futures
from types import FrameType, TracebackType

import grpc
import transformers
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from longwatch.memory.index import IndexRegistry
from longwatch.memory.redis_server import EmbeddedRedis
from longwatch.memory.store import ChunkStore, open_store
from longwatch.model.compressor import SummaryCompressor
from longwatch.model.loading import DEMO_MODEL_NAME, LoadedModel, load_model
from longwatch.proto import longwatch_pb2 as pb
from longwatch.proto import longwatch_pb2_grpc as pb_grpc
from longwatch.proto.streams import StreamState
from longwatch.stream.http_server import LiveHttpServer
from longwatch.stream.live import settle_interrupted_live_streams
from longwatch.stream.pipeline import ModelRunner
from longwatch.stream.service import LongWatchService
from longwatch.stream.settings import ServiceSettings, ingest_for_model, score_margin_for_model

log = logging.getLogger(__name__)
SERVICE_NAME = pb.DESCRIPTOR.services_by_name["LongWatch"].full_name


def drop_interrupted_archives(store: ChunkStore) -> list[str]:
    """Archives left mid-ingest by a previous process are incomplete: remove them whole."""
    dropped = []
    for record in store.list_streams():
        if record.state == StreamState.INGESTING and record.source.startswith("file:"):
            store.delete_stream(record.stream_id)
            dropped.append(record.stream_id)
    return dropped


def serving_note(lm: LoadedModel) -> str:
    """One line on what answers questions: which model, how chunks are kept, what it knows."""
    c = lm.config
    where = f"{c.device}, {c.dtype}, {c.attn_implementation}"
    if c.mode == "raw":
        how = "keep-raw: every token's K/V kept" + (
            ", each chunk on its own" if c.raw_context == "chunk" else ", each chunk after all earlier ones"
        )
        if c.adapter is None:
            how += " (no summary-token adapter; train one with `longwatch train --stage summary`)"
    else:
        how = f"summary tokens, alpha {c.alpha}" + (
            f", adapter {c.adapter}" if c.adapter is not None else ", untrained (no --adapter)"
        )
    note = f"model {lm.name} ({where}): {how}"
    if lm.name == DEMO_MODEL_NAME:
        note += (
            ". The built-in demo model knows only synthetic needles (docs/demo-model.md): "
            "serve a real VideoLLaMA3 with --model"
        )
    return note


class LongWatchServer:
    """Owns every resource of a running service; `stop()` releases them all, errors collected."""

    def __init__(self, settings: ServiceSettings) -> None:
        self.settings = settings
        self.redis: EmbeddedRedis | None = None
        self.store: ChunkStore | None = None
        self.grpc_server: grpc.Server | None = None
        self.health: health.HealthServicer | None = None
        self.service: LongWatchService | None = None
        self.http: LiveHttpServer | None = None
        self.port: int = 0
        self.http_port: int = 0
        self.redis_url: str = ""
        self.note: str = ""  # what answers questions (serving_note), once started

    def start(self) -> LongWatchServer:
        s = self.settings
        transformers.utils.logging.disable_progress_bar()  # the service logs; it does not draw bars
        try:
            s.state_dir.mkdir(parents=True, exist_ok=True)
            self.redis_url = s.redis_url or self._start_embedded_redis()
            self.store = open_store(self.redis_url, kv_storage=s.kv_storage)
            dropped = drop_interrupted_archives(self.store)
            if dropped:
                log.warning("removed archives interrupted by an earlier stop: %s", ", ".join(dropped))
            settled = settle_interrupted_live_streams(self.store)
            if settled:
                log.warning("live streams cut off by an earlier stop are ready again: %s", ", ".join(settled))
            lm = load_model(s.model, state_dir=s.state_dir)
            s.model = lm.config  # as resolved: mode, attention, adapter of the built-in model
            s.ingest = ingest_for_model(s, lm.card)
            s.score_margin = score_margin_for_model(s, lm.card)
            runner = ModelRunner(lm=lm, compressor=SummaryCompressor(lm))
            service = LongWatchService(s, runner, self.store, IndexRegistry(self.store))
            self.service = service
            self._start_grpc(service)
            self._start_http(service)
        except BaseException:
            self.stop()
            raise
        log.info(
            "longwatch serving on %s:%d, http on %d (model %s, redis %s)",
            s.host,
            self.port,
            self.http_port,
            lm.name,
            self.redis_url,
        )
        self.note = serving_note(lm)
        log.info("%s", self.note)
        return self

    @property
    def model_name(self) -> str:
        return self.service.runner.lm.name if self.service else ""

    def _start_embedded_redis(self) -> str:
        self.redis = EmbeddedRedis(self.settings.state_dir / "redis")
        return self.redis.start()

    def _start_grpc(self, service: LongWatchService) -> None:
        s = self.settings
        limit = s.max_message_mb * 1024 * 1024
        server = grpc.server(
            futures.ThreadPoolExecutor(max_workers=s.workers, thread_name_prefix="longwatch-rpc"),
            options=[("grpc.max_receive_message_length", limit), ("grpc.max_send_message_length", limit)],
        )
        pb_grpc.add_LongWatchServicer_to_server(service, server)
        self.health = health.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(self.health, server)
        reflection.enable_server_reflection(
            (SERVICE_NAME, health.SERVICE_NAME, reflection.SERVICE_NAME), server
        )
        self.port = server.add_insecure_port(f"{s.host}:{s.port}")
        if self.port == 0:
            raise OSError(f"cannot bind {s.host}:{s.port}")
        server.start()
        self.grpc_server = server
        for name in ("", SERVICE_NAME):
            self.health.set(name, health_pb2.HealthCheckResponse.SERVING)

    def _start_http(self, service: LongWatchService) -> None:
        s = self.settings
        self.http = LiveHttpServer(
            s.host,
            s.http_port,
            service.live,
            service.answerer,
            service.store,
            s.top_k,
            s.max_new_tokens,
            s.live.ice_addresses,
        )
        self.http_port = self.http.start()

    def _stop_live(self) -> None:
        if self.http is not None:
            self.http.stop()
            self.http = None
        if self.service is not None:
            self.service.live.close_all()

    def stop(self, grace: float = 5.0) -> None:
        """Stop serving (in-flight calls get `grace` seconds), then close Redis; safe to call twice."""
        errors: list[BaseException] = []
        if self.health is not None:
            self.health.enter_graceful_shutdown()
        try:
            self._stop_live()
        except Exception as exc:  # noqa: BLE001 - collected, reported below
            errors.append(exc)
        if self.grpc_server is not None:
            self.grpc_server.stop(grace).wait()
            self.grpc_server = None
        for close in (self._close_store, self._stop_redis):
            try:
                close()
            except Exception as exc:  # noqa: BLE001 - collected, reported below
                errors.append(exc)
        for exc in errors:
            log.error("error while stopping: %s", exc)

    def _close_store(self) -> None:
        if self.store is not None:
            self.store.close()
            self.store = None

    def _stop_redis(self) -> None:
        if self.redis is not None:
            self.redis.stop()
            self.redis = None

    def __enter__(self) -> LongWatchServer:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


def serve_forever(settings: ServiceSettings) -> int:
    """`longwatch serve`: run until SIGINT or SIGTERM, then stop gracefully."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("aioice").setLevel(logging.WARNING)  # a dozen ICE check lines per WebRTC peer
    stop = threading.Event()

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        log.info("received %s, stopping", signal.Signals(signum).name)
        stop.set()

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
    server = LongWatchServer(settings)
    try:
        server.start()
        print(f"longwatch listening on {settings.host}:{server.port}", flush=True)
        print(server.note, flush=True)
        addresses = settings.live.ice_addresses
        only = f" (WebRTC on {', '.join(addresses)} only)" if addresses else ""
        print(f"browser page and WebRTC on http://{settings.host}:{server.http_port}/{only}", flush=True)
        stop.wait()
    finally:
        server.stop()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return 0
