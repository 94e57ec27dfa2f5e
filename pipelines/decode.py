"""The VAE decode as its own stage: latents to uint8 frames, converted where the VAE computed them.

The pipelines' own decode ends in a float32 NumPy video on the host: 1.3 GB for 1280x704x121, copied off the
GPU and then scaled, rounded and cast in four more passes on a few CPU cores. Here the scaling, rounding
and cast happen in place on the decoding device and only uint8 (a quarter of the bytes) crosses to the host.
The arithmetic is the pipelines' own (x * 0.5 + 0.5, clamp, * 255, round), so the frames are identical.
"""

from __future__ import annotations

import numpy as np
import torch

VAE_PRECISIONS = {"float32": torch.float32, "bfloat16": torch.bfloat16}


@torch.no_grad()
def decode_latents(vae: torch.nn.Module, latents: torch.Tensor, precision: str = "float32") -> torch.Tensor:
    """Normalised (1, C, T, h, w) latents -> (1, 3, F, H, W) video in [-1, 1] on the VAE's execution device,
    as the Wan pipelines decode (de-normalise with the VAE's latent statistics, then decode).

    bfloat16 runs the decode under autocast: the weights stay float32 (so switching back is exact and the
    image-to-video encode is untouched) while convolutions compute in bf16 and keep half-size activations."""
    from diffusers.utils.torch_utils import get_module_execution_device

    device = get_module_execution_device(vae)
    latents = latents.to(device=device, dtype=vae.dtype)
    config = vae.config
    mean = torch.tensor(config.latents_mean).view(1, config.z_dim, 1, 1, 1).to(device, latents.dtype)
    inverse_std = 1.0 / torch.tensor(config.latents_std).view(1, config.z_dim, 1, 1, 1).to(device, latents.dtype)
    latents = latents / inverse_std + mean
    with torch.autocast(device.type, dtype=VAE_PRECISIONS[precision], enabled=precision != "float32"):
        return vae.decode(latents, return_dict=False)[0]


@torch.no_grad()
def video_to_uint8(video: torch.Tensor) -> torch.Tensor:
    """(1, 3, F, H, W) in [-1, 1] -> (F, H, W, 3) uint8 on the same device; reuses `video`'s memory when it
    is float32 (it is consumed)."""
    if video.dtype != torch.float32:  # a bf16 decode: round in float32, as the pipeline's post-processing does
        video = video.float()
    frames = video[0].mul_(0.5).add_(0.5).clamp_(0.0, 1.0).mul_(255.0).round_()
    return frames.permute(1, 2, 3, 0).to(torch.uint8).contiguous()


def to_host(frames: torch.Tensor) -> np.ndarray:
    """uint8 frames as a NumPy array (one copy off the GPU, none on the CPU)."""
    return frames.cpu().numpy()
