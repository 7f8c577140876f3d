"""DiffFP (VideoLLaMA3): drop the visual tokens that did not change since the previous frame.

Online form of transformers' `VideoLlama3VideoProcessor._get_compression_mask`, one pruner
per stream. The native function sees a whole video at once; here frames arrive in chunks
of any size, and the last frame of each chunk is carried as state (and can be saved and
loaded across a reconnect), so that the mask over a stream is identical, bit for bit, to
the native mask over all of its frames at once: the same subtraction, absolute value, mean
over the token's values, x 255 and comparison, in the input's dtype.
"""

from __future__ import annotations

import math

import torch

from longwatch.model.frames import FrameGrid

# Bytes of one block of token differences. Three frame-sized temporaries (difference, absolute
# value, then the mean's input) cost more in memory traffic and page faults than the arithmetic;
# a block this small stays in L2 cache through all three steps.
_BLOCK_BYTES = 256 * 1024


class GridChangedError(ValueError):
    """A stream's frame grid changed mid-stream: DiffFP cannot compare across sizes."""


class DiffFramePruner:
    """Keeps a token of frame t where mean(|row_t - row_(t-1)|) x 255 > threshold.

    The stream's first frame keeps every token; every frame keeps at least `min_tokens`
    (its first positions, as the native rule does). A grid change mid-stream raises
    `GridChangedError` rather than silently restarting: the caller decides whether a
    resolution change starts a new reference (`reset()`), and it shows in the logs.
    """

    def __init__(self, threshold: float = 0.1, min_tokens: int = 1, merge_size: int = 2) -> None:
        if not math.isfinite(threshold) or threshold < 0:
            raise ValueError(f"threshold must be a finite number >= 0, got {threshold}")
        if min_tokens < 0:
            raise ValueError(f"min_tokens must be >= 0, got {min_tokens}")
        if merge_size < 1:
            raise ValueError(f"merge_size must be >= 1, got {merge_size}")
        self.threshold = threshold
        self.min_tokens = min_tokens
        self.merge_size = merge_size
        self._prev: torch.Tensor | None = None  # (grid_h/m, grid_w/m, m^2 * 3 * p^2): last frame's tokens

    def push(self, pixel_values: torch.Tensor, grid: FrameGrid, n_frames: int) -> torch.Tensor:
        """The keep mask of the next `n_frames` frames: (n_frames * tokens_per_frame,) bool.

        pixel_values: (n_frames * grid_h * grid_w, 3 * patch^2), rows in the processor's
        merge-group-contiguous order (`frames_to_pixel_values`).
        """
        tokens = self._check(pixel_values, grid, n_frames)
        if n_frames == 0:
            return torch.zeros(0, dtype=torch.bool, device=pixel_values.device)
        rows = pixel_values.reshape(n_frames, tokens, -1)  # (T, N, m^2 * 3 * p^2)
        if self._prev is None:  # the stream's first frame keeps everything
            keep_all = torch.ones((1, tokens), dtype=torch.bool, device=rows.device)
            mask = torch.cat([keep_all, token_change(rows[1:], rows[0]) > self.threshold])
        else:
            prev = self._prev.to(rows.device).view(tokens, -1)  # (N, D)
            mask = token_change(rows, prev) > self.threshold  # (T, N)
        short = mask.sum(dim=1) < self.min_tokens  # (T,)
        mask[short, : self.min_tokens] = True
        # A copy, so neither the caller's chunk stays alive nor its later edits leak in.
        self._prev = (
            rows[-1].reshape(grid.grid_h // self.merge_size, grid.grid_w // self.merge_size, -1).clone()
        )
        return mask.flatten()

    def reset(self) -> None:
        """Forget the previous frame: the next frame pushed keeps everything."""
        self._prev = None

    def state(self) -> torch.Tensor | None:
        """The previous frame's tokens, (grid_h/m, grid_w/m, m^2 * 3 * p^2), or None before any.

        Saving this and `load_state` on a new pruner continues the stream as if unbroken;
        its shape records the grid, so a mismatched resume is caught at the next push.
        """
        return None if self._prev is None else self._prev.clone()

    def load_state(self, state: torch.Tensor | None) -> None:
        if state is not None and state.ndim != 3:
            raise ValueError(
                f"DiffFP state must be (grid_h/m, grid_w/m, values per token), got {tuple(state.shape)}"
            )
        self._prev = None if state is None else state.clone()

    def _check(self, pixel_values: torch.Tensor, grid: FrameGrid, n_frames: int) -> int:
        """Validate a push; returns merged tokens per frame."""
        if grid.merge_size != self.merge_size:
            raise ValueError(f"grid merge_size {grid.merge_size} != pruner merge_size {self.merge_size}")
        expected = (n_frames * grid.patches_per_frame, grid.patch_dim)
        if n_frames < 0 or tuple(pixel_values.shape) != expected:
            raise ValueError(
                f"pixel_values for {n_frames} frames of a {grid.height}x{grid.width} grid must be "
                f"{expected}, got {tuple(pixel_values.shape)}"
            )
        if self._prev is not None:
            layout = (
                grid.grid_h // self.merge_size,
                grid.grid_w // self.merge_size,
                grid.patch_dim * self.merge_size**2,
            )
            if tuple(self._prev.shape) != layout:
                raise GridChangedError(
                    f"frame grid changed mid-stream: previous frame had tokens {tuple(self._prev.shape)}, "
                    f"this one {layout} ({grid.height}x{grid.width}); call reset() to start a new reference"
                )
            if self._prev.dtype != pixel_values.dtype:
                raise ValueError(
                    f"pixel_values dtype changed mid-stream: {self._prev.dtype} -> {pixel_values.dtype}"
                )
        return grid.tokens_per_frame


def token_change(rows: torch.Tensor, before_first: torch.Tensor) -> torch.Tensor:
    """mean(|row_t - row_(t-1)|) x 255 of every token: (T, N, D) rows, (N, D) before the first -> (T, N).

    The native expression term for term (subtract, absolute value, mean over the token's values,
    x 255, in the input's dtype), so the floats match it bit for bit: a mean reduces each row on
    its own, whatever the rows around it. On CPU it runs a block of tokens of one frame at a time
    through one scratch buffer, tokens outermost, so that frame t's block is still in cache when
    frame t + 1 subtracts it. Other devices take a whole frame per step (few kernel launches).
    """
    frames, tokens, values = rows.shape
    change = torch.empty((frames, tokens), dtype=rows.dtype, device=rows.device)
    block = tokens
    if rows.device.type == "cpu":
        block = max(1, min(tokens, _BLOCK_BYTES // (values * rows.element_size())))
    scratch = torch.empty((block, values), dtype=rows.dtype, device=rows.device)
    for start in range(0, tokens, block):
        end = min(tokens, start + block)
        diff = scratch[: end - start]  # (block, D)
        before = before_first[start:end]
        for t in range(frames):
            now = rows[t, start:end]
            torch.sub(now, before, out=diff)
            torch.mean(diff.abs_(), dim=-1, out=change[t, start:end])
            before = now
    return change.mul_(255)


def frames_kept(mask: torch.Tensor, tokens_per_frame: int, min_tokens: int = 1) -> int:
    """How many frames kept more tokens than the forced minimum, i.e. showed real change."""
    per_frame = mask.view(-1, tokens_per_frame).sum(dim=1)  # (T,)
    return int((per_frame > min_tokens).sum())
