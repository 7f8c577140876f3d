"""Answers held to the model card's format: the demo model says nothing broken about real footage."""

from __future__ import annotations

import pytest
import torch
from footage import real_clip

from longwatch.clients.client import LongWatchClient
from longwatch.model.answer_format import AnswerFormat
from longwatch.model.train.needles import ANSWER_FORMAT
from longwatch.stream.server import LongWatchServer
from longwatch.stream.settings import LiveConfig, ServiceSettings

FORMAT = AnswerFormat.from_card({"answer_format": ANSWER_FORMAT})


@pytest.mark.parametrize("text", ["a red circle", "the digit 7", "cyan", "at 359 s", "at 0 s", "at 123456 s"])
def test_whole_answers(text: str) -> None:
    assert FORMAT.complete(text) and FORMAT.viable(text)


@pytest.mark.parametrize("text", ["", "a", "a re", "a red ", "the digit", "at ", "at 35", "at 35 "])
def test_beginnings_are_viable_but_not_whole(text: str) -> None:
    assert FORMAT.viable(text) and not FORMAT.complete(text)


@pytest.mark.parametrize(
    "text", ["at  s", "at s", "a red", "the digit 77", "at 1234567 s", "pink", "a red dog"]
)
def test_broken_answers_are_neither(text: str) -> None:
    assert not FORMAT.complete(text)
    if text not in ("a red",):  # "a red" is the start of "a red circle"
        assert not FORMAT.viable(text)


def test_choose_skips_what_would_break_the_answer() -> None:
    vocab = ["<end>", "at", " ", "3", " s", "red"]

    def decode(ids: list[int]) -> str:
        return "".join(vocab[i] for i in ids if i)

    eos = frozenset({0})
    logits = torch.tensor([5.0, 0.0, 0.0, 1.0, 4.0, 0.0])
    # After "at ": the end (best) and " s" (next) would leave "at  s" or "at "; the digit wins.
    assert FORMAT.choose(logits, [1, 2], decode, eos) == 3
    # After "at 3": " s" completes it; then the end of turn is allowed.
    assert FORMAT.choose(logits, [1, 2, 3], decode, eos) == 4
    assert FORMAT.choose(logits, [1, 2, 3, 4], decode, eos) == 0


def test_the_demo_model_answers_real_footage_in_its_format_only(tmp_path, redis_url) -> None:  # noqa: ANN001
    """On real footage the demo model's answers mean nothing, but each is one it could mean."""
    settings = ServiceSettings(
        port=0,
        http_port=0,
        redis_url=redis_url,
        state_dir=tmp_path,
        live=LiveConfig(ice_addresses=("127.0.0.1",)),
        ingest_explicit=frozenset(),
    )
    with (
        LongWatchServer(settings) as server,
        LongWatchClient(f"127.0.0.1:{server.port}", timeout=60) as client,
    ):
        for clip in ("bikes.mp4", "bigbuckbunny.mp4", "carphone_pristine.mp4"):
            for _ in client.ingest_file(clip, path=str(real_clip(clip)), fps=4.0):
                pass
            for question in (
                "What appeared in the video?",
                "What colour was the digit?",
                "When did the cross appear?",
            ):
                answer = client.ask(clip, question).answer
                assert FORMAT.complete(answer), (clip, question, answer)


def test_a_question_the_demo_model_would_answer_brokenly_gets_a_well_formed_answer() -> None:
    """Smooth gradient frames from 49 s, asked something it never saw: greedy alone said "at  s"."""
    import numpy as np

    from longwatch.model.answer import AnswerStream
    from longwatch.model.compressor import SummaryCompressor
    from longwatch.model.config import ModelConfig
    from longwatch.model.diffp import DiffFramePruner
    from longwatch.model.frames import frames_to_pixel_values, grid_for
    from longwatch.model.loading import load_model
    from longwatch.model.vision import chunk_frames, encode_frames

    lm = load_model(ModelConfig())
    ramp = np.linspace(0, 255, 56)[None, :, None] * np.ones((56, 56, 3))  # left to right
    frames = np.broadcast_to(ramp.astype(np.uint8), (32, 56, 56, 3)).copy()
    grid, pruner, compressor = grid_for(56, 56, 4), DiffFramePruner(), SummaryCompressor(lm)
    chunks = []
    for c in range(4):
        pixels = frames_to_pixel_values(frames[8 * c : 8 * c + 8], grid)
        keep = pruner.push(pixels, grid, 8)
        with torch.no_grad():
            features = encode_frames(lm, pixels, 8, grid.grid_h, grid.grid_w)
        times = [49.0 + 8 * c + i for i in range(8)]
        chunks.append(
            compressor.compress("ramp", c, chunk_frames(times, features, keep, False, times[-1] + 1))
        )
    held = "".join(AnswerStream(lm, chunks, "Is there a dog?", 16))
    assert lm.answer_format is not None and lm.answer_format.complete(held), held
    lm.answer_format = None
    free = "".join(AnswerStream(lm, chunks, "Is there a dog?", 16))
    assert free == held or not FORMAT.complete(free)  # the format changes only what was broken
