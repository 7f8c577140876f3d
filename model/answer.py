"""Answering a question from a list of chunk caches, positions re-packed after the system prefix."""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch
from transformers import DynamicCache

from longwatch.memory.chunk import ChunkCache
from longwatch.model.loading import LoadedModel, question_suffix, question_text
from longwatch.model.retrieval import capture_projections, query_vector
from longwatch.model.rope import shift_keys


@dataclass
class AnswerStats:
    tokens_generated: int = 0
    prefill_ms: float = 0.0  # re-pack plus the question's forward pass
    repack_ms: float = 0.0  # of which re-packing the chunks after the system prefix
    first_token_ms: float = 0.0  # from the start of prefill
    generate_ms: float = 0.0
    context_tokens: int = 0  # prefix + chunk tokens the question attended to


def _head_dim(lm: LoadedModel) -> int:
    tc = lm.text_config
    return getattr(tc, "head_dim", None) or tc.hidden_size // tc.num_attention_heads


def question_queries(lm: LoadedModel, ids: list[int], cache: DynamicCache) -> torch.Tensor:
    """Retrieval vector (retrieval_dim,) of `ids` run after `cache` (the system prefix); differentiable."""
    start = cache.get_seq_length()
    positions = torch.arange(start, start + len(ids), device=lm.device).unsqueeze(0)
    tc = lm.text_config
    with capture_projections(lm.language_model, "q_proj", lm.retrieval_layers, detach=False) as queries:
        lm.language_model(
            inputs_embeds=lm.embed(ids).unsqueeze(0),
            cache=cache,
            use_cache=True,
            position_ids=positions,
        )
    return query_vector(
        queries, lm.retrieval_layers, tc.num_attention_heads, tc.num_key_value_heads, _head_dim(lm)
    )


@torch.no_grad()
def question_vector(lm: LoadedModel, question: str) -> torch.Tensor:
    """The question's retrieval vector (retrieval_dim,) float32 on the CPU, where chunks' vectors live.

    Only the question's own tokens count: the chat template after it is the same for every
    question and would pull all questions towards one vector. (Attention is causal, so the
    tokens after the question cannot change its queries: they need not run at all.)
    """
    return question_queries(lm, lm.tokenize(question_text(question)), lm.prefix_cache()).cpu()


KVParts = Sequence[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]  # (keys, values, positions) per chunk


def repack(
    lm: LoadedModel, prefix_kv: Sequence[tuple[torch.Tensor, torch.Tensor]], parts: KVParts
) -> DynamicCache:
    """Prefix cache + chunks' K/V in the given order, re-packed to contiguous positions after the prefix.

    Each chunk's keys are rotated once, from the positions they were computed at to their new
    ones; every layer gets the same number of tokens, as attention requires. Differentiable.
    All chunks are joined first and rotated in one call: per token the same arithmetic as one
    call per chunk, without a rotary-table build and a copy per chunk per layer.
    """
    if not parts:
        return DynamicCache(ddp_cache_data=list(prefix_kv), config=lm.text_config)
    start = prefix_kv[0][0].shape[2]
    # Joined in float32: chunks may come in different dtypes (int8 storage dequantizes to float32).
    keys = torch.cat(
        [k.to(lm.device, torch.float32) for k, _, _ in parts], dim=2
    )  # (layers, kv_heads, n, hd)
    values = torch.cat([v.to(lm.device, lm.dtype) for _, v, _ in parts], dim=2)  # (layers, kv_heads, n, hd)
    positions = torch.cat([p.to(lm.device) for _, _, p in parts])  # (n,) where each was computed
    shift = torch.arange(start, start + positions.shape[0], device=lm.device) - positions  # (n,)
    keys = shift_keys(keys, shift, lm.language_model.rotary_emb).to(lm.dtype)
    data = [
        (torch.cat([pk, keys[i].unsqueeze(0)], dim=2), torch.cat([pv, values[i].unsqueeze(0)], dim=2))
        for i, (pk, pv) in enumerate(prefix_kv)
    ]
    return DynamicCache(ddp_cache_data=data, config=lm.text_config)


def assemble_cache(lm: LoadedModel, chunks: Sequence[ChunkCache]) -> DynamicCache:
    """The serving path's context: the system prefix and the stored chunks, re-packed."""
    return repack(lm, lm.prefix_kv, [(c.keys, c.values, c.positions) for c in chunks])


