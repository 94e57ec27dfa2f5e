"""Cost of one live preview for the real models' latent shapes, on this machine's CPU or GPU.

    python bench/bench_preview.py

A preview maps the latents of a denoising step to a few RGB frames (pipelines/preview.py). Compare its
time with a real denoising step (about 10 s for TI2V-5B at 720P on an RTX 4090, from the Wan team's
published 534.7 s for 50 steps) to see its share.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from pipelines.preview import LatentToRGB, StepPreviewer  # noqa: E402

# (channels, latent frames, latent height, latent width) for each model's default size and frame count
SHAPES = {
    "TI2V-5B 1280x704, 121 frames": (48, 31, 44, 80),
    "A14B 832x480, 81 frames": (16, 21, 60, 104),
    "A14B 1280x720, 81 frames": (16, 21, 90, 160),
}


def main() -> int:
    device = "cuda" if torch.cuda.is_available() else "cpu"
    results = {}
    for name, (c, t, h, w) in SHAPES.items():
        mapping = LatentToRGB(torch.randn(c, 3) * 0.1, torch.zeros(3), 0.0, 0.0)
        previewer = StepPreviewer(mapping)
        latents = torch.randn(1, c, t, h, w, device=device)
        previewer(latents, 0.9)  # warm-up
        runs = []
        for i in range(10):
            latents = latents * 0.99
            if device == "cuda":
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            previewer(latents, 0.8 - i * 0.05)
            runs.append(time.perf_counter() - t0)
        results[name] = {"device": device, "median_ms": round(sorted(runs)[len(runs) // 2] * 1000, 2)}
    print(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
