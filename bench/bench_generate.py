"""Benchmark one catalogue model: seconds per step, preview cost per step, VAE decode, peak memory,
and our overhead against a plain diffusers call of the same loaded pipeline in the same run.

    python bench/bench_generate.py --model test-tiny                      # CPU, tiny random weights
    python bench/bench_generate.py --model Wan-AI/Wan2.2-TI2V-5B-Diffusers --random-weights \\
        --size 1280x704 --frames 121 --steps 10 --vram-cap-gb 24           # GPU, full size, random weights

--random-weights builds the model's full-size architecture from its configs with random weights
(same compute and memory as the real one, nothing to download: the architectures are in
pipelines/testmodels.py) and saves it once as a diffusers folder, loaded through from_pretrained.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from pipelines.manager import PipelineManager  # noqa: E402
from pipelines.memory import AUTO, PROFILES  # noqa: E402
from pipelines.request import GenerationRequest, validate_request  # noqa: E402


def peak_rss_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # Linux reports KiB


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="test-tiny")
    p.add_argument("--task", default="t2v", choices=["t2v", "i2v"])
    p.add_argument("--size", default=None, help="WIDTHxHEIGHT (default: the model's)")
    p.add_argument("--frames", type=int, default=None)
    p.add_argument("--steps", type=int, default=None)
    p.add_argument("--profile", default=AUTO, choices=[AUTO, *PROFILES])
    p.add_argument("--vram-cap-gb", type=float, default=None, help="stand in for a smaller card (e.g. 24)")
    p.add_argument("--json", type=Path, default=None, help="also write the figures here")
    p.add_argument("--random-weights", action="store_true", help="full-size architecture, random weights")
    args = p.parse_args(argv)

    model = args.model
    if args.random_weights:
        from pipelines.catalogue import get_spec
        from pipelines.testmodels import build_full_size_random, cache_root

        folder = cache_root().parent / "full-size-random" / args.model.split("/")[-1]
        t0 = time.perf_counter()
        model = str(build_full_size_random(args.model, folder, get_spec(args.model).flow_shift))
        print(f"random-weight copy ready in {time.perf_counter() - t0:.0f} s: {model}", file=sys.stderr)

    if args.vram_cap_gb and torch.cuda.is_available():
        total = torch.cuda.get_device_properties(0).total_memory / 2**30
        torch.cuda.set_per_process_memory_fraction(min(1.0, args.vram_cap_gb / total))
        os.environ["WAN_STUDIO_VRAM_CAP_GB"] = str(args.vram_cap_gb)

    width, height = (int(v) for v in args.size.split("x")) if args.size else (None, None)
    image = None
    if args.task == "i2v":
        import numpy as np

        image = (np.random.default_rng(0).random((480, 832, 3)) * 255).astype("uint8")
    request = validate_request(
        GenerationRequest(
            prompt="A red fox runs through fresh snow at sunrise, cinematic",
            model=model, task=args.task, width=width, height=height, frames=args.frames,
            steps=args.steps, seed=0, image=image,
        ),
        default_model=model,
    )  # fmt: skip
    manager = PipelineManager(profile=args.profile)
    previews = []

    t0 = time.perf_counter()
    manager.generate(request, on_progress=lambda pr: previews.append(pr.preview))  # warm-up: load, fit previews
    first_run_s = time.perf_counter() - t0

    if torch.cuda.is_available():
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    ours = manager.generate(request, on_progress=lambda pr: previews.append(pr.preview))
    ours_s = time.perf_counter() - t0
    peak_gpu = torch.cuda.max_memory_allocated() / 2**30 if torch.cuda.is_available() else 0.0

    pipe = manager.pipeline
    kwargs = dict(
        prompt=request.prompt, negative_prompt=request.negative_prompt, height=request.height, width=request.width,
        num_frames=request.frames, num_inference_steps=request.steps, guidance_scale=request.guidance_scale,
        generator=torch.Generator("cpu").manual_seed(request.seed), output_type="np",
    )  # fmt: skip
    if request.guidance_scale_2 is not None:
        kwargs["guidance_scale_2"] = request.guidance_scale_2
    if request.image is not None:
        kwargs["image"] = request.image
    t0 = time.perf_counter()
    pipe(**kwargs)
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    plain_s = time.perf_counter() - t0

    t = ours.timings
    figures = {
        "model": args.model + (" (random weights)" if args.random_weights else ""),
        "task": request.task,
        "size": f"{request.width}x{request.height}",
        "frames": request.frames,
        "steps": request.steps,
        "profile": ours.profile,
        "device": ours.device,
        "vram_cap_gb": args.vram_cap_gb,
        "first_run_s (load + generate)": round(first_run_s, 3),
        "step_s": round(t["step_s_mean"], 4),
        "preview_s_per_step": round(t["preview_s_per_step"], 5),
        "preview_share_of_step": round(t["preview_s_per_step"] / t["step_s_mean"], 4),
        "vae_decode_s": round(t["decode_s"], 3),
        "ours_s": round(ours_s, 3),
        "plain_diffusers_s": round(plain_s, 3),
        "overhead_ratio": round(ours_s / plain_s, 3),
        "peak_gpu_gb": round(peak_gpu, 2),
        "peak_rss_gb": round(peak_rss_gb(), 2),
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores",
        "torch": torch.__version__,
    }
    print(json.dumps(figures, indent=2))
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
