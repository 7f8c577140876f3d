"""Sampled frames -> the flat patch rows the VideoLLaMA3 vision encoder takes.

Mirrors transformers' `VideoLlama3VideoProcessor` (resize to a grid of 28-pixel cells,
rescale 1/255, normalise with mean = std = 0.5, patchify) without torchvision, which has no
CPU build here. The patch order is the one the model expects: the 2x2 patches of each
merged token are consecutive rows, so a token is `merge_size**2` rows in a row, and DiffFP
can compare tokens as contiguous blocks.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

# smart_resize's floor: 56 x 56 pixels, i.e. 2 x 2 merged tokens at patch 14, merge 2.
_MIN_CELLS = 4
MAX_ASPECT_RATIO = 200


@dataclass(frozen=True)
class FrameGrid:
    """The size every frame of a stream is resized to, in pixels, and its token layout."""

    height: int
    width: int
    patch_size: int = 14
    merge_size: int = 2

    def __post_init__(self) -> None:
        f = self.factor
        if self.height < f or self.width < f or self.height % f or self.width % f:
            raise ValueError(
                f"grid must be a positive multiple of {f} pixels, got {self.height}x{self.width}"
            )

    @property
    def factor(self) -> int:
        """Pixels per merged token along one side (patch x merge)."""
        return self.patch_size * self.merge_size

    @property
    def grid_h(self) -> int:
        return self.height // self.patch_size

    @property
    def grid_w(self) -> int:
        return self.width // self.patch_size

    @property
    def patches_per_frame(self) -> int:
        return self.grid_h * self.grid_w

    @property
    def tokens_per_frame(self) -> int:
        """Merged tokens per frame: what the decoder sees before DiffFP."""
        return self.patches_per_frame // self.merge_size**2

    @property
    def patch_dim(self) -> int:
        """Values per patch row: 3 channels x patch x patch."""
        return 3 * self.patch_size**2


def grid_for(
    height: int, width: int, max_tokens_per_frame: int, patch_size: int = 14, merge_size: int = 2
) -> FrameGrid:
    """The grid a `height` x `width` frame is resized to under a per-frame token budget.

    Same rule as transformers' `smart_resize` with factor = patch x merge, max_pixels =
    budget x factor^2 and min_pixels = 2 x 2 tokens (56 x 56 at the defaults; lowered to
    max_pixels for budgets under 4 tokens): both sides rounded to the factor, scaled down
    to fit the budget or up to the floor, aspect kept. The result is always at least one
    token. Like the native rule it can exceed the budget in two corners: a frame under
    about 2 x 2 tokens is grown with ceil on both sides (28 x 28 at a budget of 2 gives 4
    tokens), and a frame more elongated than the budget stays one token thick.
    """
    if height <= 0 or width <= 0:
        raise ValueError(f"frame size must be positive, got {height}x{width}")
    if max_tokens_per_frame < 1:
        raise ValueError(f"max_tokens_per_frame must be >= 1, got {max_tokens_per_frame}")
    aspect = max(height, width) / min(height, width)
    if aspect > MAX_ASPECT_RATIO:
        raise ValueError(
            f"aspect ratio must be at most {MAX_ASPECT_RATIO}, got {aspect:.1f} ({height}x{width})"
        )
    factor = patch_size * merge_size
    max_pixels = max_tokens_per_frame * factor**2
    min_pixels = min(_MIN_CELLS * factor**2, max_pixels)
    h = round(height / factor) * factor  # round() halves to even, as the native rule does
    w = round(width / factor) * factor
    if h * w > max_pixels:
        shrink = math.sqrt(height * width / max_pixels)
        h = max(factor, math.floor(height / shrink / factor) * factor)
        w = max(factor, math.floor(width / shrink / factor) * factor)
    elif h * w < min_pixels:
        grow = math.sqrt(min_pixels / (height * width))
        h = math.ceil(height * grow / factor) * factor
        w = math.ceil(width * grow / factor) * factor
    return FrameGrid(h, w, patch_size, merge_size)


def frames_to_pixel_values(frames: np.ndarray | torch.Tensor, grid: FrameGrid) -> torch.Tensor:
    """(T, H, W, 3) uint8 RGB frames -> (T * grid_h * grid_w, 3 * patch^2) float32 rows.

    Resize as torchvision does for uint8 video (bicubic with antialias on float, clamp,
    round back to whole levels), then the processor's fused rescale-and-normalise
    (x - 127.5) / 127.5, then patchify in the merge-group-contiguous order.
    """
    video = _as_uint8_video(frames)  # (T, H, W, 3) uint8
    # Floats kept in the frames' channels-last layout: the resize reads it faster than a
    # transposed copy (about a third less time at 640x360) and gives the same bits.
    x = video.to(torch.float32).permute(0, 3, 1, 2)  # (T, 3, H, W), channels-last strides
    x = _resize(x, grid)  # (T, 3, grid.height, grid.width), whole levels 0..255
    x = x.sub_(127.5).div_(127.5)  # rescale 1/255 then normalise by mean = std = 0.5
    return patchify(x, grid.patch_size, grid.merge_size)


def resize_frames(frames: np.ndarray | torch.Tensor, grid: FrameGrid) -> np.ndarray:
    """(T, H, W, 3) uint8 frames resized to the grid, still uint8: for caching frames at model size.

    frames_to_pixel_values of the result equals frames_to_pixel_values of the input.
    """
    x = _as_uint8_video(frames).permute(0, 3, 1, 2).to(torch.float32)  # (T, 3, H, W)
    return _resize(x, grid).permute(0, 2, 3, 1).to(torch.uint8).numpy()


def patchify(video: torch.Tensor, patch_size: int = 14, merge_size: int = 2) -> torch.Tensor:
    """(T, C, H, W) -> (T * gh * gw, C * patch^2), patches of one merged token consecutive.

    Row order: frame, token row, token column, then the merge x merge patches of that
    token in raster order; each row is channel-major (C, patch, patch). Identical to the
    native processor's patchify with temporal_patch_size = 1.
    """
    t, c, h, w = video.shape
    gh, gw, m, p = h // patch_size, w // patch_size, merge_size, patch_size
    if gh * p != h or gw * p != w or gh % m or gw % m:
        raise ValueError(f"frame size {h}x{w} is not a multiple of patch {p} x merge {m}")
    x = video.reshape(t, c, gh // m, m, p, gw // m, m, p)  # (T, C, Th, mh, p, Tw, mw, p)
    x = x.permute(0, 2, 5, 3, 6, 1, 4, 7)  # (T, Th, Tw, mh, mw, C, p, p)
    return x.reshape(t * gh * gw, c * p * p)


def _as_uint8_video(frames: np.ndarray | torch.Tensor) -> torch.Tensor:
    video = torch.from_numpy(np.ascontiguousarray(frames)) if isinstance(frames, np.ndarray) else frames
    if video.dtype != torch.uint8 or video.ndim != 4 or video.shape[-1] != 3:
        raise ValueError(f"frames must be (T, H, W, 3) uint8 RGB, got {tuple(video.shape)} {video.dtype}")
    return video


def _resize(x: torch.Tensor, grid: FrameGrid) -> torch.Tensor:
    if x.shape[-2:] == (grid.height, grid.width):
        return x
    x = F.interpolate(x, size=(grid.height, grid.width), mode="bicubic", align_corners=False, antialias=True)
    return x.clamp_(0, 255).round_()
