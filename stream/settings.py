"""Settings of the service, read once at the edge from flags and LONGWATCH_* environment variables."""

from __future__ import annotations

import argparse
import ipaddress
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from longwatch.clients.ice import address_list, parse_ice_addresses
from longwatch.memory.records import DEFAULT_COMMIT_WAIT_MS
from longwatch.model.config import ATTENTION, ModelConfig
from longwatch.proto.streams import KV_STORAGE

MAX_FPS = 60.0  # the highest sampling rate a stream may ask for
# The lowest: a frame every 1000 s. Below it the interval between samples overflows stream time
# (a fuzzed fps of 2e-313 made a chunk end at infinity).
MIN_FPS = 0.001
SERVICE_KV_STORAGE = "int8"  # the store's own default stays lossless ("float"); the service saves bytes


def default_state_dir() -> Path:
    base = os.environ.get("XDG_STATE_HOME") or os.path.join(os.path.expanduser("~"), ".local", "state")
    return Path(base) / "longwatch"


@dataclass
class IngestConfig:
    """How frames become chunks.

    fps: sampling rate by presentation time.
    frames_per_chunk: sampled frames compressed together into one chunk.
    max_tokens_per_frame: per-frame budget of merged visual tokens; sets the resize target.
    diff_threshold: DiffFP threshold (mean absolute pixel difference x 255 per merged token).
    pictures: which sampled frames a chunk keeps a small JPEG of, for looking at evidence: "chunk"
        (its most changed frame), "N" (every Nth sampled frame) or "off" (stream/pictures.py).
    picture_side: the pictures' longest side in pixels.
    """

    fps: float = 1.0
    frames_per_chunk: int = 8
    max_tokens_per_frame: int = 16
    diff_threshold: float = 0.1
    pictures: str = "chunk"
    picture_side: int = 240

    def __post_init__(self) -> None:
        if not MIN_FPS <= self.fps <= MAX_FPS:
            raise ValueError(f"fps must be in [{MIN_FPS:g}, {MAX_FPS:g}], got {self.fps}")
        if self.frames_per_chunk < 1:
            raise ValueError(f"frames_per_chunk must be >= 1, got {self.frames_per_chunk}")
        if self.max_tokens_per_frame < 1:
            raise ValueError(f"max_tokens_per_frame must be >= 1, got {self.max_tokens_per_frame}")
        if not (self.pictures in ("off", "chunk") or (self.pictures.isdigit() and int(self.pictures) >= 1)):
            raise ValueError(
                f"--thumbnails must be off, chunk or a whole number N >= 1, got {self.pictures!r}"
            )
        if not 64 <= self.picture_side <= 1024:
            raise ValueError(f"--thumbnail-side must be 64-1024 px, got {self.picture_side}")


@dataclass
class LiveConfig:
    """How live streams (WebRTC peers, gRPC IngestFrames) are taken in.

    queue_frames: sampled frames a live stream may have waiting for the pipeline; a frame that
        finds the queue full is dropped and counted (frames_dropped), so a camera never waits
        on the model and memory stays bounded. Archives never drop: they wait instead.
    recent_chunks: latest committed chunks Ask always adds for a live stream, besides top-k.
    max_frame_side, max_frame_bytes: the largest frame accepted over IngestFrames (width and
        height each, and bytes of one encoded or raw image); larger is INVALID_ARGUMENT.
    ice_addresses: the addresses WebRTC peers may use on both ends (clients/ice.py): host
        candidates are gathered on these only, and a sender's candidates on other addresses are
        ignored. None offers all of the machine's addresses but loopback (aioice's default), for
        browsers on other machines; ("127.0.0.1",) keeps WebRTC on loopback (tests, CI, the demo).
    """

    queue_frames: int = 32
    recent_chunks: int = 1
    max_frame_side: int = 4096
    max_frame_bytes: int = 4096 * 4096 * 3
    ice_addresses: tuple[str, ...] | None = None

    def __post_init__(self) -> None:
        if self.queue_frames < 1:
            raise ValueError(f"live queue must hold at least 1 frame, got {self.queue_frames}")
        if self.recent_chunks < 0:
            raise ValueError(f"recent_chunks must be >= 0, got {self.recent_chunks}")
        if self.max_frame_side < 16 or self.max_frame_bytes < 16 * 16 * 3:
            raise ValueError("frame limits must allow at least a 16x16 RGB frame")
        if self.ice_addresses is not None:
            self.ice_addresses = parse_ice_addresses(self.ice_addresses)