def continue_logits(lm: LoadedModel, cache: DynamicCache, ids: list[int]) -> torch.Tensor:
    """Logits (1, len(ids), vocab) of `ids` run after everything in `cache` (appended to it)."""
    start = cache.get_seq_length()
    positions = torch.arange(start, start + len(ids), device=lm.device).unsqueeze(0)
    out = lm.language_model(
        inputs_embeds=lm.embed(ids).unsqueeze(0),
        cache=cache,
        use_cache=True,
        position_ids=positions,
    )
    return lm.model.lm_head(out.last_hidden_state)


@torch.no_grad()
def prefill(
    lm: LoadedModel, chunks: Sequence[ChunkCache], question: str, stats: AnswerStats | None = None
) -> tuple[DynamicCache, torch.Tensor]:
    """Run the question after the re-packed chunks; returns the cache and the question's logits (1, Lq, vocab).

    With `stats`, records the re-pack's share (repack_ms) and the whole (prefill_ms).
    """
    t0 = time.perf_counter()
    cache = assemble_cache(lm, chunks)
    t1 = time.perf_counter()
    logits = continue_logits(lm, cache, lm.tokenize(question_suffix(question)))
    if stats is not None:
        stats.repack_ms = (t1 - t0) * 1e3
        stats.prefill_ms = (time.perf_counter() - t0) * 1e3
    return cache, logits


class AnswerStream:
    """Greedy decoding as an iterator of text deltas; `stats` and `text` are complete once exhausted.

    Under the model card's answer format (model/answer_format.py) only well-formed answers come out.
    """

    def __init__(
        self, lm: LoadedModel, chunks: Sequence[ChunkCache], question: str, max_new_tokens: int
    ) -> None:
        self.lm = lm
        self.chunks = list(chunks)
        self.question = question
        self.max_new_tokens = max_new_tokens
        self.stats = AnswerStats()
        self.text = ""

    def __iter__(self) -> Iterator[str]:
        return self._run()

    def _next(self, logits: torch.Tensor, generated: list[int]) -> int:
        """Greedy: the best token, or under the card's answer format the best well-formed one."""
        fmt = self.lm.answer_format
        if fmt is None:
            return int(logits.argmax())

        def decode(ids: list[int]) -> str:
            return self.lm.tokenizer.decode(ids, skip_special_tokens=True)

        return fmt.choose(logits.float().cpu(), generated, decode, self.lm.eos_token_ids)

    @torch.no_grad()
    def _run(self) -> Iterator[str]:
        lm, stats = self.lm, self.stats
        t0 = time.perf_counter()
        cache, logits = prefill(lm, self.chunks, self.question, stats)
        stats.context_tokens = cache.get_seq_length() - logits.shape[1]
        generated: list[int] = []
        next_id = self._next(logits[0, -1], generated)
        while next_id not in lm.eos_token_ids and len(generated) < self.max_new_tokens:
            generated.append(next_id)
            stats.tokens_generated = len(generated)  # so far: what a stopped answer cost
            if len(generated) == 1:
                stats.first_token_ms = (time.perf_counter() - t0) * 1e3
            text = lm.tokenizer.decode(generated, skip_special_tokens=True)
            # Hold back a trailing partial UTF-8 sequence until its last byte arrives.
            if not text.endswith("\ufffd") and len(text) > len(self.text):
                delta, self.text = text[len(self.text) :], text
                yield delta
            if len(generated) == self.max_new_tokens:
                break
            position = torch.tensor([[cache.get_seq_length()]], device=lm.device)
            out = lm.language_model(
                inputs_embeds=lm.embed([next_id]).unsqueeze(0),
                cache=cache,
                use_cache=True,
                position_ids=position,
            )
            next_id = self._next(lm.model.lm_head(out.last_hidden_state[:, -1])[0], generated)
        final = lm.tokenizer.decode(generated, skip_special_tokens=True)
        if len(final) > len(self.text):
            yield final[len(self.text) :]
        self.text = final
        stats.tokens_generated = len(generated)
        if not generated:  # the answer ended at once: its first "token" is the end of prefill
            stats.first_token_ms = stats.prefill_ms
        stats.generate_ms = (time.perf_counter() - t0) * 1e3 - stats.prefill_ms
