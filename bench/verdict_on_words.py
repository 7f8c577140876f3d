"""Does a decoder learn a described yes/no answer's verdict from words alone (no video)?

    python bench/verdict_on_words.py --model DIR      # DIR's decoder (a demo model folder)
    python bench/verdict_on_words.py --model DIR --fresh 4x128 --kv-heads 4   # a fresh one, DIR's words
    python bench/verdict_on_words.py --model DIR --quick

The verdict of a described yes/no answer ("Did a red circle appear?" "a blue circle, no")
follows from the question's words and the answer's own: no footage is needed to learn it. Each
step trains the verdict token alone (the description is given, as in teacher forcing) on a batch
of yes/no questions from the trainer's own phrasings, and every `--every` steps a row reports
the verdict's accuracy on 512 fixed examples, by case: the needle asked about ("yes"), nothing
seen ("no-nothing"), another kind or shape ("no-kind"), another digit ("no-digit"), or the same
shape in another colour ("no-colour"). A trained model's decoder runs after its system prompt,
as served; a fresh one (Qwen2 layout, 4 heads) without one. DIR must know the words of a
described answer ("nothing", "yes", "no": a model trained with --yes-no-described; the built-in
model does not). Nothing is saved.
docs/experiments.md has what it found.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import bench_main, load_model_folder  # noqa: E402

from longwatch.model.loading import DEMO_MODEL_DIR  # noqa: E402
from longwatch.model.train.needles import (  # noqa: E402
    NO,
    YES,
    YES_NO_CASES,
    Needle,
    described_answer,
    yes_no_on_words,
)
from longwatch.model.train.trainer import verdict_batch  # noqa: E402

EVAL_EXAMPLES = 512


class WordsDecoder:
    """A decoder to train on words: `logits(ids)` (batch, length, vocab), its parameters, its prefix."""

    def __init__(self, model_dir: Path | None, fresh: str | None, kv_heads: int, seed: int) -> None:
        torch.manual_seed(seed)
        folder = model_dir or DEMO_MODEL_DIR
        lm = load_model_folder(str(folder))
        self.lm = lm  # its words (a fresh decoder's too) and the batches' layout
        circle = Needle(0.0, 1.0, "circle", "red")
        answers = (described_answer(None, NO), described_answer(circle, YES), described_answer(circle, NO))
        if any(lm.tokenizer.unk_token_id in lm.tokenize(a) for a in answers):
            raise SystemExit(
                f"{folder} lacks the words of {answers}: give --model one trained with --yes-no-described"
            )
        if fresh:
            from transformers import Qwen2Config, Qwen2ForCausalLM

            layers, hidden = (int(x) for x in fresh.split("x"))
            config = Qwen2Config(
                vocab_size=len(lm.tokenizer),
                hidden_size=hidden,
                intermediate_size=hidden * 5 // 2,
                num_hidden_layers=layers,
                num_attention_heads=4,
                num_key_value_heads=kv_heads,
                tie_word_embeddings=True,
                max_position_embeddings=512,
            )
            model = Qwen2ForCausalLM(config)
            self.prefix: list[int] = []
            self.params = list(model.parameters())
            self._logits: Callable[[torch.Tensor], torch.Tensor] = lambda ids: model(input_ids=ids).logits
        else:  # the model's decoder (all but the vision tower), after its system prompt
            lm.model.requires_grad_(False)
            vision = {id(p) for p in lm.model.model.vision_model.parameters()}
            self.params = [p for p in lm.model.parameters() if id(p) not in vision]
            for p in self.params:
                p.requires_grad_(True)
            self.prefix = list(lm.prefix_ids)
            self._logits = lambda ids: lm.model.lm_head(lm.language_model(input_ids=ids).last_hidden_state)

    def verdict_logits(self, examples: list[tuple[str, str, str]]) -> tuple[torch.Tensor, torch.Tensor]:
        """Logits that predict each example's verdict (batch, vocab), and the verdicts' ids (batch,)."""
        ids, verdict = verdict_batch(self.lm, [(q, a) for q, a, _ in examples], self.prefix)
        rows = torch.arange(len(examples))
        return self._logits(ids)[rows, verdict - 1].float(), ids[rows, verdict]


def fixed_examples() -> list[tuple[str, str, str]]:
    """The examples every row is measured on, the same for every run. There are only a few thousand
    different questions and answers, so training sees these too: the rows say whether the verdict
    is fitted at all, not how it generalises."""
    rng = np.random.default_rng(12345)
    return [yes_no_on_words(rng) for _ in range(EVAL_EXAMPLES)]


def accuracy(decoder: WordsDecoder, examples: list[tuple[str, str, str]]) -> dict[str, float]:
    """The verdict's accuracy by case, in percent."""
    with torch.no_grad():
        logits, target = decoder.verdict_logits(examples)
    right = (logits.argmax(-1) == target).tolist()
    out = {}
    for case in YES_NO_CASES:
        hits = [r for r, (_, _, c) in zip(right, examples, strict=True) if c == case]
        out[case] = round(100 * sum(hits) / max(1, len(hits)), 1)
    return out


def run(
    quick: bool,
    model: str | None,
    fresh: str | None,
    kv_heads: int,
    steps: int,
    lr: float,
    batch: int,
    seed: int,
    every: int,
) -> list[dict]:
    decoder = WordsDecoder(Path(model) if model else None, fresh, kv_heads, seed)
    steps, every = (20, 10) if quick else (steps, every)
    held = fixed_examples()
    opt = torch.optim.AdamW(decoder.params, lr=lr, weight_decay=0.0)
    rng = np.random.default_rng(seed)
    which = f"fresh {fresh}, {kv_heads} kv heads" if fresh else (model or "built-in")
    rows = [{"decoder": which, "step": 0, "loss": None, **accuracy(decoder, held), "s": 0.0}]
    start = time.perf_counter()
    for step in range(1, steps + 1):
        logits, target = decoder.verdict_logits([yes_no_on_words(rng) for _ in range(batch)])
        loss = F.cross_entropy(logits, target)
        opt.zero_grad()
        loss.backward()
        opt.step()
        if step % every == 0:
            row = {"decoder": which, "step": step, "loss": round(loss.item(), 3), **accuracy(decoder, held)}
            rows.append({**row, "s": round(time.perf_counter() - start, 1)})
            print(rows[-1], file=sys.stderr, flush=True)
    return rows


def add_arguments(parser) -> None:
    parser.add_argument(
        "--model", help="a model folder with base/ (and adapter/); default: the built-in model"
    )
    parser.add_argument("--fresh", metavar="LAYERSxHIDDEN", help="a fresh decoder of this size instead")
    parser.add_argument("--kv-heads", type=int, default=2, help="a fresh decoder's K/V heads (of 4)")
    parser.add_argument("--steps", type=int, default=4000)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--every", type=int, default=250, help="steps between rows")


if __name__ == "__main__":
    bench_main(run, __doc__.splitlines()[0], add_arguments)