INGEST_FIELDS = ("fps", "frames_per_chunk", "max_tokens_per_frame", "diff_threshold")


def ingest_for_model(settings: ServiceSettings, card: dict) -> IngestConfig:
    """The ingest settings to serve with: explicit ones, else the model card's, else the defaults.

    A trained model expects the frame size and chunk length it was trained with; a user's flag
    still wins.
    """
    values = {k: v for k, v in card.get("ingest", {}).items() if k in INGEST_FIELDS}
    values.update({k: getattr(settings.ingest, k) for k in settings.ingest_explicit})
    return IngestConfig(
        **values, pictures=settings.ingest.pictures, picture_side=settings.ingest.picture_side
    )


def score_margin_for_model(settings: ServiceSettings, card: dict) -> float:
    """The score margin to serve with: the one set, else the model card's, else 0 (plain top-k).

    A card's margin is for its summary tokens' retrieval scores; keep-raw mode scores chunks
    computed in their stream's running context, on another scale, so it takes none from the card.
    """
    if settings.score_margin is not None:
        return settings.score_margin
    return float(card.get("score_margin", 0.0)) if settings.model.mode == "summary" else 0.0


@dataclass(frozen=True)
class TenantLimits:
    """A tenant's quotas and its streams' default retention; 0 means none. The server's values
    apply where a tenant's entry in the keys file sets none."""

    max_streams: int = 0
    max_live_streams: int = 0
    max_concurrent_asks: int = 0
    max_stored_bytes: int = 0
    max_upload_bytes: int = 0
    retention_age_s: float = 0.0
    retention_bytes: int = 0

    @classmethod
    def from_json(cls, values: dict[str, Any], where: str) -> dict[str, float]:
        """The fields a keys file's tenant entry (or the flags) set, from their LIMIT_NAMES units."""
        out: dict[str, float] = {}
        for name, value in values.items():
            if name not in LIMIT_NAMES:
                raise ValueError(f"{where}: unknown limit {name!r} (limits: {', '.join(LIMIT_NAMES)})")
            if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value < 1e15:
                raise ValueError(f"{where}: {name} must be a number >= 0, got {value!r:.40}")
            field_name, scale = LIMIT_NAMES[name]
            out[field_name] = value * scale if field_name == "retention_age_s" else int(value * scale)
        return out

    @staticmethod
    def to_json(values: dict[str, float]) -> dict[str, float]:
        """Fields set (by field name) in the keys file's units."""
        names = {field_name: (name, scale) for name, (field_name, scale) in LIMIT_NAMES.items()}
        return {names[k][0]: v / names[k][1] for k, v in values.items()}


# The names the keys file, `longwatch keys limits` and the serve flags use: name -> (field, its units).
LIMIT_NAMES: dict[str, tuple[str, float]] = {
    "max_streams": ("max_streams", 1),
    "max_live_streams": ("max_live_streams", 1),
    "max_concurrent_asks": ("max_concurrent_asks", 1),
    "max_stored_gb": ("max_stored_bytes", 1e9),
    "max_upload_gb": ("max_upload_bytes", 1e9),
    "retention_days": ("retention_age_s", 86400),
    "retention_gb": ("retention_bytes", 1e9),
}


