"""The model side: keep-raw exactness against native transformers, summary tokens, re-packing, adapters."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from longwatch.model.answer import AnswerStream, assemble_cache, prefill, question_vector
from longwatch.model.compressor import (
    SUMMARY,
    TEXT,
    VISUAL,
    ChunkFrames,
    SummaryCompressor,
    build_chunk_sequence,
    run_chunk,
)
from longwatch.model.config import ModelConfig
from longwatch.model.loading import LoadedModel, frame_label, load_model, question_suffix
from longwatch.model.retrieval import within_margin
from longwatch.model.rope import shift_keys
from longwatch.model.summary import load_adapter, save_adapter
from longwatch.model.tiny import build_tiny_model
from longwatch.model.vision import chunk_frames as encoded_chunk
from longwatch.model.vision import encode_frames

QUESTION = "What colour was the car that stopped?"
T, GH, GW = 7, 4, 6  # frames, patch grid: 6 merged tokens per frame
TPF = GH * GW // 4


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    # Weights scaled up so that a wrong position or mask moves logits by whole units, not 1e-6.
    return build_tiny_model(tmp_path_factory.mktemp("ckpt") / "tiny", seed=3, init_scale=4.0)


@pytest.fixture(scope="module")
def raw_lm(checkpoint: Path) -> LoadedModel:
    return load_model(ModelConfig(path=checkpoint, mode="raw"))


@pytest.fixture(scope="module")
def summary_lm(checkpoint: Path) -> LoadedModel:
    return load_model(ModelConfig(path=checkpoint, mode="summary", alpha=4))


@pytest.fixture(scope="module")
def video() -> tuple[torch.Tensor, torch.Tensor, list[float]]:
    """Pixel values of T frames, a DiffFP-style mask (frame 0 whole, >= 1 token per frame), timestamps."""
    g = torch.Generator().manual_seed(0)
    pixels = torch.randn(T * GH * GW, 3 * 14 * 14, generator=g)
    mask = torch.rand(T * TPF, generator=g) > 0.45
    mask[:TPF] = True
    mask.view(T, TPF)[:, 0] = True
    return pixels, mask, [0.5 + 1.0 * i for i in range(T)]


def chunk_frames(lm: LoadedModel, video: tuple, start: int, n: int) -> ChunkFrames:
    pixels, mask, times = video
    with torch.no_grad():
        feats = encode_frames(lm, pixels[start * GH * GW : (start + n) * GH * GW], n, GH, GW)
    m = mask[start * TPF : (start + n) * TPF]
    return encoded_chunk(times[start : start + n], feats, m, start == 0, times[start + n - 1] + 1.0)


def native_question_logits(lm: LoadedModel, video: tuple) -> torch.Tensor:
    """The native model's logits over the question, from one forward over the whole sequence."""
    pixels, mask, times = video
    ids = list(lm.prefix_ids)
    for f in range(T):
        ids += lm.tokenize(frame_label(times[f], f == 0)) + [lm.video_token_id] * int(
            mask[f * TPF : (f + 1) * TPF].sum()
        )
    q_ids = lm.tokenize(question_suffix(QUESTION))
    with torch.no_grad():
        out = lm.model(
            input_ids=torch.tensor([ids + q_ids]),
            pixel_values_videos=pixels,
            video_grid_thw=torch.tensor([[T, GH, GW]]),
            video_merge_sizes=torch.tensor([2]),
            video_compression_mask=mask,
        )
    return out.logits[0, -len(q_ids) :]


def compress_all(lm: LoadedModel, video: tuple, sizes: list[int], stream: str = "s") -> list:
    comp = SummaryCompressor(lm)
    chunks, start = [], 0
    for i, n in enumerate(sizes):
        chunks.append(comp.compress(stream, i, chunk_frames(lm, video, start, n)))
        start += n
    return chunks


@pytest.mark.parametrize("sizes", [[7], [2, 1, 4], [3, 3, 1]])
def test_keep_raw_reproduces_native_logits(raw_lm: LoadedModel, video: tuple, sizes: list[int]) -> None:
    native = native_question_logits(raw_lm, video)
    assert native.abs().max() > 1.0  # the comparison below is not between two near-zero tensors
    chunks = compress_all(raw_lm, video, sizes)
    _, logits = prefill(raw_lm, chunks, QUESTION)
    assert (logits[0] - native).abs().max().item() <= 1e-4


def test_keep_raw_subset_is_not_the_full_answer(raw_lm: LoadedModel, video: tuple) -> None:
    # The exactness above is not vacuous: leaving one chunk out changes the logits a lot.
    native = native_question_logits(raw_lm, video)
    chunks = compress_all(raw_lm, video, [2, 1, 4])
    _, logits = prefill(raw_lm, [chunks[0], chunks[2]], QUESTION)
    assert (logits[0] - native).abs().max().item() > 0.1


