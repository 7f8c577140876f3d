"""Archive ingest over a Ray cluster: `serve --ray ADDRESS` and `longwatch ingest PATH --ray`.

The server keeps a pool of Ray actors, each holding the server's model (one GPU each where the
cluster has GPUs), made at the first such ingest and kept for the next. An archive is split by
chunk index into segments (stream/segments.py), spread over the actors; the server commits their
chunks in order under the stream's lease, exactly as one ingest would, and reports progress as
it goes. Only plain data crosses Ray: paths and settings as dicts one way, one safetensors blob
per segment the other (parsed and checked by the server, never unpickled as objects of ours).

`--ray local` starts a Ray instance on this machine, its node bound to 127.0.0.1; any other value
is the address of a running cluster (`ray start --head` on one node, `ray start --address` on
the others), whose nodes must have longwatch and the model installed at the same paths and see
the archive at the same path (shared storage).
"""

from __future__ import annotations

import dataclasses
import logging
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from longwatch.model.config import ModelConfig
from longwatch.stream.errors import NotReady
from longwatch.stream.segments import SegmentResult
from longwatch.stream.settings import IngestConfig

log = logging.getLogger(__name__)

WAIT_POLL_S = 0.5  # how often a wait on a segment looks at the caller's cancellation


class SegmentWorker:
    """One Ray actor: a model, and ingest_segment over it."""

    def __init__(self, model: dict[str, Any], state_dir: str, threads: int) -> None:
        import torch

        from longwatch.model.compressor import SummaryCompressor
        from longwatch.model.loading import load_model
        from longwatch.stream.pipeline import ModelRunner

        torch.set_num_threads(max(1, threads))
        lm = load_model(ModelConfig(**model), state_dir=Path(state_dir))
        self.runner = ModelRunner(lm=lm, compressor=SummaryCompressor(lm))

    def fingerprint(self) -> str:
        return self.runner.lm.fingerprint

    def segment(
        self, path: str, stream_id: str, config: dict[str, Any], first_chunk: int, n_chunks: int
    ) -> bytes:
        """The segment's result as one safetensors blob (SegmentResult.to_bytes)."""
        from longwatch.stream.segments import ingest_segment

        segment = ingest_segment(path, stream_id, IngestConfig(**config), self.runner, first_chunk, n_chunks)
        return segment.to_bytes()


class RayPool:
    """The server's Ray actors. `run` hands out segments; `wait` gets a segment's result."""

    def __init__(
        self, address: str, workers: int, model: ModelConfig, fingerprint: str, state_dir: Path
    ) -> None:
        try:
            import ray
        except ImportError:
            raise ValueError("--ray needs Ray: pip install 'longwatch[ray]'") from None
        if workers < 1:
            raise ValueError(f"--ray-workers must be >= 1, got {workers}")
        self._ray = ray
        self.address = address
        self.workers = workers
        self._model = dataclasses.asdict(model)
        self._fingerprint = fingerprint
        self._state_dir = str(state_dir)
        self._actors: list[Any] = []
        self._lock = threading.Lock()
        local = address == "local"
        ray.init(
            address=None if local else address,
            include_dashboard=False,
            log_to_driver=False,
            configure_logging=False,
            ignore_reinit_error=True,
            **({"_node_ip_address": "127.0.0.1"} if local else {}),
        )
        log.info(
            "ray: %s (%s), %d workers",
            "a local instance" if local else address,
            ray.cluster_resources(),
            workers,
        )

    def actors(self) -> list[Any]:
        """The actors, made on first use; each must hold the server's very model."""
        with self._lock:
            if not self._actors:
                ray = self._ray
                resources = ray.cluster_resources()
                gpus = 1 if resources.get("GPU", 0) >= self.workers else 0
                cpus = max(1, int(resources.get("CPU", 1)) // self.workers)
                model = dict(self._model, device="cuda" if gpus else self._model["device"])
                remote = ray.remote(num_gpus=gpus, num_cpus=cpus)(SegmentWorker)
                # The server's own thread count, not the CPUs a worker was given: a CPU matmul's
                # sums depend on how many threads split them, and the chunks must be the very
                # ones a one-process ingest makes.
                threads = torch.get_num_threads()
                actors = [remote.remote(model, self._state_dir, threads) for _ in range(self.workers)]
                prints = ray.get([a.fingerprint.remote() for a in actors])
                if any(p != self._fingerprint for p in prints):
                    for a in actors:
                        ray.kill(a)
                    raise NotReady(
                        f"the Ray workers loaded another model ({prints[0]}) than this server's "
                        f"({self._fingerprint}): install the same model at the same path on every node"
                    )
                self._actors = actors
            return list(self._actors)

    def run(
        self, path: str, stream_id: str, config: IngestConfig, segments: list[tuple[int, int]]
    ) -> list[Any]:
        """Start every segment (round robin over the actors); their results' references, in order."""
        actors = self.actors()
        settings = dataclasses.asdict(config)
        return [
            actors[n % len(actors)].segment.remote(path, stream_id, settings, first, count)
            for n, (first, count) in enumerate(segments)
        ]

    def wait(self, ref: Any, is_cancelled: Callable[[], bool]) -> SegmentResult | None:
        """The segment's result; None if the caller gave up first."""
        while True:
            ready, _ = self._ray.wait([ref], timeout=WAIT_POLL_S)
            if ready:
                return SegmentResult.from_bytes(self._ray.get(ready[0]))
            if is_cancelled():
                return None

    def cancel(self, refs: list[Any]) -> None:
        """Drop segments not needed any more (queued ones never start; a running one may finish)."""
        for ref in refs:
            try:
                self._ray.cancel(ref)
            except Exception as e:  # noqa: BLE001 - Ray's own errors: nothing to undo
                log.debug("ray: a segment was not cancelled: %s", e)

    def shutdown(self) -> None:
        for actor in self._actors:
            self._ray.kill(actor)
        self._actors = []
        self._ray.shutdown()
