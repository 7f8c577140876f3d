"""DiffFP online: bit-identical to transformers' native mask, however the frames are chunked."""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import pytest
import torch
from footage import real_clip
from native_videollama3 import native_compression_mask

from longwatch.model.diffp import DiffFramePruner, GridChangedError, frames_kept, token_change
from longwatch.model.frames import FrameGrid, frames_to_pixel_values, grid_for
from longwatch.model.train.synthetic import SyntheticFootage
from longwatch.stream.decode import VideoFileReader

CHUNKS = (1, 3, 2, 5, 4, 1, 7)
FPS = 10
SECONDS = 40


def native(
    values: torch.Tensor, grid: FrameGrid, n: int, threshold: float = 0.1, min_tokens: int = 1
) -> torch.Tensor:
    grid_thw = torch.tensor([[n, grid.grid_h, grid.grid_w]])
    return native_compression_mask(values, grid_thw, grid.merge_size, threshold, min_tokens)


def pushed(
    values: torch.Tensor, grid: FrameGrid, n: int, sizes: tuple[int, ...], **pruner_args: float
) -> torch.Tensor:
    """The mask of `n` frames pushed in chunks of the given sizes, cycled."""
    pruner = DiffFramePruner(**pruner_args)
    rows, masks, start = grid.patches_per_frame, [], 0
    for size in itertools.cycle(sizes):
        if start >= n:
            break
        size = min(size, n - start)
        masks.append(pruner.push(values[start * rows : (start + size) * rows], grid, size))
        start += size
    return torch.cat(masks)


def decoded(source: Path, fps: float) -> np.ndarray:
    return np.stack([f.image for f in VideoFileReader(source, fps=fps)])  # (T, H, W, 3)


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory: pytest.TempPathFactory) -> tuple[SyntheticFootage, Path]:
    footage = SyntheticFootage(seed=0, width=320, height=180, fps=FPS)
    path = footage.write(tmp_path_factory.mktemp("diffp") / "synthetic.mp4", SECONDS)
    return footage, path


def scene_roles(footage: SyntheticFootage, times: list[float]) -> list[str]:
    """'cut' for the first sampled frame of a scene, else the scene's kind."""
    roles, previous = [], None
    for t in times:
        k = footage.scene_index_at(t)
        roles.append("cut" if k != previous else footage.scenes[k].kind)
        previous = k
    return roles


# -- identical to native ---------------------------------------------------------------------


@pytest.mark.parametrize(("clip", "fps"), [("bikes.mp4", 3.0), ("carphone_pristine.mp4", 4.0)])
@pytest.mark.parametrize("budget", [16, 64])
def test_real_footage_matches_native(clip: str, fps: float, budget: int) -> None:
    frames = decoded(real_clip(clip), fps)
    n = len(frames)
    grid = grid_for(frames.shape[1], frames.shape[2], budget)
    values = frames_to_pixel_values(frames, grid)
    for threshold in (0.1, 10.0):  # 0.1 keeps almost all of a moving camera; 10 prunes some
        expected = native(values, grid, n, threshold)
        assert torch.equal(pushed(values, grid, n, (n,), threshold=threshold), expected)
        assert torch.equal(pushed(values, grid, n, CHUNKS, threshold=threshold), expected)
    assert not expected.all() and expected.any()  # the 10.0 mask is not trivial


