"""Long takes (pipelines/long_take.py): what a window of a take costs against a single clip of the same frames,
for each way windows are continued, and whether a take's memory stays flat as it grows.

    python bench/bench_long_take.py                    # the test models on this CPU (about a minute on 2 cores)
    python bench/bench_long_take.py --json bench/results/long_take-cpu.json
    python bench/bench_long_take.py --model Wan-AI/Wan2.2-TI2V-5B-Diffusers --steps 4 --repeats 1 --windows 3 \\
        --memory-windows 2 4                           # a GPU, real weights in the Hugging Face cache
    python bench/bench_long_take.py --model Wan-AI/Wan2.2-TI2V-5B-Diffusers --random-weights --steps 4

Speed: in one process, for each continuation method (by default each the test models have: clean latents on
the TI2V layout, its start image at K = 1, mask channels on the I2V-A14B layout started from a picture and on
the T2V-A14B layout continued by it, latent replacement on the Wan2.1 layout), single clips of one window's
frames and takes of --windows windows made by the same loaded model, --repeats times each (the cases
interleaved, so a neighbour's burst of load on a shared machine falls on one sample of each), the best reported.
A window's time is the wall time between two frame hand-overs; "window 1" is made as the single clip is,
"windows 2+" are conditioned on the K frames before them. Their excess over the single clip is split into the
manager's model or task switch (load_s), the denoising's first step (where the K frames are VAE-encoded, in
`prepare_latents`), the colour match to the take's first frame, and the take's own work (crossfade, copies).

Memory: a take of 2 and of 6 windows (--memory-windows), each in a fresh process, its frames handed to an
on_window callback that streams them into an MP4 (library.media.Mp4Writer): peak RSS (ru_maxrss; the ffmpeg
child is not counted) and, on CUDA, peak allocated GPU memory. Each run first makes one single clip, so
"growth" is what the take needed beyond a clip.

Nothing is downloaded: the test models are built on this machine; a catalogue id must be in the Hugging Face
cache already, or --random-weights builds its full-size architecture with random weights (same compute and
memory; saved once as a diffusers folder, tens of GB, as bench_generate.py does).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from pipelines.catalogue import (  # noqa: E402
    IMAGE_TO_VIDEO,
    TEST_TINY,
    TEST_TINY_A14B,
    TEST_TINY_I2V_A14B,
    TEST_TINY_WAN21,
    get_spec,
)
from pipelines.long_take import plan_take, run_take  # noqa: E402
from pipelines.manager import PipelineManager  # noqa: E402
from pipelines.request import GenerationRequest, validate_request  # noqa: E402

PROMPT = "A red fox trots through fresh snow at sunrise, cinematic"
TEST_FRAMES = 17  # what tests/test_long_take.py makes windows of: K = 5 fits (at most half a window)
# (model, overlap): None is the model's own default K (capped to half a window), 1 its start image
TEST_CASES = ((TEST_TINY, None), (TEST_TINY, 1), (TEST_TINY_I2V_A14B, None), (TEST_TINY_A14B, None),
              (TEST_TINY_WAN21, None))  # fmt: skip


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def sync() -> None:
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.synchronize()


def make_request(model: str, size: str | None, frames: int | None, steps: int | None):
    """The first window's request (a single clip of one window's frames); a picture where the model needs one."""
    spec = get_spec(model)
    width, height = (int(v) for v in size.split("x")) if size else spec.default_size
    image = None
    if not spec.supports("t2v"):  # image-to-video only: a picture to start from (a gradient, so colours spread)
        ramp = np.linspace(40, 215, width, dtype=np.float32)
        image = np.stack([np.tile(ramp, (height, 1)), np.full((height, width), 120.0),
                          np.tile(ramp[::-1], (height, 1))], axis=-1).astype(np.uint8)  # fmt: skip
    task = IMAGE_TO_VIDEO if image is not None else "t2v"
    return validate_request(
        GenerationRequest(prompt=PROMPT, model=model, task=task, width=width, height=height,
                          frames=frames or (TEST_FRAMES if spec.is_test else None), steps=steps, seed=0, image=image),
        default_model=model,
    )  # fmt: skip


def timed_take(manager, request, plan, on_frames=None) -> dict:
    """One take: wall time of each window (between frame hand-overs), the manager's timings of each, frames."""
    stamps: list[float] = []
    handed = [0]

    def on_window(frames: np.ndarray, index: int) -> None:
        sync()
        stamps.append(time.perf_counter())
        handed[0] += frames.shape[0]
        if on_frames is not None:
            on_frames(frames)

    sync()
    start = time.perf_counter()
    records = run_take(manager, request, plan, on_window)
    sync()
    total = time.perf_counter() - start
    walls = [b - a for a, b in zip([start, *stamps[:-1]], stamps, strict=True)]
    walls[-1] += total - (stamps[-1] - start)  # the last window's hand-over is inside the take: to its end
    return {"total_s": total, "walls": walls, "frames": handed[0],
            "timings": [dict(r.result.timings) for r in records], "records": records}  # fmt: skip


