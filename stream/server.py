"""Lifecycle of the service: Redis (embedded or given), model, gRPC and HTTP servers, graceful stop.

Stop order: the health service says NOT_SERVING and the call gate closes (new calls get
UNAVAILABLE; an archive ingest stops at its next frame, keeping what it committed, and tells its
client how to resume); the HTTP server goes (its WebRTC peers close and their streams' last chunks
commit), then the remaining live sessions (IngestFrames calls end with UNAVAILABLE after their last
chunk commits); the calls still running get the grace period to end; then gRPC, then Redis. One
log line says how it went.

An embedded redis-server that dies while the service runs is started again on the same data (its
AOF holds every acknowledged write); meanwhile calls get UNAVAILABLE and ingest commits wait.
"""

from __future__ import annotations

import logging
import signal
import threading
from collections.abc import Callable
from concurrent import futures
from types import FrameType, TracebackType

import grpc
import transformers
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from longwatch.memory.index import IndexRegistry
from longwatch.memory.records import StoreError
from longwatch.memory.redis_server import EmbeddedRedis
from longwatch.memory.store import ChunkStore, open_store
from longwatch.memory.tier import BlobTier, LocalBlobTier
from longwatch.model.compressor import SummaryCompressor
from longwatch.model.loading import DEMO_MODEL_NAME, LoadedModel, ModelLoadError, load_model
from longwatch.proto.streams import StreamState
from longwatch.stream.auth import KeyRing
from longwatch.stream.errors import one_line
from longwatch.stream.http_server import LiveHttpServer
from longwatch.stream.leases import LeaseKeeper, default_replica_id, settle_orphaned_streams
from longwatch.stream.metrics import Holdings, register_holdings
from longwatch.stream.periodic import PeriodicTask
from longwatch.stream.pipeline import ModelRunner
from longwatch.stream.ray_ingest import RayPool
from longwatch.stream.service import SERVICE_NAME, LongWatchService, add_to_server
from longwatch.stream.settings import (
    ServiceSettings,
    check_exposure,
    ingest_for_model,
    score_margin_for_model,
)
from longwatch.stream.sweeper import StorageSweeper
from longwatch.stream.tls import grpc_credentials, http_context
from longwatch.stream.watching import WATCH_INTERVAL_S, WatchChecker
from longwatch.stream.webhooks import WebhookSender

log = logging.getLogger(__name__)


REDIS_WATCH_S = 0.5  # how often the embedded redis-server is checked on
# What keeps the service from starting, said in one line: a port or state folder in use, a Redis
# that cannot be reached, a model that does not load, a setting out of range.
StartError = (OSError, StoreError, ModelLoadError, ValueError)


