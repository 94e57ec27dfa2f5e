"""`python app.py generate ...`: one clip from the command line, progress on stderr, the MP4's path last on stdout.

Exit codes: 0 done, 2 bad input (the message names the field), 1 any other failure, 130 interrupted.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
import threading
import uuid
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import TypeVar

from tqdm import tqdm

from pipelines import attention, caching, quiet_libraries
from pipelines.catalogue import DEFAULT_MODEL
from pipelines.errors import UserError
from pipelines.long_take import DEFAULT_LIMIT_S, MAX_LIMIT_S, plan_take
from pipelines.loras import EXPERTS, LoraChoice
from pipelines.memory import AUTO, PROFILES
from pipelines.request import GenerationRequest, RequestError, ValidRequest, validate_request
from pipelines.speed import VAE_PRECISIONS, SpeedOptions

DEFAULT_OUT_DIR = "outputs"
T = TypeVar("T")
COUNTED = {"denoise": "step", "upscale": "frame", "interpolate": "frame"}  # stages with a count of their own


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="app.py generate", description="Generate one video clip without the studio.")
    p.add_argument(
        "--model", default=DEFAULT_MODEL, help="catalogue id or local diffusers folder (default: %(default)s)"
    )
    p.add_argument("--prompt", required=True, action="append",
                   help="what to show; give it once per window for a long take of several windows")  # fmt: skip
    p.add_argument("--seconds", type=float, default=None,
                   help="a long take of this many seconds (windows of --frames each)")  # fmt: skip
    p.add_argument("--overlap", type=int, default=None,
                   help="frames each window of a long take continues from (1 or 4n+1)")  # fmt: skip
    p.add_argument("--take-limit", type=float, default=DEFAULT_LIMIT_S,
                   help=f"the longest long take in seconds (default %(default)s, at most {MAX_LIMIT_S:g})")  # fmt: skip
    p.add_argument("--negative-prompt", default=None, help="default: the model's own")
    p.add_argument("--image", type=Path, default=None, help="a picture: makes it image-to-video")
    p.add_argument("--size", default=None, help="WIDTHxHEIGHT, e.g. 1280x704 (default: the model's)")
    p.add_argument("--frames", type=int, default=None, help="4n+1 frames (default: the model's)")
    p.add_argument("--steps", type=int, default=None)
    p.add_argument("--guidance", type=float, default=None)
    p.add_argument("--guidance-2", type=float, default=None, help="low-noise expert's guidance (A14B models)")
    p.add_argument("--seed", type=int, default=None, help="default: random (printed)")
    p.add_argument("--out-dir", type=Path, default=Path(DEFAULT_OUT_DIR))
    p.add_argument("--profile", default=AUTO, choices=[AUTO, *PROFILES], help="memory profile (default: auto)")
    p.add_argument(
        "--attention", default=attention.AUTO, choices=attention.CHOICES, help="attention backend (default: auto)"
    )
    p.add_argument(
        "--compile", action="store_true", help="compile the transformer blocks: faster steps after a ~1 min warm-up"
    )
    p.add_argument("--vae-precision", default="float32", choices=list(VAE_PRECISIONS), help="VAE decode precision")
    p.add_argument(
        "--lora", action="append", default=[], metavar="FILE[:STRENGTH][@high|@low|@both]",
        help="a .safetensors LoRA (a path, or a file name in the LoRA folder), strength 1 and both experts unless "
        "given; repeat for several",
    )  # fmt: skip
    p.add_argument("--fast", action="store_true", help="Fast mode: the model's step-distilled weights and settings")
    p.add_argument(
        "--cache", default="off", metavar="KIND[:THRESHOLD]",
        help=f"step cache, one of {', '.join(caching.KINDS)} (default: off), e.g. first-block:0.05",
    )  # fmt: skip
    p.add_argument("--offline", action="store_true", help="never contact the Hugging Face Hub")
    p.add_argument("--gpus", default=None, help="GPU(s) to use, like 0 or 0,1 (default: the first GPU)")
    p.add_argument(
        "--context-parallel", action="store_true",
        help="one clip over all --gpus (2 or more): each step's attention split between them; started with "
        "torch.distributed.run",
    )  # fmt: skip
    p.add_argument("--no-watermark", dest="watermark", action="store_false",
                   help="leave the invisible watermark out (it is on by default)")  # fmt: skip
    p.add_argument("--watermark", action="store_true", help=argparse.SUPPRESS)  # the default; kept for old scripts
    p.add_argument("--include-prompt", action="store_true", help="put the prompt in the signed Content Credentials")
    return p


def parse_size(text: str | None) -> tuple[int | None, int | None]:
    if text is None:
        return None, None
    try:
        width, height = (int(part) for part in text.lower().split("x"))
    except ValueError:
        raise RequestError({"size": f"--size must look like 1280x704; got '{text}'."}) from None
    return width, height


def parse_lora(text: str, folder: Path | None = None) -> LoraChoice:
    """'style.safetensors:0.8@low' -> LoraChoice; a bare name is looked up in the LoRA folder."""
    spec, experts = text, "both"
    suffix = re.search(r"@(high|low|both)$", text)  # any other '@' is part of the path
    if suffix:
        spec, experts = text[: suffix.start()], suffix.group(1)
    file, strength = spec, 1.0
    head, colon, tail = spec.rpartition(":")
    if colon and head:
        try:
            strength = float(tail)
        except ValueError:
            pass  # a colon inside the path (C:\...), not a strength
        else:
            file = head
    path = Path(file).expanduser()
    if not path.is_file() and path.name == file:  # a bare name: the LoRA folder's file
        from library.lora_folder import LoraFolder

        candidate = LoraFolder(folder).root / file
        path = candidate if candidate.is_file() else path
    if not path.is_file():
        raise RequestError({"lora": f"--lora {text}: no such file (give a path or a file name in the LoRA folder, "
                                    "then optionally :STRENGTH and @high, @low or @both)."})  # fmt: skip
    high, low = EXPERTS[experts]
    return LoraChoice(str(path), strength, high, low)


def parse_cache(text: str) -> tuple[str, float | None]:
    """'first-block:0.05' -> ('first-block', 0.05); the kind alone keeps the cache's own threshold."""
    kind, _, threshold = text.partition(":")
    if not threshold:
        return kind, None
    try:
        return kind, float(threshold)
    except ValueError:
        raise RequestError({"cache": f"--cache {text}: the threshold after ':' must be a number."}) from None