class Case:
    """One continuation method: a single clip of one window's frames and a take of `args.windows` windows, made
    by its own manager (the model stays loaded while the other cases run)."""

    def __init__(self, manager: PipelineManager, model: str, overlap: int | None, args):
        self.manager, self.model = manager, model
        self.request = make_request(model, args.size, args.frames, args.steps)
        self.plan = plan_take(self.request.spec, PROMPT, windows=args.windows, frames_per_window=self.request.frames,
                              overlap=overlap)  # fmt: skip
        self.manager.generate(self.request)  # warm-up: the load, the preview fit
        timed_take(self.manager, self.request, self.plan)  # warm-up: the first switch, the first conditioned window
        self.profile = self.manager.profile_for(self.request).name
        self.singles: list[tuple[float, dict]] = []
        self.takes: list[dict] = []

    def sample(self) -> None:
        # Each clip and take starts from the first window's model and task, as after a clip: a take ends on the
        # task (TI2V) or model (T2V-A14B) that continued it, and switching back is no part of either figure. An
        # untimed clip first: the other cases' runs in between leave the caches cold (on the test models' tiny
        # windows that costs the next clip a third more), which would weigh on the clip and not the windows after
        manager, request = self.manager, self.request
        manager.preload(request.spec, request.task, self.profile)
        manager.generate(request)
        sync()
        t0 = time.perf_counter()
        single = manager.generate(request)
        sync()
        self.singles.append((time.perf_counter() - t0, single.timings))
        manager.preload(request.spec, request.task, self.profile)
        take = timed_take(manager, request, self.plan)
        if take["frames"] != self.plan.total_frames:
            raise RuntimeError(f"a take handed {take['frames']} frames; its plan has {self.plan.total_frames}")
        self.takes.append(take)

    def figures(self) -> dict:
        """Each figure the best (least disturbed) of the samples: on a shared machine a neighbour's load only
        ever adds time."""
        plan, request, takes, singles = self.plan, self.request, self.takes, self.singles
        records = takes[-1]["records"]
        later = range(1, plan.windows)
        single_s = min(s for s, _ in singles)
        rest = min(statistics.fmean(t["walls"][i] for i in later) for t in takes)

        def single_best(key: str) -> float:
            return min(t.get(key, 0.0) for _, t in singles)

        def later_best(key: str) -> float:
            return min(statistics.fmean(t["timings"][i].get(key, 0.0) for i in later) for t in takes)

        own = min(statistics.fmean(t["walls"][i] - t["timings"][i]["total_s"] for i in later) for t in takes)
        return {
            "model": self.model, "continued_by": records[-1].model, "method": records[-1].conditioning,
            "overlap": plan.overlap, "window": f"{request.width}x{request.height}x{request.frames}",
            "steps": request.steps, "windows": plan.windows, "take_frames": plan.total_frames,
            "handed_frames": takes[-1]["frames"], "samples": len(takes),
            "single_clip_s": round(single_s, 4),
            "take_s_per_window": round(min(t["total_s"] / plan.windows for t in takes), 4),
            "window_1_s": round(min(t["walls"][0] for t in takes), 4),
            "windows_2plus_s": round(rest, 4),
            "windows_2plus_over_single": round(rest / single_s, 3),
            "switch_s": round(later_best("load_s"), 4),  # the manager's task or model switch before a window
            "first_step_extra_s": round(later_best("first_step_s") - single_best("first_step_s"), 4),  # K encoded
            "colour_extra_s": round(later_best("colour_s") - single_best("colour_s"), 4),
            "take_own_s": round(own, 4),  # crossfade, copies, hand-over: the wall time outside the manager
        }  # fmt: skip


