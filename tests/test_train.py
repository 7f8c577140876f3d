"""The trainer: loss falls, adapters round-trip, runs resume and reproduce, data sources behave."""

from __future__ import annotations

import contextlib
import json
import shutil
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pytest
import torch
from footage import real_clip
from torch.nn import functional as F

from longwatch.model.compressor import SummaryCompressor
from longwatch.model.config import BASE_SIZES, ModelConfig
from longwatch.model.loading import LoadedModel, load_model
from longwatch.model.tiny import build_tiny_model
from longwatch.model.train.clips import (
    CODEC_CONTEXT_FRAMES,
    DIGIT_BALANCED_HAYSTACKS_S,
    NeedleClips,
    TrainingClip,
    vision_frames,
)
from longwatch.model.train.datasets import JsonlClips, read_jsonl
from longwatch.model.train.needles import (
    COLOURS,
    EVAL_SEED_BASE,
    QUESTION_KINDS,
    judge,
    make_needle_video,
    questions_for,
    random_needle,
    seed_for,
    split_of,
)
from longwatch.model.train.synthetic import SyntheticFootage, encode_video
from longwatch.model.train.trainer import (
    TrainConfig,
    Trainer,
    answer_ids,
    clip_chunks,
    new_base,
    qa_logits,
    raw_cache,
    retrieval_loss,
)


@dataclass
class FixedClips:
    """A handful of clips over and over: a loss that must fall on data the model can fit."""

    clips: list[TrainingClip]

    def clip(self, rng: np.random.Generator) -> TrainingClip:
        return self.clips[int(rng.integers(len(self.clips)))]


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_model(tmp_path_factory.mktemp("base") / "tiny", seed=2)


@pytest.fixture(scope="module")
def clips() -> FixedClips:
    source = NeedleClips(n_chunks=2)
    return FixedClips([source.clip(np.random.default_rng([9, i])) for i in range(2)])


class Interrupted(Exception):
    pass


def summary_run(
    base: Path,
    out: Path,
    clips: FixedClips,
    steps: int,
    seed: int = 0,
    scramble: bool = False,
    kill_at: int | None = None,
) -> Trainer:
    lm = load_model(ModelConfig(path=base))
    if scramble:
        # Copies of the base projections already match the keep-raw teacher closely on a random
        # base; scrambled ones give distillation something to learn.
        g = torch.Generator().manual_seed(0)
        with torch.no_grad():
            for p in lm.summary.parameters():
                p.add_(torch.randn(p.shape, generator=g) * 0.5)
    config = TrainConfig(
        stage="summary",
        steps=steps,
        lr=3e-2,
        seed=seed,
        answer_chunks=2,
        checkpoint_every=5,
        warmup_steps=2,
        lm_weight=0.0 if scramble else 1.0,
    )
    trainer = Trainer(lm, clips, config, out)
    trainer.load_checkpoint()

    def progress(m: object) -> None:
        if trainer.step == kill_at:
            raise Interrupted  # as if the process were killed after this step

    with contextlib.suppress(Interrupted):
        trainer.run(progress)
    return trainer


def losses(out: Path) -> list[float]:
    return [json.loads(line)["loss"] for line in (out / "train_log.jsonl").read_text().splitlines()]


def test_summary_stage_loss_falls_and_only_adapter_moves(
    base: Path, clips: FixedClips, tmp_path: Path
) -> None:
    before = {k: v.clone() for k, v in load_model(ModelConfig(path=base)).model.state_dict().items()}
    assert "summary_vs_embedding" in "".join(before)  # the comparison below covers installed modules
    trainer = summary_run(base, tmp_path, clips, steps=20, scramble=True)
    trace = losses(tmp_path)  # the distillation loss: KL from the keep-raw teacher
    assert len(trace) == 20
    assert np.mean(trace[-5:]) < 0.6 * np.mean(trace[:5])
    after = trainer.lm.model.state_dict()
    base_keys = [k for k in before if ".summary." not in k and "summary_vs" not in k]
    assert all(torch.equal(before[k], after[k]) for k in base_keys)  # the base stayed frozen


def test_adapter_round_trips_into_the_service_path(base: Path, clips: FixedClips, tmp_path: Path) -> None:
    trainer = summary_run(base, tmp_path / "run", clips, steps=5)
    from longwatch.model.checkpoint import checkpoint_fingerprint

    adapter = trainer.save_adapter(tmp_path / "adapter", checkpoint_fingerprint(base))
    served = load_model(ModelConfig(path=base, adapter=adapter))
    untrained = load_model(ModelConfig(path=base))
    for name, tensor in trainer.lm.summary.state_dict().items():
        assert torch.equal(served.summary.state_dict()[name], tensor), name
    assert served.fingerprint != untrained.fingerprint  # caches made with another adapter are refused

    def compress(lm: LoadedModel) -> torch.Tensor:
        from longwatch.model.train.trainer import clip_chunks

        frames = clip_chunks(lm, clips.clips[0], 0.1, 4)[0]
        return SummaryCompressor(lm).compress("s", 0, frames).keys

    trainer.lm.model.eval()
    assert torch.equal(compress(served), compress(trainer.lm))


