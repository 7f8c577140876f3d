"""A VideoLLaMA3 at the real 2B shapes, end to end on this CPU: convert, serve, ingest a real clip, ask.

No real weights can be downloaded here, so the release is DAMO's layout at VideoLLaMA3-2B's real
widths, heads, vocabulary and special-token ids, with random weights and one layer a side
(tests/damo_checkpoint.py). What is proved is the path, not the answers: `longwatch convert`
makes a folder that `longwatch serve --model` serves, in float32 and bfloat16, from a real clip
to an answer with its evidence over gRPC.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from damo_checkpoint import real_2b, write_damo_checkpoint
from footage import real_clip
from service_process import ServeProcess

from longwatch.clients import main
from longwatch.clients.client import LongWatchClient
from longwatch.model.config import ModelConfig
from longwatch.model.convert import convert
from longwatch.stream.server import LongWatchServer
from longwatch.stream.settings import LiveConfig, ServiceSettings

QUESTION = "What is happening on the road?"


@pytest.fixture(scope="module")
def native_2b(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("real-2b")
    src = write_damo_checkpoint(root / "VideoLLaMA3-2B", real_2b(), shard_bytes=400 * 1024**2)
    out = convert(src, root / "native").out
    for f in src.glob("model*.safetensors"):
        f.unlink()  # the source weights are not needed again: keep the disk footprint to one copy
    return out


@pytest.fixture(scope="module")
def served(native_2b: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, list[str]]]:
    """`longwatch serve --model OUT`, as a user starts it; yields its address and first lines."""
    with ServeProcess(tmp_path_factory.mktemp("serve-state"), "--model", str(native_2b)) as serve:
        note = serve.wait_for(r"^model .*", 10)
        yield serve.target, [note.group(0)]


def test_a_converted_2b_release_serves_a_real_clip_end_to_end(
    served: tuple[str, list[str]], capsys: pytest.CaptureFixture[str]
) -> None:
    target, lines = served
    note = lines[-1]
    # Without an adapter the server says it serves keep-raw, each chunk on its own.
    assert (
        note.startswith("model VideoLLaMA3-2B (cpu, float32, sdpa): keep-raw")
        and "no summary-token adapter" in note
    )
    clip = real_clip("bikes.mp4")  # 640x272, 10 s
    assert main.main(["--server", target, "ingest", str(clip), "--stream", "bikes", "--fps", "2"]) == 0
    assert "bikes: ready" in capsys.readouterr().out
    assert main.main(["--server", target, "ask", "bikes", QUESTION, "--json", "--max-new-tokens", "6"]) == 0
    answer = json.loads(capsys.readouterr().out)
    assert isinstance(answer["answer"], str) and 0 <= answer["tokens_generated"] <= 6
    assert answer["model"].startswith("VideoLLaMA3-2B@") and answer["model"].endswith("-rawc")
    assert 1 <= len(answer["evidence"]) <= 4
    for e in answer["evidence"]:
        assert 0.0 <= e["start_s"] < e["end_s"] <= 10.5
    with LongWatchClient(target, timeout=60) as client:
        stream = client.get_stream("bikes")
    # 20 frames at 2 fps, 8 a chunk; the 2B's own frame budget: 640x272 becomes 476x196, 119 tokens.
    assert (stream.frames_sampled, stream.chunks) == (20, 3)
    assert stream.tokens_seen == 20 * 119 and 0 < stream.tokens_kept <= stream.tokens_seen
    assert stream.kv_storage == "int8" and stream.bytes_stored > 0


def test_the_same_checkpoint_serves_in_bfloat16(native_2b: Path, tmp_path: Path, redis_url: str) -> None:
    settings = ServiceSettings(
        port=0,
        http_port=0,
        redis_url=redis_url,
        state_dir=tmp_path,
        max_new_tokens=4,
        live=LiveConfig(ice_addresses=("127.0.0.1",)),
        model=ModelConfig(path=native_2b, dtype="bfloat16", mode="auto", raw_context="chunk"),
        ingest_explicit=frozenset(),  # the checkpoint's own frame budget, at the default 1 fps
    )
    with (
        LongWatchServer(settings) as server,
        LongWatchClient(f"127.0.0.1:{server.port}", timeout=120) as client,
    ):
        assert "bfloat16" in server.note
        for _ in client.ingest_file("bikes", path=str(real_clip("bikes.mp4"))):
            pass
        result = client.ask("bikes", QUESTION)
        assert result.evidence and all(e.end_s <= 10.5 for e in result.evidence)
        assert client.get_stream("bikes").chunks == 2  # 10 frames at 1 fps


@pytest.mark.parametrize(
    "precision", [[], ["--dtype", "bfloat16", "--checkpointing"]], ids=["float32", "bf16"]
)
def test_summary_tokens_train_on_the_2b_and_serve(
    native_2b: Path, tmp_path: Path, redis_url: str, precision: list[str]
) -> None:
    """A few steps at the real shapes (the 2B's own frame budget, its vocabulary), then summary mode."""
    clip = real_clip("bikes.mp4")
    data = tmp_path / "train.jsonl"
    example = {
        "video": str(clip),
        "question": QUESTION,
        "answer": "A cyclist rides.",
        "start_s": 2,
        "end_s": 5,
    }
    data.write_text(json.dumps(example) + "\n")
    out = tmp_path / "run"
    args = ["train", "--stage", "summary", "--base", str(native_2b), "--out", str(out), "--data", str(data)]
    assert main.main([*args, "--steps", "2", "--checkpoint-every", "2", *precision]) == 0
    adapter = json.loads((out / "adapter" / "adapter_config.json").read_text())
    assert adapter["vs_token_id"] == 151668 and adapter["added_tokens"] == ["<vs>"]
    assert adapter["embedding_rows"] == 151936 and adapter["steps"] == 2
    log = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
    assert len(log) == 2 and all(set(m["parts"]) == {"lm", "distill"} for m in log)
    settings = ServiceSettings(
        port=0,
        http_port=0,
        redis_url=redis_url,
        state_dir=tmp_path / "state",
        max_new_tokens=4,
        live=LiveConfig(ice_addresses=("127.0.0.1",)),
        model=ModelConfig(path=native_2b, adapter=out / "adapter", mode="auto"),
        ingest_explicit=frozenset(),
    )
    with (
        LongWatchServer(settings) as server,
        LongWatchClient(f"127.0.0.1:{server.port}", timeout=120) as client,
    ):
        assert "summary tokens, alpha 16" in server.note
        for _ in client.ingest_file("bikes", path=str(clip)):
            pass
        result = client.ask("bikes", QUESTION)
        assert result.model.endswith("-vs16") and result.evidence
