"""`longwatch serve` as a user runs it: a process that stops cleanly on SIGTERM and SIGINT and reaps its redis-server."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from longwatch.clients.client import LongWatchClient


def _alive(pid: int) -> bool:
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except FileNotFoundError:
        return False
    return "zombie" not in status  # a reaped child can linger as a zombie of PID 1 in containers


def _wait_for_line(proc: subprocess.Popen, pattern: str, timeout: float) -> re.Match:
    deadline = time.monotonic() + timeout
    seen = []
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            if proc.poll() is not None:
                break
            continue
        seen.append(line)
        if m := re.search(pattern, line):
            return m
    raise AssertionError(f"no line matching {pattern!r}; output:\n{''.join(seen)}")


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_serve_stops_on_signal_and_reaps_redis(tmp_path: Path, sig: signal.Signals) -> None:
    env = {**os.environ, "LONGWATCH_STATE_DIR": str(tmp_path), "PYTHONUNBUFFERED": "1"}
    env.pop("REDIS_URL", None)
    env.pop("LONGWATCH_REDIS_URL", None)
    proc = subprocess.Popen(
        [sys.executable, "-m", "longwatch.clients.main", "serve", "--port", "0", "--http-port", "0"]
        + ["--webrtc-address", "127.0.0.1"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        redis_pid = int(_wait_for_line(proc, r"embedded redis-server pid (\d+)", 60).group(1))
        port = int(_wait_for_line(proc, r"listening on 127\.0\.0\.1:(\d+)", 60).group(1))
        _wait_for_line(
            proc, r"browser page and WebRTC on http://127\.0\.0\.1:\d+/ \(WebRTC on 127\.0\.0\.1 only\)", 10
        )
        with LongWatchClient(f"127.0.0.1:{port}", timeout=10) as client:
            client.wait_ready(timeout=10)
            assert client.list_streams() == []
        assert _alive(redis_pid)
        proc.send_signal(sig)
        assert proc.wait(timeout=30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert not _alive(redis_pid)
    # Persistence was on: the data folder holds the append-only file.
    assert any((tmp_path / "redis").rglob("*.aof")) or any((tmp_path / "redis").rglob("appendonly*"))