def test_resume_reproduces_an_uninterrupted_run(base: Path, clips: FixedClips, tmp_path: Path) -> None:
    whole = summary_run(base, tmp_path / "whole", clips, steps=10)
    killed = summary_run(base, tmp_path / "split", clips, steps=10, kill_at=7)  # last checkpoint: step 5
    assert killed.step == 7
    resumed = summary_run(base, tmp_path / "split", clips, steps=10)
    assert resumed.step == 10
    for name, tensor in whole.lm.summary.state_dict().items():
        assert torch.allclose(resumed.lm.summary.state_dict()[name], tensor, atol=1e-6), name
    # The killed run's steps 6-7 were never checkpointed, so the log has each step once.
    assert losses(tmp_path / "whole") == pytest.approx(losses(tmp_path / "split"), rel=1e-5)


def test_base_stage_from_scratch_learns(tmp_path: Path) -> None:
    folder = new_base(tmp_path / "init", seed=0, system_prompt=ModelConfig().system_prompt)
    lm = load_model(ModelConfig(path=folder))
    config = TrainConfig(
        stage="base",
        vision_steps=25,
        vision_batch=8,
        steps=6,
        freeze_vision_steps=2,
        raw_share=0.5,
        checkpoint_every=100,
    )
    trainer = Trainer(lm, NeedleClips(n_chunks=3), config, tmp_path / "run")
    history = trainer.run()
    phases = [m.phase for m in history]
    assert phases == ["vision"] * 25 + ["decoder"] * 2 + ["joint"] * 4
    vision = [m.loss for m in history if m.phase == "vision"]
    assert np.mean(vision[-5:]) < np.mean(vision[:5])
    # Summary-mode clips train answers and retrieval; keep-raw clips train raw answers.
    parts = set().union(*(m.parts for m in history if m.phase != "vision"))
    assert {"lm", "retrieval", "lm_raw"} <= parts
    out = trainer.save_base(tmp_path / "base")
    card = json.loads((out / "longwatch.json").read_text())
    assert card["ingest"]["max_tokens_per_frame"] == 4 and card["trained"]["stage"] == "base"
    reloaded = load_model(ModelConfig(path=out))  # a saved base is an ordinary checkpoint
    assert reloaded.tokenizer.decode(reloaded.tokenize("at 123 s")) == "at 123 s"


def test_demo_stage_runs_base_summary_refine_hard_polish_and_leaves_the_last_model(tmp_path: Path) -> None:
    from safetensors.torch import load_file

    from longwatch.clients import main

    out = tmp_path / "demo"
    args = ["train", "--stage", "demo", "--out", str(out), "--size", "tiny", "--vision-steps", "3"]
    args += ["--freeze-vision-steps", "1", "--steps", "3", "--summary-steps", "2", "--refine-steps", "3"]
    args += ["--hard-steps", "2", "--hard-distractor-pool", "3", "--polish-steps", "2"]
    assert main.main([*args, "--hard-codec-share", "1.5"]) == 2  # refused before any training
    assert main.main([*args, "--hard-stream-start-share", "-0.1"]) == 2
    assert main.main([*args, "--hard-distractor-pool", "-1"]) == 2
    assert main.main([*args, "--polish-straddle-share", "2"]) == 2
    assert main.main([*args, "--polish-turnover-share", "-1"]) == 2
    assert main.main([*args, "--polish-retrieval-margin", "-1"]) == 2
    assert main.main([*args, "--score-margin", "-1"]) == 2
    assert not out.exists()
    assert main.main(args) == 0
    runs = out / "runs"
    stages = ("base", "summary", "refine", "hard", "polish")

    def logged() -> list[int]:
        return [len((runs / s / "train_log.jsonl").read_text().splitlines()) for s in stages]

    assert logged() == [6, 2, 3, 2, 2]
    # Each refinement starts from the stage before and moves every weight on, vision included.
    for before, after in (("base", "refine"), ("refine", "hard"), ("hard", "polish")):
        a = load_file(runs / before / "base" / "model.safetensors")
        b = load_file(runs / after / "base" / "model.safetensors")
        assert a.keys() == b.keys()
        assert {"vision_model", "language_model"} <= {
            k.split(".")[1] for k in a if not torch.equal(a[k], b[k])
        }
    for name in ("base/model.safetensors", "adapter/adapter.safetensors"):
        assert (out / name).read_bytes() == (runs / "polish" / name).read_bytes()
    load_model(ModelConfig(path=out / "base", adapter=out / "adapter"))  # the adapter fits the last base
    assert "score_margin" not in json.loads((out / "base" / "longwatch.json").read_text())  # plain top-k
    trained = json.loads((out / "base" / "longwatch.json").read_text())["trained"]
    assert (
        trained["steps"],
        trained["lr"],
        trained["after"]["steps"],
        trained["after"]["lr"],
        trained["after"]["after"]["steps"],
    ) == (2, 3e-5, 2, 1e-4, 3)
    # Run again, the same recipe trains nothing more.
    shipped = (out / "base" / "model.safetensors").read_bytes()
    assert main.main(args) == 0
    assert logged() == [6, 2, 3, 2, 2] and (out / "base" / "model.safetensors").read_bytes() == shipped
    # Only the refined model kept: the hard and polish stages alone run again from it, and make
    # the same model.
    for stage in ("base", "summary", "hard", "polish"):
        shutil.rmtree(runs / stage)
    assert main.main(args) == 0
    assert not (runs / "base").exists() and (out / "base" / "model.safetensors").read_bytes() == shipped
    # A recipe that differs in an earlier stage does not take that stage as finished.
    assert main.main([*args, "--refine-lr", "2e-4"]) == 0
    assert (runs / "base" / "finished.json").exists()
    # Started from a finished demo model, a recipe trains its last stage alone, from that model.
    later = tmp_path / "later"
    assert main.main([*args, "--out", str(later), "--start-from", str(tmp_path / "nothing")]) == 2
    polish_flags = ["--polish-straddle-share", "0.3", "--hard-rollover-share", "0.25", "--polish-lr", "2e-5"]
    polish_flags += ["--polish-turnover-share", "0.5", "--polish-retrieval-margin", "10"]
    assert (
        main.main(
            [*args, *polish_flags, "--out", str(later), "--start-from", str(out), "--score-margin", "5"]
        )
        == 0
    )
    # The margin Ask serves the model with is in its card.
    assert json.loads((later / "base" / "longwatch.json").read_text())["score_margin"] == 5.0
    assert sorted(p.name for p in (later / "runs").iterdir()) == ["hard", "polish"]
    # The polish stage ran as its flags say (its record of them is what it ran): the hard stage's
    # clips, its own straddle share and rate.
    polish = json.loads((later / "runs" / "polish" / "finished.json").read_text())["lineage"][-1]
    data = polish["data"]
    assert (
        data["straddle_share"],
        data["rollover_share"],
        data["turnover_share"],
        polish["config"]["lr"],
        polish["config"]["retrieval_margin"],
    ) == (0.3, 0.25, 0.5, 2e-5, 10.0)
    hard = json.loads((later / "runs" / "hard" / "finished.json").read_text())["lineage"][-1]
    assert (
        hard["data"]["straddle_share"],
        hard["data"]["turnover_share"],
        hard["config"]["lr"],
        hard["config"]["retrieval_margin"],
    ) == (0, 0, 1e-4, 0.0)
    seeded = json.loads((later / "runs" / "hard" / "finished.json").read_text())
    assert seeded["from"] == str(out)
    started = (out / "base" / "model.safetensors").read_bytes()
    assert (later / "runs" / "hard" / "base" / "model.safetensors").read_bytes() == started
    after = json.loads((later / "base" / "longwatch.json").read_text())["trained"]
    assert after["steps"] == 2 and after["after"]["steps"] == 2  # polish, from the model it started from