@pytest.mark.parametrize("budget", [16, 64])
def test_synthetic_footage_matches_native_and_prunes_still_scenes(
    synthetic: tuple[SyntheticFootage, Path], budget: int
) -> None:
    footage, path = synthetic
    reader = VideoFileReader(path, fps=2.0)
    sampled = list(reader)
    frames = np.stack([f.image for f in sampled])
    n = len(frames)
    grid = grid_for(180, 320, budget)
    values = frames_to_pixel_values(frames, grid)
    expected = native(values, grid, n)
    for sizes in [(n,), CHUNKS, (1,), (2, 9)]:
        assert torch.equal(pushed(values, grid, n, sizes), expected)

    kept = expected.view(n, grid.tokens_per_frame).float().mean(dim=1)  # (T,) share of tokens kept
    roles = scene_roles(footage, [f.pts_s for f in sampled])
    share = {role: kept[[r == role for r in roles]] for role in ("still", "pan", "cut")}
    assert len(share["still"]) > 10 and len(share["pan"]) > 10  # the schedule has both
    assert share["still"].mean() < 0.5  # most still tokens pruned ...
    assert share["pan"].mean() > 0.9 and bool(torch.all(share["cut"] == 1.0))  # ... not these
    assert 0.2 < float(expected.float().mean()) < 0.95


def test_raw_generated_frames_match_native() -> None:
    # Without a codec, sensor noise changes every pixel: noise=0 to see pruning.
    footage = SyntheticFootage(seed=5, width=224, height=128, fps=4.0, noise=0.0)
    frames = np.stack([footage.frame_at(i) for i in range(60)])
    grid = grid_for(128, 224, 36)
    values = frames_to_pixel_values(frames, grid)
    for threshold, min_tokens in [(0.1, 1), (0.5, 3), (3.0, 0)]:
        expected = native(values, grid, 60, threshold, min_tokens)
        got = pushed(values, grid, 60, CHUNKS, threshold=threshold, min_tokens=min_tokens)
        assert torch.equal(got, expected)
    assert 0.05 < float(expected.float().mean()) < 0.95


def test_bfloat16_matches_native_in_its_own_dtype() -> None:
    footage = SyntheticFootage(seed=2, width=160, height=96, fps=2.0, noise=0.5)
    frames = np.stack([footage.frame_at(i) for i in range(24)])
    grid = grid_for(96, 160, 16)
    values = frames_to_pixel_values(frames, grid).to(torch.bfloat16)
    assert torch.equal(pushed(values, grid, 24, CHUNKS, threshold=2.0), native(values, grid, 24, 2.0))


@pytest.mark.parametrize("threads", [1, 2])
def test_token_change_in_cache_sized_blocks_equals_the_whole_frame_expression(threads: int) -> None:
    # 100 tokens of 2352 float32 values: several blocks and a short last one.
    g = torch.Generator().manual_seed(0)
    rows = torch.rand(5, 100, 2352, generator=g) * 2 - 1
    before = torch.rand(100, 2352, generator=g) * 2 - 1
    expected = torch.abs(rows - torch.cat([before[None], rows[:-1]])).mean(dim=-1) * 255
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)  # a reduction split across threads must not change the sums
    try:
        assert torch.equal(token_change(rows, before), expected)
    finally:
        torch.set_num_threads(previous)


# -- the rules -------------------------------------------------------------------------------


def static_values(grid: FrameGrid, n: int) -> torch.Tensor:
    frame = np.random.default_rng(0).integers(0, 256, size=(grid.height, grid.width, 3), dtype=np.uint8)
    return frames_to_pixel_values(np.stack([frame] * n), grid)


def test_first_frame_keeps_all_and_static_frames_keep_the_minimum() -> None:
    grid = FrameGrid(84, 112)  # 3 x 4 tokens
    mask = DiffFramePruner(min_tokens=3).push(static_values(grid, 4), grid, 4).view(4, 12)
    assert bool(mask[0].all())
    for row in mask[1:]:
        assert row.tolist() == [True] * 3 + [False] * 9  # the first positions, as native
    assert torch.equal(mask.flatten(), native(static_values(grid, 4), grid, 4, 0.1, 3))


def test_only_the_changed_token_is_kept() -> None:
    grid = FrameGrid(56, 84)  # 2 x 3 tokens
    frames = np.zeros((2, 56, 84, 3), np.uint8)
    frames[1, 30:40, 60:70] = 200  # inside token (1, 2)
    mask = DiffFramePruner(min_tokens=0).push(frames_to_pixel_values(frames, grid), grid, 2).view(2, 6)
    assert mask[1].tolist() == [False] * 5 + [True]


