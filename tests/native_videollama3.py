"""Test-only door to transformers' native VideoLLaMA3 video processor, the oracle for our ports.

Why a stub: `video_processing_video_llama_3` imports `torchvision.transforms.v2.functional`
at module level, and no CPU build of torchvision exists for this torch. Only when
torchvision cannot be imported, empty modules named `torchvision_import_stub` stand in for
`torchvision`, `torchvision.transforms`, `torchvision.transforms.v2` and
`torchvision.transforms.v2.functional` for the duration of that one import, and are taken
out of `sys.modules` again right after, so nothing else sees a fake torchvision. Any
attribute read from a stub raises, so a native function that needed torchvision would
fail loudly rather than run against the stub.

Only pure-torch functions are called through it: `smart_resize`, and `patchify` and
`_get_compression_mask`, which never read `self` (they are called unbound, with
`self=None`, to avoid the processor's constructor and its torchvision-backed defaults).
"""

from __future__ import annotations

import importlib
import sys
import types
from functools import cache
from typing import Any

import torch

_NATIVE_MODULE = "transformers.models.video_llama_3.video_processing_video_llama_3"
_STUBBED = (
    "torchvision",
    "torchvision.transforms",
    "torchvision.transforms.v2",
    "torchvision.transforms.v2.functional",
)
# transformers' own modules that check for torchvision: imported before the stub goes in,
# so that they see the truth (not installed) and cache it.
_IMPORT_FIRST = (
    "transformers.image_utils",
    "transformers.processing_utils",
    "transformers.video_utils",
    "transformers.video_processing_utils",
)


class TorchvisionImportStub(types.ModuleType):
    """Stands in for a torchvision module during one import; refuses every attribute."""

    def __getattr__(self, name: str) -> Any:
        raise AttributeError(
            f"{self.__name__}: torchvision is not installed; the test stub only lets "
            f"transformers' VideoLLaMA3 module import (something read {name!r})"
        )


@cache
def native_module() -> types.ModuleType:
    """transformers' `video_processing_video_llama_3` module, imported with or without torchvision."""
    if _torchvision_importable():
        return importlib.import_module(_NATIVE_MODULE)
    for name in _IMPORT_FIRST:
        importlib.import_module(name)
    stubs = {name: TorchvisionImportStub(f"torchvision_import_stub ({name})") for name in _STUBBED}
    for name in _STUBBED[1:]:
        parent, _, child = name.rpartition(".")
        setattr(stubs[parent], child, stubs[name])  # `import a.b.c as x` walks attributes
    sys.modules.update(stubs)
    try:
        return importlib.import_module(_NATIVE_MODULE)
    finally:
        for name in _STUBBED:
            sys.modules.pop(name, None)


def native_smart_resize(
    height: int, width: int, factor: int, min_pixels: int, max_pixels: int
) -> tuple[int, int]:
    return native_module().smart_resize(
        height, width, factor=factor, min_pixels=min_pixels, max_pixels=max_pixels
    )


def native_patchify(
    videos: torch.Tensor, patch_size: int = 14, merge_size: int = 2, temporal_patch_size: int = 1
) -> torch.Tensor:
    """(B, T, C, H, W) -> (B, T * gh * gw, C * tp * p * p), the native patch order."""
    cls = native_module().VideoLlama3VideoProcessor
    patches, _t, _h, _w = cls.patchify(None, videos, patch_size, merge_size, temporal_patch_size)
    return patches


def native_compression_mask(
    pixel_values: torch.Tensor,
    grid_thw: torch.Tensor,
    merge_size: int = 2,
    threshold: float = 0.1,
    min_tokens: int = 1,
) -> torch.Tensor:
    """The native DiffFP mask over the videos in `grid_thw` ((V, 3) of t, h, w patches)."""
    cls = native_module().VideoLlama3VideoProcessor
    merge_sizes = torch.full((grid_thw.shape[0],), merge_size, dtype=grid_thw.dtype)
    return cls._get_compression_mask(
        None, pixel_values, grid_thw, merge_sizes, threshold=threshold, min_tokens=min_tokens
    )


def _torchvision_importable() -> bool:
    try:
        importlib.import_module("torchvision.transforms.v2.functional")
    except ImportError:
        return False
    return True