def test_base_sizes_and_each_phase_learning_rate(tmp_path: Path) -> None:
    folder = new_base(tmp_path / "init", seed=0, system_prompt=ModelConfig().system_prompt, size="tiny")
    config = json.loads((folder / "config.json").read_text())
    tiny = BASE_SIZES["tiny"]
    assert config["text_config"]["hidden_size"] == tiny.decoder_width
    assert config["text_config"]["num_hidden_layers"] == tiny.decoder_layers
    assert config["vision_config"]["hidden_size"] == tiny.vision_width
    assert json.loads((folder / "longwatch.json").read_text())["size"] == "tiny"
    with pytest.raises(ValueError, match="size must be one of"):
        new_base(tmp_path / "bad", seed=0, system_prompt="", size="huge")
    train = TrainConfig(
        stage="base",
        vision_steps=1,
        vision_batch=2,
        freeze_vision_steps=1,
        steps=2,
        lr=2e-3,
        pretrain_vision_lr=5e-4,
        vision_lr=1e-4,
        checkpoint_every=100,
    )
    trainer = Trainer(load_model(ModelConfig(path=folder)), NeedleClips(n_chunks=2), train, tmp_path / "run")
    base_lrs = []
    for _ in range(train.total_steps):
        trainer.train_step()
        base_lrs.append((trainer.phase, sorted(g["base_lr"] for g in trainer.optimizer.param_groups)))
    # Vision pretraining (tower and probe) at its own rate; in the joint phase the tower moves slower.
    assert base_lrs == [("vision", [5e-4, 5e-4]), ("decoder", [2e-3]), ("joint", [1e-4, 2e-3])]


@dataclass
class CountingClips:
    """A clip source that counts its calls (which source the trainer drew from)."""

    source: NeedleClips
    calls: int = 0

    def clip(self, rng: np.random.Generator) -> TrainingClip:
        self.calls += 1
        return self.source.clip(rng)


def test_copy_then_reading_steps_answer_keep_raw_first(tmp_path: Path) -> None:
    folder = new_base(tmp_path / "init", seed=0, system_prompt=ModelConfig().system_prompt)
    config = TrainConfig(
        stage="base",
        steps=7,
        freeze_vision_steps=7,
        copy_steps=2,
        reading_steps=3,
        raw_share=0.0,
        checkpoint_every=100,
    )
    main, reading = CountingClips(NeedleClips(n_chunks=3)), CountingClips(NeedleClips(n_chunks=1))
    copy = CountingClips(NeedleClips(n_chunks=1, frames_per_chunk=1, kinds=("when",)))
    trainer = Trainer(load_model(ModelConfig(path=folder)), main, config, tmp_path / "run", reading, copy)
    history = trainer.run()
    assert (copy.calls, reading.calls, main.calls) == (2, 3, 2)
    assert all(set(m.parts) == {"lm_raw"} for m in history[:5])
    assert all("lm" in m.parts for m in history[5:])
    assert {copy.source.clip(np.random.default_rng(i)).kind for i in range(5)} == {"when"}
    # The new visual tokens start near unit RMS per channel, not at the word embeddings' scale.
    lm = load_model(ModelConfig(path=folder))
    clip = NeedleClips(n_chunks=1, frames_per_chunk=1).clip(np.random.default_rng(0))
    features = clip_chunks(lm, clip, 0.1, 4)[0].features
    words = lm.model.model.language_model.embed_tokens.weight
    assert features.pow(2).mean().sqrt() > 10 * words.pow(2).mean().sqrt()