def speed_table(manager: PipelineManager, args) -> list[dict]:
    """Every case's figures, printed as a table. One manager per model, and the samples of every case
    interleaved, so that a neighbour's burst of load on a shared machine falls on one sample of each case rather
    than on all the samples of one."""
    managers = {args.model or TEST_TINY: manager}
    cases = []
    for model, overlap in TEST_CASES if args.model is None else ((args.model, args.overlap),):
        if model not in managers:
            managers[model] = PipelineManager(offline=True, device=args.device, profile=args.profile)
        cases.append(Case(managers[model], model, overlap, args))
    for n in range(args.repeats):
        t0 = time.perf_counter()
        for case in cases:
            case.sample()
        print(f"  sample {n + 1}/{args.repeats}: {time.perf_counter() - t0:.1f} s", file=sys.stderr, flush=True)
    figures = [case.figures() for case in cases]
    for each in managers.values():
        each.unload()
    rows = [["model", "continued by, method", "K", "window, steps", "single clip", "take / window", "window 1",
             "windows 2+", "2+ / single", "switch", "step 1", "colour", "take's own", "frames"]]  # fmt: skip
    for r in figures:
        continued = ("itself" if r["continued_by"] == r["model"] else r["continued_by"]) + ", " + r["method"]
        rows.append([r["model"], continued, str(r["overlap"]), f"{r['window']}, {r['steps']}",
                     f"{r['single_clip_s']:.3f}", f"{r['take_s_per_window']:.3f}", f"{r['window_1_s']:.3f}",
                     f"{r['windows_2plus_s']:.3f}", f"{r['windows_2plus_over_single']:.2f}", f"{r['switch_s']:.3f}",
                     f"{r['first_step_extra_s']:+.3f}", f"{r['colour_extra_s']:+.3f}", f"{r['take_own_s']:.3f}",
                     f"{r['handed_frames']}/{r['take_frames']}"])  # fmt: skip
    print(f"\nSpeed: takes of {args.windows} windows against single clips of one window's frames, best of "
          f"{args.repeats}, seconds. Windows 2+ over the single clip, of which: the manager's switch, step 1 (the K "
          "frames' encode), the colour match, the take's own work (crossfade, copies)")  # fmt: skip
    print(table(rows), flush=True)
    return figures


def memory_run(args) -> dict:
    """In this process: one single clip, then a take of `args.memory_run` windows streamed into an MP4."""
    from library.media import Mp4Writer

    windows = args.memory_run
    manager = PipelineManager(offline=True, device=args.device, profile=args.profile)
    request = make_request(args.model or TEST_TINY, args.size, args.frames, args.steps)
    plan = plan_take(request.spec, PROMPT, windows=windows, frames_per_window=request.frames, overlap=args.overlap)
    manager.generate(request)
    before = peak_rss_mb()
    cuda = manager.device.type == "cuda"
    if cuda:
        before_gpu = torch.cuda.max_memory_allocated() / 2**30
        torch.cuda.reset_peak_memory_stats()
    with tempfile.TemporaryDirectory() as tmp:
        writer = Mp4Writer(Path(tmp) / "take.mp4", plan.fps)

        def stream(frames: np.ndarray) -> None:
            for frame in frames:
                writer.write(frame)

        take = timed_take(manager, request, plan, stream)
        writer.close()
        size = (Path(tmp) / "take.mp4").stat().st_size
    written = writer.frames
    if written != plan.total_frames:
        raise RuntimeError(f"the MP4 got {written} frames; the take's plan has {plan.total_frames}")
    return {
        "windows": windows, "frames": written,
        "frames_mb": round(written * request.width * request.height * 3 / 2**20, 2),
        "mp4_kb": round(size / 1024, 1), "peak_before_mb": round(before, 1), "peak_rss_mb": round(peak_rss_mb(), 1),
        "peak_gpu_before_gb": round(before_gpu, 2) if cuda else None,
        "peak_gpu_gb": round(torch.cuda.max_memory_allocated() / 2**30, 2) if cuda else None,
        "took_s": round(take["total_s"], 2),
    }  # fmt: skip


def machine() -> str:
    name = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                name = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{name}, {os.cpu_count()} cores"