def cold_tier(settings: ServiceSettings) -> BlobTier:
    """Where chunks past the hot window go: an S3-compatible store if given, else a local folder."""
    if settings.cold_s3:
        from longwatch.memory.s3tier import S3BlobTier  # boto3: only for those who use it

        return S3BlobTier(settings.cold_s3, settings.s3_endpoint)
    return LocalBlobTier(settings.cold_dir or settings.state_dir / "cold")


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
        self._watch_stop: threading.Event | None = None  # the embedded redis-server's watcher
        self._unregister_metrics: Callable[[], None] | None = None
        self.sweeper: StorageSweeper | None = None
        self.watch_tasks: list[PeriodicTask] = []  # standing questions checked, webhooks delivered
        self.leases: LeaseKeeper | None = None
        self.ray_pool: RayPool | None = None
        self._watcher: threading.Thread | None = None

    def start(self) -> LongWatchServer:
        s = self.settings
        transformers.utils.logging.disable_progress_bar()  # the service logs; it does not draw bars
        try:
            check_exposure(s.host, s.security)
            keys = KeyRing(s.security.keys_file, s.security.limits)
            s.state_dir.mkdir(parents=True, exist_ok=True)
            self.redis_url = s.redis_url or self._start_embedded_redis()
            self.store = open_store(
                self.redis_url,
                kv_storage=s.kv_storage,
                cold=cold_tier(s),
                commit_replicas=s.commit_replicas,
                commit_wait_ms=s.commit_wait_ms,
            )
            replica = s.replica_id or default_replica_id(s.state_dir)
            self.leases = LeaseKeeper(self.store, replica, s.lease_ttl_s)
            # What an earlier process of this replica left mid-ingest; others' wait for their leases.
            settled = settle_orphaned_streams(self.store, replica)
            interrupted = [sid for sid, (state, _) in settled.items() if state == StreamState.INTERRUPTED]
            if interrupted:
                log.warning(
                    "archives cut off by an earlier stop keep their chunks and can be resumed: %s",
                    ", ".join(interrupted),
                )
            ready = [sid for sid, (state, _) in settled.items() if state == StreamState.READY]
            if ready:
                log.warning("live streams cut off by an earlier stop are ready again: %s", ", ".join(ready))
            self.leases.start()
            lm = load_model(s.model, state_dir=s.state_dir)
            s.model = lm.config  # as resolved: mode, attention, adapter of the built-in model
            s.ingest = ingest_for_model(s, lm.card)
            s.score_margin = score_margin_for_model(s, lm.card)
            runner = ModelRunner(
                lm=lm, compressor=SummaryCompressor(lm), share_summary=s.share_summary_passes
            )
            service = LongWatchService(s, runner, self.store, IndexRegistry(self.store), self.leases, keys)
            self.service = service
            if s.ray_address:
                self.ray_pool = RayPool(s.ray_address, s.ray_workers, lm.config, lm.fingerprint, s.state_dir)
                service.ray_pool = self.ray_pool
            holdings = Holdings(self.store, service.live.live_ids, service.quotas.asks_in_flight)
            self._unregister_metrics = register_holdings(holdings)
            self.sweeper = StorageSweeper(
                self.store, service.indexes, keys, s.retention_interval_s, s.hot_window_s, self.leases
            ).start()
            checker = WatchChecker(runner, self.store, service.watches, replica, service.live)
            webhooks = WebhookSender(service.watches, replica)
            self.watch_tasks = [
                PeriodicTask("watch-checker", WATCH_INTERVAL_S, checker.tick),
                PeriodicTask("webhooks", WATCH_INTERVAL_S, webhooks.deliver_round),
            ]
            for task in self.watch_tasks:
                task.start()
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
        url = self.redis.start()
        self._watch_stop = threading.Event()
        self._watcher = threading.Thread(target=self._watch_redis, name="longwatch-redis-watch", daemon=True)
        self._watcher.start()
        return url

    def _watch_redis(self) -> None:
        """Start the embedded redis-server again if it dies, on the same data (its AOF)."""
        while not self._watch_stop.wait(REDIS_WATCH_S):
            redis_server = self.redis
            if redis_server is None or redis_server.running:
                continue
            log.warning("embedded redis-server died; starting it again on %s", redis_server.data_dir)
            try:
                redis_server.start()
            except Exception as exc:  # noqa: BLE001 - tried again at the next tick
                log.error("embedded redis-server did not start again: %s", one_line(exc))

    def _start_grpc(self, service: LongWatchService) -> None:
        s = self.settings
        limit = s.max_message_mb * 1024 * 1024
        server = grpc.server(
            futures.ThreadPoolExecutor(max_workers=s.workers, thread_name_prefix="longwatch-rpc"),
            options=[
                ("grpc.max_receive_message_length", limit),
                ("grpc.max_send_message_length", limit),
                # gRPC lets a second server bind the same port by default, and calls then split
                # between two services at random: a port in use must be refused instead.
                ("grpc.so_reuseport", 0),
            ],
        )
        add_to_server(service, server, service.keys)
        self.health = health.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(self.health, server)
        reflection.enable_server_reflection(
            (SERVICE_NAME, health.SERVICE_NAME, reflection.SERVICE_NAME), server
        )
        try:
            address = f"{s.host}:{s.port}"
            if s.security.tls:
                self.port = server.add_secure_port(address, grpc_credentials(s.security))
            else:
                self.port = server.add_insecure_port(address)
        except RuntimeError:  # grpc's "Failed to bind"; older versions return 0 instead
            self.port = 0
        if self.port == 0:
            raise OSError(f"cannot bind {s.host}:{s.port} for gRPC (in use?)")
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
            keys=service.keys,
            ssl_context=http_context(s.security) if s.security.tls else None,
            quotas=service.quotas,
            ingest_roots=s.security.ingest_roots,
            watches=service.watches,
            max_question_chars=s.max_question_chars,
        )
        self.http_port = self.http.start()

    def _stop_live(self) -> None:
        if self.http is not None:
            self.http.stop()
            self.http = None
        if self.service is not None:
            self.service.live.close_all()

    def stop(self, grace: float = 5.0) -> None:
        """Stop in order (see the module's doc): calls get `grace` seconds to end; safe to call twice."""
        errors: list[BaseException] = []
        was_serving = self.grpc_server is not None
        if self.health is not None:
            self.health.enter_graceful_shutdown()
        if self.service is not None:
            self.service.gate.close()
        try:
            self._stop_live()
        except Exception as exc:  # noqa: BLE001 - collected, reported below
            errors.append(exc)
        cut = self.service.gate.drain(grace) if self.service is not None else 0
        if self.grpc_server is not None:
            self.grpc_server.stop(0).wait()
            self.grpc_server = None
        if self._unregister_metrics is not None:
            self._unregister_metrics()
            self._unregister_metrics = None
        if self.sweeper is not None:
            self.sweeper.stop()
            self.sweeper = None
        for task in self.watch_tasks:
            task.stop()
        self.watch_tasks = []
        if self.ray_pool is not None:
            try:
                self.ray_pool.shutdown()
            except Exception as exc:  # noqa: BLE001 - collected, reported below
                errors.append(exc)
            self.ray_pool = None
        if self.leases is not None:
            self.leases.stop()  # after live streams and calls ended: their leases were released
        for close in (self._close_store, self._stop_redis):
            try:
                close()
            except Exception as exc:  # noqa: BLE001 - collected, reported below
                errors.append(exc)
        for exc in errors:
            log.error("error while stopping: %s", one_line(exc))
        if was_serving:
            log.info(
                "longwatch stopped%s",
                f"; {cut} calls still running after {grace:g} s were cut" if cut else ": every call ended",
            )

    def _close_store(self) -> None:
        if self.store is not None:
            self.store.close()
            self.store = None

    def _stop_redis(self) -> None:
        if self._watch_stop is not None:
            self._watch_stop.set()
            self._watcher.join()
            self._watch_stop = None
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
        scheme = "https" if settings.security.tls else "http"
        print(f"browser page and WebRTC on {scheme}://{settings.host}:{server.http_port}/{only}", flush=True)
        if settings.security.keys_file is not None:
            print(f"API keys from {settings.security.keys_file} (re-read when it changes)", flush=True)
        # Woken now and then: a signal the kernel hands to another thread is only acted on when
        # the main thread next runs Python code, and an untimed wait might never return for it.
        while not stop.wait(0.5):
            pass
    finally:
        server.stop()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return 0