class Bars:
    """One tqdm bar per stage on stderr: steps while denoising, frames in post-production, else percent."""

    def __init__(self) -> None:
        self.bar: tqdm | None = None
        self.stage: str | None = None

    def __call__(self, progress) -> None:
        counted = progress.stage in COUNTED and progress.total_steps
        if progress.stage != self.stage:
            self.close()
            self.stage = progress.stage
            total = progress.total_steps if counted else 100
            unit = COUNTED.get(progress.stage, "%") if counted else "%"
            self.bar = tqdm(total=total, desc=progress.stage, unit=unit, file=sys.stderr, dynamic_ncols=True)
        if counted and progress.step is not None:
            self.bar.n = progress.step
        else:
            self.bar.n = round(progress.fraction * 100)
        self.bar.set_postfix_str(progress.message[:100], refresh=True)

    def download(self, fraction: float, message: str) -> None:
        """A model download's byte-based progress, as a bar of its own."""
        from pipelines.manager import Progress  # after quiet_libraries(): it imports diffusers

        self(Progress("download", fraction, message))

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


def run_with_bars(work: Callable[[Bars, threading.Event], T], stopped: tuple[type[BaseException], ...],
                  interrupted: str = "interrupted") -> tuple[int, T | None]:  # fmt: skip
    """`work(bars, cancel)` with progress bars on stderr, as the commands after `generate` run it: (0, result);
    (1, None) after a failure the user can act on, its sentence on stderr; (130, None) when interrupted
    (Ctrl-C or one of `stopped`)."""
    from pipelines.errors import UserError

    bars, cancel = Bars(), threading.Event()
    try:
        result = work(bars, cancel)
    except UserError as err:
        bars.close()
        print(f"error: {err}", file=sys.stderr)
        return 1, None
    except (KeyboardInterrupt, *stopped):
        cancel.set()
        bars.close()
        print(interrupted, file=sys.stderr)
        return 130, None
    bars.close()
    return 0, result


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[2:] if argv is None else argv
    args = build_parser().parse_args(argv)
    if args.offline:
        os.environ["HF_HUB_OFFLINE"] = "1"
    quiet_libraries()
    import torch

    from library import ClipOptions, Library
    from library.files import check_room
    from library.media import estimate_mp4_mb
    from pipelines import parallel
    from pipelines.manager import GenerationCancelled, PipelineManager
    from studio.jobs.workers import parse_devices

    rank = parallel.launched_rank() if args.context_parallel else None
    leader = rank is None or rank.leader
    try:
        devices = parse_devices(args.gpus)
        degree = len(devices) if args.context_parallel else 1
        if args.context_parallel and degree < 2:
            raise parallel.ParallelError("--context-parallel splits one clip over two or more GPUs: name them "
                                         "with --gpus, like --gpus 0,1.")  # fmt: skip
        width, height = parse_size(args.size)
        cache, threshold = parse_cache(args.cache)
        request = validate_request(
            GenerationRequest(
                prompt=args.prompt[0], model=args.model, negative_prompt=args.negative_prompt,
                image=args.image, width=width, height=height, frames=args.frames, steps=args.steps,
                guidance_scale=args.guidance, guidance_scale_2=args.guidance_2, seed=args.seed,
                loras=[parse_lora(text, lora_folder()) for text in args.lora], fast=args.fast, cache=cache,
                cache_threshold=threshold,
            ),
            default_model=DEFAULT_MODEL,
        )  # fmt: skip
        parallel.check_request(request, degree)
        plan = None
        if len(args.prompt) > 1 or args.seconds is not None:
            if degree > 1:
                raise parallel.ParallelError("A long take runs on one GPU: leave out --context-parallel.")
            plan = plan_take(request.spec, args.prompt, seconds=args.seconds,
                             windows=None if args.seconds is not None else len(args.prompt),
                             frames_per_window=request.frames, overlap=args.overlap,
                             limit_s=args.take_limit)  # fmt: skip
        speed = SpeedOptions(attention=args.attention, compile=args.compile, vae_precision=args.vae_precision)
        device = devices[rank.local_rank if rank else 0]
        speed.check(torch.device(device))
        # the output folder is checked before minutes of generation, not after
        library = Library.open(args.out_dir)
        frames = plan.total_frames if plan is not None else request.frames
        check_room(library.root, estimate_mp4_mb(frames, request.width, request.height), "the clip")
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if degree > 1 and rank is None:  # checked here, run by one process per GPU, all with this seed
        return launch_ranks(argv, degree, request.seed)

    if plan is not None:
        print(f"{describe(request)}; a long take of {plan.windows} windows, {plan.total_frames} frames "
              f"({plan.duration_s:.1f} s), {plan.overlap} frames of overlap", file=sys.stderr)  # fmt: skip
        manager = PipelineManager(profile=args.profile, offline=args.offline, speed=speed, device=device)
        options = ClipOptions(sign=True, include_prompt=args.include_prompt, watermark=args.watermark)
        asked = {"prompts": args.prompt, "seconds": args.seconds, "overlap": args.overlap}
        return make_take(library, manager, replace(request, prompt=plan.prompts[0]), plan, options, asked)
    if leader:
        print(describe(request), file=sys.stderr)
    if args.compile and leader:
        print("Compiling the transformer blocks: the first step takes about a minute longer.", file=sys.stderr)
    bars = Bars() if leader else (lambda progress: None)
    try:
        if rank is not None:
            parallel.init_group(torch.device(device))
        manager = PipelineManager(profile=args.profile, offline=args.offline, speed=speed, device=device,
                                  context_parallel=degree)  # fmt: skip
        result = manager.generate(request, on_progress=bars)
        if leader:
            bars.close()
        if not leader:  # every rank holds the same frames; the first publishes them
            return 0
        options = ClipOptions(sign=True, include_prompt=args.include_prompt, watermark=args.watermark)
        files = library.save_clip(result, options)
    except UserError as err:
        if leader:
            bars.close()
            print(f"error: {err}", file=sys.stderr)
        return 1
    except (KeyboardInterrupt, GenerationCancelled):
        if leader:
            bars.close()
            print("interrupted: nothing was written", file=sys.stderr)
        return 130
    finally:
        parallel.close_group()
    t = result.timings
    print(
        f"seed {request.seed}; {t['total_s']:.1f} s (load {t['load_s']:.1f}, prompts {t['encode_s']:.1f}, "
        f"step 1 {t['first_step_s']:.2f}, then {t['step_s_mean']:.2f} s a step, decode {t['decode_s']:.1f}); "
        f"sidecar {files.sidecar}",
        file=sys.stderr,
    )
    signing = library.clip(files.video.name).sidecar.get("provenance", {})
    if not signing.get("signed"):
        print(f"warning: the clip is not signed: {signing.get('signing_error')}", file=sys.stderr)
    print(files.video)
    return 0


