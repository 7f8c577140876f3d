"""Moved to longwatch.model.frames (the model input contract; the trainer needs it too)."""

from longwatch.model.frames import FrameGrid, frames_to_pixel_values, grid_for, patchify  # noqa: F401
