"""Does a chunk's in-model retrieval score tell a yes/no question's answer?

    python bench/yes_no_scores.py                     # the built-in model, the demo's needles
    python bench/yes_no_scores.py --model DIR --small # a model folder, 12-20 px varied needles
    python bench/yes_no_scores.py --quick

One-chunk yes/no clips of the eval split (the trainer's: a third without a needle, the rest
asked about the needle or about something else), each chunk compressed as the service stores
it. For every yes/no question the score is the chunk's retrieval vector against the question's,
as Ask and a watch compute it. Reported: the median score of each case and the AUC of "yes"
against each kind of "no" (0.5: the score cannot tell them apart; 1.0: every "yes" scores
above every "no"). docs/experiments.md has what it found.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import bench_main, load_model_folder  # noqa: E402

from longwatch.model.answer import question_vector  # noqa: E402
from longwatch.model.eval.clips import compress_clip  # noqa: E402
from longwatch.model.loading import DEMO_MODEL_DIR  # noqa: E402
from longwatch.model.train.clips import NeedleClips  # noqa: E402
from longwatch.model.train.needles import YES  # noqa: E402


def auc(positives: list[float], negatives: list[float]) -> float:
    """P(a positive scores above a negative), ties counting half."""
    p, n = np.array(positives)[:, None], np.array(negatives)[None, :]
    return float((p > n).mean() + 0.5 * (p == n).mean())


def run(quick: bool, model: str | None, small: bool, clips: int) -> list[dict]:
    folder = Path(model) if model else DEMO_MODEL_DIR
    lm = load_model_folder(model)
    needles = {"needle_px": (12, 20), "rendering": "varied"} if small else {}
    source = NeedleClips(
        n_chunks=1, split="eval", haystack_s=3600, yes_no_share=1.0, absent_share=1 / 3, **needles
    )
    scores: dict[str, list[float]] = {"yes": [], "no, another needle": [], "no, no needle": []}
    with torch.no_grad():
        for i in range(4 if quick else clips):
            clip = source.clip(np.random.default_rng([0, i, 7]))
            chunk = compress_clip(lm, clip, 16, 16, 0.1)[0]
            for question, answer in clip.questions_and_answers:
                if not question.startswith(("Did ", "Is there ")):
                    continue  # the needle's own what / colour / when questions
                if answer.endswith(YES):
                    case = "yes"
                else:
                    case = "no, another needle" if clip.evidence else "no, no needle"
                scores[case].append(float(chunk.retrieval @ question_vector(lm, question)))
    row: dict = {"model": str(folder), "needles": "12-20 px varied" if small else "demo"}
    for case, values in scores.items():
        row[f"{case}: n"] = len(values)
        row[f"{case}: median"] = round(float(np.median(values)), 1) if values else None
    if scores["yes"] and scores["no, another needle"] and scores["no, no needle"]:
        row["AUC yes / another"] = round(auc(scores["yes"], scores["no, another needle"]), 3)
        row["AUC yes / none"] = round(auc(scores["yes"], scores["no, no needle"]), 3)
    return [row]


def add_arguments(parser) -> None:
    parser.add_argument(
        "--model", help="a model folder with base/ (and adapter/); default: the built-in model"
    )
    parser.add_argument("--small", action="store_true", help="12-20 px needles in varied renderings")
    parser.add_argument("--clips", type=int, default=90)


if __name__ == "__main__":
    bench_main(run, __doc__.splitlines()[0], add_arguments)
