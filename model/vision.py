"""VideoLLaMA3's vision tower and projector on a chunk's frames, and the chunk they make after DiffFP."""

from __future__ import annotations

import torch

from longwatch.model.compressor import ChunkFrames
from longwatch.model.loading import LoadedModel

MERGE_SIZE = 2  # VideoLLaMA3 merges 2x2 patches into one token for video


def encode_frames(
    lm: LoadedModel, pixel_values: torch.Tensor, n_frames: int, grid_h: int, grid_w: int
) -> torch.Tensor:
    """Projected visual tokens of `n_frames` frames: (n_frames * grid_h * grid_w / 4, hidden).

    pixel_values: (n_frames * grid_h * grid_w, 3 * patch^2), normalised, in the native patch order.
    Vision attention is per frame, so encoding a chunk's frames alone equals encoding the whole video.
    Runs with gradients where they are enabled (the trainer); the service calls it under no_grad.
    """
    expected = n_frames * grid_h * grid_w
    if pixel_values.shape[0] != expected:
        raise ValueError(f"pixel_values has {pixel_values.shape[0]} patch rows, expected {expected}")
    grid = torch.tensor([[n_frames, grid_h, grid_w]], device=lm.device)
    merge = torch.tensor([MERGE_SIZE], device=lm.device)
    out = lm.model.model.get_video_features(
        pixel_values_videos=pixel_values.to(lm.device, lm.dtype), video_grid_thw=grid, video_merge_sizes=merge
    )
    return torch.cat(out.pooler_output, dim=0)


def chunk_frames(
    frame_times: list[float],
    features: torch.Tensor,
    keep: torch.Tensor,
    first_in_stream: bool,
    end_s: float,
) -> ChunkFrames:
    """A chunk of encoded frames with DiffFP's pruned tokens taken out.

    features: (n_frames * tokens_per_frame, hidden), every token of the chunk's frames;
    keep: (n_frames * tokens_per_frame,) bool, DiffFP's mask over the same tokens.
    """
    n = len(frame_times)
    per_frame = keep.view(n, -1)  # (n_frames, tokens_per_frame)
    return ChunkFrames(
        frame_times=list(frame_times),
        features=features[keep.to(features.device)],
        tokens_per_frame=per_frame.sum(dim=1).tolist(),
        first_in_stream=first_in_stream,
        tokens_seen=int(keep.numel()),
        end_s=end_s,
    )
