"""`longwatch train`: the trainer (trainer.py) wired to its data (clips.py, datasets.py) and outputs.

One stage (`--stage summary` or `base`) trains into OUT; `--stage demo` runs the demo model's
recipe, stage by stage, resuming where it stopped. Under torchrun each process trains its share
of every step (distributed.py).
"""

from __future__ import annotations

import argparse
import json
import shutil
from dataclasses import asdict, dataclass, replace
from pathlib import Path

from tqdm import tqdm

from longwatch.model.checkpoint import checkpoint_fingerprint
from longwatch.model.config import ModelConfig
from longwatch.model.loading import load_model
from longwatch.model.train.clips import DIGIT_BALANCED_HAYSTACKS_S, ClipSource, NeedleClips, corpus
from longwatch.model.train.datasets import JsonlClips, read_examples
from longwatch.model.train.distributed import barrier, world_from_env
from longwatch.model.train.distributed import start as start_world
from longwatch.model.train.distributed import stop as stop_world
from longwatch.model.train.needles import ANSWER_FORMAT
from longwatch.model.train.trainer import StepMetrics, TrainConfig, Trainer, frame_budget, new_base
from longwatch.model.train.vocab import extend_vocabulary


def train_config_from_args(args: argparse.Namespace, stage: str) -> TrainConfig:
    base = stage == "base"
    return TrainConfig(
        stage=stage,
        steps=args.steps if stage != "summary" or args.stage == "summary" else args.summary_steps,
        lr=args.lr if stage != "summary" or args.stage == "summary" else args.lr / 3,
        seed=args.seed,
        alphas=tuple(int(a) for a in args.alphas.split(",")),
        vision_steps=args.vision_steps if base else 0,
        pretrain_vision_lr=args.pretrain_vision_lr,
        freeze_vision_steps=args.freeze_vision_steps if base else 0,
        copy_steps=args.copy_steps if base else 0,
        reading_steps=args.reading_steps if base else 0,
        checkpoint_every=args.checkpoint_every,
        clips_per_step=args.clips_per_step,
        max_tokens_per_frame=args.max_tokens_per_frame,
        autocast=args.autocast,
        checkpointing=args.checkpointing,
        verdict_words=args.verdict_words if base else 0,
    )


def refine_config_from_args(args: argparse.Namespace) -> TrainConfig:
    """Stage demo's last stage: every weight again, on the full mixture, at a lower rate.

    It is where a decoder from scratch learns to say "when" through summary tokens (more steps
    inside the base stage's own cosine did not do it). docs/demo-model.md has the
    figures by refine length and why its clips are cut from DIGIT_BALANCED_HAYSTACKS_S.
    """
    base = train_config_from_args(args, "base")
    return replace(
        base,
        steps=args.refine_steps,
        lr=args.refine_lr,
        vision_steps=0,
        freeze_vision_steps=0,
        copy_steps=0,
        reading_steps=0,
        warmup_steps=50,
    )