def test_every_question_of_a_clip_answers_from_one_shared_context(base: Path) -> None:
    clip = NeedleClips(n_chunks=2, all_questions=True).clip(np.random.default_rng(3))
    assert {q for q, _ in clip.questions_and_answers} == {
        qa.question for qa in questions_for(clip.needle).values()
    }
    assert NeedleClips(n_chunks=2).clip(np.random.default_rng(3)).also_asked == []
    lm = load_model(ModelConfig(path=base))
    chunks = clip_chunks(lm, clip, 0.1, 4)
    qas = [answer_ids(lm, q, a) for q, a in clip.questions_and_answers]
    with torch.no_grad():
        shared = raw_cache(lm, chunks, lm.prefix_kv)
        length = shared.get_seq_length()
        together = qa_logits(lm, shared, qas)
        assert shared.get_seq_length() == length  # each answer is cropped off again
        for qa, logits in zip(qas, together, strict=True):  # the same as each on a context of its own
            alone = qa_logits(lm, raw_cache(lm, chunks, lm.prefix_kv), [qa])[0]
            torch.testing.assert_close(logits, alone, atol=1e-5, rtol=1e-4)


def test_clips_from_haystacks_of_three_lengths_carry_times_of_every_size() -> None:
    def digit_shares(source: NeedleClips) -> np.ndarray:
        starts = [source.clip(np.random.default_rng([4, i])).needle.start_s for i in range(240)]
        return np.bincount([len(str(int(t))) for t in starts], minlength=5) / len(starts)

    hour = digit_shares(NeedleClips(n_chunks=6))
    three = digit_shares(NeedleClips(n_chunks=6, haystack_lengths=DIGIT_BALANCED_HAYSTACKS_S))
    # Cut from hour-long haystacks only, most needle times have four digits and almost none two;
    # the refine stage's three lengths give two, three and four digits alike.
    assert hour[4] > 0.6 and hour[2] < 0.05
    assert all(0.2 < share < 0.5 for share in three[2:5])


def test_codec_share_encodes_the_needle_chunk_of_that_share_of_clips_and_changes_nothing_else() -> None:
    def beyond_frames(c: TrainingClip) -> tuple:
        return c.needle, c.times, c.question, c.answer, c.evidence

    plain, encoded = NeedleClips(n_chunks=2), NeedleClips(n_chunks=2, codec_share=0.5)
    changed = []
    for i in range(24):
        a, b = plain.clip(np.random.default_rng([9, i])), encoded.clip(np.random.default_rng([9, i]))
        assert beyond_frames(a) == beyond_frames(b)
        needle = slice(a.evidence[0] * a.frames_per_chunk, (a.evidence[0] + 1) * a.frames_per_chunk)
        others = np.ones(len(a.frames), dtype=bool)
        others[needle] = False
        assert np.array_equal(a.frames[others], b.frames[others])
        changed.append(not np.array_equal(a.frames[needle], b.frames[needle]))
        if changed[-1]:  # from encoded footage: the same picture, a few levels off
            assert np.abs(a.frames[needle].astype(np.float32) - b.frames[needle]).mean() < 6
    assert 6 <= sum(changed) <= 18
    with pytest.raises(ValueError, match="whole multiples"):
        NeedleClips(footage_rates=(1.0, 2.5))


def error(a: np.ndarray, b: np.ndarray) -> float:
    """Mean absolute difference of two uint8 frame stacks, in 8-bit levels."""
    return float(np.abs(a.astype(np.float32) - b).mean())


def test_an_encoded_chunk_looks_like_what_the_service_decodes_from_the_haystack_file(tmp_path: Path) -> None:
    from longwatch.stream.decode import VideoFileReader

    clips, seed, start = NeedleClips(), seed_for("train", 3), 48.0
    needle = random_needle(np.random.default_rng(3), start + 2, 56, 56)
    for rate in clips.footage_rates:
        footage = SyntheticFootage(seed, 56, 56, rate, overlays=[needle])
        end = round((start + 8) * rate) + CODEC_CONTEXT_FRAMES
        path = encode_video(tmp_path / f"{rate}.mp4", (footage.frame_at(i) for i in range(end)), rate)
        decoded = np.stack([f.image for f in VideoFileReader(path, fps=1.0) if start <= f.pts_s < start + 8])
        rendered = np.stack([footage.frame_at(round(t * rate)) for t in np.arange(start, start + 8)])
        chunk = clips.encoded_chunk(seed, [needle], start, 8, rate)
        # As lossy as the file; at 1 fps (every frame sampled, no I-frame inside this chunk of
        # the file either) nearly the very frames, which a chunk coded alone would not be.
        assert 0.6 * error(decoded, rendered) < error(chunk, rendered) < 1.4 * error(decoded, rendered)
        if rate == 1.0:
            assert error(chunk, decoded) < 0.4 * error(rendered, decoded)


