"""The demo model's yes/no question kind (what a watch asks of each chunk) and needle renderings.

Clips that ask "Did a red circle appear?" about the needle, about something else, or about
footage with no needle at all; fonts, strokes and shades of needles, with renderings kept out of
training; and a word-level demo model given the words of the new questions without changing what
it already says.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.nn import functional as F

from longwatch.model.answer import continue_logits
from longwatch.model.answer_format import AnswerFormat
from longwatch.model.config import ModelConfig
from longwatch.model.eval.clips import answer_clip, evaluate_clips
from longwatch.model.loading import load_model
from longwatch.model.train.clips import NeedleClips, corpus, vision_frames
from longwatch.model.train.needles import (
    ANSWER_FORMAT,
    COLOURS,
    DIGITS,
    FONTS,
    NO,
    NOTHING,
    RENDERINGS,
    YES,
    Needle,
    judge,
    needle_mask,
    random_needle,
    yes_no_on_words,
    yes_no_question,
)
from longwatch.model.train.trainer import TrainConfig, Trainer, answer_ids, new_base, verdict_words_loss
from longwatch.model.train.vocab import extend_vocabulary, missing_words

DEMO = Path(__file__).resolve().parents[1] / "model" / "demo"


def test_yes_no_clips_ask_about_the_needle_about_something_else_or_about_footage_without_one() -> None:
    plain = NeedleClips(n_chunks=3, all_questions=True)
    asking = NeedleClips(n_chunks=3, all_questions=True, yes_no_share=1.0)
    seen = {"yes": 0, "other": 0, "absent": 0}
    for i in range(60):
        a, b = plain.clip(np.random.default_rng([3, i])), asking.clip(np.random.default_rng([3, i]))
        assert b.kind == "did" and b.times == a.times and b.needle == a.needle
        f, held = a.frames_per_chunk, a.evidence
        needle_rows = np.zeros(len(a.frames), dtype=bool)
        for c in held:
            needle_rows[c * f : (c + 1) * f] = True
        # Every chunk without the needle is the same footage.
        assert np.array_equal(a.frames[~needle_rows], b.frames[~needle_rows])
        if not b.evidence:  # no needle drawn: "no", with nothing to find and nothing else to ask
            seen["absent"] += 1
            assert not np.array_equal(a.frames[needle_rows], b.frames[needle_rows])
            assert (b.answer, b.also_asked, b.unanchored) == (NO, [], (b.question,))
            continue
        assert np.array_equal(a.frames, b.frames) and b.evidence == held
        # The needle's own questions are asked of the same context too.
        assert set(a.questions_and_answers) <= set(b.also_asked)
        about_needle = (yes_no_question(a.needle), yes_no_question(a.needle, kind_only=True))
        about_it = b.question in about_needle
        # The other answer is asked of the same context: "yes" about the needle beside "no" about
        # something it is not.
        yes_no_also = [(q, w) for q, w in b.also_asked if w in (YES, NO)]
        assert len(yes_no_also) == 1
        (other_question, other_answer) = yes_no_also[0]
        if b.answer == YES:
            seen["yes"] += 1
            assert about_it
            assert other_answer == NO and other_question not in about_needle
            assert b.unanchored == (other_question,)  # no chunk holds what a "no" asks about
        else:
            seen["other"] += 1
            assert b.answer == NO and not about_it and b.unanchored == (b.question,)
            assert other_answer == YES and other_question in about_needle
    assert all(n >= 6 for n in seen.values()), seen


def test_described_yes_no_answers_say_what_was_seen_then_the_verdict_in_the_answer_format() -> None:
    plain = NeedleClips(n_chunks=2, all_questions=True, yes_no_share=1.0)
    described = replace(plain, yes_no_described=True)
    answers = set()
    for i in range(40):
        a, b = plain.clip(np.random.default_rng([5, i])), described.clip(np.random.default_rng([5, i]))
        # The same clip and questions; only the yes/no answers are longer.
        assert (a.question, a.evidence, a.unanchored) == (b.question, b.evidence, b.unanchored)
        seen = a.needle.phrase() if a.evidence else NOTHING
        assert b.answer == f"{seen}, {a.answer}"
        for (q, plain_answer), (q2, said) in zip(a.also_asked, b.also_asked, strict=True):
            assert q == q2 and (said == plain_answer or said == f"{seen}, {plain_answer}")
        answers.add(b.answer)
    assert {"nothing, no"} < answers and any(x.endswith(", yes") for x in answers)
    fmt = AnswerFormat.from_card({"answer_format": ANSWER_FORMAT})
    assert fmt is not None
    for text in answers | {"yes", "no", "the digit 7, no"}:
        assert fmt.complete(text), text
    assert not fmt.complete("nothing, yes")  # nothing seen is never a yes


def test_yes_no_questions_are_drawn_last_and_leave_other_clips_as_they_were() -> None:
    plain, some = NeedleClips(n_chunks=2), NeedleClips(n_chunks=2, yes_no_share=0.5)
    asked = 0
    for i in range(24):
        a, b = plain.clip(np.random.default_rng([5, i])), some.clip(np.random.default_rng([5, i]))
        if b.kind == "did":
            asked += 1
            continue
        assert (a.question, a.answer, a.evidence, a.needle) == (b.question, b.answer, b.evidence, b.needle)
        assert np.array_equal(a.frames, b.frames)
    assert 4 <= asked <= 20


def test_yes_no_answers_are_judged_by_the_expected_word_alone() -> None:
    needle = Needle(10.0, 2.0, "circle", "red")
    assert judge("did", "yes", needle, expected=YES)
    assert not judge("did", "no", needle, expected=YES)
    assert not judge("did", "yes no", needle, expected=NO)
    assert judge("did", "no", needle, expected=NO)
    with pytest.raises(ValueError, match="yes or no"):
        judge("did", "yes", needle)
    assert yes_no_question(needle) == "Did a red circle appear?"
    assert yes_no_question(Needle(0.0, 1.0, "digit", "blue", "7"), kind_only=True) == "Is there a digit?"


def test_every_font_draws_ten_different_digits_even_at_12_px_and_outlines_lie_inside_the_shape() -> None:
    for font in FONTS:
        for size in (12, 16, 40):
            masks = {d: needle_mask("digit", size, d, font).tobytes() for d in DIGITS}
            assert len(set(masks.values())) == 10, (font, size)
            assert all(needle_mask("digit", size, d, font).any() for d in DIGITS)
    for shape in ("circle", "square", "triangle"):
        for size in (12, 20, 40):
            filled, outline = needle_mask(shape, size), needle_mask(shape, size, stroke="outline")
            assert outline.any() and (outline <= filled).all() and outline.sum() < filled.sum()


def test_training_never_draws_the_held_out_renderings_and_a_rendering_changes_only_how_it_looks() -> None:
    varied, heldout = RENDERINGS["varied"], RENDERINGS["heldout"]
    assert not set(varied.fonts) & set(heldout.fonts)
    assert heldout.shades[1] <= varied.shades[0]  # darker than any trained
    for i in range(200):
        demo = random_needle(np.random.default_rng(i), 5.0, 56, 56, size_px=(12, 20))
        drawn = random_needle(np.random.default_rng(i), 5.0, 56, 56, size_px=(12, 20), rendering="varied")
        assert (drawn.shape, drawn.colour, drawn.digit, drawn.start_s, drawn.cx, drawn.size) == (
            demo.shape,
            demo.colour,
            demo.digit,
            demo.start_s,
            demo.cx,
            demo.size,
        )
        assert demo.font == "block" and demo.rgb is None
        assert drawn.font in varied.fonts and drawn.stroke in varied.strokes and drawn.rgb is not None
        # A shade of its own colour: nearer its named colour than any other.
        rgb = np.array(drawn.rgb)
        nearest = min(
            COLOURS, key=lambda c: np.abs(rgb / max(rgb.max(), 1) - np.array(COLOURS[c]) / 255).sum()
        )
        assert nearest == drawn.colour
    with pytest.raises(ValueError, match="rendering must be one of"):
        random_needle(np.random.default_rng(0), 0.0, 56, 56, rendering="fancy")


def test_a_demo_model_gains_the_new_words_and_still_says_what_it_said(tmp_path: Path) -> None:
    for part in ("base", "adapter"):
        shutil.copytree(DEMO / part, tmp_path / part)
    base, adapter = tmp_path / "base", tmp_path / "adapter"
    texts = corpus(ModelConfig().system_prompt)
    old_vocab = json.loads((base / "tokenizer.json").read_text())["model"]["vocab"]
    clips = [NeedleClips(split="eval", n_chunks=3).clip(np.random.default_rng([8, i])) for i in range(4)]

    def answers() -> list[str]:
        lm = load_model(ModelConfig(path=base, adapter=adapter))
        return [answer_clip(lm, clip, 16, 4, 4)[0] for clip in clips]

    before = answers()
    added = extend_vocabulary(base, texts, adapter)
    assert {"\nDid", "\nIs", "▁there", YES, NO} <= set(added)
    vocab = json.loads((base / "tokenizer.json").read_text())["model"]["vocab"]
    assert {w: vocab[w] for w in old_vocab} == old_vocab  # every old token keeps its id
    assert answers() == before  # and the model says what it said
    lm = load_model(ModelConfig(path=base, adapter=adapter))  # the adapter fits the extended base
    assert lm.tokenize("\nDid a red circle appear?") == [
        vocab[w] for w in ("\nDid", "▁a", "▁red", "▁circle", "▁appear", "?")
    ]
    assert missing_words(json.loads((base / "tokenizer.json").read_text()), texts) == []
    assert extend_vocabulary(base, texts, adapter) == []  # nothing more to add


def test_clip_evaluation_scores_yes_and_no_apart_on_held_out_renderings() -> None:
    lm = load_model(ModelConfig(path=DEMO / "base", adapter=DEMO / "adapter"))
    result = evaluate_clips(lm, 9, n_chunks=2, kinds=("did",), rendering="heldout", needle_px=(12, 20))
    counts = {k: len(v) for k, v in result.correct.items()}
    assert set(counts) == {"did-yes", "did-no"} and sum(counts.values()) == 9


def test_vision_pretraining_draws_needles_as_its_clip_source_does() -> None:
    plain_frames, plain = vision_frames(np.random.default_rng(3), 40)
    same_frames, same = vision_frames(np.random.default_rng(3), 40, like=NeedleClips())
    assert same == plain and np.array_equal(same_frames, plain_frames)  # the demo's draws, unchanged
    _, small = vision_frames(
        np.random.default_rng(3), 200, like=NeedleClips(needle_px=(12, 20), rendering="varied")
    )
    drawn = [n for n in small if n is not None]
    assert drawn and all(12 <= n.size <= 20 for n in drawn)
    assert {n.font for n in drawn if n.shape == "digit"} <= set(RENDERINGS["varied"].fonts)
    assert {n.stroke for n in drawn} == set(RENDERINGS["varied"].strokes)


def test_verdicts_on_words_train_beside_the_clips_and_leave_the_clips_as_they_were(tmp_path: Path) -> None:
    folder = new_base(tmp_path / "init", seed=0, system_prompt=ModelConfig().system_prompt)
    clips = NeedleClips(n_chunks=2, yes_no_share=1.0, yes_no_described=True)
    steps = {}
    for words in (0, 6):
        config = TrainConfig(stage="base", steps=1, raw_share=0.0, checkpoint_every=100, verdict_words=words)
        trainer = Trainer(load_model(ModelConfig(path=folder)), clips, config, tmp_path / f"run{words}")
        steps[words] = trainer.train_step()
    assert "verdict_words" not in steps[0].parts and steps[6].parts["verdict_words"] > 0
    assert steps[6].parts["lm"] == pytest.approx(
        steps[0].parts["lm"], rel=1e-6
    )  # the same clip, asked the same
    assert steps[6].loss == pytest.approx(steps[0].loss + steps[6].parts["verdict_words"], rel=1e-5)
    # A base trained on described answers says so on its card, and a watch reads their verdict last.
    described = load_model(ModelConfig(path=trainer.save_base(tmp_path / "described")))
    assert described.card["yes_no_answers"] == "described" and described.verdict_last
    assert not load_model(ModelConfig(path=DEMO / "base", adapter=DEMO / "adapter")).verdict_last


def test_the_verdict_loss_is_each_described_answers_verdict_token_alone(tmp_path: Path) -> None:
    lm = load_model(
        ModelConfig(path=new_base(tmp_path / "init", seed=1, system_prompt=ModelConfig().system_prompt))
    )
    rng = np.random.default_rng(3)
    examples = [yes_no_on_words(rng) for _ in range(12)]
    assert {case for _, _, case in examples} >= {"yes", "no-nothing", "no-kind"}
    one_by_one = []
    with torch.no_grad():
        for question, answer, case in examples:
            ids, start = answer_ids(lm, question, answer)
            verdict = lm.tokenize(answer)[-1]
            assert ids[-2] == verdict and lm.tokenizer.decode([verdict]).strip() == (
                "yes" if case == "yes" else "no"
            )
            logits = continue_logits(lm, lm.prefix_cache(), ids)  # (1, len(ids), vocab)
            one_by_one.append(
                F.cross_entropy(logits[0, len(ids) - 3 : len(ids) - 2], torch.tensor([verdict]))
            )
        batched = verdict_words_loss(lm, [(q, a) for q, a, _ in examples])
    assert float(batched) == pytest.approx(float(torch.stack(one_by_one).mean()), rel=1e-4)


def test_verdicts_on_words_are_refused_without_described_answers(tmp_path: Path) -> None:
    from longwatch.clients import main

    args = ["train", "--stage", "base", "--out", str(tmp_path / "run"), "--size", "tiny", "--steps", "1"]
    assert main.main([*args, "--verdict-words", "4"]) == 2
    assert main.main([*args, "--verdict-words", "-1", "--yes-no-described"]) == 2
    assert not (tmp_path / "run").exists()