def train_stage(
    config: TrainConfig,
    out: Path,
    base: Path | None,
    source: ClipSource,
    args: argparse.Namespace,
    adapter: Path | None = None,
    label: str | None = None,
) -> Path:
    """Run one stage into `out` (resuming from its checkpoint); returns the base folder its adapter fits.

    Stage base starts from `base` when one is given (every weight trains on), else from scratch.
    label: what the progress bar calls it (default: the config's stage).
    """
    world = world_from_env()
    device = start_world(world, args.device)
    out.mkdir(parents=True, exist_ok=True)
    model_config = ModelConfig(device=device, dtype=args.dtype, attn_implementation=args.attn)
    if config.stage == "base" and base is None:
        base = out / "init"
        if world.is_main and not (base / "config.json").exists():
            new_base(base, config.seed, model_config.system_prompt, size=args.size)
        barrier(world)
    model_config.path = base
    model_config.adapter = adapter  # a summary stage starts from the summary tokens it is given
    lm = load_model(model_config, state_dir=Path(args.state_dir) if args.state_dir else None)
    if isinstance(source, JsonlClips):  # the user's frames, cached at the size the model takes them
        source = replace(source, max_tokens_per_frame=frame_budget(lm, config))
    reading = copy = None
    if isinstance(source, NeedleClips):
        reading = replace(source, n_chunks=1, min_chunks=None)
        copy = replace(
            source, n_chunks=1, min_chunks=None, short_chunks=(), frames_per_chunk=1, kinds=("when",)
        )
    trainer = Trainer(lm, source, config, out, reading_source=reading, copy_source=copy, world=world)
    if trainer.load_checkpoint() and world.is_main:
        print(f"resuming {out} at step {trainer.step}/{config.total_steps}")
    with tqdm(
        total=config.total_steps,
        initial=trainer.step,
        unit="step",
        desc=f"train {label or config.stage}",
        disable=not world.is_main or None,
    ) as bar:

        def progress(m: StepMetrics) -> None:
            bar.update(1)
            bar.set_postfix(
                phase=m.phase, loss=f"{m.loss:.3f}", **{k: f"{v:.3f}" for k, v in m.parts.items()}
            )

        trainer.run(progress)
    if world.is_main:
        if config.stage == "base":
            base = trainer.save_base(out / "base")
        fingerprint = lm.base_fingerprint if config.stage == "summary" else checkpoint_fingerprint(base)
        trainer.save_adapter(out / "adapter", fingerprint)
        print(f"saved {out / 'adapter'}" + (f" and {base}" if config.stage == "base" else ""))
    barrier(world)
    return out / "base" if config.stage == "base" else base


def hard_config_from_args(args: argparse.Namespace, steps: int, lr: float) -> TrainConfig:
    """Stage demo's hard stages: the refinement again, from the model before, on clips as hard as Ask's.

    Every weight trains at one rate, the vision tower's too: codec artefacts are what it has to
    learn to see through.
    """
    return replace(refine_config_from_args(args), steps=steps, lr=lr, vision_lr=lr)


def hard_clips(
    args: argparse.Namespace, source: ClipSource, straddle_share: float, turnover_share: float = 0.0
) -> ClipSource:
    """The hard stages' clips: the --hard-* flags' draws, with needles across two chunks and across a
    hundreds turnover at these shares."""
    if not isinstance(source, NeedleClips):
        return source
    return replace(
        source,
        haystack_lengths=DIGIT_BALANCED_HAYSTACKS_S,
        codec_share=args.hard_codec_share,
        distractor_pool=args.hard_distractor_pool,
        rollover_share=args.hard_rollover_share,
        stream_start_share=args.hard_stream_start_share,
        straddle_share=straddle_share,
        turnover_share=turnover_share,
    )


@dataclass
class DemoPhase:
    """One stage of `--stage demo`, trained into OUT/runs/<name>."""

    name: str
    config: TrainConfig
    source: ClipSource

    def describe(self, args: argparse.Namespace) -> dict:
        """What decides this stage's weights, as JSON: its config (less how often it checkpoints) and data."""
        config = {k: v for k, v in asdict(self.config).items() if k != "checkpoint_every"}
        data = asdict(self.source) if isinstance(self.source, NeedleClips) else {"jsonl": str(args.data)}
        return json.loads(json.dumps({"stage": self.name, "config": config, "data": data}))


FINISHED = "finished.json"


