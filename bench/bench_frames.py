"""Decoded video to uint8 frames, before and after the change that converts on the decoding device.

    python bench/bench_frames.py --size 1280x704 --frames 121 --runs 3

Before: the pipeline's float post-processing, a float32 copy to the host, then scale, round, clip and cast in
NumPy. After: scale, round and cast in place with torch where the video was decoded, then one uint8 copy.
On a CPU machine both run on the CPU (no copy to count); on a GPU this times the device path
(bench/gpu_suite.py does the same inside its VAE section).
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from pipelines.decode import to_host, video_to_uint8  # noqa: E402


def before(video: torch.Tensor) -> np.ndarray:
    floats = (video[0].permute(1, 0, 2, 3) * 0.5 + 0.5).clamp(0, 1).cpu().permute(0, 2, 3, 1).float().numpy()
    return (floats * 255.0).round().clip(0, 255).astype(np.uint8)


def after(video: torch.Tensor) -> np.ndarray:
    return to_host(video_to_uint8(video))


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--size", default="1280x704")
    p.add_argument("--frames", type=int, default=121)
    p.add_argument("--runs", type=int, default=3)
    args = p.parse_args()
    width, height = (int(v) for v in args.size.split("x"))
    device = "cuda" if torch.cuda.is_available() else "cpu"
    shape = (1, 3, args.frames, height, width)
    gen = torch.Generator(device).manual_seed(0)
    times: dict[str, list[float]] = {"before": [], "after": []}
    for _ in range(args.runs):
        for name, fn in (("before", before), ("after", after)):
            video = torch.rand(shape, generator=gen, device=device) * 2 - 1
            if device == "cuda":
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            frames = fn(video)
            times[name].append(time.perf_counter() - t0)
            del video, frames
    check = torch.rand((1, 3, 5, 64, 64), generator=gen, device=device) * 2 - 1
    assert np.array_equal(before(check), after(check.clone())), "the two paths must give the same frames"
    where = torch.cuda.get_device_name() if device == "cuda" else f"{platform.machine()}, {os.cpu_count()} cores"
    print(f"{args.size} x {args.frames} frames, {where}, torch {torch.__version__}, {torch.get_num_threads()} threads")
    for name, values in times.items():
        print(f"  {name:<6} median {statistics.median(values):.3f} s  (runs: {', '.join(f'{v:.3f}' for v in values)})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