@dataclass
class SecuritySettings:
    """Who may call, over what, and which server-side files they may name (docs/deploying.md).

    keys_file: API keys and tenants (stream/auth.py); None: one local tenant, everyone its admin.
    tls_cert, tls_key: PEM files; both set serve gRPC and HTTP over TLS only.
    tls_client_ca: PEM of the CA client certificates must chain to (mutual TLS); needs tls_cert.
    insecure: allow a non-loopback address with neither keys nor TLS.
    ingest_roots: folders IngestFile may read server-side paths from (symlinks and .. resolved
        first); none: no server-side path is read, files come by upload.
    """

    keys_file: Path | None = None
    tls_cert: Path | None = None
    tls_key: Path | None = None
    tls_client_ca: Path | None = None
    insecure: bool = False
    ingest_roots: tuple[Path, ...] = ()
    limits: TenantLimits = field(default_factory=TenantLimits)  # every tenant's, unless its own

    def __post_init__(self) -> None:
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ValueError("TLS needs both --tls-cert and --tls-key")
        if self.tls_client_ca is not None and self.tls_cert is None:
            raise ValueError("--tls-client-ca (mutual TLS) needs --tls-cert and --tls-key")

    @property
    def tls(self) -> bool:
        return self.tls_cert is not None


def is_loopback_host(host: str) -> bool:
    """Whether a bind address reaches this machine only ("localhost", 127.0.0.0/8, ::1)."""
    if host.strip("[]").lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def check_exposure(host: str, security: SecuritySettings) -> None:
    """Refuse to serve a non-loopback address to anyone at all, unless told to (--insecure)."""
    if is_loopback_host(host) or security.keys_file is not None or security.tls or security.insecure:
        return
    raise ValueError(
        f"refusing to listen on {host} with neither API keys (--keys-file) nor TLS (--tls-cert): "
        "anyone who reaches it could read and delete every stream; pass --insecure to do it anyway"
    )


