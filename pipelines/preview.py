"""Cheap live previews: a per-channel linear map from latents to RGB, fitted from the loaded VAE itself.

The map (C x 3 plus a bias) is fitted by least squares on a few synthetic pictures encoded by the
model's own VAE, so it works for any Wan VAE, the test models' included, and needs no published
tables. At each step the preview estimates the clean latent x0 from the noisy one and the scheduler's
sigmas, maps a few latent frames to RGB and upsamples them: a few hundred FLOPs a latent pixel,
versus a full VAE decode.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

PREVIEW_FRAMES = 4  # latent frames shown per preview, evenly spaced
PREVIEW_HEIGHT = 160  # pixels; width follows the aspect ratio
FIT_VERSION = 1


@dataclass
class LatentToRGB:
    weight: torch.Tensor  # (C, 3)
    bias: torch.Tensor  # (3,)
    fit_error: float  # mean absolute error on the fitting pictures, in [0, 1] RGB units
    baseline_error: float  # the same for a constant mean colour, to show the fit is worth having

    def to_rgb(self, latents: torch.Tensor) -> torch.Tensor:
        """(C, T, h, w) normalised latents -> (T, h, w, 3) RGB in [0, 1]."""
        w = self.weight.to(latents.device, torch.float32)
        b = self.bias.to(latents.device, torch.float32)
        rgb = torch.einsum("cthw,ck->thwk", latents.float(), w) + b
        return ((rgb + 1.0) / 2.0).clamp(0.0, 1.0)

    def to_json(self) -> dict:
        return {
            "version": FIT_VERSION,
            "weight": self.weight.tolist(),
            "bias": self.bias.tolist(),
            "fit_error": self.fit_error,
            "baseline_error": self.baseline_error,
        }

    @classmethod
    def from_json(cls, data: dict) -> LatentToRGB:
        return cls(torch.tensor(data["weight"]), torch.tensor(data["bias"]), data["fit_error"], data["baseline_error"])


def synthetic_pictures(count: int, size: int, seed: int = 0) -> torch.Tensor:
    """Solid colours, gradients and smooth colour fields in [-1, 1]: (count, 3, size, size)."""
    g = torch.Generator().manual_seed(seed)
    pictures = []
    ramp = torch.linspace(-1, 1, size)
    for i in range(count):
        kind = i % 3
        if kind == 0:
            pic = (torch.rand(3, 1, 1, generator=g) * 2 - 1).expand(3, size, size)
        elif kind == 1:
            a, b = torch.rand(3, 1, 1, generator=g) * 2 - 1, torch.rand(3, 1, 1, generator=g) * 2 - 1
            grad = ramp.view(1, 1, size) if i % 2 else ramp.view(1, size, 1)
            pic = (a * (1 - grad) / 2 + b * (1 + grad) / 2).expand(3, size, size)
        else:
            coarse = torch.rand(1, 3, 4, 4, generator=g) * 2 - 1
            pic = F.interpolate(coarse, size=(size, size), mode="bicubic", align_corners=True)[0]
        pictures.append(pic.clamp(-1, 1))
    return torch.stack(pictures)


@torch.no_grad()
def fit_latent_to_rgb(vae: torch.nn.Module, count: int = 24, size: int = 128) -> LatentToRGB:
    """Least squares from the VAE's normalised latents to the pictures' colours at latent resolution."""
    from diffusers.utils.torch_utils import get_module_execution_device

    # Under an offload profile the VAE waits on the CPU and its hook moves it, not its inputs, to the GPU:
    # the inputs go where it will compute.
    device = get_module_execution_device(vae)
    dtype = next(vae.parameters()).dtype
    config = vae.config
    factor = config.scale_factor_spatial
    size = max(size, 4 * factor) // factor * factor
    pictures = synthetic_pictures(count, size)
    mean = torch.tensor(config.latents_mean).view(1, -1, 1, 1, 1)
    std = torch.tensor(config.latents_std).view(1, -1, 1, 1, 1)
    latents = []
    for start in range(0, count, 8):
        batch = pictures[start : start + 8].unsqueeze(2).to(device, dtype)  # one-frame videos
        raw = vae.encode(batch).latent_dist.mode().float().cpu()
        latents.append((raw - mean) / std)
    z = torch.cat(latents)[:, :, 0]  # (N, C, h, w)
    target = F.avg_pool2d(pictures, factor)  # (N, 3, h, w) in [-1, 1]
    x = z.permute(0, 2, 3, 1).reshape(-1, z.shape[1]).double()
    y = target.permute(0, 2, 3, 1).reshape(-1, 3).double()
    x1 = torch.cat([x, torch.ones(len(x), 1, dtype=x.dtype)], dim=1)
    ridge = 1e-3 * torch.eye(x1.shape[1], dtype=x.dtype)
    solution = torch.linalg.solve(x1.T @ x1 + ridge, x1.T @ y)  # (C+1, 3)
    fit_error = ((x1 @ solution - y).abs().mean() / 2).item()
    baseline_error = ((y - y.mean(0)).abs().mean() / 2).item()
    return LatentToRGB(solution[:-1].float(), solution[-1].float(), fit_error, baseline_error)


def load_or_fit(vae: torch.nn.Module, cache_dir: Path, model_key: str) -> LatentToRGB:
    """Fitting costs a few VAE encodes; keep the factors per model (and VAE config) on disk."""
    digest = hashlib.sha256((model_key + json.dumps(dict(vae.config), sort_keys=True, default=str)).encode())
    path = cache_dir / f"latent-rgb-{digest.hexdigest()[:16]}.json"
    if path.is_file():
        try:
            data = json.loads(path.read_text())
            if data.get("version") == FIT_VERSION:
                return LatentToRGB.from_json(data)
        except (OSError, ValueError, KeyError):
            pass  # a damaged cache file is refitted
    mapping = fit_latent_to_rgb(vae)
    cache_dir.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(mapping.to_json()))
    tmp.replace(path)
    return mapping


def estimate_x0(
    latents: torch.Tensor, sigma: float, previous: torch.Tensor | None, previous_sigma: float | None
) -> torch.Tensor:
    """The clean latent implied by x_sigma = (1 - sigma) x0 + sigma * noise.

    With the previous step's latents the flow velocity is their difference over the sigma change, and
    x0 = x - sigma * v (exact for an Euler step, close for UniPC). On the first step, the best linear
    guess for unit-variance latents shrinks x towards zero.
    """
    if previous is not None and previous_sigma is not None and previous_sigma - sigma > 1e-6:
        velocity = (latents - previous) / (sigma - previous_sigma)
        return latents - sigma * velocity
    return latents * (1 - sigma) / ((1 - sigma) ** 2 + sigma**2)


class StepPreviewer:
    """Turns each step's latents into a few RGB frames; one instance per generation (it keeps the last step)."""

    def __init__(self, mapping: LatentToRGB, first_frame: np.ndarray | None = None):
        self.mapping = mapping
        self.first_frame = first_frame  # image-to-video: the input picture stands for latent frame 0
        self._previous: torch.Tensor | None = None
        self._previous_sigma: float | None = None

    @torch.no_grad()
    def __call__(self, latents: torch.Tensor, sigma: float) -> np.ndarray:
        """(1, C, T, h, w) latents -> (k, H, W, 3) uint8 preview frames."""
        t = latents.shape[2]
        idx = torch.linspace(0, t - 1, min(PREVIEW_FRAMES, t), device=latents.device).round().long()
        current = latents[0, :, idx].float()
        x0 = estimate_x0(current, sigma, self._previous, self._previous_sigma)
        self._previous, self._previous_sigma = current, sigma
        rgb = self.mapping.to_rgb(x0)  # (k, h, w, 3)
        height = PREVIEW_HEIGHT
        width = max(2, round(rgb.shape[2] * height / rgb.shape[1]))
        rgb = F.interpolate(rgb.permute(0, 3, 1, 2), size=(height, width), mode="bilinear", align_corners=False)
        frames = (rgb.permute(0, 2, 3, 1) * 255).round().to(torch.uint8).cpu().numpy()
        if self.first_frame is not None:
            frames[0] = _resize(self.first_frame, width, height)
        return frames


def _resize(frame: np.ndarray, width: int, height: int) -> np.ndarray:
    from PIL import Image

    return np.asarray(Image.fromarray(frame).resize((width, height), Image.Resampling.BILINEAR))
