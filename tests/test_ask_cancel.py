"""An answer stops when its caller does, and never holds the model while its text travels.

A tiny random model (model/tiny.py) rarely says its end token, so its answers run to max_new_tokens:
long enough to stop one half way and to see another answer go past it.
"""

from __future__ import annotations

import logging
import re
import threading
import time
from collections.abc import Iterator

import grpc
import pytest

from longwatch.clients.client import LongWatchClient
from longwatch.model.config import ModelConfig
from longwatch.model.tiny import build_tiny_model
from longwatch.model.train.synthetic import write_video
from longwatch.proto import longwatch_pb2 as pb
from longwatch.proto import longwatch_pb2_grpc as pb_grpc
from longwatch.stream.server import LongWatchServer
from longwatch.stream.settings import IngestConfig, LiveConfig, ServiceSettings

LONG = 400  # tokens: a few seconds of the tiny model on two cores
QUESTION = "What happens in the video?"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LongWatchServer]:
    folder = tmp_path_factory.mktemp("ask-cancel")
    video = write_video(folder / "v.mp4", seconds=16, fps=10, width=160, height=90, seed=2)
    settings = ServiceSettings(
        port=0,
        http_port=0,
        state_dir=folder / "state",
        model=ModelConfig(path=build_tiny_model(folder / "tiny", seed=0)),
        workers=4,
        ingest=IngestConfig(fps=1.0, frames_per_chunk=8, max_tokens_per_frame=16),
        live=LiveConfig(ice_addresses=("127.0.0.1",)),
    )
    with LongWatchServer(settings) as srv:
        with LongWatchClient(f"127.0.0.1:{srv.port}", timeout=120) as c:
            list(c.ingest_file("v", path=str(video)))
        yield srv


@pytest.fixture(scope="module")
def stub(server: LongWatchServer) -> Iterator[pb_grpc.LongWatchStub]:
    with grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        yield pb_grpc.LongWatchStub(channel)


@pytest.fixture(scope="module")
def full_answer(stub: pb_grpc.LongWatchStub) -> tuple[int, float]:
    """(tokens, seconds) of an answer left to run to its end."""
    t0 = time.perf_counter()
    response = stub.Ask(pb.AskRequest(stream_id="v", question=QUESTION, max_new_tokens=LONG), timeout=120)
    seconds = time.perf_counter() - t0
    assert response.tokens_generated > LONG // 2, "the tiny model ended its answer early: pick another seed"
    return response.tokens_generated, seconds


def stopped_after(caplog: pytest.LogCaptureFixture, call: str, why: str = "", timeout: float = 10.0) -> int:
    """Tokens in the service's log line saying an answer stopped (waits for it to appear)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for record in caplog.records:
            if m := re.search(rf"{call} stopped after (\d+) tokens: .*{why}", record.getMessage()):
                return int(m.group(1))
        time.sleep(0.05)
    raise AssertionError(f"no log line for {call} {why}: {[r.getMessage() for r in caplog.records]}")


def test_a_cancelled_ask_stream_stops_at_once(
    stub: pb_grpc.LongWatchStub, full_answer: tuple[int, float], caplog: pytest.LogCaptureFixture
) -> None:
    tokens, _ = full_answer
    caplog.set_level(logging.INFO, logger="longwatch.stream.service")
    call = stub.AskStream(pb.AskRequest(stream_id="v", question=QUESTION, max_new_tokens=LONG), timeout=120)
    received = 0
    for message in call:
        received += len(message.delta)
        if received >= 10:
            break
    call.cancel()
    n = stopped_after(caplog, "AskStream on 'v'")
    assert n < tokens // 2  # it did not run on to the end


def test_an_ask_past_its_deadline_stops(
    stub: pb_grpc.LongWatchStub, full_answer: tuple[int, float], caplog: pytest.LogCaptureFixture
) -> None:
    tokens, seconds = full_answer
    caplog.set_level(logging.INFO, logger="longwatch.stream.service")
    request = pb.AskRequest(stream_id="v", question=QUESTION, max_new_tokens=LONG)
    with pytest.raises(grpc.RpcError) as e:
        stub.Ask(request, timeout=seconds / 4)
    assert e.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    n = stopped_after(caplog, "Ask on 'v'", "deadline")
    assert n < tokens  # stopped, not finished


def test_an_answer_nobody_reads_does_not_hold_the_model(
    stub: pb_grpc.LongWatchStub, full_answer: tuple[int, float]
) -> None:
    """A reader that stops reading (a slow network) must not keep others from the model."""
    _, seconds = full_answer
    slow = stub.AskStream(pb.AskRequest(stream_id="v", question=QUESTION, max_new_tokens=LONG), timeout=120)
    next(slow)  # its answer has started; nothing more is read for now
    t0 = time.perf_counter()
    quick = stub.Ask(pb.AskRequest(stream_id="v", question=QUESTION, max_new_tokens=2), timeout=120)
    waited = time.perf_counter() - t0
    rest = threading.Thread(target=lambda: list(slow), daemon=True)
    rest.start()
    rest.join(120)
    assert quick.tokens_generated == 2
    # Interleaved step by step with the long answer, not queued behind all of it.
    assert waited < seconds / 2, (waited, seconds)