@dataclass
class ServiceSettings:
    """Everything `longwatch serve` needs.

    redis_url: None starts an embedded redis-server with its data under state_dir.
    http_port: the HTTP server beside gRPC (WebRTC signalling, the browser page, its JSON API),
        on the same host; 0 binds any free port (LongWatchServer.http_port tells which).
    """

    host: str = "127.0.0.1"
    port: int = 50051
    http_port: int = 8080
    redis_url: str | None = None
    # A chunk commit returns only once this many replicas of its Redis master have it (WAIT, at
    # most commit_wait_ms; fewer: the ingest commits again). 0: as soon as the master has it.
    commit_replicas: int = 0
    commit_wait_ms: int = DEFAULT_COMMIT_WAIT_MS
    # Replicas on one Redis: each ingest holds its stream's lease for lease_ttl_s (renewed while it
    # runs). replica_id names this replica in leases; None: this machine and state folder.
    replica_id: str | None = None
    lease_ttl_s: float = 10.0
    # Archive ingests asked to (`ingest --ray`) make their chunks over Ray: "local" starts Ray on
    # this machine, else a cluster's address; ray_workers actors, each holding the model.
    ray_address: str | None = None
    ray_workers: int = 2
    state_dir: Path = field(default_factory=default_state_dir)
    # gRPC's threads. A streaming call (Watch, IngestFrames, an upload) holds one while it lasts;
    # model work waits for the model lock whatever the count, so idle threads cost little.
    workers: int = 32
    # Chunks of several streams that wait for the model together share one vision pass; with this,
    # their summary passes too, padded into one batch (equal to their own passes up to float
    # rounding, not bit for bit: stream/vision_batch.py).
    share_summary_passes: bool = False
    max_message_mb: int = 256
    top_k: int = 4
    # Of the top-k, leave out chunks scoring more than this below the best (0: keep all k). The
    # scale is the model's, so None takes its card's (`score_margin_for_model`).
    score_margin: float | None = None
    max_new_tokens: int = 32
    max_question_chars: int = 2000
    retention_interval_s: float = 60.0  # how often retention and the hot window sweep every stream
    # Chunks committed longer ago than this move from Redis to the cold tier (0: all stay in Redis);
    # the cold tier is a folder, cold_dir (None: <state_dir>/cold).
    hot_window_s: float = 0.0
    cold_dir: Path | None = None
    # The cold tier on an S3-compatible store instead of cold_dir: "s3://BUCKET/PREFIX", and the
    # store's endpoint (None: AWS's own). Needs boto3 (the s3 extra).
    cold_s3: str | None = None
    s3_endpoint: str | None = None
    # How new streams keep their K/V in Redis: "int8" (codes + per-token scales: about half of
    # bf16, a quarter of float32; answers unchanged in bench/kv_quant.py) or "float" (as computed,
    # what keep-raw mode needs to match the native model exactly). Each stream keeps its choice.
    kv_storage: str = SERVICE_KV_STORAGE
    ingest: IngestConfig = field(default_factory=IngestConfig)
    # Ingest fields set on purpose; the others follow the model's card (`ingest_for_model`).
    # Settings built in code keep what they were given; the command line marks only what was typed.
    ingest_explicit: frozenset[str] = frozenset(INGEST_FIELDS)
    live: LiveConfig = field(default_factory=LiveConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    security: SecuritySettings = field(default_factory=SecuritySettings)

    def __post_init__(self) -> None:
        if self.score_margin is not None and not self.score_margin >= 0:  # NaN too
            raise ValueError(f"score margin must be >= 0, got {self.score_margin}")
        if not 0 <= self.hot_window_s < 1e12:
            raise ValueError(f"the hot window must be >= 0 seconds, got {self.hot_window_s}")
        if not 0 < self.retention_interval_s < 1e9:
            raise ValueError(f"the retention interval must be > 0 seconds, got {self.retention_interval_s}")
        if not 1 <= self.ray_workers <= 1024:
            raise ValueError(f"--ray-workers must be 1-1024, got {self.ray_workers}")
        if not 0.5 <= self.lease_ttl_s <= 3600:
            raise ValueError(f"--lease-ttl must be 0.5-3600 seconds, got {self.lease_ttl_s}")
        if not 0 <= self.commit_replicas <= 16 or not 0 < self.commit_wait_ms <= 600_000:
            raise ValueError(
                f"--commit-replicas must be 0-16 and --commit-wait-ms 1-600000, got "
                f"{self.commit_replicas} and {self.commit_wait_ms}"
            )

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"


def _env(name: str, default: str | None = None) -> str | None:
    return os.environ.get(f"LONGWATCH_{name}", default)


class AppendAddresses(argparse.Action):
    """A repeatable address flag: the flags' addresses replace its variable's, never extend them."""

    def __call__(
        self,
        parser: argparse.ArgumentParser,
        namespace: argparse.Namespace,
        values: Any,
        option_string: str | None = None,
    ) -> None:
        earlier = getattr(namespace, self.dest)
        setattr(namespace, self.dest, [*(earlier if isinstance(earlier, list) else []), *values])


def add_service_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags of `longwatch serve` (and `demo`); each defaults to its LONGWATCH_* variable.

    Defaults stay strings where a type is set: argparse converts them like typed-in values, so a
    malformed variable gets the same one-line usage error as a malformed flag.
    """
    g = parser.add_argument_group("service")
    g.add_argument("--host", default=_env("HOST", "127.0.0.1"), help="address to bind (LONGWATCH_HOST)")
    g.add_argument("--port", type=int, default=_env("PORT", "50051"), help="gRPC port (LONGWATCH_PORT)")
    g.add_argument(
        "--http-port",
        type=int,
        default=_env("HTTP_PORT", "8080"),
        help="HTTP port for WebRTC signalling and the browser page (LONGWATCH_HTTP_PORT; 0 = any free)",
    )
    g.add_argument(
        "--webrtc-address",
        dest="webrtc_addresses",
        action=AppendAddresses,
        type=address_list,
        default=_env("WEBRTC_ADDRESSES") or None,
        metavar="ADDR",
        help="an address WebRTC may use, on both ends (repeatable; LONGWATCH_WEBRTC_ADDRESSES, "
        "comma-separated); default: all of the machine's addresses but loopback. "
        "127.0.0.1 keeps WebRTC on this machine",
    )
    g.add_argument(
        "--redis-url",
        default=_env("REDIS_URL", os.environ.get("REDIS_URL")),
        help="Redis to use (LONGWATCH_REDIS_URL or REDIS_URL), or any node of a Redis Cluster; "
        "unset starts an embedded redis-server",
    )
    g.add_argument(
        "--commit-replicas",
        type=int,
        default=int(_env("COMMIT_REPLICAS") or 0),
        metavar="N",
        help="acknowledge a chunk only once N replicas of its Redis master have it (Redis WAIT), so "
        "a failover loses no acknowledged chunk (LONGWATCH_COMMIT_REPLICAS; default 0: the master alone)",
    )
    g.add_argument(
        "--replica-id",
        default=_env("REPLICA_ID"),
        help="this replica's name in stream leases, when several serve one Redis (LONGWATCH_REPLICA_ID); "
        "default: this machine and state folder",
    )
    g.add_argument(
        "--lease-ttl",
        type=float,
        default=float(_env("LEASE_TTL") or 10.0),
        metavar="S",
        help="how long a stream's ingest lease outlives its replica: another replica may take a stream "
        "over this long after its replica died (LONGWATCH_LEASE_TTL)",
    )
    g.add_argument(
        "--ray",
        dest="ray_address",
        default=_env("RAY"),
        metavar="ADDRESS",
        help="make archive chunks over Ray when an ingest asks (`ingest --ray`): `local` starts Ray "
        "on this machine, else a running cluster's address (the ray extra; LONGWATCH_RAY)",
    )
    g.add_argument(
        "--ray-workers",
        type=int,
        default=int(_env("RAY_WORKERS") or 2),
        metavar="N",
        help="Ray actors, each holding the model (one GPU each where the cluster has them)",
    )
    g.add_argument(
        "--commit-wait-ms",
        type=int,
        default=int(_env("COMMIT_WAIT_MS") or DEFAULT_COMMIT_WAIT_MS),
        metavar="MS",
        help="how long a commit waits for those replicas before trying again (LONGWATCH_COMMIT_WAIT_MS)",
    )
    g.add_argument(
        "--state-dir",
        type=Path,
        default=Path(_env("STATE_DIR") or default_state_dir()),
        help="embedded Redis data and generated models (LONGWATCH_STATE_DIR)",
    )
    g.add_argument(
        "--top-k",
        type=int,
        default=_env("TOP_K", "4"),
        help="chunks retrieved per question (at most: --score-margin leaves out those far below the best)",
    )
    g.add_argument(
        "--score-margin",
        type=float,
        default=_env("SCORE_MARGIN"),
        help="leave out retrieved chunks scoring more than this below the best (LONGWATCH_SCORE_MARGIN; "
        "0: keep all top-k; default: the model card's, the demo model's 5)",
    )
    g.add_argument("--max-new-tokens", type=int, default=_env("MAX_NEW_TOKENS", "32"))
    g.add_argument(
        "--hot-window",
        type=float,
        default=_env("HOT_WINDOW", "0"),
        metavar="S",
        help="chunks older than this many seconds move from Redis to the cold tier on disk "
        "(LONGWATCH_HOT_WINDOW; 0, the default: all stay in Redis; 3600 keeps the last hour in Redis)",
    )
    g.add_argument(
        "--cold-dir",
        type=Path,
        default=_env("COLD_DIR"),
        help="the cold tier's folder (LONGWATCH_COLD_DIR; default <state-dir>/cold)",
    )
    g.add_argument(
        "--cold-s3",
        default=_env("COLD_S3"),
        metavar="s3://BUCKET/PREFIX",
        help="the cold tier on an S3-compatible store instead of a folder (LONGWATCH_COLD_S3; the s3 extra)",
    )
    g.add_argument(
        "--s3-endpoint",
        default=_env("S3_ENDPOINT"),
        metavar="URL",
        help="the S3-compatible store's endpoint, e.g. http://minio:9000 (LONGWATCH_S3_ENDPOINT; default AWS)",
    )
    g.add_argument(
        "--retention-interval",
        type=float,
        default=_env("RETENTION_INTERVAL", "60"),
        metavar="S",
        help="seconds between retention's passes over every stream (LONGWATCH_RETENTION_INTERVAL)",
    )
    g.add_argument(
        "--kv-storage",
        default=_env("KV_STORAGE", SERVICE_KV_STORAGE),
        choices=list(KV_STORAGE),
        help=f"how new streams keep K/V in Redis (LONGWATCH_KV_STORAGE; default {SERVICE_KV_STORAGE}; "
        "float keeps keep-raw mode exact)",
    )
    g = parser.add_argument_group("ingest")
    # Unset ingest settings come from the model's card (what it was trained for), then the defaults.
    g.add_argument("--fps", type=float, default=_env("FPS"), help="sampling rate (LONGWATCH_FPS; default 1)")
    g.add_argument("--frames-per-chunk", type=int, default=_env("FRAMES_PER_CHUNK"), help="default 8")
    g.add_argument(
        "--max-tokens-per-frame", type=int, default=_env("MAX_TOKENS_PER_FRAME"), help="default 16"
    )
    g.add_argument("--diff-threshold", type=float, default=_env("DIFF_THRESHOLD"), help="default 0.1")
    g.add_argument(
        "--thumbnails",
        default=_env("THUMBNAILS", "chunk"),
        metavar="off|chunk|N",
        help="pictures kept to show evidence: one per chunk (its most changed frame; the default), "
        "every Nth sampled frame, or off (LONGWATCH_THUMBNAILS)",
    )
    g.add_argument(
        "--thumbnail-side",
        type=int,
        default=_env("THUMBNAIL_SIDE", "240"),
        metavar="PX",
        help="the pictures' longest side (LONGWATCH_THUMBNAIL_SIDE; 64-1024, default 240)",
    )
    g.add_argument(
        "--live-queue",
        type=int,
        default=_env("LIVE_QUEUE", "32"),
        help="sampled frames a live stream may queue before it drops (LONGWATCH_LIVE_QUEUE)",
    )
    g = parser.add_argument_group("model")
    g.add_argument(
        "--model",
        type=Path,
        default=_env("MODEL"),
        help="local HF-format VideoLLaMA3 folder (LONGWATCH_MODEL); unset uses the built-in demo model (model/demo)",
    )
    g.add_argument("--adapter", type=Path, default=_env("ADAPTER"), help="summary-token adapter folder")
    g.add_argument("--device", default=_env("DEVICE", "cpu"), help="cpu, cuda or cuda:N (LONGWATCH_DEVICE)")
    g.add_argument("--dtype", default=_env("DTYPE", "float32"), choices=["float32", "bfloat16", "float16"])
    g.add_argument(
        "--attn",
        default=_env("ATTN", "auto"),
        choices=list(ATTENTION),
        help="attention kernel (LONGWATCH_ATTN); auto: flash_attention_2 on CUDA where flash-attn is "
        "installed, else sdpa",
    )
    g.add_argument(
        "--mode",
        default=_env("MODE", "auto"),
        choices=["auto", "summary", "raw"],
        help="summary: summary tokens (needs a trained adapter); raw: every token's K/V kept; auto "
        "(default): summary with an adapter, else raw with --raw-context chunk",
    )
    g.add_argument(
        "--raw-context",
        default=_env("RAW_CONTEXT"),
        choices=["stream", "chunk"],
        help="raw mode: each chunk computed after every earlier one (stream: exact, ingest grows with "
        "the square of the stream) or on its own (chunk); default stream, chunk under --mode auto",
    )
    g.add_argument("--alpha", type=int, default=_env("ALPHA", "16"), choices=[2, 4, 8, 16])
    g.add_argument(
        "--share-summary-passes",
        action="store_true",
        default=_env("SHARE_SUMMARY_PASSES", "") not in ("", "0"),
        help="chunks of several streams waiting together share one summary pass (padded batch; "
        "equal to their own passes up to float rounding); LONGWATCH_SHARE_SUMMARY_PASSES",
    )
    g = parser.add_argument_group("security (docs/deploying.md)")
    g.add_argument(
        "--keys-file",
        type=Path,
        default=_env("KEYS_FILE"),
        help="API keys and tenants (LONGWATCH_KEYS_FILE; `longwatch keys create` makes it); unset: no "
        "keys, one local tenant",
    )
    g.add_argument(
        "--tls-cert", type=Path, default=_env("TLS_CERT"), help="PEM certificate (chain) for gRPC and HTTP"
    )
    g.add_argument("--tls-key", type=Path, default=_env("TLS_KEY"), help="PEM private key of --tls-cert")
    g.add_argument(
        "--tls-client-ca",
        type=Path,
        default=_env("TLS_CLIENT_CA"),
        help="PEM CA that client certificates must chain to (mutual TLS)",
    )
    g.add_argument(
        "--insecure",
        action="store_true",
        default=_env("INSECURE", "") not in ("", "0"),
        help="allow a non-loopback --host with neither keys nor TLS",
    )
    g.add_argument(
        "--ingest-root",
        dest="ingest_roots",
        action="append",
        type=Path,
        default=None,
        metavar="DIR",
        help="a folder IngestFile may read server-side paths from (repeatable; LONGWATCH_INGEST_ROOTS, "
        f"{os.pathsep}-separated); none: files come by upload only",
    )
    g = parser.add_argument_group(
        "quotas and retention: every tenant's, unless the keys file sets its own (0: none)"
    )
    for name, what in (
        ("max_streams", "streams a tenant may hold"),
        ("max_live_streams", "live connections a tenant may have at once"),
        ("max_concurrent_asks", "Asks a tenant may have running at once"),
        ("max_stored_gb", "GB of chunks a tenant may keep"),
        ("max_upload_gb", "GB one upload may hold"),
        ("retention_days", "days a chunk is kept after its commit, unless its stream sets its own"),
        ("retention_gb", "GB a stream keeps, its oldest chunks dropped first, unless it sets its own"),
    ):
        env = name.upper()
        g.add_argument(
            f"--{name.replace('_', '-')}",
            dest=name,
            type=float,
            default=_env(env, "0"),
            metavar="N",
            help=f"{what} (LONGWATCH_{env})",
        )


def settings_from_args(args: argparse.Namespace) -> ServiceSettings:
    return ServiceSettings(
        host=args.host,
        port=args.port,
        http_port=args.http_port,
        redis_url=args.redis_url or None,
        commit_replicas=args.commit_replicas,
        commit_wait_ms=args.commit_wait_ms,
        replica_id=args.replica_id or None,
        lease_ttl_s=args.lease_ttl,
        ray_address=args.ray_address or None,
        ray_workers=args.ray_workers,
        share_summary_passes=args.share_summary_passes,
        state_dir=Path(args.state_dir),
        top_k=args.top_k,
        score_margin=args.score_margin,
        max_new_tokens=args.max_new_tokens,
        retention_interval_s=args.retention_interval,
        hot_window_s=args.hot_window,
        cold_dir=args.cold_dir,
        cold_s3=args.cold_s3 or None,
        s3_endpoint=args.s3_endpoint or None,
        kv_storage=args.kv_storage,
        ingest=IngestConfig(
            **{k: getattr(args, k) for k in INGEST_FIELDS if getattr(args, k) is not None},
            pictures=args.thumbnails,
            picture_side=args.thumbnail_side,
        ),
        ingest_explicit=frozenset(k for k in INGEST_FIELDS if getattr(args, k) is not None),
        live=LiveConfig(
            queue_frames=args.live_queue,
            ice_addresses=tuple(args.webrtc_addresses) if args.webrtc_addresses else None,
        ),
        security=SecuritySettings(
            keys_file=args.keys_file,
            tls_cert=args.tls_cert,
            tls_key=args.tls_key,
            tls_client_ca=args.tls_client_ca,
            insecure=args.insecure,
            ingest_roots=tuple(
                args.ingest_roots
                if args.ingest_roots is not None
                else [Path(p) for p in (_env("INGEST_ROOTS") or "").split(os.pathsep) if p]
            ),
            limits=TenantLimits(
                **TenantLimits.from_json({n: getattr(args, n) for n in LIMIT_NAMES}, "quotas")
            ),
        ),
        model=ModelConfig(
            path=args.model,
            adapter=args.adapter,
            device=args.device,
            dtype=args.dtype,
            mode=args.mode,
            raw_context=args.raw_context or ("chunk" if args.mode == "auto" else "stream"),
            attn_implementation=args.attn,
            alpha=args.alpha,
        ),
    )
