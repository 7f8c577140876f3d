"""Symmetric int8 storage of cached K/V: int8 codes plus one scale per group, dequantized at load.

A group is one token of one head (per-token scales: `scale` has shape (..., n, 1)) or one channel
of one head across a chunk's tokens (per-channel: (..., 1, head_dim)). The scale's shape says which,
so dequantizing is one broadcast multiply either way and a reader needs no flag. Scales are fp16
(2 bytes per group: 1.6% of a 128-wide head per token) unless a group's range does not fit fp16,
in which case the whole tensor's scales are fp32.

Codes are rounded against the fp16-rounded scale, so the stored pair reproduces each value to
within half a step of its group's scale; codes span -127..127 (symmetric: -128 is never used).
"""

from __future__ import annotations

import torch

GRANULARITIES = ("token", "channel")
_FP16_MAX_SCALE = float(torch.finfo(torch.float16).max)


def quantize_int8(x: torch.Tensor, granularity: str = "token") -> tuple[torch.Tensor, torch.Tensor]:
    """int8 codes (same shape as x) and scales; x is (..., n, head_dim), any float dtype."""
    if granularity not in GRANULARITIES:
        raise ValueError(f"granularity must be one of {GRANULARITIES}, got {granularity!r}")
    if x.dim() < 2:
        raise ValueError(f"expected (..., n, head_dim), got shape {tuple(x.shape)}")
    xf = x.detach().float()
    reduce_dim = -1 if granularity == "token" else -2
    amax = xf.abs().amax(dim=reduce_dim, keepdim=True)  # (..., n, 1) or (..., 1, head_dim)
    if not bool(torch.isfinite(amax).all()):
        raise ValueError("cannot quantize K/V with NaN or inf entries")
    scale = amax / 127.0
    fits_fp16 = scale.numel() == 0 or float(scale.max()) <= _FP16_MAX_SCALE
    scale_dtype = torch.float16 if fits_fp16 else torch.float32
    scale = scale.to(scale_dtype)
    # An all-zero group (or one below fp16's smallest step) gets scale 1: its codes are all 0 anyway.
    scale = torch.where(scale == 0, torch.ones_like(scale), scale)
    codes = torch.round(xf / scale.float()).clamp_(-127, 127).to(torch.int8)
    return codes, scale


def dequantize_int8(
    codes: torch.Tensor, scale: torch.Tensor, dtype: torch.dtype = torch.float32
) -> torch.Tensor:
    """codes * scale in `dtype` (float32 by default: the answerer rotates keys in float32 anyway)."""
    return codes.to(dtype) * scale.to(dtype)


def check_scales(codes: torch.Tensor, scale: torch.Tensor) -> str | None:
    """Why `scale` cannot belong to `codes` (dtype, rank or a non-broadcast shape), or None if it can."""
    if codes.dtype != torch.int8:
        return f"codes should be int8, got {codes.dtype}"
    if scale.dtype not in (torch.float16, torch.float32):
        return f"scales should be float16 or float32, got {scale.dtype}"
    if scale.dim() != codes.dim():
        return f"scales have {scale.dim()} dims, codes {codes.dim()}"
    *lead_c, n, d = codes.shape
    *lead_s, sn, sd = scale.shape
    if lead_s != lead_c or (sn, sd) not in ((n, 1), (1, d)):
        return f"scales {tuple(scale.shape)} are neither per-token nor per-channel for codes {tuple(codes.shape)}"
    if not bool(torch.isfinite(scale).all()):
        return "scales have NaN or inf entries"
    return None
