"""`longwatch serve` as a user runs it: a process of its own, read line by line, killable any way."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

UNSET = ("REDIS_URL", "LONGWATCH_REDIS_URL", "LONGWATCH_MODE", "LONGWATCH_MODEL", "LONGWATCH_CRASH_AT")


class ServeProcess:
    """A `longwatch serve` child on loopback with its own state folder; its output kept line by line.

    start() waits until it listens; `port`, `http_port` and `redis_pid` (the embedded one's) are
    read from its output. Always stopped on exit: SIGTERM, then SIGKILL after a grace.
    """

    def __init__(self, state_dir: Path, *args: str, env: dict[str, str] | None = None) -> None:
        self.state_dir = state_dir
        self.args = args
        self.env = {
            k: v for k, v in {**os.environ, **(env or {})}.items() if k not in UNSET or k in (env or {})
        }
        self.env |= {"LONGWATCH_STATE_DIR": str(state_dir), "PYTHONUNBUFFERED": "1"}
        self.proc: subprocess.Popen[str] | None = None
        self.lines: list[str] = []
        self._new_line = threading.Condition()
        self.port = self.http_port = 0
        self.redis_pid: int | None = None
        self._reader: threading.Thread | None = None

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self, timeout: float = 120.0, port: int = 0) -> ServeProcess:
        command = [sys.executable, "-m", "longwatch.clients.main", "serve", "--port", str(port)]
        command += ["--http-port", "0", "--webrtc-address", "127.0.0.1", *self.args]
        self.proc = subprocess.Popen(
            command, env=self.env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        )
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        self.port = int(self.wait_for(r"listening on 127\.0\.0\.1:(\d+)", timeout).group(1))
        self.http_port = int(self.wait_for(r"WebRTC on http://127\.0\.0\.1:(\d+)/", 10).group(1))
        if m := self.find(r"embedded redis-server pid (\d+)"):
            self.redis_pid = int(m.group(1))
        return self

    def _read(self) -> None:
        assert self.proc is not None and self.proc.stdout is not None
        for line in self.proc.stdout:
            with self._new_line:
                self.lines.append(line.rstrip("\n"))
                self._new_line.notify_all()
        with self._new_line:
            self._new_line.notify_all()

    def find(self, pattern: str) -> re.Match | None:
        with self._new_line:
            return next((m for line in self.lines if (m := re.search(pattern, line))), None)

    def wait_for(self, pattern: str, timeout: float) -> re.Match:
        deadline = time.monotonic() + timeout
        with self._new_line:
            while True:
                if m := next((m for line in self.lines if (m := re.search(pattern, line))), None):
                    return m
                left = deadline - time.monotonic()
                if left <= 0 or not self._reader.is_alive():
                    raise AssertionError(f"no line matching {pattern!r}; output:\n" + "\n".join(self.lines))
                self._new_line.wait(min(left, 0.5))

    @property
    def output(self) -> str:
        with self._new_line:
            return "\n".join(self.lines)

    def kill(self, sig: int = signal.SIGKILL) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)

    def wait(self, timeout: float = 60.0) -> int:
        assert self.proc is not None
        code = self.proc.wait(timeout)
        time.sleep(0.05)  # the reader thread takes the last lines
        return code

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.terminate()
        try:
            self.proc.wait(60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()

    def __enter__(self) -> ServeProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def alive(pid: int) -> bool:
    """Whether a process runs (a reaped child can linger as a zombie of PID 1 in containers)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except FileNotFoundError:
        return False
    return "zombie" not in status


def gone(pid: int, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while alive(pid):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True
