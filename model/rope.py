"""Moving cached keys to new RoPE positions.

RoPE rotations compose, R(p + d) = R(d) R(p), so a key cached rotated at position p is moved
to p + d by one more rotation by d. Done once in float32 from each chunk's original positions:
chained rotations in low precision drift.
"""

from __future__ import annotations

import torch
from torch import nn


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


def shift_keys(keys: torch.Tensor, shift: torch.Tensor, rotary_emb: nn.Module) -> torch.Tensor:
    """Rotate keys by `shift` positions using the decoder's own rotary embedding.

    keys: (..., n, head_dim), rotated at some positions p; shift: (n,) int64, new minus old.
    Returns keys rotated at p + shift, in the input dtype.
    """
    if not bool(shift.any()):
        return keys
    dtype = keys.dtype
    k = keys.float()
    # rotary_emb(x, position_ids) gives cos/sin of shape (1, n, head_dim) for position_ids (1, n).
    cos, sin = rotary_emb(k, shift.to(k.device).view(1, -1))
    # Scaled RoPE variants fold an attention factor into cos/sin; the cached key already has it.
    scale = float(getattr(rotary_emb, "attention_scaling", 1.0))
    cos, sin = cos[0].float() / scale, sin[0].float() / scale  # (n, head_dim)
    return (k * cos + _rotate_half(k) * sin).to(dtype)
