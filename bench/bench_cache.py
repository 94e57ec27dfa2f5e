"""Step caching and LoRAs on the test model (CPU): for each cache, the denoising time, the full passes through
the last transformer block and the frames' distance from the uncached run; for a LoRA, the step time
unfused and fused against none. The ratios say what each mechanism skips; real weights change less from
step to step than random ones, so the GPU suite measures the real-size speed.

    python bench/bench_cache.py [--model test-tiny] [--size 256x256] [--frames 33] [--steps 20]
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402

from pipelines.loras import LoraChoice  # noqa: E402
from pipelines.manager import PipelineManager  # noqa: E402
from pipelines.request import GenerationRequest, validate_request  # noqa: E402
from pipelines.testmodels import lora_weights, save_lora  # noqa: E402


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="test-tiny")
    p.add_argument("--size", default="256x256")
    p.add_argument("--frames", type=int, default=33)
    p.add_argument("--steps", type=int, default=20)
    args = p.parse_args()
    width, height = (int(v) for v in args.size.split("x"))
    manager = PipelineManager(offline=True)

    def request(**fields):
        return validate_request(
            GenerationRequest(prompt="a red fox in the snow", model=args.model, width=width, height=height,
                              frames=args.frames, steps=args.steps, seed=0, **fields),
            default_model=args.model,
        )  # fmt: skip

    def run(req) -> tuple[dict, int, np.ndarray]:
        manager.generate(req)  # warm, and the cache hooks in place
        ffn = manager._loaded.pipe.transformer.blocks[-1].ffn
        passes = [0]
        hook = ffn.register_forward_hook(lambda *_: passes.__setitem__(0, passes[0] + 1))
        result = manager.generate(req)
        hook.remove()
        return result.timings, passes[0], result.frames

    print(f"{platform.processor() or 'cpu'}, {os.cpu_count()} cores, torch {torch.__version__}; {args.model} "
          f"{args.size}x{args.frames}, {args.steps} steps")  # fmt: skip
    print("| cache | denoise s | block passes | mean abs diff (of 255) | max |\n|---|---|---|---|---|")
    base_t, base_n, base = run(request())
    print(f"| off | {base_t['denoise_s']:.2f} | {base_n} | 0 | 0 |")
    for kind, threshold in (("first-block", 0.05), ("first-block", 0.1), ("taylorseer", None)):
        t, n, frames = run(request(cache=kind, cache_threshold=threshold))
        diff = np.abs(frames.astype(np.int16) - base.astype(np.int16))
        label = f"{kind} {threshold}" if threshold is not None else kind
        print(f"| {label} | {t['denoise_s']:.2f} | {n} | {diff.mean():.3f} | {diff.max()} |")

    folder = Path(tempfile.mkdtemp())
    path = save_lora(lora_weights(manager._loaded.pipe.transformer, rank=16), folder / "bench.safetensors")
    with_lora = request(loras=[LoraChoice(str(path))])
    t0 = time.perf_counter()
    unfused = manager.generate(with_lora).timings["step_s_mean"]
    first = time.perf_counter() - t0
    fused = manager.generate(with_lora).timings["step_s_mean"]
    print(f"\nLoRA rank 16 on every targeted layer: step {base_t['step_s_mean'] * 1000:.1f} ms without, "
          f"{unfused * 1000:.1f} ms unfused, {fused * 1000:.1f} ms fused; first run with it {first:.2f} s")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