def demo_phases(args: argparse.Namespace, source: ClipSource) -> list[DemoPhase]:
    """The stages of `--stage demo`, in order: base from scratch, its summary tokens, refine, hard, polish."""
    phases = [
        DemoPhase("base", train_config_from_args(args, "base"), source),
        DemoPhase("summary", train_config_from_args(args, "summary"), source),
    ]
    needles = isinstance(source, NeedleClips)
    if args.refine_steps > 0:
        refine_source = replace(source, haystack_lengths=DIGIT_BALANCED_HAYSTACKS_S) if needles else source
        phases.append(DemoPhase("refine", refine_config_from_args(args), refine_source))
    if args.hard_steps > 0:
        hard = hard_config_from_args(args, args.hard_steps, args.hard_lr)
        phases.append(DemoPhase("hard", hard, hard_clips(args, source, args.hard_straddle_share)))
    if args.polish_steps > 0:
        # The hard stage's clips again at a lower rate, some across a chunk boundary: the shipped
        # model's last stage (a longer one at the hard stage's rate lost on the clip checks;
        # docs/experiments.md).
        polish = hard_config_from_args(args, args.polish_steps, args.polish_lr)
        polish = replace(polish, retrieval_margin=args.polish_retrieval_margin)
        clips = hard_clips(args, source, args.polish_straddle_share, args.polish_turnover_share)
        phases.append(DemoPhase("polish", polish, clips))
    return phases


def finished_phase(out: Path, phases: list[DemoPhase], lineage: list[dict]) -> tuple[int, Path, Path] | None:
    """The last stage already finished in `out` by this very recipe: (its number, base, adapter).

    lineage: each stage's `describe()`; a stage counts as finished only if it recorded the same
    stages up to itself.
    """
    for i in reversed(range(len(phases))):
        marker = out / "runs" / phases[i].name / FINISHED
        if marker.exists():
            done = json.loads(marker.read_text())
            if done["lineage"] == lineage[: i + 1]:
                return i, out / done["base"], out / done["adapter"]
    return None


def start_from(out: Path, phases: list[DemoPhase], lineage: list[dict], model: Path) -> None:
    """Take `model` (base/ + adapter/, a demo model) as what the recipe's stages before its last made.

    Copies it into that stage's folder and marks it finished, noting where it came from, so that
    the command trains the last stage alone (hours of earlier stages skipped). Nothing is done
    where that stage or a later one is already finished.
    """
    if len(phases) < 2:
        raise ValueError("--start-from needs a recipe of two or more stages")
    for part in ("base/config.json", "adapter/adapter_config.json"):
        if not (model / part).is_file():
            raise ValueError(f"--start-from {model}: no {part} (a demo model folder has base/ and adapter/)")
    i = len(phases) - 2
    done = finished_phase(out, phases, lineage)
    if done is not None and done[0] >= i:
        return
    folder = out / "runs" / phases[i].name
    for name in ("base", "adapter"):
        if (folder / name).exists():
            shutil.rmtree(folder / name)
        shutil.copytree(model / name, folder / name)
    if isinstance(phases[-1].source, NeedleClips):  # words and answers the needles' questions may now use
        card_path = folder / "base" / "longwatch.json"
        card = json.loads(card_path.read_text())
        if "answer_format" in card:
            card_path.write_text(
                json.dumps({**card, "answer_format": ANSWER_FORMAT}, indent=2, sort_keys=True) + "\n"
            )
        added = extend_vocabulary(folder / "base", corpus(ModelConfig().system_prompt), folder / "adapter")
        if added:
            print(f"{model}: vocabulary extended by {len(added)} words: {' '.join(added)}")
    marker = {"lineage": lineage[: i + 1], "base": f"runs/{phases[i].name}/base"}
    marker |= {"adapter": f"runs/{phases[i].name}/adapter", "from": str(model)}
    (folder / FINISHED).write_text(json.dumps(marker, indent=2) + "\n")


