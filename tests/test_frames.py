"""Frame grid and patchify: checked against transformers' native VideoLLaMA3 processor."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from native_videollama3 import native_patchify, native_smart_resize

from longwatch.model.frames import FrameGrid, frames_to_pixel_values, grid_for, patchify
from longwatch.model.loading import frame_label

SIZES = [
    (180, 320),  # 16:9
    (720, 1280),
    (1080, 1920),
    (2160, 3840),  # huge
    (480, 640),  # 4:3
    (144, 176),
    (272, 640),
    (1920, 1080),  # portrait
    (1280, 720),
    (640, 360),
    (28, 28),
    (10, 14),  # tiny
    (1, 3),
    (56, 56),
    (100, 100),
    (13, 2000),  # very wide
    (2000, 13),
    (30, 5000),
    (41, 97),
]
BUDGETS = [1, 2, 3, 4, 5, 8, 16, 36, 64, 100, 256, 1280]


@pytest.mark.parametrize("budget", BUDGETS)
def test_grid_for_matches_native_smart_resize(budget: int) -> None:
    factor = 28
    max_pixels = budget * factor**2
    rng = np.random.default_rng(budget)
    sizes = SIZES + [tuple(int(v) for v in rng.integers(8, 3000, size=2)) for _ in range(60)]
    for height, width in sizes:
        if max(height, width) / min(height, width) > 200:
            continue  # both refuse; tested below
        grid = grid_for(height, width, budget)
        expected = native_smart_resize(height, width, factor, min(56 * 56, max_pixels), max_pixels)
        assert (grid.height, grid.width) == expected, (height, width, budget)


def test_grid_stays_within_budget_unless_tiny_or_extreme_aspect() -> None:
    # The native rule overshoots only when it grows a frame of under 2 x 2 cells (ceil on
    # both sides) or when the budget is narrower than the frame's aspect ratio.
    for budget in BUDGETS:
        for height, width in SIZES:
            grid = grid_for(height, width, budget)
            assert grid.tokens_per_frame >= 1
            if min(height, width) >= 56 and max(height, width) / min(height, width) <= budget:
                assert grid.tokens_per_frame <= budget, (height, width, budget)
    assert grid_for(28, 28, 2).tokens_per_frame == 4  # the documented overshoot


def test_grid_properties() -> None:
    grid = grid_for(180, 320, 16)
    assert (grid.height, grid.width) == (84, 140)
    assert (grid.grid_h, grid.grid_w, grid.tokens_per_frame) == (6, 10, 15)
    assert grid.patches_per_frame == 60 and grid.patch_dim == 588 and grid.factor == 28


def test_grid_rejects_bad_input() -> None:
    with pytest.raises(ValueError, match="multiple of 28"):
        FrameGrid(84, 141)
    with pytest.raises(ValueError, match="aspect ratio"):
        grid_for(1, 300, 16)
    with pytest.raises(ValueError, match="aspect ratio"):
        native_smart_resize(1, 300, 28, 56 * 56, 16 * 28 * 28)  # same limit as native
    with pytest.raises(ValueError, match="max_tokens_per_frame"):
        grid_for(180, 320, 0)


@pytest.mark.parametrize(
    ("frames", "height", "width"), [(1, 28, 28), (3, 56, 84), (5, 84, 140), (2, 168, 112)]
)
def test_patchify_equals_native(frames: int, height: int, width: int) -> None:
    video = torch.randn(frames, 3, height, width)  # (T, C, H, W)
    ours = patchify(video, 14, 2)
    native = native_patchify(video.unsqueeze(0), patch_size=14, merge_size=2, temporal_patch_size=1)[0]
    assert torch.equal(ours, native)


def test_patchify_equals_native_at_other_patch_and_merge_sizes() -> None:
    video = torch.randn(2, 3, 48, 72)
    for patch, merge in [(8, 3), (12, 1), (6, 2)]:
        native = native_patchify(
            video.unsqueeze(0), patch_size=patch, merge_size=merge, temporal_patch_size=1
        )[0]
        assert torch.equal(patchify(video, patch, merge), native)


def test_pixel_values_shape_range_and_channel_order() -> None:
    grid = FrameGrid(56, 84)
    frames = np.zeros((2, 56, 84, 3), np.uint8)
    frames[..., 0], frames[..., 2] = 255, 51
    values = frames_to_pixel_values(frames, grid)  # (2 * 4 * 6, 588)
    assert values.shape == (48, 588) and values.dtype == torch.float32
    red, green, blue = values[:, :196], values[:, 196:392], values[:, 392:]
    assert torch.all(red == 1.0) and torch.all(green == -1.0)
    assert torch.allclose(blue, torch.tensor((51 - 127.5) / 127.5))


def test_pixel_values_rows_follow_merge_groups() -> None:
    # Each 14 x 14 patch painted with its own (row, column) number: rows must come out
    # token by token, the 2 x 2 patches of a token consecutive, in raster order.
    grid = FrameGrid(56, 84)
    frame = np.zeros((56, 84, 3), np.uint8)
    for r in range(4):
        for c in range(6):
            frame[r * 14 : (r + 1) * 14, c * 14 : (c + 1) * 14] = (r, c, 0)
    values = frames_to_pixel_values(frame[None], grid) * 127.5 + 127.5  # back to levels
    got = [(round(float(row[0])), round(float(row[196]))) for row in values]
    expected = [
        (2 * tr + mr, 2 * tc + mc) for tr in range(2) for tc in range(3) for mr in range(2) for mc in range(2)
    ]
    assert got == expected


def test_pixel_values_from_tensor_and_array_agree_and_resize() -> None:
    rng = np.random.default_rng(0)
    frames = rng.integers(0, 256, size=(3, 180, 320, 3), dtype=np.uint8)
    grid = grid_for(180, 320, 16)
    a = frames_to_pixel_values(frames, grid)
    b = frames_to_pixel_values(torch.from_numpy(frames), grid)
    assert torch.equal(a, b)
    assert a.shape == (3 * grid.patches_per_frame, 588)
    assert float(a.min()) >= -1.0 and float(a.max()) <= 1.0
    levels = a * 127.5 + 127.5  # resized values are whole levels, as torchvision's uint8 resize gives
    assert torch.allclose(levels, levels.round(), atol=1e-4)


def test_pixel_values_reject_wrong_frames() -> None:
    grid = FrameGrid(28, 28)
    with pytest.raises(ValueError, match=r"\(T, H, W, 3\) uint8"):
        frames_to_pixel_values(np.zeros((28, 28, 3), np.uint8), grid)
    with pytest.raises(ValueError, match="uint8"):
        frames_to_pixel_values(np.zeros((1, 28, 28, 3), np.float32), grid)


def test_frame_time_text_matches_the_native_prompt() -> None:
    assert frame_label(0, first_in_stream=True) == "Time 0.0s:"
    assert frame_label(12.345, first_in_stream=False) == ",Time 12.3s:"
