"""`longwatch serve` as a user runs it: a process that stops cleanly on SIGTERM and SIGINT and reaps its redis-server."""

from __future__ import annotations

import signal
from pathlib import Path

import pytest
from service_process import ServeProcess, alive

from longwatch.clients.client import LongWatchClient


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_serve_stops_on_signal_and_reaps_redis(tmp_path: Path, sig: signal.Signals) -> None:
    serve = ServeProcess(tmp_path)
    try:
        serve.start(timeout=60)
        serve.wait_for(
            r"browser page and WebRTC on http://127\.0\.0\.1:\d+/ \(WebRTC on 127\.0\.0\.1 only\)", 10
        )
        with LongWatchClient(serve.target, timeout=10) as client:
            client.wait_ready(timeout=10)
            assert client.list_streams() == []
        assert serve.redis_pid is not None and alive(serve.redis_pid)
        serve.kill(sig)
        assert serve.wait(timeout=30) == 0
    finally:
        serve.stop()
    assert not alive(serve.redis_pid)
    assert "Traceback" not in serve.output and serve.output.count("longwatch stopped: every call ended") == 1
    # Persistence was on: the data folder holds the append-only file.
    assert any((tmp_path / "redis").rglob("*.aof")) or any((tmp_path / "redis").rglob("appendonly*"))
