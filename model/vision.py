"""VideoLLaMA3's vision tower and projector on a chunk's frames."""

from __future__ import annotations

import torch

from longwatch.model.loading import LoadedModel

MERGE_SIZE = 2  # VideoLLaMA3 merges 2x2 patches into one token for video


@torch.no_grad()
def encode_frames(
    lm: LoadedModel, pixel_values: torch.Tensor, n_frames: int, grid_h: int, grid_w: int
) -> torch.Tensor:
    """Projected visual tokens of `n_frames` frames: (n_frames * grid_h * grid_w / 4, hidden).

    pixel_values: (n_frames * grid_h * grid_w, 3 * patch^2), normalised, in the native patch order.
    Vision attention is per frame, so encoding a chunk's frames alone equals encoding the whole video.
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