def test_needle_seeds_never_overlap_and_answers_are_judged() -> None:
    assert split_of(seed_for("train", 5)) == "train" and split_of(seed_for("eval", 5)) == "eval"
    assert seed_for("eval", 0) == EVAL_SEED_BASE > seed_for("train", EVAL_SEED_BASE - 1)
    last = EVAL_SEED_BASE - 1
    assert (
        seed_for("holdout", 0) > seed_for("eval", last) and split_of(seed_for("holdout", last)) == "holdout"
    )
    with pytest.raises(ValueError, match="split must be one of"):
        seed_for("test", 0)  # type: ignore[arg-type]
    video = make_needle_video(seed_for("eval", 3), seconds=300, depth=0.5)
    n = video.needle
    assert 140 <= n.start_s <= 150
    qa = questions_for(n)
    assert judge("what", qa["what"].answer, n) and judge("colour", qa["colour"].answer, n)
    assert judge("when", qa["when"].answer, n) and not judge("when", "at 10 s", n)
    footage = video.footage()

    def needle_pixels(i: int) -> int:  # overlays are drawn after the noise: exact colour
        return int((footage.frame_at(i) == np.array(COLOURS[n.colour], np.uint8)).all(-1).sum())

    assert needle_pixels(int(n.start_s)) > 0.2 * n.size**2
    assert needle_pixels(int(n.start_s) - 5) < 0.01 * n.size**2


def test_vision_pretraining_frames_draw_the_digit_share_asked_for() -> None:
    def digits(share: float | None) -> float:
        _, needles = vision_frames(np.random.default_rng(0), 400, digit_share=share)
        shown = [n for n in needles if n is not None]
        assert 150 < len(shown) < 250  # about half the frames carry a needle
        return sum(n.shape == "digit" for n in shown) / len(shown)

    assert digits(1.0) == 1.0 and digits(0.0) == 0.0
    assert 0.1 < digits(None) < 0.3  # one kind in five
    assert 0.3 < digits(0.4) < 0.5


def test_jsonl_source_reads_real_video(tmp_path: Path) -> None:
    clip_path = real_clip("bikes.mp4")
    data = tmp_path / "train.jsonl"
    data.write_text(
        json.dumps(
            {
                "video": str(clip_path),
                "question": "Who rides?",
                "answer": "cyclists",
                "start_s": 2,
                "end_s": 3,
            }
        )
        + "\n"
    )
    source = JsonlClips(read_jsonl(data), n_chunks=2, frames_per_chunk=2, fps=2.0)
    clip = source.clip(np.random.default_rng(0))
    assert clip.frames.shape[0] == 4 and clip.frames.dtype == np.uint8
    assert clip.evidence and clip.times == sorted(clip.times)
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"video": "missing.mp4"}\nnot json\n')
    with pytest.raises(ValueError, match=r"bad\.jsonl:1: no such video"):
        read_jsonl(bad)


def test_in_process_clip_evaluation(base: Path) -> None:
    """The quick training-time check: the serving path on evaluation clips, judged per question kind."""
    from longwatch.model.eval.clips import evaluate_clips

    lm = load_model(ModelConfig(path=base))
    everything = evaluate_clips(lm, n=3, top_k=2, n_chunks=2)  # top-k covers every chunk
    assert everything.recalled == [True, True, True]
    assert sum(len(v) for v in everything.correct.values()) == 3
    accuracy = everything.accuracy()
    assert accuracy["recall@k"] == 1.0 and all(0.0 <= v <= 1.0 for v in accuracy.values())
    one = evaluate_clips(lm, n=3, top_k=1, n_chunks=3)
    assert len(one.recalled) == 3  # one chunk of three: recall now depends on retrieval


def test_evidence_leads_measure_the_needle_chunks_lead_as_asks_margin_reads_it(base: Path) -> None:
    from longwatch.model.answer import question_vector
    from longwatch.model.eval.clips import compress_clip, evidence_leads

    lm = load_model(ModelConfig(path=base))
    source = NeedleClips(n_chunks=3, all_questions=True, distractor_pool=2)
    leads = evidence_leads(lm, source, 2)
    assert len(leads.leads) == 2 * len(QUESTION_KINDS)  # every question of every clip
    # Each lead is the needle chunk's score less the best of the clip's other chunks, pool included.
    clip = source.clip(np.random.default_rng([0, 0, 11]))
    assert clip.n_chunks == 5
    vectors = torch.stack([c.retrieval for c in compress_clip(lm, clip, 16, 4, 0.1)])
    scores = vectors @ question_vector(lm, clip.question)
    others = [c for c in range(clip.n_chunks) if c not in clip.evidence]
    assert leads.leads[0] == pytest.approx(
        float(scores[clip.evidence].max() - scores[others].max()), abs=1e-4
    )
    # A margin keeps a distractor where the lead is under it, and drops the needle where it is under minus it.
    low = min(leads.leads)
    assert leads.share_within(low - 0.01) == 0.0 and leads.share_within(max(leads.leads)) == 1.0
    assert leads.share_left_out(-low + 0.01) == 0.0