def table(rows: list[list[str]]) -> str:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=None, help="catalogue id or local diffusers folder (default: the test models)")
    p.add_argument("--random-weights", action="store_true", help="--model's full-size architecture, random weights")
    p.add_argument("--size", default=None, help="WIDTHxHEIGHT (default: each model's own; the tests' for test models)")
    p.add_argument("--frames", type=int, default=None, help=f"per window (default: the model's; {TEST_FRAMES} for "
                                                            "the test models, as the tests)")  # fmt: skip
    p.add_argument("--steps", type=int, default=None, help="denoising steps (default: the model's)")
    p.add_argument("--overlap", type=int, default=None, help="K (default: the model's, capped to half a window)")
    p.add_argument("--windows", type=int, default=4, help="windows of each timed take")
    p.add_argument("--repeats", type=int, default=5, help="timed clips and takes per method (best of; 0: memory only)")
    p.add_argument("--memory-windows", nargs="*", type=int, default=[2, 6], help="takes whose peaks are compared")
    p.add_argument("--device", default=None, help="cpu or cuda (default: cuda when there is one)")
    p.add_argument("--profile", default="auto")
    p.add_argument("--json", type=Path, default=None, help="also write the figures here")
    p.add_argument("--memory-run", type=int, help=argparse.SUPPRESS)  # windows, in a fresh process
    args = p.parse_args(argv)

    if args.random_weights:
        if not args.model:
            p.error("--random-weights needs --model (a catalogue id)")
        from pipelines.testmodels import build_full_size_random, cache_root

        folder = cache_root().parent / "full-size-random" / args.model.split("/")[-1]
        t0 = time.perf_counter()
        args.model = str(build_full_size_random(args.model, folder, get_spec(args.model).flow_shift))
        print(f"random-weight copy ready in {time.perf_counter() - t0:.0f} s: {args.model}", file=sys.stderr)
    if args.memory_run:
        print(json.dumps(memory_run(args)))
        return 0

    command = " ".join(["python bench/bench_long_take.py", *(argv if argv is not None else sys.argv[1:])])
    manager = PipelineManager(offline=True, device=args.device, profile=args.profile)
    result: dict = {"command": command, "machine": machine(), "device": str(manager.device), "torch": torch.__version__,
                    "started": time.strftime("%Y-%m-%d %H:%M"), "speed": [], "memory": []}  # fmt: skip
    result["load_average_start"] = round(os.getloadavg()[0], 2)  # a shared machine's neighbours show here
    print(f"{command}\n{result['machine']}, {result['device']}, torch {result['torch']}, {result['started']}, "
          f"load average {result['load_average_start']:.2f}", flush=True)  # fmt: skip

    if args.repeats > 0:
        result["speed"] = speed_table(manager, args)
    memory_model = args.model or TEST_TINY
    for windows in args.memory_windows:
        cmd = [sys.executable, __file__, "--memory-run", str(windows), "--profile", args.profile]
        passed = (("--model", memory_model), ("--size", args.size), ("--frames", args.frames), ("--steps", args.steps),
                  ("--overlap", args.overlap), ("--device", args.device))  # fmt: skip
        for flag, value in passed:
            cmd += [flag, str(value)] if value is not None else []
        done = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
        if done.returncode:
            raise RuntimeError(f"the {windows}-window memory run failed:\n{done.stderr[-2000:]}")
        result["memory"].append(json.loads(done.stdout.strip().splitlines()[-1]))
    rows = [["windows", "frames (MB as uint8)", "MP4", "peak RSS", "before the take", "growth", "peak GPU", "took"]]
    for m in result["memory"]:
        gpu = f"{m['peak_gpu_gb']:.2f} GB" if m["peak_gpu_gb"] is not None else "-"
        rows.append([str(m["windows"]), f"{m['frames']} ({m['frames_mb']:.1f} MB)", f"{m['mp4_kb']:.0f} KB",
                     f"{m['peak_rss_mb']:.0f} MB", f"{m['peak_before_mb']:.0f} MB",
                     f"{m['peak_rss_mb'] - m['peak_before_mb']:+.0f} MB", gpu, f"{m['took_s']:.1f} s"])  # fmt: skip
    if result["memory"]:
        print(f"\nMemory: {memory_model}, each take a fresh process, frames streamed into an MP4")
        print(table(rows))
    if len(result["memory"]) >= 2:
        low, high = result["memory"][0], result["memory"][-1]
        change = high["peak_rss_mb"] / low["peak_rss_mb"] - 1
        flat = abs(change) <= 0.10
        extra = high["frames_mb"] - low["frames_mb"]
        verdict = (f"peak RSS {low['windows']} -> {high['windows']} windows: {change:+.1%}, "
                   f"{'flat (within 10 %)' if flat else 'NOT flat (beyond 10 %)'}")  # fmt: skip
        if extra < 0.10 * low["peak_rss_mb"]:
            verdict += (f"; but the {high['windows'] - low['windows']} extra windows' frames are only {extra:.1f} MB, "
                        "inside that margin: at this size the peaks cannot tell streaming from holding the take "
                        "(ask for more with --size, --frames or a real --model)")  # fmt: skip
        if low["peak_gpu_gb"] is not None:
            verdict += f"; peak GPU {low['peak_gpu_gb']:.2f} -> {high['peak_gpu_gb']:.2f} GB"
        result["memory_verdict"] = verdict
        print(verdict)
    result["load_average_end"] = round(os.getloadavg()[0], 2)
    print(f"load average at the end {result['load_average_end']:.2f}")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
