"""The GPU benchmark, sized for a short GPU loan: time-guarded sections inside one budget, one JSON rewritten
after every section, so a run cut off early still leaves every figure it reached.

    bash bench/gpu_suite.sh                        # on a lent GPU: carried wheels, then this, 8 minutes at most
    python bench/gpu_suite.py --json out.json      # full-size TI2V-5B, 1280x704x121, random weights, 4 steps
    python bench/gpu_suite.py --tiny --json x.json # every section that needs no CUDA, on the test model (CPU)

Sections, in order: env, gemm (bf16 peak), build (the full-size model with random weights, built straight on
the GPU: same compute and memory as the real one, nothing downloaded or saved), attention (seconds per CFG
step for each backend this machine has, with MFU), overhead (PipelineManager.generate against a plain
diffusers call of the same pipeline; preview cost per step; memory estimate against the measured peak),
vae (decode in float32, bf16 and tiled, with the bf16 error), lora (a rank-32 LoRA on every targeted layer:
step time unfused, then fused, against no LoRA), fast (Fast mode's whole clip against the 50-step CFG
baseline), compile (regional compilation against eager), long_take (a take of 2 and of 4 windows against a
single clip of one window: seconds per window, peak GPU memory of each), capped (the profile `auto` picks
under a 24 GB cap, standing in for an RTX 4090), profiles (the other GPU profiles under that cap, while the
budget lasts: estimate against measured peak). Each reports peak allocated and reserved GPU memory. Few steps suffice:
per-step figures use steps 2..n.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import signal
import sys
import time
import traceback
from collections.abc import Callable, Iterator
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from pipelines import attention  # noqa: E402
from pipelines.catalogue import TEST_TINY, get_spec  # noqa: E402
from pipelines.decode import decode_latents, to_host, video_to_uint8  # noqa: E402
from pipelines.manager import PipelineManager  # noqa: E402
from pipelines.memory import AUTO, PROFILES, estimate_need  # noqa: E402
from pipelines.prompts import PromptEncoder  # noqa: E402
from pipelines.request import GenerationRequest, validate_request  # noqa: E402
from pipelines.speed import compile_blocks, uncompile_blocks  # noqa: E402

FULL_MODEL = "Wan-AI/Wan2.2-TI2V-5B-Diffusers"
DATASHEET_BF16_TFLOPS = {"H100": 989.0, "H200": 989.0, "A100": 312.0, "RTX 4090": 165.2, "L40S": 362.0}
PROMPT = "A red fox trots through fresh snow at sunrise, cinematic, shallow depth of field"


class SectionTimeout(Exception):
    pass


class Suite:
    """Runs sections while the budget lasts and rewrites the JSON after each one."""

    def __init__(self, path: Path | None, budget_s: float, meta: dict, device: torch.device):
        self.path = path
        self.deadline = time.monotonic() + budget_s
        self.results: dict = {"meta": meta, "sections": {}, "complete": False}
        self.cuda = device.type == "cuda"  # --tiny runs on the CPU even where there is a GPU

    def left(self) -> float:
        return self.deadline - time.monotonic()

    def run(self, name: str, needs_s: float, body: Callable[[dict], None], needs_cuda: bool = False) -> dict:
        record: dict = {}
        if needs_cuda and not self.cuda:
            record["status"] = "skipped: needs CUDA"
        elif self.left() < needs_s:
            record["status"] = f"skipped: needs about {needs_s:.0f} s, {max(0.0, self.left()):.0f} s of the budget left"
        else:
            record.update(self._guarded(name, body))
        self.results["sections"][name] = record
        self.save()
        print(f"[{name}] {record.get('status')} ({record.get('seconds', 0):.1f} s)", file=sys.stderr, flush=True)
        return record

    def _guarded(self, name: str, body: Callable[[dict], None]) -> dict:
        record: dict = {"status": "running"}
        started = time.perf_counter()

        def expire(signum, frame):
            raise SectionTimeout(f"stopped at the end of the budget, {time.perf_counter() - started:.0f} s in")

        previous = signal.signal(signal.SIGALRM, expire)
        signal.setitimer(signal.ITIMER_REAL, max(1.0, self.left()))
        if self.cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        try:
            body(record)
            if record["status"] == "running":  # a section may say itself why it measured nothing
                record["status"] = "ok"
        except SectionTimeout as err:
            record["status"] = f"timed out: {err}"
        except Exception as err:  # one section failing must not lose the others
            record["status"] = f"failed: {type(err).__name__}: {err}"[:500]
            record["traceback"] = traceback.format_exc(limit=6)[-2000:]
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)
            signal.signal(signal.SIGALRM, previous)
        record["seconds"] = round(time.perf_counter() - started, 2)
        if self.cuda:  # a section that resets the peak between its parts has recorded their highest itself
            for key, peak in (("peak_allocated_gb", torch.cuda.max_memory_allocated()),
                              ("peak_reserved_gb", torch.cuda.max_memory_reserved())):  # fmt: skip
                record[key] = max(record.get(key, 0.0), round(peak / 2**30, 2))
        return record

    def save(self) -> None:
        if self.path is None:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.results, indent=2, default=str))
        tmp.replace(self.path)


def sync() -> None:
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.synchronize()


def steady(times: list[float]) -> float:
    """Mean of steps 2..n (step 1 also pays for warm-ups and any compile)."""
    rest = times[1:] or times
    return sum(rest) / len(rest)


def flops_per_cfg_step(pipe, width: int, height: int, frames: int, text_tokens: int = 512) -> float:
    """Transformer FLOPs of one denoising step with guidance (two forwards), counted by torch's FLOP counter on
    a copy of the transformer on the meta device (no memory, no compute): 1.04 PFLOP for TI2V-5B at 720P."""
    from torch.utils.flop_counter import FlopCounterMode

    cls, config = type(pipe.transformer), pipe.transformer.config
    vae = pipe.vae.config
    with torch.device("meta"):
        transformer = cls.from_config(config)
    latent_frames = (frames - 1) // vae.scale_factor_temporal + 1
    shape = (
        1,
        config.in_channels,
        latent_frames,
        height // vae.scale_factor_spatial,
        width // vae.scale_factor_spatial,
    )
    tokens = shape[2] * shape[3] * shape[4] // (config.patch_size[0] * config.patch_size[1] * config.patch_size[2])
    expanded = getattr(pipe.config, "expand_timesteps", False)  # TI2V: one timestep per token
    with FlopCounterMode(display=False) as counter:
        transformer(
            hidden_states=torch.empty(shape, device="meta"),
            timestep=torch.zeros((1, tokens) if expanded else (1,), device="meta", dtype=torch.long),
            encoder_hidden_states=torch.empty(1, text_tokens, config.text_dim, device="meta"),
            return_dict=False,
        )
    return 2.0 * counter.get_total_flops()


def datasheet_peak(name: str) -> float | None:
    return next((v for k, v in DATASHEET_BF16_TFLOPS.items() if k in name), None)


@contextlib.contextmanager
def backend_for(pipe, name: str) -> Iterator[None]:
    transformers = [m for m in (pipe.transformer, getattr(pipe, "transformer_2", None)) if m is not None]
    device = pipe._execution_device
    attention.apply(transformers, attention.BACKENDS[name])
    try:
        yield
    finally:
        attention.apply(transformers, attention.resolve(AUTO, device))


def denoise_steps(pipe, request, prompt_embeds, negative_embeds) -> tuple[list[float], torch.Tensor]:
    """A plain pipeline call to latents (no decode), with the device synchronised at the end of every step."""
    times: list[float] = []
    last = [time.perf_counter()]

    def on_step(pipeline, i, t, tensors):
        sync()
        now = time.perf_counter()
        times.append(now - last[0])
        last[0] = now
        return {}

    sync()
    last[0] = time.perf_counter()
    latents = pipe(
        prompt_embeds=prompt_embeds, negative_prompt_embeds=negative_embeds, height=request.height,
        width=request.width, num_frames=request.frames, num_inference_steps=request.steps,
        guidance_scale=request.guidance_scale, generator=torch.Generator("cpu").manual_seed(request.seed),
        output_type="latent", callback_on_step_end=on_step,
    ).frames  # fmt: skip
    return times, latents


def plain_call(pipe, request) -> np.ndarray:
    """What a diffusers user writes: the whole pipeline to float frames on the host."""
    output = pipe(
        prompt=request.prompt, negative_prompt=request.negative_prompt, height=request.height, width=request.width,
        num_frames=request.frames, num_inference_steps=request.steps, guidance_scale=request.guidance_scale,
        generator=torch.Generator("cpu").manual_seed(request.seed), output_type="np",
    )  # fmt: skip
    return output.frames[0]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tiny", action="store_true", help="the test model on the CPU: every section without CUDA")
    p.add_argument("--model", default=None, help=f"catalogue id (default: {FULL_MODEL}, or test-tiny with --tiny)")
    p.add_argument("--size", default=None, help="WIDTHxHEIGHT (default: 1280x704, or 96x64 with --tiny)")
    p.add_argument("--frames", type=int, default=None, help="default: 121, or 9 with --tiny")
    p.add_argument("--steps", type=int, default=4, help="denoising steps per timed run (per-step figures: 2..n)")
    p.add_argument("--budget-s", type=float, default=480.0, help="total seconds for all sections (default 8 min)")
    p.add_argument("--cap-gb", type=float, default=24.0, help="the card the capped section stands in for")
    p.add_argument("--json", type=Path, default=Path("bench/results/gpu_suite.json"))
    args = p.parse_args(argv)

    model = args.model or (TEST_TINY if args.tiny else FULL_MODEL)
    width, height = (int(v) for v in (args.size or ("96x64" if args.tiny else "1280x704")).split("x"))
    frames = args.frames or (9 if args.tiny else 121)
    device = torch.device("cuda" if torch.cuda.is_available() and not args.tiny else "cpu")
    spec = get_spec(model)
    request = validate_request(
        GenerationRequest(prompt=PROMPT, model=model, width=width, height=height, frames=frames, steps=args.steps,
                          seed=0),
        default_model=model,
    )  # fmt: skip
    import diffusers

    meta = {
        "command": " ".join([Path(sys.argv[0]).name, *(argv if argv is not None else sys.argv[1:])]),
        "model": model + ("" if spec.is_test else " (full size, random weights)"),
        "size": f"{width}x{height}", "frames": frames, "steps": args.steps, "guidance": request.guidance_scale,
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu",
        "cpu_cores": os.cpu_count(), "torch": torch.__version__, "diffusers": diffusers.__version__,
        "budget_s": args.budget_s, "started": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
    }  # fmt: skip
    suite = Suite(args.json, args.budget_s, meta, device)
    state: dict = {}  # what sections hand on: the pipeline, the manager, latents, figures

    def env(r: dict) -> None:
        if device.type == "cuda":
            props = torch.cuda.get_device_properties(device)
            r.update(
                capability=".".join(map(str, torch.cuda.get_device_capability(device))),
                memory_gb=round(props.total_memory / 2**30, 1),
                multiprocessors=props.multi_processor_count,
            )
        r["attention_backends"] = attention.available(device)
        r["flops_per_cfg_step"] = None  # filled once the model is built

    def gemm(r: dict) -> None:
        n = 8192
        a, b = (torch.randn(n, n, device=device, dtype=torch.bfloat16) for _ in range(2))
        for _ in range(3):
            a @ b
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(10):
            a @ b
        end.record()
        sync()
        seconds = start.elapsed_time(end) / 1000 / 10
        r["bf16_tflops"] = round(2 * n**3 / seconds / 1e12, 1)
        r["datasheet_bf16_tflops"] = datasheet_peak(meta["device"])
        state["peak_tflops"] = r["bf16_tflops"]

    def build(r: dict) -> None:
        t0 = time.perf_counter()
        if spec.is_test:
            from pipelines.testmodels import ensure_test_model

            cls = diffusers.WanPipeline
            pipe = cls.from_pretrained(str(ensure_test_model(model)), dtype=torch.float32)
        else:
            from pipelines.testmodels import full_size_pipeline

            pipe = full_size_pipeline(model, spec.flow_shift, device=str(device))
        sync()
        r["build_s"] = round(time.perf_counter() - t0, 2)
        manager = PipelineManager(offline=True, device=str(device))
        profile = "cpu" if device.type == "cpu" else "gpu"
        manager.adopt(spec, request.task, pipe, profile, revision="random-weights")
        state.update(pipe=pipe, manager=manager, profile=profile)
        flops = flops_per_cfg_step(pipe, width, height, frames)
        suite.results["sections"]["env"]["flops_per_cfg_step"] = flops
        r["profile"] = profile
        r["parameters_b"] = {
            name: round(sum(p.numel() for p in module.parameters()) / 1e9, 3)
            for name, module in pipe.components.items() if isinstance(module, torch.nn.Module)
        }  # fmt: skip

    def embeddings() -> tuple[torch.Tensor, torch.Tensor]:
        pipe = state["pipe"]
        encoder = state.setdefault("prompts", PromptEncoder(pipe.tokenizer, pipe.text_encoder))
        dtype = pipe.transformer.dtype
        execution = pipe._execution_device
        return (encoder.embeddings(request.prompt, execution, dtype),
                encoder.embeddings(request.negative_prompt, execution, dtype))  # fmt: skip

    def attention_section(r: dict) -> None:
        pipe = state["pipe"]
        flops = flops_per_cfg_step(pipe, width, height, frames)
        peak = state.get("peak_tflops")
        sheet = datasheet_peak(meta["device"])
        embeds = embeddings()
        r["backends"] = {}
        for name in attention.available(device):
            if suite.left() < 3 * state.get("step_s", 1.0) * args.steps:
                r["backends"][name] = "skipped: budget"
                continue
            with backend_for(pipe, name):
                times, latents = denoise_steps(pipe, request, *embeds)
            step = steady(times)
            state.setdefault("step_s", step)
            state.setdefault("latents", latents)
            r["backends"][name] = {
                "s_per_cfg_step": round(step, 4), "first_step_s": round(times[0], 3),
                "tflops": round(flops / step / 1e12, 1),
                "mfu_vs_measured_gemm": round(flops / step / 1e12 / peak, 3) if peak else None,
                "mfu_vs_datasheet": round(flops / step / 1e12 / sheet, 3) if sheet else None,
            }  # fmt: skip
            print(f"  attention {name}: {step:.3f} s per CFG step", file=sys.stderr, flush=True)
        r["auto_picks"] = attention.resolve(AUTO, device).name

    def overhead(r: dict) -> None:
        pipe, manager = state["pipe"], state["manager"]
        runs: dict[str, list[float]] = {"ours": [], "plain": []}
        timings = {}
        for _ in range(2 if spec.is_test else 1):
            manager.forget_prompts()  # like for like: the plain call encodes its prompts too
            sync()
            t0 = time.perf_counter()
            result = manager.generate(request)
            sync()
            runs["ours"].append(time.perf_counter() - t0)
            timings = result.timings
            t0 = time.perf_counter()
            plain_frames = plain_call(pipe, request)
            sync()
            runs["plain"].append(time.perf_counter() - t0)
        ours, plain = min(runs["ours"]), min(runs["plain"])
        # The ratio compares like with like only if both made the same clip (levels of 255; the attention
        # backend our run picks may differ from the plain call's on a GPU, which moves bf16 output a little)
        same_shape = result.frames.shape == plain_frames.shape
        diff = np.abs(result.frames.astype(np.int16) - np.round(plain_frames * 255).astype(np.int16)) \
            if same_shape else np.full(1, 255)  # fmt: skip
        need = estimate_need(spec, PROFILES[state["profile"]], width, height, frames)
        r.update(
            ours_s=round(ours, 3), plain_diffusers_s=round(plain, 3), ratio=round(ours / plain, 3),
            runs={k: [round(v, 3) for v in vs] for k, vs in runs.items()},
            stages={k: round(v, 4) for k, v in timings.items()},
            preview_s_per_step=round(timings["preview_s_per_step"], 5),
            preview_share_of_step=round(timings["preview_s_per_step"] / timings["step_s_mean"], 4),
            profile=state["profile"], estimated_vram_gb=round(need.vram_gb, 2),
            same_clip={"same_shape": same_shape, "max_diff": int(diff.max()),
                       "mean_diff": round(float(diff.mean()), 4)},
        )  # fmt: skip

    def vae(r: dict) -> None:
        pipe = state["pipe"]
        latents = state.get("latents")
        if latents is None:
            _, latents = denoise_steps(pipe, request, *embeddings())
        tiled_before = pipe.vae.use_tiling
        reference = None
        for name, precision, tiled in (("float32", "float32", False), ("bfloat16", "bfloat16", False),
                                       ("float32_tiled", "float32", True)):  # fmt: skip
            if suite.left() < 30 and not spec.is_test:
                r[name] = "skipped: budget"
                continue
            pipe.vae.enable_tiling() if tiled else pipe.vae.disable_tiling()
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
                torch.cuda.reset_peak_memory_stats()
            sync()
            t0 = time.perf_counter()
            video = decode_latents(pipe.vae, latents, precision)
            sync()
            seconds = time.perf_counter() - t0
            entry = {"decode_s": round(seconds, 3)}
            if reference is None:
                entry["frames_before_s"] = round(_frames_before(video), 6)
            t1 = time.perf_counter()
            frames_u8 = to_host(video_to_uint8(video))
            del video
            entry["frames_after_s"] = round(time.perf_counter() - t1, 6)
            if torch.cuda.is_available():
                entry["peak_allocated_gb"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
                r["peak_allocated_gb"] = max(r.get("peak_allocated_gb", 0.0), entry["peak_allocated_gb"])
                r["peak_reserved_gb"] = max(r.get("peak_reserved_gb", 0.0),
                                            round(torch.cuda.max_memory_reserved() / 2**30, 2))  # fmt: skip
            if reference is None:
                reference = frames_u8
            else:
                diff = np.abs(frames_u8.astype(np.int16) - reference.astype(np.int16))
                mse = float((diff.astype(np.float64) ** 2).mean())
                entry.update(mean_abs_diff=round(float(diff.mean()), 4), max_abs_diff=int(diff.max()),
                             psnr_db=round(10 * np.log10(255**2 / mse), 2) if mse else None)  # fmt: skip
            r[name] = entry
        pipe.vae.enable_tiling() if tiled_before else pipe.vae.disable_tiling()

    def lora(r: dict) -> None:
        """Unfused LoRA layers cost every step; the manager fuses a set that runs twice in a row."""
        from pipelines.loras import LoraChoice
        from pipelines.testmodels import lora_weights, save_lora

        pipe, manager = state["pipe"], state["manager"]
        rank = 4 if spec.is_test else 32
        weights = {k: (d.bfloat16(), u.bfloat16()) for k, (d, u) in lora_weights(pipe.transformer, rank).items()}
        path = save_lora(weights, Path(os.environ.get("TMPDIR", "/tmp")) / "bench-lora.safetensors")
        with_lora = validate_request(
            GenerationRequest(prompt=PROMPT, model=model, width=width, height=height, frames=frames,
                              steps=args.steps, seed=0, loras=[LoraChoice(str(path))]),
            default_model=model,
        )  # fmt: skip
        base = suite.results["sections"].get("overhead", {}).get("stages", {}).get("step_s_mean")
        t0 = time.perf_counter()
        unfused = manager.generate(with_lora).timings
        r["first_run_s"] = round(time.perf_counter() - t0, 2)  # loading the LoRA included
        fused = manager.generate(with_lora).timings
        r.update(
            rank=rank, file_mb=round(path.stat().st_size / 2**20, 1), fused=manager._loaded.loras.fused,
            no_lora_s_per_cfg_step=round(base, 4) if base else None,
            unfused_s_per_cfg_step=round(unfused["step_s_mean"], 4),
            fused_s_per_cfg_step=round(fused["step_s_mean"], 4),
            unfused_over_fused=round(unfused["step_s_mean"] / fused["step_s_mean"], 3),
        )  # fmt: skip
        path.unlink(missing_ok=True)

    def fast(r: dict) -> None:
        """Fast mode's clip end to end against the 50-step CFG baseline. The baseline is not run (minutes at
        full size): it is this run's encode, decode and copy plus 50 of the overhead section's CFG steps. On
        a full-size model the distilled weights cannot be fetched here (no network); the base transformer
        with random weights stands in at the preset's steps and guidance: same layers, same compute."""
        manager, preset = state["manager"], spec.fast
        if preset is None:
            r["status"] = "skipped: no fast preset for this model"
            return
        fields = dict(fast=True) if spec.is_test else dict(steps=preset.steps, guidance_scale=preset.guidance_scale)
        quick = validate_request(
            GenerationRequest(prompt=PROMPT, model=model, width=width, height=height, frames=frames, seed=0,
                              **fields),
            default_model=model,
        )  # fmt: skip
        manager.generate(quick)  # warm: a fast preset's transformer swap or scheduler, outside the timing
        sync()
        t0 = time.perf_counter()
        timings = manager.generate(quick).timings
        sync()
        total = time.perf_counter() - t0
        base = suite.results["sections"].get("overhead", {}).get("stages", {})
        baseline = None
        if base:
            baseline = base["encode_s"] + 50 * base["step_s_mean"] + timings["decode_s"] + timings["to_host_s"]
        r.update(
            preset=preset.label, stand_in=None if spec.is_test else "base transformer, random weights",
            steps=quick.steps, guidance=quick.guidance_scale, fast_total_s=round(total, 3),
            stages={k: round(v, 4) for k, v in timings.items()},
            baseline_50_step_cfg_s=round(baseline, 2) if baseline else None,
            speedup_end_to_end=round(baseline / total, 2) if baseline else None,
            decode_share=round((timings["decode_s"] + timings["to_host_s"]) / total, 3),
        )  # fmt: skip

    def compiled(r: dict) -> None:
        pipe = state["pipe"]
        embeds = embeddings()
        eager_times, _ = denoise_steps(pipe, request, *embeds)
        compile_blocks(pipe.transformer, fullgraph=True)
        try:
            times, _ = denoise_steps(pipe, request, *embeds)
            again, _ = denoise_steps(pipe, request, *embeds)
        finally:
            uncompile_blocks(pipe.transformer)
        r.update(eager_s_per_cfg_step=round(steady(eager_times), 4), compiled_first_step_s=round(times[0], 2),
                 compiled_s_per_cfg_step=round(steady(times + again[1:]), 4),
                 speedup=round(steady(eager_times) / steady(times + again[1:]), 3))  # fmt: skip

    def long_take(r: dict) -> None:
        """A take of 2 and of 4 windows (pipelines/long_take.py) against a single clip of one window's frames, on
        the manager's model: seconds per window, what the continued windows cost over the clip, peak GPU memory
        of each take (flat: a window's frames go to the caller as it finishes, only the K overlap is kept).
        Windows of the suite's frames, or more where the model's default K needs them (at most half a window);
        the frames are counted and dropped, as a caller streaming them to disk would."""
        from pipelines.long_take import continuation_for, max_overlap, plan_take, run_take

        manager = state["manager"]

        def peak() -> float | None:  # allocated GPU memory since the last reset, GB
            return round(torch.cuda.max_memory_allocated() / 2**30, 2) if suite.cuda else None

        window = frames
        while max_overlap(window, spec.frame_step) < continuation_for(spec).default_overlap \
                and window + spec.frame_step <= spec.max_frames:  # fmt: skip
            window += spec.frame_step
        clip = validate_request(
            GenerationRequest(prompt=PROMPT, model=model, width=width, height=height, frames=window, steps=args.steps,
                              seed=0),
            default_model=model,
        )  # fmt: skip
        r.update(window_frames=window, size=f"{width}x{height}", steps=clip.steps)
        if tiny:  # warm at this size (the fast section left the test model's distilled variant loaded)
            manager.generate(clip)
        sync()
        if suite.cuda:
            torch.cuda.reset_peak_memory_stats()
        t0 = time.perf_counter()
        single = manager.generate(clip)
        sync()
        r["single"] = {"s": round(time.perf_counter() - t0, 3), "frames": int(single.frames.shape[0]),
                       "peak_allocated_gb": peak()}  # fmt: skip
        del single
        for windows in (2, 4):
            plan = plan_take(spec, PROMPT, windows=windows, frames_per_window=window)
            last = r.get("take_2")
            if last and suite.left() < 2.2 * last["s"] + 5:  # twice the windows of the take before
                r[f"take_{windows}"] = f"skipped: budget ({suite.left():.0f} s left)"
                continue
            stamps, handed = [], [0]

            def on_window(out: np.ndarray, index: int, stamps=stamps, handed=handed) -> None:
                sync()
                stamps.append(time.perf_counter())
                handed[0] += out.shape[0]

            if suite.cuda:
                torch.cuda.empty_cache()
                torch.cuda.reset_peak_memory_stats()
            sync()
            t0 = time.perf_counter()
            records = run_take(manager, clip, plan, on_window)
            sync()
            total = time.perf_counter() - t0
            walls = [b - a for a, b in zip([t0, *stamps[:-1]], stamps, strict=True)]
            walls[-1] += total - (stamps[-1] - t0)
            r[f"take_{windows}"] = {
                "s": round(total, 3), "s_per_window": round(total / windows, 3), "windows": plan.windows,
                "overlap": plan.overlap, "planned_frames": plan.total_frames, "frames": handed[0],
                "window_s": [round(w, 3) for w in walls], "conditioning": [rec.conditioning for rec in records],
                "continued_by": records[-1].model,
                "switch_s": [round(rec.result.timings["load_s"], 3) for rec in records],
                "peak_allocated_gb": peak(),
            }  # fmt: skip
            suite.save()
        takes = [r[k] for k in ("take_4", "take_2") if isinstance(r.get(k), dict)]
        if takes:  # the longest take made: its continued windows against the single clip
            later = takes[0]["window_s"][1:]
            r["continued_window_s"] = round(sum(later) / len(later), 3)
            r["continued_over_single"] = round(r["continued_window_s"] / r["single"]["s"], 3)
            r["s_per_window_over_single"] = round(takes[0]["s_per_window"] / r["single"]["s"], 3)
        if suite.cuda:  # the peak was reset between the parts: the section's is their highest
            r["peak_allocated_gb"] = max([r["single"]["peak_allocated_gb"], *(t["peak_allocated_gb"] for t in takes)])
            if len(takes) == 2:
                r["peak_4_over_2"] = round(takes[0]["peak_allocated_gb"] / takes[1]["peak_allocated_gb"], 3)

    def capped(r: dict) -> None:
        pipe, manager = state["pipe"], state["manager"]
        manager.unload()  # drops our reference; the pipeline object lives on in state
        pipe.to("cpu")
        torch.cuda.empty_cache()
        total = torch.cuda.get_device_properties(device).total_memory / 2**30
        torch.cuda.set_per_process_memory_fraction(min(1.0, args.cap_gb / total))
        os.environ["WAN_STUDIO_VRAM_CAP_GB"] = str(args.cap_gb)
        chooser = PipelineManager(offline=True, device=str(device))
        profile = chooser.profile_for(request).name
        chooser.adopt(spec, request.task, pipe, profile, revision="random-weights")
        torch.cuda.reset_peak_memory_stats()
        t0 = time.perf_counter()
        result = chooser.generate(request)
        sync()
        need = estimate_need(spec, PROFILES[profile], width, height, frames)
        chooser.unload()
        uncapped = suite.results["sections"].get("overhead", {}).get("stages", {}).get("step_s_mean")
        step = result.timings["step_s_mean"]
        r.update(
            cap_gb=args.cap_gb, auto_profile=profile, total_s=round(time.perf_counter() - t0, 2),
            stages={k: round(v, 4) for k, v in result.timings.items()},
            step_ratio_to_uncapped=round(step / uncapped, 3) if uncapped else None,
            estimated_vram_gb=round(need.vram_gb, 2),
            measured_peak_allocated_gb=round(torch.cuda.max_memory_allocated() / 2**30, 2),
        )  # fmt: skip

    def profiles(r: dict) -> None:
        """The other GPU profiles, under the same cap: each one's estimate against its measured peak (or the
        refusal or out-of-memory message a user would see). fp8 and group offload change the modules for
        good, so they come last."""
        pipe = state["pipe"]
        short = validate_request(
            GenerationRequest(prompt=PROMPT, model=model, width=width, height=height, frames=frames, steps=2, seed=0),
            default_model=model,
        )  # fmt: skip
        for name in ("offload", "offload_fp8", "gpu_fp8", "group_offload"):
            if suite.left() < 45:
                r[name] = "skipped: budget"
                continue
            manager = PipelineManager(offline=True, device=str(device))
            need = estimate_need(spec, PROFILES[name], width, height, frames)
            entry: dict = {"estimated_vram_gb": round(need.vram_gb, 2), "estimated_ram_gb": round(need.ram_gb, 2)}
            _reset_host_peak()  # host RAM: the pipeline is adopted, not loaded, so this shows the placement's
            entry["host_rss_before_gb"] = _host_gb("VmRSS")  # own cost (group offload's pinned copies)
            try:
                manager.requested_profile = name
                manager.profile_for(short)  # what a user with this card would be told, before anything moves
                manager.adopt(spec, short.task, pipe, name, revision="random-weights")
                torch.cuda.reset_peak_memory_stats()
                t0 = time.perf_counter()
                result = manager.generate(short)
                entry.update(total_s=round(time.perf_counter() - t0, 2), step_s=round(result.timings["step_s_mean"], 3))
            except Exception as err:  # a refusal or an out-of-memory error is a result here
                entry["error"] = f"{type(err).__name__}: {err}"[:300]
            entry["measured_peak_allocated_gb"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
            entry["host_peak_gb"], entry["host_rss_after_gb"] = _host_gb("VmHWM"), _host_gb("VmRSS")
            r[name] = entry
            manager.unload()
            if name != "group_offload":  # the pipeline outlives the manager here: give the next profile a clean card
                pipe.to("cpu")
            torch.cuda.empty_cache()
            suite.save()

    def post(r: dict) -> None:  # upscaling and interpolation frames a second (bench/bench_post.py's figures)
        import tempfile

        from bench_post import measure

        with tempfile.TemporaryDirectory() as scratch:
            r.update(measure(str(device), Path(scratch), count=2 if tiny else 8, tiny=tiny))

    tiny = spec.is_test
    suite.run("env", 1, env)
    suite.run("gemm", 10, gemm, needs_cuda=True)
    suite.run("build", 5 if tiny else 60, build)
    if "pipe" in state:
        suite.run("attention", 5 if tiny else 30, attention_section)
        suite.run("overhead", 5 if tiny else 60, overhead)
        suite.run("vae", 5 if tiny else 40, vae)
        suite.run("lora", 5 if tiny else 75, lora)
        suite.run("fast", 5 if tiny else 40, fast)
        suite.run("compile", 20 if tiny else 120, compiled)
        suite.run("long_take", 10 if tiny else 90, long_take)
        suite.run("capped", 60, capped, needs_cuda=True)
        suite.run("profiles", 45, profiles, needs_cuda=True)
        suite.run("post", 20 if tiny else 60, post)
    else:
        for name in ("attention", "overhead", "vae", "lora", "fast", "compile", "long_take", "capped", "profiles",
                     "post"):  # fmt: skip
            suite.results["sections"][name] = {"status": "skipped: the model could not be built"}
    suite.results["complete"] = True
    suite.save()
    print(summary(suite.results))
    return 0


def _host_gb(field: str) -> float | None:
    """A line of /proc/self/status (VmRSS now, VmHWM the peak since the last reset), in GB."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return round(int(line.split()[1]) / 2**20, 2)
    except OSError:
        pass
    return None


def _reset_host_peak() -> None:
    try:
        Path("/proc/self/clear_refs").write_text("5")  # VmHWM starts again from the current RSS
    except OSError:  # not every kernel (gVisor) offers it: the peak then covers the whole run
        pass


def _frames_before(video: torch.Tensor) -> float:
    """The old path from decoded video to uint8 frames: the pipeline's float post-processing and copy to the
    host (output_type="np"), then scale, round, clip and cast on the host. `video` is left untouched."""
    sync()
    t0 = time.perf_counter()
    floats = (video[0].permute(1, 0, 2, 3) * 0.5 + 0.5).clamp(0, 1).cpu().permute(0, 2, 3, 1).float().numpy()
    (floats * 255.0).round().clip(0, 255).astype(np.uint8)
    return time.perf_counter() - t0


def summary(results: dict) -> str:
    """A short table for the end of the output."""
    lines = [f"{results['meta']['device']} · {results['meta']['model']} · {results['meta']['size']}x"
             f"{results['meta']['frames']} · {results['meta']['steps']} steps"]  # fmt: skip
    for name, r in results["sections"].items():
        status = r.get("status", "")
        keys = [k for k, v in r.items() if isinstance(v, (int, float)) and k not in ("seconds",)]
        figures = ", ".join(f"{k}={r[k]}" for k in keys[:6])
        lines.append(f"{name:<10} {status[:60]:<12} {figures}")
        if isinstance(r.get("backends"), dict):
            for backend, b in r["backends"].items():
                lines.append(f"{'':<10} {backend}: {b}")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
