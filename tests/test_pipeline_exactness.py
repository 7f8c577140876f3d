"""The whole ingest path in keep-raw mode equals one native forward over the whole clip.

Real footage is decoded, sampled, patchified and pruned online chunk by chunk, encoded, compressed,
written to a real redis-server as safetensors and read back; answering from those caches must
give the logits transformers' own VideoLLaMA3 gives on the same frames with its own DiffFP mask.
"""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import pytest
import torch
from footage import real_clip
from native_videollama3 import native_compression_mask

from longwatch.memory.index import IndexRegistry
from longwatch.memory.store import RedisChunkStore
from longwatch.model.answer import prefill
from longwatch.model.compressor import SummaryCompressor
from longwatch.model.config import ModelConfig
from longwatch.model.frames import frames_to_pixel_values, grid_for
from longwatch.model.loading import frame_label, load_model, question_suffix
from longwatch.model.tiny import build_tiny_model
from longwatch.proto.streams import StreamRecord
from longwatch.stream.decode import VideoFileReader
from longwatch.stream.pipeline import ModelRunner, StreamIngestor
from longwatch.stream.settings import IngestConfig

QUESTION = "Which way did the cyclists go?"


@pytest.mark.parametrize(("threshold", "frames_per_chunk"), [(0.1, 3), (10.0, 2), (10.0, 4)])
def test_raw_pipeline_matches_native_forward(
    tmp_path: Path, store: RedisChunkStore, threshold: float, frames_per_chunk: int
) -> None:
    lm = load_model(ModelConfig(path=build_tiny_model(tmp_path / "ckpt", seed=5, init_scale=4.0), mode="raw"))
    config = IngestConfig(
        fps=3.0, frames_per_chunk=frames_per_chunk, max_tokens_per_frame=12, diff_threshold=threshold
    )
    frames = list(itertools.islice(VideoFileReader(str(real_clip("bikes.mp4")), fps=config.fps), 9))

    ingestor = StreamIngestor(
        "bikes", config, ModelRunner(lm, SummaryCompressor(lm)), store, IndexRegistry(store)
    )
    store.create_stream(StreamRecord(stream_id="bikes", source="test", model=lm.fingerprint))
    for frame in frames:
        ingestor.push(frame)
    ingestor.finish()
    spans = store.chunk_spans("bikes")
    assert len(spans) == -(-len(frames) // frames_per_chunk)
    chunks = store.get_chunks("bikes", [s.index for s in spans])  # through Redis and safetensors
    _, ours = prefill(lm, chunks, QUESTION)

    grid = grid_for(*frames[0].image.shape[:2], config.max_tokens_per_frame)
    pixels = frames_to_pixel_values(np.stack([f.image for f in frames]), grid)
    grid_thw = torch.tensor([[len(frames), grid.grid_h, grid.grid_w]])
    mask = native_compression_mask(pixels, grid_thw, threshold=threshold)
    per_frame = mask.view(len(frames), grid.tokens_per_frame).sum(1).tolist()
    if threshold > 1:
        assert 0 < sum(per_frame) < mask.numel()  # pruning happened, and not everywhere
    ids = list(lm.prefix_ids)
    for i, (frame, n) in enumerate(zip(frames, per_frame, strict=True)):
        ids += lm.tokenize(frame_label(frame.pts_s, i == 0)) + [lm.video_token_id] * n
    q_ids = lm.tokenize(question_suffix(QUESTION))
    with torch.no_grad():
        native = lm.model(
            input_ids=torch.tensor([ids + q_ids]),
            pixel_values_videos=pixels,
            video_grid_thw=grid_thw,
            video_merge_sizes=torch.tensor([2]),
            video_compression_mask=mask,
        ).logits[0, -len(q_ids) :]
    assert native.abs().max() > 1.0
    assert (ours[0] - native).abs().max().item() <= 1e-4