def test_a_distractor_pool_adds_chunks_to_clips_of_several_and_changes_nothing_without_one() -> None:
    plain, pooled = (
        NeedleClips(min_chunks=1, short_chunks=(1,)),
        NeedleClips(min_chunks=1, short_chunks=(1,), distractor_pool=5),
    )
    for i in range(16):
        a, b = plain.clip(np.random.default_rng([4, i])), pooled.clip(np.random.default_rng([4, i]))
        assert a.keep_chunks is None
        if a.n_chunks == 1:  # a single chunk has no others to choose among
            assert b.keep_chunks is None and np.array_equal(a.frames, b.frames)
        else:
            assert (b.n_chunks, b.keep_chunks) == (a.n_chunks + 5, a.n_chunks)
    clip = NeedleClips(n_chunks=3, distractor_pool=5).clip(np.random.default_rng(4))
    assert (clip.n_chunks, clip.keep_chunks) == (8, 3)
    other = next(c for c in range(8) if c not in clip.evidence)
    cut = clip.subset(sorted([other, clip.evidence[0]]))
    assert cut.n_chunks == 2 and cut.keep_chunks is None
    assert cut.times[cut.evidence[0] * 8] == clip.times[clip.evidence[0] * 8]  # the needle's chunk kept
    assert np.array_equal(cut.frames[cut.evidence[0] * 8], clip.frames[clip.evidence[0] * 8])
    with pytest.raises(ValueError, match="must keep the evidence"):
        clip.subset([c for c in range(clip.n_chunks) if c not in clip.evidence][:2])


def test_hardest_chunks_are_the_ones_asks_retrieval_ranks_first() -> None:
    from longwatch.model.answer import question_vector
    from longwatch.model.compressor import run_chunk
    from longwatch.model.train.trainer import hardest_chunks

    lm = load_model(ModelConfig())  # the shipped demo model: its retrieval has something to rank
    source = NeedleClips(n_chunks=3, distractor_pool=9, split="eval")
    for i in range(3):
        clip = source.clip(np.random.default_rng([5, i]))
        kept = hardest_chunks(lm, clip, 0.1, 4, lm.prefix_kv)
        # Scored the way the service's Ask scores stored chunks.
        with torch.no_grad():
            chunks = clip_chunks(lm, clip, 0.1, 4)
            vectors = [run_chunk(lm, c, 16, lm.prefix_cache(), lm.prefix_len).retrieval for c in chunks]
            scores = torch.stack(vectors) @ question_vector(lm, clip.question)
        others = [c for c in range(clip.n_chunks) if c not in clip.evidence]
        ranked = sorted(others, key=lambda c: -float(scores[c]))
        assert kept == sorted(clip.evidence + ranked[:2])
        assert kept == sorted(kept) and clip.evidence[0] in kept


def test_a_clip_that_opens_the_stream_keeps_its_opening_among_the_hardest_chunks() -> None:
    """Else retrieval would learn the opening is no answer only when it already ranks high."""
    from longwatch.model.train.trainer import hardest_chunks

    lm = load_model(ModelConfig())
    source = NeedleClips(n_chunks=3, distractor_pool=9, split="eval", stream_start_share=1.0)
    clips = [source.clip(np.random.default_rng([6, i])) for i in range(6)]
    later = [c for c in clips if c.evidence != [0]]
    assert len(later) >= 3 and all(c.opens_stream for c in later)
    for clip in later[:3]:
        kept = hardest_chunks(lm, clip, 0.1, 4, lm.prefix_kv)
        assert len(kept) == 3 and kept[0] == 0 and clip.evidence[0] in kept
        assert clip.subset(kept).opens_stream


