"""Colour matching for image-to-video: keep a clip's colours on its start picture's.

Wan's image-to-video clips drift in colour and saturation over their frames, and an extended shot starts
from the previous clip's last frame, so the drift compounds across a long take: one of the most repeated
complaints about Wan tools. Each frame's colour statistics (mean and spread of luma and both chroma
channels, in YCbCr) are moved to the start picture's. The map is affine per frame, computed on a small copy
and applied on the device the frames are on. It also undoes deliberate changes (a fade to night within one
shot), which is why it is an option. A clip that ends on a given picture is matched to statistics that move
from the start picture's to the end picture's over its frames, so the change it was asked for is kept.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F  # noqa: N812

# BT.601 full range: RGB -> YCbCr (rows), offsets left out (they cancel in a match of means)
_TO_YCC = torch.tensor([[0.299, 0.587, 0.114], [-0.168736, -0.331264, 0.5], [0.5, -0.418688, -0.081312]])
_FROM_YCC = torch.linalg.inv(_TO_YCC)
_STATS_SIDE = 128  # statistics are read from frames scaled to about this size
_SPREAD_LIMIT = (0.5, 2.0)  # a frame's spread is scaled by at most this much (a flat frame stays flat)


def _stats(pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(mean, std) of each YCbCr channel for (N, H, W, 3) float RGB in [0, 255]: (N, 3) each."""
    n, h, w, _ = pixels.shape
    scale = min(1.0, _STATS_SIDE / max(h, w))
    small = pixels.permute(0, 3, 1, 2)
    if scale < 1.0:
        small = F.interpolate(small, scale_factor=scale, mode="area")
    ycc = torch.einsum("ij,njhw->nihw", _TO_YCC.to(small), small).flatten(2)
    return ycc.mean(dim=2), ycc.std(dim=2)


def _picture_stats(picture: torch.Tensor | np.ndarray, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    if not isinstance(picture, torch.Tensor):
        picture = torch.from_numpy(np.array(picture, dtype=np.uint8))  # a copy: a picture's array is read-only
    return _stats(picture.to(device=device, dtype=torch.float32)[None])


def match_colours(
    frames: torch.Tensor,
    reference: torch.Tensor | np.ndarray,
    end: torch.Tensor | np.ndarray | None = None,
    chunk: int = 16,
) -> torch.Tensor:
    """`frames` (F, H, W, 3) uint8, with each frame's colour statistics moved to `reference`'s (H', W', 3)
    uint8, or, given the `end` picture, to a mix moving linearly from `reference`'s to `end`'s; a new uint8
    tensor on `frames`' device."""
    device = frames.device
    first_mean, first_std = _picture_stats(reference, device)
    last_mean, last_std = _picture_stats(end, device) if end is not None else (first_mean, first_std)
    along = torch.linspace(0.0, 1.0, frames.shape[0], device=device)[:, None]  # (F, 1): 0 at the start, 1 at the end
    ref_means = torch.lerp(first_mean, last_mean, along)
    ref_stds = torch.lerp(first_std, last_std, along)
    to_ycc, from_ycc = _TO_YCC.to(device), _FROM_YCC.to(device)
    out = torch.empty_like(frames)
    for start in range(0, frames.shape[0], chunk):
        part = frames[start : start + chunk].to(torch.float32)
        mean, std = _stats(part)
        ref_mean, ref_std = ref_means[start : start + chunk], ref_stds[start : start + chunk]
        gain = (ref_std / std.clamp_min(1e-3)).clamp(*_SPREAD_LIMIT)  # (n, 3)
        # y' = gain * (y - mean) + ref_mean, per YCbCr channel; as one affine map of RGB per frame
        matrix = from_ycc @ (gain[:, :, None] * to_ycc)  # (n, 3, 3)
        offset = ((ref_mean - gain * mean) @ from_ycc.T)[:, None, None, :]  # (n, 1, 1, 3)
        mapped = torch.einsum("nij,nhwj->nhwi", matrix, part) + offset
        out[start : start + chunk] = mapped.round_().clamp_(0, 255).to(torch.uint8)
    return out
