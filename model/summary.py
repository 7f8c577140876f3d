"""Video-XL's visual summary tokens on a native transformers decoder.

Summary tokens (`<vs>`) get their own learned input embedding and their own Q/K/V projections
in every decoder layer; every other token uses the base projections. We swap each text layer's
q/k/v_proj for a `SummaryLinear` that keeps the base Parameters (so base state-dict keys and
outputs are unchanged) and adds a copy applied only to rows flagged as summary tokens.

The per-token flag travels as an ordinary keyword, `summary_mask`, through the model's forward:
transformers passes extra keywords down to the attention modules, where a forward pre-hook
hands it to the three projections. (A module attribute set around the call would break under
gradient checkpointing, whose recompute runs after the call has returned.)
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import nn
from torch.nn import functional as F

ADAPTER_FORMAT = "longwatch-summary-adapter/1"
ADAPTER_WEIGHTS = "adapter.safetensors"
ADAPTER_CONFIG = "adapter_config.json"


class SummaryLinear(nn.Linear):
    """A base projection plus a copy used only for summary-token rows."""

    def __init__(self, base: nn.Linear) -> None:
        nn.Module.__init__(self)
        self.in_features = base.in_features
        self.out_features = base.out_features
        self.weight = base.weight  # the base Parameter itself: same state-dict key, same storage
        self.bias = base.bias
        self.summary = nn.Linear(base.in_features, base.out_features, bias=base.bias is not None)
        self.summary.to(device=base.weight.device, dtype=base.weight.dtype)
        with torch.no_grad():
            self.summary.weight.copy_(base.weight)
            if base.bias is not None:
                self.summary.bias.copy_(base.bias)
        self.summary_mask: torch.Tensor | None = None  # (batch, seq) bool, set per call by the hook

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.linear(x, self.weight, self.bias)
        mask = self.summary_mask
        if mask is None:
            return out
        if mask.shape != x.shape[:-1]:
            # Silently skipping would answer from base projections where summary ones were meant.
            raise ValueError(
                f"summary_mask has shape {tuple(mask.shape)}, the tokens it flags {tuple(x.shape[:-1])}"
            )
        if not bool(mask.any()):
            return out
        # Merge out of place so autograd sees both branches.
        return out.index_put((mask,), self.summary(x[mask]))


def _hand_mask_to_projections(module: nn.Module, args: tuple, kwargs: dict[str, Any]) -> None:
    mask = kwargs.get("summary_mask")
    for proj in (module.q_proj, module.k_proj, module.v_proj):
        proj.summary_mask = mask


@dataclass
class SummaryModules:
    """Handles on the summary-token parameters installed in a model."""

    vs_embedding: nn.Parameter  # (hidden,)
    projections: list[tuple[SummaryLinear, SummaryLinear, SummaryLinear]]  # per layer: q, k, v

    def parameters(self) -> list[nn.Parameter]:
        params: list[nn.Parameter] = [self.vs_embedding]
        for trio in self.projections:
            for proj in trio:
                params.extend(proj.summary.parameters())
        return params

    def state_dict(self) -> dict[str, torch.Tensor]:
        state = {"vs_embedding": self.vs_embedding.detach()}
        for i, trio in enumerate(self.projections):
            for name, proj in zip(("q", "k", "v"), trio, strict=True):
                state[f"layers.{i}.{name}.weight"] = proj.summary.weight.detach()
                if proj.summary.bias is not None:
                    state[f"layers.{i}.{name}.bias"] = proj.summary.bias.detach()
        return state

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        expected = self.state_dict()
        missing = sorted(set(expected) - set(state))
        unexpected = sorted(set(state) - set(expected))
        if missing or unexpected:
            raise ValueError(
                f"adapter does not fit this model: missing {missing[:3]}, unexpected {unexpected[:3]}"
            )
        with torch.no_grad():
            for name, tensor in expected.items():
                if tuple(state[name].shape) != tuple(tensor.shape):
                    raise ValueError(
                        f"adapter tensor {name}: expected {tuple(tensor.shape)}, got {tuple(state[name].shape)}"
                    )
                tensor.copy_(state[name])


def install_summary_tokens(language_model: nn.Module, vs_init: torch.Tensor) -> SummaryModules:
    """Swap every decoder layer's q/k/v_proj for SummaryLinear; returns the new parameters.

    With no summary token flagged, the model's outputs are bit-identical to before.
    """
    projections = []
    for layer in language_model.layers:
        attn = layer.self_attn
        if isinstance(attn.q_proj, SummaryLinear):
            raise RuntimeError("summary tokens are already installed in this model")
        attn.q_proj = SummaryLinear(attn.q_proj)
        attn.k_proj = SummaryLinear(attn.k_proj)
        attn.v_proj = SummaryLinear(attn.v_proj)
        attn.register_forward_pre_hook(_hand_mask_to_projections, with_kwargs=True)
        projections.append((attn.q_proj, attn.k_proj, attn.v_proj))
    vs = nn.Parameter(vs_init.detach().clone())
    language_model.register_parameter("summary_vs_embedding", vs)
    return SummaryModules(vs_embedding=vs, projections=projections)


def save_adapter(
    modules: SummaryModules, folder: Path, base_name: str, base_fingerprint: str, extra: dict | None = None
) -> Path:
    """Write the summary-token parameters and the base they belong to (safetensors + JSON)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    state = {k: v.contiguous().cpu() for k, v in modules.state_dict().items()}
    save_file(state, str(folder / ADAPTER_WEIGHTS))
    config = {
        "format": ADAPTER_FORMAT,
        "base": base_name,
        "base_fingerprint": base_fingerprint,
        "num_layers": len(modules.projections),
        "hidden_size": int(modules.vs_embedding.shape[0]),
        **(extra or {}),
    }
    (folder / ADAPTER_CONFIG).write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    return folder


def load_adapter(modules: SummaryModules, folder: Path, base_fingerprint: str | None = None) -> dict:
    """Load an adapter saved by `save_adapter` into installed modules; returns its config."""
    folder = Path(folder)
    config = json.loads((folder / ADAPTER_CONFIG).read_text())
    if config.get("format") != ADAPTER_FORMAT:
        raise ValueError(f"{folder}: not a longwatch summary adapter (format {config.get('format')!r})")
    if base_fingerprint is not None and config.get("base_fingerprint") not in (None, base_fingerprint):
        raise ValueError(
            f"{folder}: adapter was trained for base {config.get('base')!r} "
            f"({config.get('base_fingerprint')}), not this base ({base_fingerprint})"
        )
    modules.load_state_dict(load_file(str(folder / ADAPTER_WEIGHTS)))
    return config


def adapter_fingerprint(modules: SummaryModules) -> str:
    """A short hash of the summary parameters: caches made with different ones are not interchangeable."""
    h = hashlib.sha256()
    for name, tensor in sorted(modules.state_dict().items()):
        h.update(name.encode())
        h.update(tensor.detach().float().cpu().numpy().tobytes())
    return h.hexdigest()[:12]
