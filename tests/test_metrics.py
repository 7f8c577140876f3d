"""GET /metrics as Prometheus scrapes it: what the service did and holds, per tenant, and who may
read it (the server's own tenant only, once there are keys). Real server, real HTTP on loopback."""

from __future__ import annotations

import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families
from service_settings import loopback_settings

from longwatch.clients.client import LiveFrame, LongWatchClient
from longwatch.memory.redis_server import EmbeddedRedis
from longwatch.model.train.synthetic import SyntheticFootage, write_video
from longwatch.stream.auth import Role, create_key
from longwatch.stream.server import LongWatchServer
from longwatch.stream.settings import SecuritySettings

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str | Path]:
    path = tmp_path_factory.mktemp("keys") / "keys.json"
    return {
        "file": path,
        "operator": create_key(path, "local", Role.READER, "prometheus")[1],
        "acme": create_key(path, "acme", Role.ADMIN)[1],
    }


@pytest.fixture(scope="module")
def server(
    tmp_path_factory: pytest.TempPathFactory, module_redis: EmbeddedRedis, keys: dict[str, str | Path]
) -> Iterator[LongWatchServer]:
    settings = loopback_settings(
        tmp_path_factory.mktemp("state"),
        module_redis.url,
        security=SecuritySettings(keys_file=Path(keys["file"])),
    )
    with LongWatchServer(settings) as srv:
        yield srv


def scrape(server: LongWatchServer, key: str | None) -> tuple[int, str]:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    request = urllib.request.Request(f"http://127.0.0.1:{server.http_port}/metrics", headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            assert response.headers["Content-Type"].startswith("text/plain; version=")
            return response.status, response.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def samples(text: str) -> Samples:
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def value(values: Samples, name: str, **labels: str) -> float:
    return values.get((name, tuple(sorted(labels.items()))), 0.0)


def test_metrics_count_what_happened_and_show_what_is_held_per_tenant(
    server: LongWatchServer, keys: dict[str, str | Path], tmp_path: Path
) -> None:
    video = write_video(tmp_path / "yard.mp4", seconds=20, fps=4, width=160, height=120, seed=1)
    status, text = scrape(server, str(keys["operator"]))
    assert status == 200
    before = samples(text)
    footage = SyntheticFootage(seed=3, width=64, height=64, fps=1.0)
    with LongWatchClient(f"127.0.0.1:{server.port}", timeout=60, api_key=str(keys["acme"])) as c:
        final = list(c.ingest_file("yard", path=video))[-1].stream
        live = list(
            c.ingest_frames("porch", [LiveFrame(float(i), rgb=footage.frame_at(i)) for i in range(10)])
        )
        c.ask("yard", "What appeared?")
        list(c.ask_stream("yard", "What appeared?"))
        porch = c.get_stream("porch")
    after = samples(scrape(server, str(keys["operator"]))[1])

    def grew(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    assert (
        grew("longwatch_frames_sampled_total", tenant="acme", source="archive") == final.frames_sampled == 20
    )
    assert grew("longwatch_frames_sampled_total", tenant="acme", source="live") == porch.frames_sampled == 10
    assert grew("longwatch_chunks_committed_total", tenant="acme", source="archive") == final.chunks == 3
    assert grew("longwatch_chunks_committed_total", tenant="acme", source="live") == porch.chunks == 2
    assert grew("longwatch_bytes_committed_total", tenant="acme") == final.bytes_stored + porch.bytes_stored
    assert grew("longwatch_chunk_commit_seconds_count") == 5
    assert grew("longwatch_asks_total", tenant="acme") == 2
    assert grew("longwatch_ask_first_token_seconds_count") == grew("longwatch_ask_seconds_count") == 2
    assert value(after, "longwatch_streams", tenant="acme", state="ready") == 2
    assert value(after, "longwatch_stored_bytes", tenant="acme", tier="redis") == (
        final.bytes_stored + porch.bytes_stored
    )
    assert value(after, "longwatch_store_up") == 1
    assert not any(
        labels and dict(labels).get("tenant") == "acme" and "porch" in str(labels) for _, labels in after
    )
    assert live[-1].done


def test_metrics_are_for_the_servers_own_tenant_only(
    server: LongWatchServer, keys: dict[str, str | Path]
) -> None:
    assert scrape(server, None)[0] == 401
    status, body = scrape(server, str(keys["acme"]))  # an admin, but of one tenant among others
    assert status == 403 and "takes keys of the 'local' tenant" in body
    assert scrape(server, str(keys["operator"]))[0] == 200


def test_two_servers_in_one_process_both_serve_metrics(server: LongWatchServer, tmp_path: Path) -> None:
    """The holdings are gathered once per process, over every server in it (tests run several)."""
    with LongWatchServer(loopback_settings(tmp_path, server.redis_url)) as other:
        assert scrape(other, None)[0] == 200  # no keys on this one: open, on loopback
        assert scrape(server, None)[0] == 401  # the first still wants a key
    assert scrape(server, None)[0] == 401
