"""The CUDA path: `pytest -m gpu` on a machine with a GPU (bench/cuda.sh runs it). Skipped elsewhere.

- keep-raw on CUDA reproduces the native model's logits on the whole sequence;
- the same chunks compressed on CUDA and on the CPU agree (summary K/V, retrieval vectors, answers);
- flash-attn and sdpa give the same K/V and logits (where flash-attn is installed);
- the service serves on CUDA in bf16, end to end over gRPC, and the demo model still answers its
  needle right on CUDA in float32;
- summary tokens train on CUDA in bf16 with gradient checkpointing.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest
import torch
from damo_checkpoint import small, write_damo_checkpoint
from footage import real_clip

from longwatch.clients.client import LongWatchClient
from longwatch.model.answer import prefill
from longwatch.model.compressor import SummaryCompressor
from longwatch.model.config import ModelConfig
from longwatch.model.convert import convert
from longwatch.model.loading import LoadedModel, frame_label, load_model, question_suffix
from longwatch.model.tiny import build_tiny_model
from longwatch.model.train.clips import NeedleClips
from longwatch.model.train.needles import judge, make_needle_video, questions_for, seed_for
from longwatch.model.train.trainer import TrainConfig, Trainer
from longwatch.model.vision import chunk_frames, encode_frames
from longwatch.stream.server import LongWatchServer
from longwatch.stream.settings import LiveConfig, ServiceSettings

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(
        not torch.cuda.is_available(), reason="needs a CUDA device (bench/cuda.sh runs these)"
    ),
]
HAS_FLASH = importlib.util.find_spec("flash_attn") is not None
T, GH, GW = 6, 4, 6
TPF = GH * GW // 4
QUESTION = "What colour was the car that stopped?"


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_model(tmp_path_factory.mktemp("ckpt") / "tiny", seed=3, init_scale=4.0)


@pytest.fixture(scope="module")
def video() -> tuple[torch.Tensor, torch.Tensor, list[float]]:
    g = torch.Generator().manual_seed(0)
    pixels = torch.randn(T * GH * GW, 3 * 14 * 14, generator=g)
    mask = torch.rand(T * TPF, generator=g) > 0.45
    mask[:TPF] = True
    mask.view(T, TPF)[:, 0] = True
    return pixels, mask, [0.5 + i for i in range(T)]


def compress(lm: LoadedModel, video: tuple, sizes: list[int]) -> list:
    pixels, mask, times = video
    comp, chunks, start = SummaryCompressor(lm), [], 0
    for i, n in enumerate(sizes):
        with torch.no_grad():
            feats = encode_frames(lm, pixels[start * GH * GW : (start + n) * GH * GW], n, GH, GW)
        m = mask[start * TPF : (start + n) * TPF]
        frames = chunk_frames(times[start : start + n], feats, m, start == 0, times[start + n - 1] + 1.0)
        chunks.append(comp.compress("s", i, frames))
        start += n
    return chunks


def native_logits(lm: LoadedModel, video: tuple) -> torch.Tensor:
    pixels, mask, times = video
    ids = list(lm.prefix_ids)
    for f in range(T):
        ids += lm.tokenize(frame_label(times[f], f == 0)) + [lm.video_token_id] * int(
            mask[f * TPF : (f + 1) * TPF].sum()
        )
    q_ids = lm.tokenize(question_suffix(QUESTION))
    d = lm.device
    with torch.no_grad():
        out = lm.model(
            input_ids=torch.tensor([ids + q_ids], device=d),
            pixel_values_videos=pixels.to(d, lm.dtype),
            video_grid_thw=torch.tensor([[T, GH, GW]], device=d),
            video_merge_sizes=torch.tensor([2], device=d),
            video_compression_mask=mask.to(d),
        )
    return out.logits[0, -len(q_ids) :].float().cpu()


@pytest.mark.parametrize(("dtype", "tolerance"), [("float32", 1e-3), ("bfloat16", 0.15)])
def test_keep_raw_on_cuda_reproduces_native_logits(
    checkpoint: Path, video: tuple, dtype: str, tolerance: float
) -> None:
    lm = load_model(
        ModelConfig(path=checkpoint, mode="raw", device="cuda", dtype=dtype, attn_implementation="sdpa")
    )
    native = native_logits(lm, video)
    _, logits = prefill(lm, compress(lm, video, [2, 1, 3]), QUESTION)
    scale = native.abs().max()
    assert scale > 1.0
    assert (logits[0].float().cpu() - native).abs().max() <= tolerance * scale


def test_summary_chunks_on_cuda_equal_the_cpus(checkpoint: Path, video: tuple) -> None:
    cpu = load_model(ModelConfig(path=checkpoint, mode="summary", alpha=4))
    gpu = load_model(
        ModelConfig(path=checkpoint, mode="summary", alpha=4, device="cuda", attn_implementation="sdpa")
    )
    a, b = compress(cpu, video, [3, 3]), compress(gpu, video, [3, 3])
    for x, y in zip(a, b, strict=True):
        assert x.keys.device.type == y.keys.device.type == "cpu"  # stored chunks live on the CPU
        assert torch.allclose(x.keys, y.keys, atol=1e-3, rtol=1e-3)
        assert torch.allclose(x.retrieval, y.retrieval, atol=1e-3, rtol=1e-3)
    _, la = prefill(cpu, a, QUESTION)
    _, lb = prefill(gpu, b, QUESTION)
    assert torch.allclose(la.cpu(), lb.cpu(), atol=1e-2, rtol=1e-3)


@pytest.mark.skipif(not HAS_FLASH, reason="flash-attn is not installed (the gpu extra)")
def test_flash_attention_matches_sdpa(checkpoint: Path, video: tuple) -> None:
    configs = [
        ModelConfig(
            path=checkpoint, mode="summary", alpha=4, device="cuda", dtype="bfloat16", attn_implementation=a
        )
        for a in ("sdpa", "flash_attention_2")
    ]
    sdpa, flash = (load_model(c) for c in configs)
    assert flash.config.attn_implementation == "flash_attention_2"
    a, b = compress(sdpa, video, [3, 3]), compress(flash, video, [3, 3])
    for x, y in zip(a, b, strict=True):
        assert torch.allclose(x.keys.float(), y.keys.float(), atol=0.1, rtol=0.05)
    _, la = prefill(sdpa, a, QUESTION)
    _, lb = prefill(flash, b, QUESTION)
    assert (la.float() - lb.float()).abs().max() <= 0.05 * la.float().abs().max()


def test_a_converted_checkpoint_serves_on_cuda_in_bf16(tmp_path: Path, redis_url: str) -> None:
    native = convert(write_damo_checkpoint(tmp_path / "src", small()), tmp_path / "native").out
    settings = ServiceSettings(
        port=0,
        http_port=0,
        redis_url=redis_url,
        state_dir=tmp_path / "state",
        max_new_tokens=4,
        live=LiveConfig(ice_addresses=("127.0.0.1",)),
        model=ModelConfig(path=native, device="cuda", dtype="bfloat16", mode="auto", raw_context="chunk"),
        ingest_explicit=frozenset(),
    )
    with (
        LongWatchServer(settings) as server,
        LongWatchClient(f"127.0.0.1:{server.port}", timeout=120) as client,
    ):
        assert "cuda, bfloat16" in server.note
        for _ in client.ingest_file("bikes", path=str(real_clip("bikes.mp4"))):
            pass
        result = client.ask("bikes", QUESTION)
        assert result.evidence and all(e.end_s <= 10.5 for e in result.evidence)


def test_the_demo_model_answers_its_needle_on_cuda(tmp_path: Path, redis_url: str) -> None:
    video = make_needle_video(seed_for("eval", 10**6), 600, 0.6)
    path = video.write(tmp_path / video.file_name)
    settings = ServiceSettings(
        port=0,
        http_port=0,
        redis_url=redis_url,
        state_dir=tmp_path / "state",
        live=LiveConfig(ice_addresses=("127.0.0.1",)),
        model=ModelConfig(device="cuda", mode="auto"),
        ingest_explicit=frozenset(),
    )
    with (
        LongWatchServer(settings) as server,
        LongWatchClient(f"127.0.0.1:{server.port}", timeout=120) as client,
    ):
        for _ in client.ingest_file("demo", path=str(path)):
            pass
        for kind, qa in questions_for(video.needle).items():
            assert judge(kind, client.ask("demo", qa.question).answer, video.needle), kind


def test_summary_tokens_train_on_cuda_in_bf16_with_checkpointing(checkpoint: Path, tmp_path: Path) -> None:
    lm = load_model(ModelConfig(path=checkpoint, device="cuda", dtype="bfloat16"))
    config = TrainConfig(
        stage="summary", steps=3, lr=1e-2, answer_chunks=2, checkpointing=True, checkpoint_every=3
    )
    history = Trainer(lm, NeedleClips(n_chunks=2), config, tmp_path / "run").run()
    assert len(history) == 3 and all(np.isfinite(m.loss) for m in history)
    assert all(p.device.type == "cuda" and p.dtype == torch.float32 for p in lm.summary.parameters())