def test_a_rollover_share_puts_that_share_of_needles_where_the_hundreds_digit_turns_over() -> None:
    def turns(clip: TrainingClip) -> bool:
        start = clip.times[clip.evidence[0] * clip.frames_per_chunk]
        return int(start // 100) != int((start + clip.frames_per_chunk - 1) // 100)

    plain = NeedleClips(n_chunks=4, haystack_s=1000)
    half = NeedleClips(n_chunks=4, haystack_s=1000, rollover_share=0.5)
    shares = []
    for source in (plain, half):
        clips = [source.clip(np.random.default_rng([8, i])) for i in range(200)]
        assert all(c.times == sorted(c.times) and len(set(c.times)) == len(c.times) for c in clips)
        assert all(c.needle.start_s in c.times[c.evidence[0] * 8 : (c.evidence[0] + 1) * 8] for c in clips)
        shares.append(np.mean([turns(c) for c in clips]))
    # At random few needle chunks hold a multiple of 100 s inside them (5 of the 125 of 1000 s).
    assert shares[0] < 0.15 and 0.45 < shares[1] < 0.65
    # Under 100 s there is no such chunk: the clip stays as drawn.
    short = NeedleClips(n_chunks=4, haystack_s=90, rollover_share=1.0).clip(np.random.default_rng(1))
    assert short.times == NeedleClips(n_chunks=4, haystack_s=90).clip(np.random.default_rng(1)).times


def test_a_turnover_share_runs_that_share_of_rollover_needles_across_the_hundreds_turnover() -> None:
    def across(clip: TrainingClip) -> bool:
        turn = (int(clip.needle.start_s) // 100 + 1) * 100
        shown = [t for t in clip.times if clip.needle.start_s <= t < clip.needle.end_s]
        return bool(shown) and shown[0] < turn <= shown[-1]  # on frames both sides of it

    rollover = NeedleClips(n_chunks=4, haystack_s=1000, rollover_share=1.0)
    half = NeedleClips(n_chunks=4, haystack_s=1000, rollover_share=1.0, turnover_share=0.5)
    drawn = {}
    for name, source in (("rollover", rollover), ("half", half)):
        clips = [source.clip(np.random.default_rng([6, i])) for i in range(200)]
        # The needle still starts on one of its chunk's frames, and the clip is as long.
        assert all(c.needle.start_s in c.times[c.evidence[0] * 8 : (c.evidence[0] + 1) * 8] for c in clips)
        assert all(len(c.times) == 32 for c in clips)
        drawn[name] = np.mean([across(c) for c in clips])
    # At random about one rollover needle in nine runs across it; the share adds half of the rest.
    assert drawn["rollover"] < 0.2 and 0.45 < drawn["half"] < 0.7
    # It moves the needle inside its chunk, not the chunks, nor what the needle is.
    for i in range(20):
        a, b = rollover.clip(np.random.default_rng([6, i])), half.clip(np.random.default_rng([6, i]))
        assert a.times == b.times and a.evidence == b.evidence
        assert (a.needle.shape, a.needle.colour, a.needle.digit) == (
            b.needle.shape,
            b.needle.colour,
            b.needle.digit,
        )


def test_a_straddle_share_runs_that_share_of_needles_into_the_next_chunk_of_the_clip() -> None:
    def spans(clip: TrainingClip) -> list[list[float]]:
        f = clip.frames_per_chunk
        return [clip.times[c * f : (c + 1) * f] for c in clip.evidence]

    def shown(clip: TrainingClip, times: list[float]) -> list[float]:
        return [t for t in times if clip.needle.start_s <= t < clip.needle.end_s]

    plain = NeedleClips(n_chunks=4, haystack_s=1000)
    half = NeedleClips(n_chunks=4, haystack_s=1000, straddle_share=0.5)
    both = NeedleClips(n_chunks=4, haystack_s=1000, straddle_share=1.0, rollover_share=1.0)
    drawn = {}
    for name, source in (("plain", plain), ("half", half), ("both", both)):
        clips = [source.clip(np.random.default_rng([5, i])) for i in range(200)]
        assert all(c.times == sorted(c.times) and len(set(c.times)) == len(c.times) for c in clips)
        assert all(len(c.times) == 32 for c in clips)
        drawn[name] = clips
    assert all(len(c.evidence) == 1 for c in drawn["plain"])
    straddling = [c for c in drawn["half"] if len(c.evidence) == 2]
    assert 0.4 < len(straddling) / 200 < 0.6
    for clip in straddling + drawn["both"]:
        first, following = spans(clip)
        # Two chunks next to each other in the haystack, the needle on frames of both.
        assert clip.evidence[1] == clip.evidence[0] + 1 and following[0] == first[-1] + 1.0
        assert shown(clip, first) and shown(clip, following)
        # The answer to "when" is its start, in the first of them.
        assert first[0] <= clip.needle.start_s <= first[-1]
    # With the rollover draw, the hundreds digit turns over across the two chunks' frames.
    assert all(
        int(spans(c)[0][0] // 100) != int(spans(c)[1][0] // 100)
        or int(spans(c)[0][0] // 100) != int(spans(c)[0][-1] // 100)
        for c in drawn["both"]
    )
    # A one-chunk clip has no next chunk to run into.
    single = NeedleClips(n_chunks=1, haystack_s=1000, straddle_share=1.0).clip(np.random.default_rng(3))
    assert len(single.evidence) == 1


def test_retrieval_loss_takes_either_evidence_chunk_as_the_answer() -> None:
    scores = torch.tensor([0.5, 3.0, -1.0, 0.2])
    one = retrieval_loss(scores, torch.tensor([1]))
    assert torch.allclose(one, F.cross_entropy(scores[None], torch.tensor([1])))
    # Two evidence chunks: the loss is the same however their share is split between them...
    split = [
        retrieval_loss(torch.tensor([a, b, -9.0, -9.0]), torch.tensor([0, 1])) for a, b in ((5, 5), (9, 1))
    ]
    assert all(x < 0.01 for x in split)
    # ...and it is high when a chunk outside them scores highest.
    assert retrieval_loss(torch.tensor([0.0, 0.0, 6.0, 0.0]), torch.tensor([0, 1])) > 4


def test_a_retrieval_margin_pushes_the_best_other_chunk_down_until_the_evidence_leads_by_it() -> None:
    evidence = torch.tensor([0])
    # A lead of 7 leaves the cross-entropy near zero, and so the ranking without a gradient...
    scores = torch.tensor([7.0, 0.0, -5.0], requires_grad=True)
    retrieval_loss(scores, evidence).backward()
    assert scores.grad.abs().max() < 0.002
    # ...where a margin of 10 pays 3 for it and pulls those two chunks apart, the rest left alone.
    scores.grad = None
    loss = retrieval_loss(scores, evidence, margin=10.0)
    loss.backward()
    assert loss.item() == pytest.approx(3.0, abs=0.01)
    assert scores.grad[0] < -0.99 and scores.grad[1] > 0.99 and abs(scores.grad[2]) < 0.001
    # At the margin or past it, nothing is added; nor for a clip of evidence alone.
    for lead in (10.0, 25.0):
        assert retrieval_loss(torch.tensor([lead, 0.0]), evidence, margin=10.0) == retrieval_loss(
            torch.tensor([lead, 0.0]), evidence
        )
    assert retrieval_loss(torch.tensor([1.0, 2.0]), torch.tensor([0, 1]), margin=10.0) == 0.0
    # Across two evidence chunks, the better one's lead counts.
    assert retrieval_loss(torch.tensor([2.0, 9.0, 0.0]), torch.tensor([0, 1]), margin=10.0) == pytest.approx(
        1.0, abs=0.01
    )
    with pytest.raises(ValueError, match="retrieval_margin must be >= 0"):
        TrainConfig(retrieval_margin=-1.0)


def test_a_stream_start_share_opens_that_share_of_clips_at_the_streams_start() -> None:
    plain = NeedleClips(n_chunks=4, haystack_s=3600)
    half = NeedleClips(n_chunks=4, haystack_s=3600, stream_start_share=0.5)
    depth0 = NeedleClips(n_chunks=4, haystack_s=3600, stream_start_share=1.0, stream_start_needle=True)
    drawn = {}
    for name, source in (("plain", plain), ("half", half), ("depth0", depth0)):
        clips = [source.clip(np.random.default_rng([9, i])) for i in range(400)]
        assert all(c.times == sorted(c.times) and len(set(c.times)) == len(c.times) for c in clips)
        assert all(c.needle.start_s in c.times[c.evidence[0] * 8 : (c.evidence[0] + 1) * 8] for c in clips)
        # A clip opens its stream exactly when its first chunk starts the haystack.
        assert all(c.opens_stream == (c.times[0] == 0.0) for c in clips)
        drawn[name] = clips
    # At random a clip of an hour holds the stream's first chunk about once in a hundred.
    assert np.mean([c.opens_stream for c in drawn["plain"]]) < 0.05
    opened = [c for c in drawn["half"] if c.opens_stream]
    assert 0.4 < len(opened) / 400 < 0.6
    # Training's opening chunk holds the needle as often as any other of the clip's four chunks,
    # so that it is no cue where the needle is; the other three times it is haystack.
    assert 0.15 < np.mean([c.evidence == [0] for c in opened]) < 0.35
    # The depth-0 evaluation puts every needle there, half of them on the stream's first frame
    # (one in eight would be at random).
    assert all(c.opens_stream and c.evidence == [0] for c in drawn["depth0"])
    assert 0.4 < np.mean([c.needle.start_s == 0.0 for c in drawn["depth0"]]) < 0.6


def test_training_opens_no_one_chunk_clip_at_the_streams_start() -> None:
    """A one-chunk clip at the stream's start would hold the needle there every time: a cue."""
    source = NeedleClips(
        n_chunks=4, min_chunks=1, short_chunks=(1, 2), haystack_s=600, stream_start_share=1.0
    )
    plain = replace(source, stream_start_share=0.0)
    drawn = [
        (source.clip(np.random.default_rng([4, i])), plain.clip(np.random.default_rng([4, i])))
        for i in range(300)
    ]
    clips = [c for c, _ in drawn]
    single = [(c, p) for c, p in drawn if len(c.times) == c.frames_per_chunk]
    several = [c for c in clips if len(c.times) > c.frames_per_chunk]
    assert len(single) > 100 and len(several) > 100
    # One-chunk clips are drawn as with no share at all: at the stream's start only by chance.
    assert all(c.times == p.times and c.needle == p.needle for c, p in single)
    assert all(c.opens_stream for c in several)
    # So the opening holds the needle in a share of clips set by their chunk counts, not in half.
    assert np.mean([c.evidence == [0] and c.opens_stream for c in clips]) < 0.25
    # The depth-0 evaluation still opens every clip, one chunk or more, with the needle there.
    depth0 = replace(source, stream_start_needle=True)
    assert all(
        c.opens_stream and c.evidence == [0]
        for c in (depth0.clip(np.random.default_rng([4, i])) for i in range(50))
    )


def test_only_the_streams_first_chunk_is_laid_out_as_the_service_lays_out_chunk_0(base: Path) -> None:
    """The trainer writes the stream's first label without "," as the service does, and only there."""
    from longwatch.model.compressor import build_chunk_sequence
    from longwatch.model.loading import frame_label

    lm = load_model(ModelConfig(path=base))
    source = NeedleClips(n_chunks=3, haystack_s=600, stream_start_share=1.0, stream_start_needle=True)
    clip = source.clip(np.random.default_rng(3))
    assert clip.opens_stream and clip.times[0] == 0.0
    chunks = clip_chunks(lm, clip, 0.1, 4)
    assert [c.first_in_stream for c in chunks] == [True, False, False]
    seq = build_chunk_sequence(lm, chunks[0], alpha=16)
    label = lm.tokenize(frame_label(0.0, first_in_stream=True))
    assert seq.ids[: len(label)] == label and lm.tokenize(",")[0] not in label
    # Cut to chunks without the first, a clip no longer opens its stream; with it, it still does.
    assert clip.subset([0, 2]).opens_stream
    later = replace(clip, evidence=[1]).subset([1, 2])
    assert not later.opens_stream
    assert not any(c.first_in_stream for c in clip_chunks(lm, later, 0.1, 4))