def make_take(library, manager, request: ValidRequest, plan, options, asked: dict) -> int:
    """A long take window by window, its frames streamed to the library's take folder, then one clip: bars per
    window on stderr, the clip's path on stdout; 1 after a failure, 130 when interrupted (nothing written)."""
    from pipelines.long_take import run_take
    from pipelines.manager import GenerationCancelled

    writer = library.start_take(f"cli-{uuid.uuid4().hex[:12]}", plan.record(), asked,
                                (request.width, request.height), options)  # fmt: skip

    def work(bars: Bars, cancel: threading.Event):
        shown = [-1]

        def report(index: int, progress) -> None:
            if index != shown[0]:
                bars.close()
                print(f"window {index + 1}/{plan.windows}: {plan.prompts[index]}", file=sys.stderr)
                shown[0] = index
            bars(progress)

        try:
            run_take(manager, request, plan, writer.add, report, cancel, on_record=writer.finished,
                     on_held=writer.held)  # fmt: skip
            bars.close()
            return library.publish_take(writer, request.image)
        finally:
            writer.remove()

    code, files = run_with_bars(work, (GenerationCancelled,), "interrupted: nothing was written")
    if files is None:
        return code
    side = library.clip(files.video.name).sidecar
    print(f"seed {request.seed}; a {side['duration_s']:.1f} s take of {plan.windows} windows in "
          f"{side['timings']['total_s']:.1f} s; sidecar {files.sidecar}", file=sys.stderr)  # fmt: skip
    if not side.get("provenance", {}).get("signed"):
        print(f"warning: the clip is not signed: {side['provenance'].get('signing_error')}", file=sys.stderr)
    print(files.video)
    return 0


