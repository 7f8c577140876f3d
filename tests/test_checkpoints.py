"""Loading any native VideoLLaMA3 folder: tokens longwatch adds, refused weights, identity, video settings."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch
from damo_checkpoint import damo_config, damo_state_dict, small, write_damo_checkpoint
from safetensors.torch import load_file, save_file

from longwatch.model.checkpoint import checkpoint_fingerprint, video_settings
from longwatch.model.compressor import SummaryCompressor
from longwatch.model.config import ModelConfig
from longwatch.model.convert import convert
from longwatch.model.loading import VS_TOKEN, ModelLoadError, attention_for, load_model
from longwatch.model.vision import chunk_frames


@pytest.fixture(scope="module")
def native(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A DAMO-layout release at narrow widths (real vocabulary and ids), converted."""
    root = tmp_path_factory.mktemp("ckpt")
    return convert(write_damo_checkpoint(root / "VideoLLaMA3-2B", small()), root / "native").out


def test_a_released_checkpoint_gets_its_summary_token_and_serves_keep_raw_without_an_adapter(
    native: Path, tmp_path: Path
) -> None:
    lm = load_model(ModelConfig(path=native, mode="auto"), state_dir=tmp_path)
    assert lm.added_tokens == [VS_TOKEN] and lm.vs_token_id == 151668  # the next id after DAMO's tokens
    assert lm.language_model.get_input_embeddings().weight.shape[0] == 151936  # a spare row: no resize
    assert (lm.config.mode, lm.config.raw_context) == ("raw", "chunk")
    assert lm.config.attn_implementation == "sdpa"
    assert lm.name == "VideoLLaMA3-2B" and lm.fingerprint.endswith("-rawc")
    # The frame budget its video processor implies: 16384 tokens of 28x28 px over 128 frames.
    assert lm.card["ingest"] == {"max_tokens_per_frame": 128} == video_settings(native)
    summary = load_model(ModelConfig(path=native, mode="summary"), state_dir=tmp_path)
    assert summary.fingerprint != lm.fingerprint and summary.base_fingerprint == lm.base_fingerprint


def test_rows_are_added_when_the_embeddings_have_none_spare(tmp_path: Path) -> None:
    widths = small()
    sd, config = damo_state_dict(widths), damo_config(widths)
    sd["model.embed_tokens.weight"] = sd["model.embed_tokens.weight"][:151668]  # as many rows as tokens
    config["vocab_size"] = 151668
    src = write_damo_checkpoint(tmp_path / "src", widths, state_dict=sd, config=config)
    lm = load_model(ModelConfig(path=convert(src, tmp_path / "native").out))
    embeddings = lm.language_model.get_input_embeddings().weight
    assert embeddings.shape[0] == 151669 and lm.vs_token_id == 151668
    assert lm.model.lm_head.weight.shape[0] == 151669  # tied: the head grew with it


def test_weights_that_do_not_fit_are_refused_in_one_line(native: Path, tmp_path: Path) -> None:
    broken = tmp_path / "broken"
    broken.mkdir()
    for f in native.iterdir():
        (broken / f.name).write_bytes(f.read_bytes())
    shard = next(broken.glob("model-*.safetensors"))
    tensors = load_file(str(shard))
    tensors.pop("model.language_model.norm.weight")
    tensors["model.vision_model.head.weight"] = torch.zeros(2)
    save_file(tensors, str(shard), metadata={"format": "pt"})
    index = json.loads((broken / "model.safetensors.index.json").read_text())
    index["weight_map"].pop("model.language_model.norm.weight")
    index["weight_map"]["model.vision_model.head.weight"] = shard.name
    (broken / "model.safetensors.index.json").write_text(json.dumps(index))
    with pytest.raises(ModelLoadError) as info:
        load_model(ModelConfig(path=broken))
    message = str(info.value)
    assert "\n" not in message
    assert "missing 1: model.language_model.norm.weight" in message
    assert "unexpected 1: model.vision_model.head.weight" in message


def test_a_damo_release_is_refused_with_the_way_out(tmp_path: Path) -> None:
    src = write_damo_checkpoint(tmp_path / "src", small())
    with pytest.raises(ModelLoadError, match="longwatch convert"):
        load_model(ModelConfig(path=src))


def test_the_fingerprint_follows_every_byte_and_is_cached_by_size_and_mtime(
    native: Path, tmp_path: Path
) -> None:
    folder = tmp_path / "copy"
    folder.mkdir()
    for f in native.iterdir():
        (folder / f.name).write_bytes(f.read_bytes())
    cache = tmp_path / "fingerprints.json"
    before = checkpoint_fingerprint(folder, cache)
    shard = sorted(folder.glob("model-*.safetensors"))[-1]
    assert len(json.loads(cache.read_text())) >= 3  # config, tokenizer files, shards
    data = bytearray(shard.read_bytes())
    stat = shard.stat()
    data[-1] ^= 0xFF  # a byte far past the header and the first MiB
    shard.write_bytes(bytes(data))
    os.utime(shard, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    # Same size, same mtime: the cached hash stands (this is what keeps a restart fast) ...
    assert checkpoint_fingerprint(folder, cache) == before
    # ... and without the cache, or once the file is touched, the change shows.
    assert checkpoint_fingerprint(folder) != before
    os.utime(shard, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000))
    assert checkpoint_fingerprint(folder, cache) != before


def test_attention_kernels() -> None:
    assert attention_for("auto", "cpu") == "sdpa"
    assert attention_for("eager", "cpu") == "eager"
    with pytest.raises(ModelLoadError, match="CUDA only"):
        attention_for("flash_attention_2", "cpu")
    with pytest.raises(ModelLoadError, match="attention must be one of"):
        attention_for("flex", "cpu")


def test_keep_raw_with_chunk_context_computes_each_chunk_on_its_own(native: Path) -> None:
    lm = load_model(ModelConfig(path=native, mode="raw", raw_context="chunk"))
    hidden = lm.text_config.hidden_size
    torch.manual_seed(0)
    frames = [
        chunk_frames(
            [2.0 * c, 2.0 * c + 1],
            torch.randn(8, hidden),
            torch.ones(8, dtype=torch.bool),
            c == 0,
            2.0 * c + 2,
        )
        for c in range(3)
    ]
    compressor = SummaryCompressor(lm)
    chunks = [compressor.compress("s", c, f) for c, f in enumerate(frames)]
    # Every chunk starts right after the system prompt and keeps all of its tokens ...
    assert all(int(c.positions[0]) == lm.prefix_len for c in chunks)
    assert chunks[1].n_kept == chunks[2].n_kept
    # ... and is the same whatever came before it in the stream.
    alone = SummaryCompressor(lm).compress("t", 2, frames[2])
    assert torch.equal(alone.keys, chunks[2].keys)
