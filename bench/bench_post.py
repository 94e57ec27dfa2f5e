"""Post-production speed and memory: frames per second of x2 upscaling at 832x480 and x2 interpolation at
1280x704, with the test models and with the full-size architectures at random weights; and peak RSS of
x2 interpolation of a 5 s and a 30 s clip (flat: frames stream through).

    python bench/bench_post.py                    # this machine's CPU (or --device cuda)
    python bench/bench_post.py --json bench/results/post.json

Random weights cost the same compute as the published ones. Each memory run is a fresh process.
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def frames(count: int, width: int, height: int) -> list[np.ndarray]:
    """A moving pattern (what interpolation has to follow), uint8 H×W×3."""
    rng = np.random.default_rng(0)
    base = rng.integers(0, 255, (height // 16, width // 16, 3), dtype=np.uint8)
    still = np.kron(base, np.ones((16, 16, 1), np.uint8))
    return [np.roll(still, 6 * t, axis=1) for t in range(count)]


def full_size_upscaler(folder: Path) -> Path:
    """The default upscaler's architecture (Compact, 64 features, 16 convolutions, x2) at random weights."""
    import torch
    from safetensors.torch import save_file
    from spandrel.architectures.Compact import Compact

    torch.manual_seed(0)
    net = Compact(num_in_ch=3, num_out_ch=3, num_feat=64, num_conv=16, upscale=2, act_type="prelu")
    path = folder / "compact-64x16-x2.safetensors"
    save_file({k: v.contiguous() for k, v in net.state_dict().items()}, str(path))
    return path


def full_size_rife(folder: Path) -> Path:
    """RIFE's published IFNet layout at random weights."""
    import torch
    from safetensors.torch import save_file

    from pipelines.interpolate import IFNet

    torch.manual_seed(0)
    path = folder / "rife-full-random.safetensors"
    save_file({k: v.contiguous() for k, v in IFNet().state_dict().items()}, str(path))
    return path


def rate(run, count: int) -> float:
    """Frames a second over `count` output frames, after one warm-up frame."""
    run(2)
    start = time.perf_counter()
    made = run(count)
    return round(made / (time.perf_counter() - start), 3)


def measure(device: str, scratch: Path, count: int = 4, tiny: bool = False) -> dict:
    """The speed figures (also the GPU suite's `post` section): x2 upscaling at 832x480 and x2 interpolation
    at 1280x704 with the test models and the full-size architectures; `tiny`: the test models at 96x64."""
    from pipelines.interpolate import ensure_test_rife, load_interpolator
    from pipelines.upscale import ensure_test_upscaler, load_upscaler

    out: dict = {}
    up_size, in_size = ((96, 64), (96, 64)) if tiny else ((832, 480), (1280, 704))
    small, big = frames(count + 1, *up_size), frames(count + 1, *in_size)
    upscalers = [("test", ensure_test_upscaler())] + ([] if tiny else [("full", full_size_upscaler(scratch))])
    for label, path in upscalers:
        upscaler = load_upscaler(path, device)
        key = f"upscale_x2_{up_size[0]}x{up_size[1]}_{label}_fps"
        out[key] = rate(lambda n, u=upscaler: sum(1 for _ in u.upscale(small[:n])), count)
    interpolators = [("test", ensure_test_rife())] + ([] if tiny else [("full", full_size_rife(scratch))])
    for label, path in interpolators:
        interpolator = load_interpolator(path, device)

        def run(n, i=interpolator):  # n output frames: n/2 pairs at x2
            return sum(1 for _ in i.by_factor(big[: max(2, n // 2 + 1)], 2))

        out[f"interpolate_x2_{in_size[0]}x{in_size[1]}_{label}_fps"] = rate(run, count)
    return out


def memory_run(seconds: float, fps: int, width: int, height: int) -> dict:
    """In this process: a clip of `seconds` made, then x2 interpolated by the test RIFE through the library's
    streaming path; the peak RSS of the interpolation alone is the growth over the peak before it."""
    from library import Library
    from library.clips import publish_clip
    from library.media import Mp4Writer
    from library.post_models import TEST
    from pipelines import APP_NAME

    with tempfile.TemporaryDirectory() as tmp:
        count = round(seconds * fps)
        pattern = frames(64, width, height)

        def encode(path: Path) -> None:  # the source streamed too, so only the interpolation could grow
            writer = Mp4Writer(path, fps)
            for n in range(count):
                writer.write(pattern[n % len(pattern)])
            writer.close()

        sidecar = {"app": APP_NAME, "settings": {"prompt": "bench"}, "duration_s": seconds}
        name = publish_clip(encode, 1.0, Path(tmp), "bench", sidecar).video.name
        library = Library.open(Path(tmp))
        library.post_models.default = TEST
        request = library.check_post("interpolate", name, TEST, factor=2)
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        start = time.perf_counter()
        library.post(request, "cpu")
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"seconds": seconds, "frames": count, "peak_rss_mb": round(peak, 1),
            "peak_before_mb": round(before, 1), "took_s": round(time.perf_counter() - start, 1)}  # fmt: skip


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cpu")
    p.add_argument("--frames", type=int, default=4, help="output frames timed per figure")
    p.add_argument("--memory", nargs="*", type=float, default=[5, 30], help="clip lengths (s) for peak RSS")
    p.add_argument("--json", type=Path, default=None)
    p.add_argument("--memory-run", nargs=4, type=float, help=argparse.SUPPRESS)  # seconds fps width height
    args = p.parse_args()
    if args.memory_run:
        seconds, fps, width, height = args.memory_run
        print(json.dumps(memory_run(seconds, int(fps), int(width), int(height))))
        return 0
    import torch

    result = {"machine": platform.processor() or platform.machine(), "cores": __import__("os").cpu_count(),
              "torch": torch.__version__, "device": args.device}  # fmt: skip
    with tempfile.TemporaryDirectory() as tmp:
        result["speed"] = measure(args.device, Path(tmp), args.frames)
    print(json.dumps(result["speed"], indent=1), flush=True)
    result["memory"] = []
    for seconds in args.memory:
        done = subprocess.run([sys.executable, __file__, "--memory-run", str(seconds), "16", "832", "480"],
                              capture_output=True, text=True, check=True)  # fmt: skip
        result["memory"].append(json.loads(done.stdout.strip().splitlines()[-1]))
        print(result["memory"][-1], flush=True)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