def launch_ranks(argv: list[str], degree: int, seed: int) -> int:
    """The same command once per GPU under torch's own launcher (one machine, a local rendezvous)."""
    import subprocess

    app = Path(__file__).resolve().parents[1] / "app.py"
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={degree}",
               str(app), "generate", *argv, "--seed", str(seed)]  # fmt: skip
    env = dict(os.environ, OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "1"))
    try:
        return subprocess.run(command, env=env).returncode
    except KeyboardInterrupt:  # the launcher passes Ctrl-C on to every rank
        print("interrupted: nothing was written", file=sys.stderr)
        return 130


def describe(request: ValidRequest) -> str:
    """One line of what will run, Fast mode, LoRAs and cache included."""
    parts = [
        f"{request.spec.label}: {request.width}x{request.height}, {request.frames} frames at {request.fps} fps",
        f"{request.steps} steps", f"guidance {request.guidance_scale:g}", f"seed {request.seed}",
    ]  # fmt: skip
    if request.fast:
        parts.append(f"Fast mode ({request.spec.fast.label})")
    parts += [f"LoRA {lora.name} x{lora.strength:g} ({lora.experts})" for lora in request.loras]
    if request.cache.kind != "off":
        parts.append(f"step cache {request.cache.kind} {request.cache.threshold:g}")
    return ", ".join(parts)


def lora_folder() -> Path | None:
    """The LoRA folder saved in the studio's settings (None: the default one)."""
    from studio.settings import load_settings

    return Path(load_settings()[0].lora_dir) if load_settings()[0].lora_dir else None


def calibrate_main(argv: list[str] | None = None) -> int:
    """`python app.py calibrate-cache --model ID`: one clip with MagCache recording how much each step's
    transformer output changes, saved in the config folder; MagCache is then offered for that model."""
    p = argparse.ArgumentParser(prog="app.py calibrate-cache", description=calibrate_main.__doc__)
    p.add_argument("--model", default=DEFAULT_MODEL, help="catalogue id (default: %(default)s)")
    p.add_argument("--steps", type=int, default=None, help="default: the model's own")
    p.add_argument("--profile", default=AUTO, choices=[AUTO, *PROFILES], help="memory profile (default: auto)")
    p.add_argument("--offline", action="store_true", help="never contact the Hugging Face Hub")
    args = p.parse_args(argv)
    if args.offline:
        os.environ["HF_HUB_OFFLINE"] = "1"
    quiet_libraries()
    from pipelines.manager import GenerationCancelled, PipelineManager

    prompt = "A woman walks along a beach at sunset, waves rolling in, handheld camera"  # any everyday shot
    try:
        request = validate_request(
            GenerationRequest(prompt=prompt, model=args.model, steps=args.steps, seed=0, cache=caching.CALIBRATION),
            default_model=DEFAULT_MODEL,
        )
        if request.spec.two_experts:
            raise RequestError({"model": "MagCache works on single-transformer models, not the A14B pair."})
        manager = PipelineManager(profile=args.profile, offline=args.offline)
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"Calibrating MagCache: {describe(request)}", file=sys.stderr)
    bars = Bars()
    recorder = caching.CalibrationRecorder()
    try:
        with recorder.listening():
            manager.generate(request, on_progress=bars)
        bars.close()
    except UserError as err:
        bars.close()
        print(f"error: {err}", file=sys.stderr)
        return 1
    except (KeyboardInterrupt, GenerationCancelled):
        bars.close()
        print("interrupted: nothing was recorded", file=sys.stderr)
        return 130
    if not recorder.ratios:
        print("error: the run finished without MagCache's measurements; nothing was recorded", file=sys.stderr)
        return 1
    path = caching.save_calibration(request.spec.id, recorder.ratios[0], request.steps)
    print(f"Recorded {len(recorder.ratios[0])} step ratios; MagCache can now be chosen for {request.spec.id}.",
          file=sys.stderr)  # fmt: skip
    print(path)
    return 0
