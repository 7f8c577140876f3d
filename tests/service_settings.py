"""Settings for the tests that run LongWatchServer in process: loopback only, any free ports, the
demo model at 1 fps in chunks of 8 frames, WebRTC on 127.0.0.1; a test changes what it is about."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from longwatch.stream.settings import IngestConfig, LiveConfig, ServiceSettings


def loopback_settings(state_dir: Path, redis_url: str | None, **changes: Any) -> ServiceSettings:
    values: dict[str, Any] = {
        "port": 0,
        "http_port": 0,
        "redis_url": redis_url,
        "state_dir": state_dir,
        "workers": 4,
        "ingest": IngestConfig(fps=1.0, frames_per_chunk=8, max_tokens_per_frame=16),
        "live": LiveConfig(ice_addresses=("127.0.0.1",)),
    }
    return ServiceSettings(**(values | changes))
