"""Moved to longwatch.model.diffp (the model input contract; the trainer needs it too)."""

from longwatch.model.diffp import DiffFramePruner, GridChangedError, frames_kept  # noqa: F401
