"""In-model retrieval vectors (ReKV): chunks and questions scored with the decoder's own projections.

A chunk's vector is the mean of its visual tokens' pre-RoPE keys at a few layers (KV heads
concatenated); a question's is the mean of its pre-RoPE queries at the same layers, with the
query heads of each GQA group summed onto their KV head. Their inner product equals the sum
over layers and query heads of ReKV's mean-query . mean-key score, at kv_heads x head_dim floats
per layer instead of heads x head_dim.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn


@contextmanager
def capture_projections(
    language_model: nn.Module, which: str, layers: list[int], detach: bool = True
) -> Iterator[dict[int, torch.Tensor]]:
    """Record the output of `which` ("q_proj" or "k_proj") at `layers` during the forward passes inside.

    Yields a dict layer -> (batch, seq, heads * head_dim), pre-RoPE (projections run before RoPE).
    detach=False keeps the graph, for the trainer's retrieval loss.
    """
    captured: dict[int, torch.Tensor] = {}
    handles = []
    for i in layers:
        proj = getattr(language_model.layers[i].self_attn, which)

        def hook(_module: nn.Module, _inputs: tuple, output: torch.Tensor, layer: int = i) -> None:
            captured[layer] = output.detach() if detach else output

        handles.append(proj.register_forward_hook(hook))
    try:
        yield captured
    finally:
        for h in handles:
            h.remove()


def key_vector(captured: dict[int, torch.Tensor], layers: list[int], rows: torch.Tensor) -> torch.Tensor:
    """Mean pre-RoPE key over `rows` (bool (seq,)) at each layer, concatenated: (layers * kv_dim,) float32."""
    parts = [captured[i][0, rows].float().mean(dim=0) for i in layers]  # each (kv_heads * head_dim,)
    return torch.cat(parts)


def query_vector(
    captured: dict[int, torch.Tensor], layers: list[int], num_heads: int, num_kv_heads: int, head_dim: int
) -> torch.Tensor:
    """Mean pre-RoPE query over all captured tokens, GQA groups summed onto KV heads: (layers * kv_dim,)."""
    groups = num_heads // num_kv_heads
    parts = []
    for i in layers:
        q = captured[i][0].float()  # (seq, heads * head_dim)
        # Query heads are laid out head-major and head h attends with KV head h // groups.
        q = q.view(q.shape[0], num_kv_heads, groups, head_dim).sum(dim=2)  # (seq, kv_heads, head_dim)
        parts.append(q.mean(dim=0).reshape(-1))
    return torch.cat(parts)


def within_margin(hits: list[tuple[int, float]], margin: float) -> list[tuple[int, float]]:
    """The (chunk, score) hits scoring at most `margin` below the best; their order kept.

    Retrieval's scores are not probabilities, so top-k always fills k places; a margin keeps
    only the chunks that score like the best one (both halves of an event across a chunk
    boundary do), not those that merely rank next.
    """
    if not hits:
        return []
    best = max(score for _, score in hits)
    return [(chunk, score) for chunk, score in hits if score >= best - margin]


def evidence_lead(scores: torch.Tensor, evidence: torch.Tensor) -> torch.Tensor | None:
    """How far the best evidence chunk scores above the best other chunk (a scalar tensor).

    scores: (n_chunks,); evidence: the chunk numbers that hold the answer. This is what a score
    margin reads: under the margin, a distractor is read beside the evidence; below minus the
    margin, the evidence is left out. None when every chunk is evidence.
    """
    others = torch.ones_like(scores, dtype=torch.bool)
    others[evidence] = False
    if not others.any():
        return None
    return scores[evidence].max() - scores[others].max()