def test_repacked_positions_are_contiguous(raw_lm: LoadedModel, video: tuple) -> None:
    chunks = compress_all(raw_lm, video, [2, 1, 4])
    cache = assemble_cache(raw_lm, [chunks[0], chunks[2]])
    assert cache.get_seq_length() == raw_lm.prefix_len + chunks[0].n_kept + chunks[2].n_kept
    # Chunk 2's keys moved back by chunk 1's length equal keys recomputed at those positions:
    # rotating by -shift must give back the stored ones.
    k2 = cache.layers[0].keys[0, :, raw_lm.prefix_len + chunks[0].n_kept :]
    back = shift_keys(k2, torch.full((chunks[2].n_kept,), chunks[1].n_kept), raw_lm.language_model.rotary_emb)
    assert torch.allclose(back, chunks[2].keys[0], atol=1e-4)


def test_shift_keys_equals_rotation_at_new_position(raw_lm: LoadedModel) -> None:
    rope = raw_lm.language_model.rotary_emb
    head_dim = raw_lm.text_config.hidden_size // raw_lm.text_config.num_attention_heads
    k = torch.randn(2, 5, head_dim)
    pos = torch.tensor([3, 10, 11, 500, 2000])
    shift = torch.tensor([7, -4, 100, 1, 30000])

    def rotate_at(x: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
        cos, sin = rope(x, p.view(1, -1))
        half = x.shape[-1] // 2
        return x * cos[0] + torch.cat((-x[..., half:], x[..., :half]), -1) * sin[0]

    moved = shift_keys(rotate_at(k, pos), shift, rope)
    assert torch.allclose(moved, rotate_at(k, pos + shift), atol=5e-3)
    assert not torch.allclose(rotate_at(k, pos), rotate_at(k, pos + shift), atol=1e-1)


def test_summary_layout_interleaves_one_vs_per_alpha(summary_lm: LoadedModel, video: tuple) -> None:
    frames = chunk_frames(summary_lm, video, 0, 3)
    for alpha in (2, 4, 8, 16):
        seq = build_chunk_sequence(summary_lm, frames, alpha)
        n_visual = seq.kinds.count(VISUAL)
        assert n_visual == sum(frames.tokens_per_frame)
        assert seq.kinds.count(SUMMARY) == math.ceil(n_visual / alpha)
        assert seq.kinds[-1] == SUMMARY
        # every summary token closes a group of exactly alpha visual tokens, except the last
        run = 0
        for kind in seq.kinds[:-1]:
            if kind == VISUAL:
                run += 1
            elif kind == SUMMARY:
                assert run == alpha
                run = 0


def test_summary_chunk_keeps_only_summary_kv(summary_lm: LoadedModel, video: tuple) -> None:
    frames = chunk_frames(summary_lm, video, 0, 3)
    chunk = SummaryCompressor(summary_lm).compress("s", 0, frames)
    n_summary = math.ceil(sum(frames.tokens_per_frame) / 4)
    tc = summary_lm.text_config
    assert chunk.keys.shape == (tc.num_hidden_layers, tc.num_key_value_heads, n_summary, 16)
    assert chunk.positions.min() >= summary_lm.prefix_len
    assert chunk.retrieval.shape == (summary_lm.retrieval_dim,)
    assert question_vector(summary_lm, QUESTION).shape == (summary_lm.retrieval_dim,)


def test_keep_timestamp_tokens_keeps_labels_beside_summaries(
    checkpoint: Path, summary_lm: LoadedModel, video: tuple
) -> None:
    lm = load_model(ModelConfig(path=checkpoint, mode="summary", alpha=4, keep_timestamp_tokens=True))
    frames = chunk_frames(lm, video, 1, 3)
    seq = build_chunk_sequence(lm, frames, 4)
    kept = [i for i, kind in enumerate(seq.kinds) if kind in (TEXT, SUMMARY)]
    chunk = SummaryCompressor(lm).compress("s", 0, frames)
    assert chunk.positions.tolist() == [lm.prefix_len + i for i in kept]
    # The summary tokens' K/V are those of a model that keeps only them: keeping labels costs
    # storage, it does not change what the summaries hold.
    plain = SummaryCompressor(summary_lm).compress("s", 0, frames)  # the same checkpoint, alpha 4
    is_summary = torch.tensor([seq.kinds[i] == SUMMARY for i in kept])
    torch.testing.assert_close(chunk.keys[:, :, is_summary], plain.keys)
    # The trainer and the in-process evaluation call run_chunk: they keep the same tokens.
    kv = run_chunk(lm, frames, 4, lm.prefix_cache(), lm.prefix_len)
    assert kv.positions.tolist() == chunk.positions.tolist()


def test_summary_projections_apply_only_to_summary_tokens(checkpoint: Path, video: tuple) -> None:
    lm = load_model(ModelConfig(path=checkpoint, mode="summary", alpha=4))
    frames = chunk_frames(lm, video, 0, 3)
    before = SummaryCompressor(lm).compress("s", 0, frames)
    # Base model outputs with nothing flagged are untouched by the installed copies.
    native = native_question_logits(lm, video)
    with torch.no_grad():
        for q, k, v in lm.summary.projections:
            for proj in (q, k, v):
                proj.summary.weight.add_(torch.randn_like(proj.summary.weight))
    assert torch.equal(native_question_logits(lm, video), native)
    after = SummaryCompressor(lm).compress("s", 0, frames)
    assert (after.keys - before.keys).abs().max() > 0.1
    # Raw tokens never go through the copies: at the first layer (the tiny model's retrieval
    # layer) their keys, and so the retrieval vector, are unchanged.
    assert lm.retrieval_layers == [0]
    assert torch.equal(after.retrieval, before.retrieval)


def test_a_summary_mask_of_the_wrong_shape_is_refused(summary_lm: LoadedModel) -> None:
    """A mask that does not fit the tokens must not quietly switch the summary projections off."""
    ids = summary_lm.tokenize("Time 1.0s:")
    embeds = summary_lm.embed(ids).unsqueeze(0)  # (1, n, hidden)
    with torch.no_grad(), pytest.raises(ValueError, match="summary_mask has shape"):
        summary_lm.language_model(
            inputs_embeds=embeds, summary_mask=torch.ones(1, len(ids) + 1, dtype=torch.bool)
        )


def test_adapter_round_trip_and_mismatch(checkpoint: Path, tmp_path: Path) -> None:
    lm = load_model(ModelConfig(path=checkpoint))
    with torch.no_grad():
        lm.summary.vs_embedding.add_(1.0)
        lm.summary.projections[0][1].summary.bias.add_(0.5)
    save_adapter(lm.summary, tmp_path / "adapter", lm.name, "base-fp")
    fresh = load_model(ModelConfig(path=checkpoint))
    assert not torch.equal(fresh.summary.vs_embedding, lm.summary.vs_embedding)
    load_adapter(fresh.summary, tmp_path / "adapter", base_fingerprint="base-fp")
    for name, tensor in lm.summary.state_dict().items():
        assert torch.equal(fresh.summary.state_dict()[name], tensor), name
    with pytest.raises(ValueError, match="trained for base"):
        load_adapter(fresh.summary, tmp_path / "adapter", base_fingerprint="another-base")


def test_answer_stream_is_greedy_and_bounded(summary_lm: LoadedModel, video: tuple) -> None:
    chunks = compress_all(summary_lm, video, [3, 4])
    stream = AnswerStream(summary_lm, chunks, QUESTION, max_new_tokens=5)
    text = "".join(stream)
    assert text == stream.text
    assert 0 < stream.stats.tokens_generated <= 5
    again = AnswerStream(summary_lm, chunks, QUESTION, max_new_tokens=5)
    assert "".join(again) == text  # greedy: deterministic


def test_retrieval_inner_product_equals_rekv_score() -> None:
    """Summing query heads onto their KV head preserves ReKV's per-head mean-query . mean-key score."""
    from longwatch.model.retrieval import key_vector, query_vector

    g = torch.Generator().manual_seed(1)
    heads, kv_heads, head_dim, layers = 4, 2, 8, [0, 1]
    queries = {i: torch.randn(1, 5, heads * head_dim, generator=g) for i in layers}
    keys = {i: torch.randn(1, 9, kv_heads * head_dim, generator=g) for i in layers}
    rows = torch.tensor([True, False, True, True, False, True, True, True, False])
    ours = query_vector(queries, layers, heads, kv_heads, head_dim) @ key_vector(keys, layers, rows)
    rekv = 0.0
    for i in layers:
        mean_q = queries[i][0].view(5, heads, head_dim).mean(0)  # (heads, head_dim)
        mean_k = keys[i][0, rows].view(-1, kv_heads, head_dim).mean(0)  # (kv_heads, head_dim)
        for h in range(heads):
            rekv += float(mean_q[h] @ mean_k[h // (heads // kv_heads)])
    assert abs(float(ours) - rekv) < 1e-4


def test_within_margin_keeps_the_hits_that_score_like_the_best() -> None:
    hits = [(7, 40.0), (8, 37.5), (2, 12.0), (0, 11.0)]  # as the index returns them, best first
    assert within_margin(hits, 5.0) == [(7, 40.0), (8, 37.5)]  # an event across two chunks: both
    assert within_margin(hits, 1.0) == [(7, 40.0)]
    assert within_margin(hits, 100.0) == hits
    assert within_margin([], 5.0) == []