def run_train(args: argparse.Namespace) -> int:
    """`longwatch train`: one stage, or `--stage demo` = base from scratch, its summary tokens, refinements.

    The demo stage leaves `OUT/base` and `OUT/adapter`, the layout the service loads as its
    built-in model (model/demo/ in the repository). A stage it finishes is marked with what it
    was trained from (FINISHED); run again, the command goes on after the last stage finished by
    this same recipe, resuming the next one from its checkpoint.
    """
    out = Path(args.out)
    width, height = args.frame_size
    source: ClipSource = (
        NeedleClips(
            min_chunks=1,
            short_chunks=(1, 2, 4),
            all_questions=True,
            width=width,
            height=height,
            needle_px=args.needle_px,
            needle_px_share=args.needle_px_share,
            rendering=args.rendering,
            yes_no_share=args.yes_no_share,
            yes_no_described=args.yes_no_described,
        )
        if args.data == "needles"
        else JsonlClips(read_examples(Path(args.data), args.video_root))
    )
    if args.stage == "demo" and world_from_env().size > 1:
        raise ValueError("--stage demo runs in one process; torchrun trains one stage (summary or base)")
    if args.stage == "summary" and args.base is None:
        raise ValueError("--stage summary needs --base (a VideoLLaMA3 checkpoint folder)")
    shares = ("hard_codec_share", "hard_rollover_share", "hard_stream_start_share", "hard_straddle_share")
    for flag in (
        *shares,
        "polish_straddle_share",
        "polish_turnover_share",
        "needle_px_share",
        "yes_no_share",
    ):
        if not 0.0 <= getattr(args, flag) <= 1.0:
            raise ValueError(f"--{flag.replace('_', '-')} must be in [0, 1], got {getattr(args, flag)}")
    if args.verdict_words < 0 or (
        args.verdict_words and not (args.data == "needles" and args.yes_no_described)
    ):
        raise ValueError(
            f"--verdict-words needs --yes-no-described and a count >= 0, got {args.verdict_words}"
        )
    if args.polish_retrieval_margin < 0:
        raise ValueError(f"--polish-retrieval-margin must be >= 0, got {args.polish_retrieval_margin}")
    if args.hard_distractor_pool < 0:
        raise ValueError(f"--hard-distractor-pool must be >= 0, got {args.hard_distractor_pool}")
    if args.start_from is not None and args.stage != "demo":
        raise ValueError("--start-from needs --stage demo")
    if args.score_margin is not None and (args.stage != "demo" or args.score_margin < 0):
        raise ValueError(f"--score-margin needs --stage demo and a margin >= 0, got {args.score_margin}")
    if args.stage != "demo":
        try:
            train_stage(train_config_from_args(args, args.stage), out, args.base, source, args, args.adapter)
        finally:
            stop_world(world_from_env())
        return 0
    phases = demo_phases(args, source)
    lineage = [p.describe(args) for p in phases]
    if args.start_from is not None:
        start_from(out, phases, lineage, Path(args.start_from))
    base: Path | None = None
    adapter: Path | None = None
    first = 0
    if done := finished_phase(out, phases, lineage):
        first, base, adapter = done[0] + 1, done[1], done[2]
        print(f"{out}: stages up to {phases[done[0]].name} already finished")
    for i in range(first, len(phases)):
        phase = phases[i]
        folder = out / "runs" / phase.name
        # The base stage trains summary tokens jointly; each later stage starts from the last adapter.
        base = train_stage(phase.config, folder, base, phase.source, args, adapter, phase.name)
        adapter = folder / "adapter"
        marker = {
            "lineage": lineage[: i + 1],
            "base": str(base.relative_to(out)),
            "adapter": str(adapter.relative_to(out)),
        }
        (folder / FINISHED).write_text(json.dumps(marker, indent=2) + "\n")
    for name, src in (("base", base), ("adapter", adapter)):
        if (out / name).exists():
            shutil.rmtree(out / name)
        shutil.copytree(src, out / name)
    if args.score_margin is not None:  # how Ask serves this model (`score_margin_for_model`)
        card_path = out / "base" / "longwatch.json"
        card = json.loads(card_path.read_text())
        card_path.write_text(
            json.dumps({**card, "score_margin": args.score_margin}, indent=2, sort_keys=True) + "\n"
        )
    print(f"demo model in {out}: base/ and adapter/")
    return 0
