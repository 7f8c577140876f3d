"""Training summary tokens the way a real base needs: bf16, gradient checkpointing, torchrun, LLaVA data."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from footage import real_clip
from safetensors.torch import load_file

from longwatch.model.config import ModelConfig
from longwatch.model.loading import load_model
from longwatch.model.tiny import build_tiny_model
from longwatch.model.train.clips import NeedleClips
from longwatch.model.train.datasets import JsonlClips, read_examples
from longwatch.model.train.trainer import TrainConfig, Trainer, clip_losses


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_model(tmp_path_factory.mktemp("base") / "tiny", seed=4)


def summary_grads(base: Path, checkpointing: bool) -> dict[str, torch.Tensor]:
    lm = load_model(ModelConfig(path=base))
    for p in lm.summary.parameters():
        p.requires_grad_(True)
    config = TrainConfig(
        stage="summary", checkpointing=checkpointing, answer_chunks=2, max_tokens_per_frame=4
    )
    clip = NeedleClips(n_chunks=3, all_questions=True).clip(np.random.default_rng(5))
    losses = clip_losses(lm, clip, config, np.random.default_rng(6))
    sum(losses.values()).backward()
    # The last layer's query copy gets none: no later layer reads its summary tokens' outputs.
    params = zip(lm.summary.state_dict(), lm.summary.parameters(), strict=True)
    return {name: torch.zeros_like(t) if t.grad is None else t.grad.clone() for name, t in params}


def test_gradient_checkpointing_by_chunk_gives_the_same_gradients(base: Path) -> None:
    """Recomputing each chunk's and answer's pass in backward changes memory, not the gradients."""
    plain, checkpointed = summary_grads(base, False), summary_grads(base, True)
    assert set(plain) == set(checkpointed)
    assert any(g.abs().max() > 0 for g in plain.values())  # the comparison is of real gradients
    for name, g in plain.items():
        assert torch.allclose(checkpointed[name], g, rtol=1e-4, atol=1e-7), name


def test_a_bf16_base_trains_float32_summary_tokens_under_autocast(base: Path, tmp_path: Path) -> None:
    lm = load_model(ModelConfig(path=base, dtype="bfloat16"))
    config = TrainConfig(
        stage="summary", steps=3, lr=1e-2, answer_chunks=2, checkpointing=True, checkpoint_every=3
    )
    trainer = Trainer(lm, NeedleClips(n_chunks=2), config, tmp_path / "run")
    assert trainer.config.autocast and lm.dtype == torch.bfloat16
    assert all(p.dtype == torch.float32 for p in lm.summary.parameters())
    before = {k: v.clone() for k, v in lm.summary.state_dict().items()}
    history = trainer.run()
    assert len(history) == 3 and all(np.isfinite(m.loss) for m in history)
    after = lm.summary.state_dict()
    assert any(not torch.equal(before[k], after[k]) for k in before)
    adapter = trainer.save_adapter(tmp_path / "adapter", lm.base_fingerprint)
    assert {t.dtype for t in load_file(str(adapter / "adapter.safetensors")).values()} == {torch.float32}
    served = load_model(ModelConfig(path=base, adapter=adapter))  # and it serves in float32
    assert torch.equal(served.summary.vs_embedding, after["vs_embedding"])
    with pytest.raises(ValueError, match="load the base in float32"):
        Trainer(
            load_model(ModelConfig(path=base, dtype="bfloat16")),
            NeedleClips(),
            TrainConfig(stage="base"),
            tmp_path,
        )


def test_llava_video_json_becomes_examples(tmp_path: Path) -> None:
    video = real_clip("bikes.mp4")
    records = [
        {
            "id": "a",
            "video": video.name,
            "conversations": [
                {"from": "human", "value": "<image>\nWhat is the cyclist wearing?"},
                {"from": "gpt", "value": "A red jersey."},
                {"from": "human", "value": "Where does he ride?"},
                {"from": "gpt", "value": "On a mountain road."},
            ],
        }
    ]
    path = tmp_path / "llava.json"
    path.write_text(json.dumps(records))
    examples = read_examples(path, video_root=video.parent)
    assert [(e.question, e.answer) for e in examples] == [
        ("What is the cyclist wearing?", "A red jersey."),
        ("Where does he ride?", "On a mountain road."),
    ]
    assert examples[0].video == video.resolve() and examples[0].start_s is None
    clip = JsonlClips(examples, n_chunks=1, max_tokens_per_frame=16).clip(np.random.default_rng(0))
    assert clip.frames.shape[0] == 8 and clip.question in {e.question for e in examples}
    records[0]["video"] = "missing.mp4"
    path.write_text(json.dumps(records))
    with pytest.raises(ValueError, match="no such video"):
        read_examples(path, video_root=video.parent)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _train(base: Path, out: Path, clips_per_step: int, processes: int) -> dict[str, torch.Tensor]:
    args = ["train", "--stage", "summary", "--base", str(base), "--out", str(out), "--steps", "3"]
    args += ["--clips-per-step", str(clips_per_step), "--checkpoint-every", "3", "--lr", "0.01"]
    env = {**os.environ, "GLOO_SOCKET_IFNAME": "lo", "OMP_NUM_THREADS": "1"}
    if processes == 1:
        command = [sys.executable, "-m", "longwatch.clients.main", *args]
    else:
        torchrun = ["-m", "torch.distributed.run", f"--nproc-per-node={processes}", "--nnodes=1"]
        torchrun += ["--master-addr=127.0.0.1", f"--master-port={_free_port()}"]
        command = [sys.executable, *torchrun, "-m", "longwatch.clients.main", *args]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return load_file(str(out / "adapter" / "adapter.safetensors"))


def test_torchrun_processes_train_what_one_process_trains_with_their_clips(
    base: Path, tmp_path: Path
) -> None:
    """Two processes of one clip a step each average to one process of two clips a step."""
    one = _train(base, tmp_path / "one", clips_per_step=2, processes=1)
    two = _train(base, tmp_path / "two", clips_per_step=1, processes=2)
    untrained = load_model(ModelConfig(path=base)).summary.state_dict()
    assert any(not torch.equal(one[k], untrained[k]) for k in one)  # training moved the weights
    for name, t in one.items():
        assert torch.allclose(two[name], t, rtol=1e-4, atol=1e-6), name
    log = [json.loads(line) for line in (tmp_path / "two" / "train_log.jsonl").read_text().splitlines()]
    assert len(log) == 3  # one process writes the log


def test_an_example_without_an_answer_learns_the_teachers_own() -> None:
    """Its target is what the base answers keeping every token: distillation alone, in effect."""
    from dataclasses import replace

    from longwatch.model.train.trainer import clip_chunks, teacher_answer

    lm = load_model(ModelConfig())  # the demo model: its keep-raw answers are words, not noise
    clip = NeedleClips(n_chunks=2, kinds=("what",)).clip(np.random.default_rng(3))
    blank = replace(clip, answer="")
    said = teacher_answer(lm, clip_chunks(lm, clip, 0.1, 4), clip.question)
    assert said and lm.answer_format is not None
    config = TrainConfig(stage="summary", answer_chunks=2, chunk_dropout=0.0)
    with torch.no_grad():
        from_blank = clip_losses(lm, blank, config, np.random.default_rng(1))
        from_teacher = clip_losses(lm, replace(clip, answer=said), config, np.random.default_rng(1))
    assert torch.equal(from_blank["lm"], from_teacher["lm"])