def test_state_carries_across_pushes_and_reconnects() -> None:
    grid = FrameGrid(56, 56)
    values = static_values(grid, 6)
    rows = grid.patches_per_frame
    first = DiffFramePruner()
    assert first.state() is None
    head = first.push(values[: 3 * rows], grid, 3)
    state = first.state()
    assert state is not None and state.shape == (2, 2, 4 * 588)
    resumed = DiffFramePruner()
    resumed.load_state(state)
    tail = resumed.push(values[3 * rows :], grid, 3)
    assert torch.equal(torch.cat([head, tail]), native(values, grid, 6))
    assert int(tail.sum()) == 3  # nothing changed: one forced token per frame


def test_state_is_a_copy() -> None:
    grid = FrameGrid(28, 28)
    values = static_values(grid, 1)
    pruner = DiffFramePruner()
    pruner.push(values, grid, 1)
    values += 1.0  # the caller reuses its buffer
    assert not torch.equal(pruner.state().flatten(), values.flatten())


def test_reset_makes_the_next_frame_keep_everything() -> None:
    grid = FrameGrid(56, 56)
    pruner = DiffFramePruner()
    pruner.push(static_values(grid, 2), grid, 2)
    pruner.reset()
    assert bool(pruner.push(static_values(grid, 1), grid, 1).all())


def test_grid_change_mid_stream_is_an_error() -> None:
    pruner = DiffFramePruner()
    small, wide, tall = FrameGrid(56, 112), FrameGrid(56, 168), FrameGrid(112, 56)
    pruner.push(static_values(small, 1), small, 1)
    with pytest.raises(GridChangedError, match="grid changed mid-stream.*reset"):
        pruner.push(static_values(wide, 1), wide, 1)
    with pytest.raises(GridChangedError):  # same token count, other layout
        pruner.push(static_values(tall, 1), tall, 1)
    pruner.reset()
    assert bool(pruner.push(static_values(wide, 1), wide, 1).all())


def test_resuming_with_the_wrong_state_is_an_error() -> None:
    a, b = FrameGrid(56, 56), FrameGrid(56, 84)
    pruner = DiffFramePruner()
    pruner.push(static_values(a, 1), a, 1)
    other = DiffFramePruner()
    other.load_state(pruner.state())
    with pytest.raises(GridChangedError):
        other.push(static_values(b, 1), b, 1)
    with pytest.raises(ValueError, match="state must be"):
        other.load_state(torch.zeros(4, 2352))


def test_push_checks_its_input() -> None:
    grid = FrameGrid(56, 56)
    pruner = DiffFramePruner()
    with pytest.raises(ValueError, match=r"must be \(32, 588\)"):
        pruner.push(static_values(grid, 1), grid, 2)
    with pytest.raises(ValueError, match="merge_size"):
        pruner.push(static_values(grid, 1), FrameGrid(56, 56, merge_size=1), 1)
    assert pruner.push(torch.zeros(0, 588), grid, 0).shape == (0,)
    assert pruner.state() is None  # an empty push changes nothing


def test_bad_arguments() -> None:
    with pytest.raises(ValueError, match="threshold"):
        DiffFramePruner(threshold=-1)
    with pytest.raises(ValueError, match="min_tokens"):
        DiffFramePruner(min_tokens=-1)


def test_frames_kept_counts_frames_above_the_forced_minimum() -> None:
    mask = torch.tensor([1, 1, 1, 1, 1, 0, 0, 0, 1, 1, 0, 0], dtype=torch.bool)  # 3 frames x 4
    assert frames_kept(mask, 4, min_tokens=1) == 2
    assert frames_kept(mask, 4, min_tokens=2) == 1
