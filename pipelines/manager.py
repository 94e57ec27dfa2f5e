"""The pipeline manager: one resident Wan model per device, one generation at a time, previews at every step.

A generation runs in numbered stages, each timed on its own: 1. fit a memory profile, 2. load or switch the
model and apply the speed options, 3. encode the prompts (cached), 4. denoise (the diffusers pipeline's
loop; our step callback checks cancel, draws the preview and the ETA), 5. decode with the VAE and convert to
uint8 on the device. Every exit (done, cancelled, failed, out of memory) leaves the modules where the
profile keeps them between runs, and a failed run's tensors are released before the error reaches the
caller.

Threading: `generate` runs in the caller's thread and holds `self._lock` for the whole run, so a second
caller either waits or (wait=False) gets BusyError at once. Cancel is an Event checked at the end of
every denoising step; raising from the step callback stops the pipeline before its VAE decode.
"""

from __future__ import annotations

import gc
import importlib
import inspect
import json
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch

from pipelines import attention, caching, parallel
from pipelines.catalogue import IMAGE_TO_VIDEO, TASK_NAMES, FastWeights, ModelSpec
from pipelines.colour import match_colours
from pipelines.decode import decode_latents, to_host, video_to_uint8
from pipelines.errors import UserError
from pipelines.loras import LoraSet, ResolvedLora, inspect_lora, sha256_of
from pipelines.memory import (
    AUTO,
    PROFILES,
    MemoryBudget,
    Profile,
    choose_profile,
    estimate_need,
    pinned_copy_factor,
    probe_memory,
    resident_ram_gb,
)
from pipelines.preview import LatentToRGB, StepPreviewer, load_or_fit
from pipelines.prompts import PromptEncoder
from pipelines.request import ValidRequest
from pipelines.samplers import scheduler_for
from pipelines.speed import SpeedOptions, compile_blocks, uncompile_blocks
from pipelines.testmodels import cache_root
from pipelines.weights import ResolvedWeights, fetch_fast, human_size, resolve_weights


@dataclass
class Progress:
    """One report to the caller: a stage, how far it is, and at denoising steps a preview."""

    stage: str  # "download" | "load" | "denoise" | "decode"
    fraction: float  # 0..1 within the stage
    message: str
    step: int | None = None  # 1-based
    total_steps: int | None = None
    eta_s: float | None = None
    preview: np.ndarray | None = field(default=None, repr=False)  # (k, H, W, 3) uint8


ProgressCallback = Callable[[Progress], None]


@dataclass
class GenerationResult:
    request: ValidRequest
    frames: np.ndarray  # (F, H, W, 3) uint8
    timings: dict[str, float]
    profile: str
    device: str
    model_revision: str
    loras: list[dict] = field(default_factory=list)  # every LoRA that ran: the request's and a fast preset's
    fast: str | None = None  # the fast preset that ran, by name
    context_parallel: int = 1  # processes (GPUs) each step's attention was split over


class GenerationCancelled(Exception):
    pass


class RunHook:
    """What a caller changes in one run beyond its request: a long take's window after the first is conditioned
    on the window before (pipelines/long_take.py). The manager calls `enter` with the pipeline and the keyword
    arguments of its call just before the call (it may change both for this call), `step` after every
    denoising step (it may return the latents to continue with), and `exit` on every way out of the call.
    `colour_reference`: the frames are colour-matched to this picture instead of the request's."""

    colour_reference: np.ndarray | None = None

    def enter(self, pipe, kwargs: dict) -> None:
        pass

    def step(self, pipe, latents: torch.Tensor) -> torch.Tensor | None:
        return None

    def exit(self, pipe) -> None:
        pass


class BusyError(UserError, RuntimeError):
    pass


class OutOfMemoryError(UserError, RuntimeError):
    pass


@dataclass
class _Loaded:
    spec: ModelSpec
    task: str
    pipe: object  # a diffusers WanPipeline or WanImageToVideoPipeline
    profile: Profile
    revision: str
    previews: LatentToRGB | None  # None until the first run when preloaded (ZeroGPU)
    prompts: PromptEncoder
    attention: str | None = None  # the backend the transformers use now
    compiled: bool = False
    fullgraph: bool = False  # compiled as one graph per block: no hook may run inside the blocks
    variant: str = "base"  # "fast" when a fast preset's distilled transformer replaced the model's own
    base_scheduler: object = None  # the model's own scheduler (fast runs swap in their preset's, per run)
    loras: LoraSet = field(default_factory=LoraSet)
    cache_key: tuple | None = None  # the step cache on the transformers now


def _pipeline_class(task: str):
    from diffusers import WanImageToVideoPipeline, WanPipeline

    return WanImageToVideoPipeline if task == IMAGE_TO_VIDEO else WanPipeline


# One load at a time in the process, whichever manager (one per GPU) asks: diffusers' lazy imports are not
# thread-safe (two first loads at once fail with "cannot import name"), and two loads at once would double
# the host-memory peak of reading weights.
_LOADING = threading.Lock()


class PipelineManager:
    def __init__(
        self,
        profile: str = AUTO,
        offline: bool = False,
        memory_probe: Callable[[torch.device], MemoryBudget] = probe_memory,
        cache_dir: Path | None = None,
        device: str | None = None,
        speed: SpeedOptions | None = None,
        context_parallel: int = 1,
    ):
        self.requested_profile = profile
        # >1: this process is one rank of a group that splits each clip's attention (pipelines/parallel.py)
        self.context_parallel = context_parallel
        self.speed = speed or SpeedOptions()  # applied before each run; changing it never reloads weights
        # where the model computes: the GPU when there is one (a worker per GPU names its own, "cuda:1")
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.offline = offline
        self.memory_probe = memory_probe
        self.cache_dir = cache_dir or cache_root().parent
        self._lock = threading.Lock()
        self._loaded: _Loaded | None = None
        self.loads = 0  # full from_pretrained loads, for tests and the log
        # seconds of VAE decode per output pixel-frame, per model, profile and VAE precision, from earlier runs
        self._decode_rates: dict[tuple[str, str, str], float] = {}

    # ---- state -------------------------------------------------------------------------------
    @property
    def busy(self) -> bool:
        return self._lock.locked()

    @property
    def loaded(self) -> tuple[str, str, str] | None:
        """(model id, task, profile name) of the resident model, if any."""
        if self._loaded is None:
            return None
        return self._loaded.spec.id, self._loaded.task, self._loaded.profile.name

    @property
    def pipeline(self):
        return None if self._loaded is None else self._loaded.pipe

    def adopt(self, spec: ModelSpec, task: str, pipe, profile: str, revision: str = "in-memory") -> None:
        """Use a pipeline built in memory instead of loading one: the GPU benchmark builds full-size random
        weights straight on the GPU. It is placed by `profile`, which becomes the requested profile."""
        with self._lock:
            self._unload_locked()
            chosen = PROFILES[profile]
            pipe.set_progress_bar_config(disable=True)
            _place(pipe, chosen, self.device, prepare_modules=True)
            previews = load_or_fit(pipe.vae, self.cache_dir / "previews", f"{spec.id}@{revision}")
            _rest(pipe)
            self.requested_profile = profile
            prompts = PromptEncoder(pipe.tokenizer, pipe.text_encoder)
            self._loaded = _Loaded(spec, task, pipe, chosen, revision, previews, prompts)

    def forget_prompts(self) -> None:
        """Drop the kept prompt embeddings (the next run encodes its prompts again)."""
        if self._loaded is not None:
            self._loaded.prompts.clear()

    def unload(self) -> None:
        """Drop the resident model and give its GPU memory back."""
        with self._lock:
            self._unload_locked()

    def preload(self, spec: ModelSpec, task: str, profile: str, report: ProgressCallback | None = None) -> None:
        """Load a model now, before any request, and place it by `profile`. For ZeroGPU: weights are read and
        moved to "cuda" in the main process at start-up (the package packs them for its GPU workers), so a
        run's metered GPU time goes to denoising. Nothing runs on the device here: the preview colour fit
        waits for the first run."""
        with self._lock:
            self.requested_profile = profile
            self._ensure_loaded(spec, task, PROFILES[profile], report or (lambda p: None), fit_previews=False)

    def _unload_locked(self) -> None:
        if self._loaded is not None:
            self._loaded.pipe.remove_all_hooks()
        self._loaded = None
        _free_memory()

    # ---- generation --------------------------------------------------------------------------
    def generate(
        self,
        request: ValidRequest,
        on_progress: ProgressCallback | None = None,
        cancel: threading.Event | None = None,
        wait: bool = True,
        hook: RunHook | None = None,
    ) -> GenerationResult:
        """Run one request to frames. Raises GenerationCancelled, OutOfMemoryError, DoesNotFitError,
        ModelUnavailableError or BusyError (wait=False while another run holds the GPU). `hook`: see RunHook."""
        if not self._lock.acquire(blocking=wait):
            raise BusyError("The GPU is busy with another generation. Try again when it finishes.")
        try:
            return self._generate_locked(request, on_progress or (lambda p: None), cancel or threading.Event(), hook)
        finally:
            self._lock.release()

    def _decode_message(self, request: ValidRequest, profile: Profile) -> str:
        """The decode has no steps to count; an estimate from this model's earlier decodes stands in."""
        rate = self._decode_rates.get((request.spec.id, profile.name, self.speed.vae_precision))
        if rate is None:
            return "Decoding the frames with the VAE"
        seconds = rate * request.width * request.height * request.frames
        return f"Decoding the frames with the VAE, about {max(1, round(seconds))} s"

    def download(self, spec: ModelSpec, on_progress: ProgressCallback | None = None) -> ResolvedWeights:
        """The model's files, fetched into the Hugging Face cache if missing. Needs no GPU and no lock, so
        callers with metered GPU time (ZeroGPU) fetch first and spend the GPU time on the model."""
        report = on_progress or (lambda p: None)
        return resolve_weights(spec, self.offline, lambda f, m: report(Progress("download", f, m)))

    def _generate_locked(
        self, request: ValidRequest, report: ProgressCallback, cancel: threading.Event, hook: RunHook | None = None
    ) -> GenerationResult:
        timings: dict[str, float] = {}
        started = time.perf_counter()
        if self.device.type == "cuda" and self.device.index is not None:
            # The current GPU is per thread and a worker's thread starts on GPU 0: streams (group offload),
            # collectives and any stray allocation would land there, not on this manager's GPU.
            torch.cuda.set_device(self.device)
        # 1. A memory profile that fits, or a refusal before any work
        profile = self.profile_for(request)
        self.speed.check(self.device)
        parallel.check_request(request, self.context_parallel)
        # 2. The model, loaded or switched, with the speed options, LoRAs and step cache applied
        fast = fetch_fast(request.spec, self.offline, lambda f, m: report(Progress("download", f, m))) \
            if request.fast else None  # fmt: skip
        try:
            loaded = self._ensure_loaded(request.spec, request.task, profile, report, fast, cancel=cancel)
            self._apply_speed(loaded, request)
            applied = self._apply_loras(loaded, request, fast, report)
            self._apply_cache(loaded, request)
        except torch.OutOfMemoryError:
            loaded = None
        if loaded is None:  # outside the handler, so the half-placed model's memory can really go
            self._unload_locked()
            raise OutOfMemoryError(
                f"Out of GPU memory while loading {request.spec.name} with the '{profile.name}' memory profile. "
                f"Memory was freed: try a leaner memory profile, or close other programs using the GPU."
            )
        timings["load_s"] = time.perf_counter() - started
        if cancel.is_set():
            raise GenerationCancelled()

        failure = None
        try:
            frames = self._run(loaded, request, report, cancel, timings, hook)
        except GenerationCancelled:
            failure = "cancelled"
        except torch.OutOfMemoryError:
            failure = "out_of_memory"
        finally:
            _rest(loaded.pipe)  # every exit path: offloaded modules go back where the profile keeps them
        if failure is not None:
            # Outside the handler the failed run's traceback, and the activations its frames hold, are gone.
            _free_memory()
            if failure == "cancelled":
                raise GenerationCancelled()
            need = estimate_need(request.spec, loaded.profile, request.width, request.height, request.frames)
            raise OutOfMemoryError(
                f"Out of GPU memory at {request.width}x{request.height}, {request.frames} frames with the "
                f"'{loaded.profile.name}' memory profile (estimated {need.vram_gb:.1f} GB). Memory was freed: "
                f"try a leaner memory profile, a smaller size or fewer frames."
            )
        report(Progress("decode", 1.0, "Decoded"))
        timings["total_s"] = time.perf_counter() - started
        return GenerationResult(
            request, frames, timings, loaded.profile.name, self._device_name(loaded), loaded.revision,
            loras=[lora.record() for lora in applied], fast=request.spec.fast.label if request.fast else None,
            context_parallel=parallel.degree_of(loaded.pipe),
        )  # fmt: skip

    def _run(
        self, loaded: _Loaded, request: ValidRequest, report: ProgressCallback, cancel: threading.Event,
        timings: dict[str, float], hook: RunHook | None = None,
    ) -> np.ndarray:  # fmt: skip
        pipe = loaded.pipe
        hook = hook or RunHook()  # the base hook changes nothing
        device = pipe._execution_device
        transformer_dtype = (pipe.transformer or pipe.transformer_2).dtype

        # 3. Prompt embeddings: the text encoder runs only for prompts it has not seen lately
        t0 = time.perf_counter()
        guided = request.guidance_scale > 1.0 or (request.guidance_scale_2 or 0.0) > 1.0
        embed = loaded.prompts.embeddings
        prompt_embeds = embed(request.prompt, device, transformer_dtype)
        negative_embeds = embed(request.negative_prompt, device, transformer_dtype) if guided else None
        timings["encode_s"] = time.perf_counter() - t0

        # 4. Denoise
        first_frame = np.asarray(request.image) if request.image is not None else None
        if loaded.previews is None:  # preloaded: the fit needs the device, which only a run has (ZeroGPU)
            key = f"{loaded.spec.id}@{loaded.revision.split('+fast:')[0]}"
            loaded.previews = load_or_fit(pipe.vae, self.cache_dir / "previews", key)
        previewer = StepPreviewer(loaded.previews, first_frame=first_frame)
        step_times: list[float] = []
        preview_cost = [0.0]
        denoise_start = time.perf_counter()
        last_step_end = [denoise_start]

        def on_step(pipeline, i: int, t, tensors: dict) -> dict:
            _synchronize(self.device)  # the step's kernels are done: its time is the step's, not the preview's
            now = time.perf_counter()
            step_times.append(now - last_step_end[0])
            if cancel.is_set():
                raise GenerationCancelled()
            changed = hook.step(pipeline, tensors["latents"])
            t0 = time.perf_counter()
            sigma = float(pipeline.scheduler.sigmas[pipeline.scheduler.step_index])
            preview = previewer(tensors["latents"] if changed is None else changed, sigma)
            preview_cost[0] += time.perf_counter() - t0
            step = i + 1
            steady = step_times[1:] or step_times  # step 1 also pays for offload moves and any compile
            report(
                Progress(
                    "denoise", step / request.steps, f"Step {step}/{request.steps}", step=step,
                    total_steps=request.steps, eta_s=(request.steps - step) * sum(steady) / len(steady),
                    preview=preview,
                )
            )  # fmt: skip
            if step == request.steps:  # the VAE decode follows: say so, it takes a while
                report(Progress("decode", 0.0, self._decode_message(request, loaded.profile)))
            last_step_end[0] = time.perf_counter()
            return {} if changed is None else {"latents": changed}

        preset = request.spec.fast if request.fast else None
        pipe.scheduler = scheduler_for(request.spec, loaded.base_scheduler, preset, request.seed)
        kwargs = dict(
            prompt_embeds=prompt_embeds,
            negative_prompt_embeds=negative_embeds,
            height=request.height,
            width=request.width,
            num_frames=request.frames,
            num_inference_steps=request.steps,
            guidance_scale=request.guidance_scale,
            generator=torch.Generator("cpu").manual_seed(request.seed),
            output_type="latent",
            callback_on_step_end=on_step,
            callback_on_step_end_tensor_inputs=["latents"],
        )
        if request.guidance_scale_2 is not None:
            kwargs["guidance_scale_2"] = request.guidance_scale_2
        if request.task == IMAGE_TO_VIDEO:
            kwargs["image"] = request.image
            if request.end_image is not None:
                kwargs["last_image"] = request.end_image
        report(Progress("denoise", 0.0, f"Starting {request.steps} steps", step=0, total_steps=request.steps))
        hook.enter(pipe, kwargs)
        try:
            latents = pipe(**kwargs).frames
        finally:
            hook.exit(pipe)
        timings["denoise_s"] = last_step_end[0] - denoise_start
        timings["first_step_s"] = step_times[0]
        timings["step_s_mean"] = sum(step_times[1:] or step_times) / len(step_times[1:] or step_times)
        timings["preview_s_per_step"] = preview_cost[0] / len(step_times)

        # 5. Decode, then uint8 on the device and one uint8 copy to the host
        t0 = time.perf_counter()
        video = decode_latents(pipe.vae, latents, self.speed.vae_precision)
        del latents
        _synchronize(video.device)
        timings["decode_s"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        frames = video_to_uint8(video)
        del video
        reference = hook.colour_reference
        if reference is not None or (request.match_colour and request.image is not None):  # on the device
            t1 = time.perf_counter()
            end = np.asarray(request.end_image) if request.end_image is not None and reference is None else None
            frames = match_colours(frames, np.asarray(request.image) if reference is None else reference, end)
            _synchronize(frames.device)
            timings["colour_s"] = time.perf_counter() - t1
        frames = to_host(frames)
        timings["to_host_s"] = time.perf_counter() - t0 - timings.get("colour_s", 0.0)
        volume = request.width * request.height * request.frames
        self._decode_rates[request.spec.id, loaded.profile.name, self.speed.vae_precision] = (
            timings["decode_s"] / volume
        )
        return frames

    def _apply_speed(self, loaded: _Loaded, request: ValidRequest) -> None:
        """Bring the loaded modules in line with self.speed (already checked); only what changed is redone."""
        backend = attention.resolve(self.speed.attention, self.device)
        transformers = _transformers(loaded.pipe)
        if loaded.attention != backend.name and self.context_parallel == 1:  # a split clip keeps "native"
            attention.apply(transformers, backend)
            loaded.attention = backend.name
        if not self.speed.compile:
            if loaded.compiled:
                for transformer in transformers:
                    uncompile_blocks(transformer)
                loaded.compiled = False
            return
        # Hooks inside the blocks (fp8 casting, group offload, a step cache) break the graph: compile around
        # them. Blocks compiled to allow breaks serve hook-free blocks as well, so only the other way recompiles.
        hooks = loaded.profile.fp8 or loaded.profile.placement == "group_offload" or request.cache.kind != "off"
        if not loaded.compiled or (loaded.fullgraph and hooks):
            for transformer in transformers:
                compile_blocks(transformer, fullgraph=not hooks)
            loaded.compiled, loaded.fullgraph = True, not hooks

    def _apply_loras(
        self, loaded: _Loaded, request: ValidRequest, fast: FastWeights | None, report: ProgressCallback
    ) -> tuple[ResolvedLora, ...]:
        """The request's LoRAs and a fast preset's distillation LoRAs on the transformers; a set that ran last
        time unchanged is fused into the weights (no per-step cost) where the weights can be restored exactly."""
        chosen = list(request.loras)
        for path, experts in fast.loras if fast is not None else ():
            high, low = {"both": (True, True), "high": (True, False), "low": (False, True)}[experts]
            two = getattr(loaded.pipe, "transformer_2", None) is not None
            chosen.append(ResolvedLora(str(path), path.name, sha256_of(path), 1.0, high, low and two,
                                       inspect_lora(path).layout))  # fmt: skip
        chosen = tuple(chosen)
        if chosen and chosen != () and loaded.loras.key != tuple((c.sha256, c.strength, c.high, c.low) for c in chosen):
            names = ", ".join(lora.name for lora in chosen)
            report(Progress("load", 0.95, f"Loading LoRAs: {names}"))
        may_fuse = not loaded.profile.fp8 and loaded.profile.placement in ("gpu", "gpu_text_cpu", "cpu")
        loaded.loras.apply(loaded.pipe, chosen, may_fuse)
        return chosen

    def _apply_cache(self, loaded: _Loaded, request: ValidRequest) -> None:
        key = (request.cache, request.steps)
        if loaded.cache_key == key:
            return
        config = None if request.cache.kind == "off" else caching.config_for(request.cache, request.steps,
                                                                              request.spec.id)  # fmt: skip
        caching.apply(_transformers(loaded.pipe), config)
        loaded.cache_key = key

    def _device_name(self, loaded: _Loaded) -> str:
        if loaded.profile.placement == "cpu" or self.device.type != "cuda":
            return "cpu"
        return torch.cuda.get_device_name(self.device)

    # ---- loading -----------------------------------------------------------------------------
    def profile_for(self, request: ValidRequest) -> Profile:
        """The profile this request would run with now; DoesNotFitError (before any work) if none fits. Memory
        this process holds (its resident model) counts as free: it is either reused or released first."""
        budget = self.memory_probe(self.device)  # its GPU memory already counts this process's own
        if self._loaded is not None:
            budget = replace(budget, ram_gb=budget.ram_gb + resident_ram_gb(self._loaded.pipe.components))
        return choose_profile(
            request.spec, request.width, request.height, request.frames, budget, self.requested_profile
        )

    def _ensure_loaded(
        self, spec: ModelSpec, task: str, profile: Profile, report: ProgressCallback,
        fast: FastWeights | None = None, fit_previews: bool = True, cancel: threading.Event | None = None,
    ) -> _Loaded:  # fmt: skip
        """The model for this run: what is loaded if it fits (switching task in place), else loaded from disk,
        keeping the text encoder and VAE when the new model shares them. A fast preset's distilled checkpoint
        is a variant of its model: only the transformer(s) change."""
        variant = "fast" if fast is not None and fast.transformer is not None else "base"
        current = self._loaded
        same = current is not None and current.spec.id == spec.id and current.profile == profile
        if same and current.variant == variant:
            if current.task != task:
                report(Progress("load", 0.5, f"Switching to {TASK_NAMES[task]} (weights stay loaded)"))
                current.pipe.remove_all_hooks()  # offload hooks are per pipeline object
                current.pipe = _switch_task(current.pipe, task)
                current.task = task
                _place(current.pipe, profile, self.device, prepare_modules=False)
            return current

        reuse, prompts = {}, None
        if same or (
            current is not None
            and current.spec.shared_components
            and current.spec.shared_components == spec.shared_components
            and current.profile == profile
        ):
            current.pipe.remove_all_hooks()
            reuse = {name: getattr(current.pipe, name) for name in ("tokenizer", "text_encoder", "vae")}
            prompts = current.prompts  # same text encoder: its cached embeddings stay valid
        self._loaded = None
        del current
        _free_memory()

        weights = self.download(spec, report)
        if cancel is not None and cancel.is_set():  # asked during the download: no load follows
            raise GenerationCancelled()
        label = f"{spec.label}, fast" if variant == "fast" else spec.label
        report(Progress("load", 0.0, f"Loading {label} ({profile.label})"))
        transformers_from = fast.transformer if variant == "fast" else None
        if _LOADING.locked():
            report(Progress("load", 0.0, "Waiting while another GPU loads its model (one load at a time)"))
        with _LOADING:
            pipe = self._from_pretrained(spec, task, weights.path, profile, reuse, report, transformers_from)
            if self.context_parallel > 1:
                parallel.enable(pipe, self.context_parallel)
            previews = None
            if fit_previews:
                report(Progress("load", 0.9, "Fitting the live-preview colours"))
                previews = load_or_fit(pipe.vae, self.cache_dir / "previews", f"{spec.id}@{weights.revision}")
        _rest(pipe)  # under model offload the fit's encode left the VAE on the GPU
        report(Progress("load", 1.0, f"{spec.label} is ready"))
        prompts = prompts or PromptEncoder(pipe.tokenizer, pipe.text_encoder)
        revision = weights.revision if variant == "base" else f"{weights.revision}+fast:{fast.transformer.name}"
        self._loaded = _Loaded(spec, task, pipe, profile, revision, previews, prompts, variant=variant,
                               base_scheduler=pipe.scheduler)  # fmt: skip
        return self._loaded

    def _from_pretrained(
        self, spec: ModelSpec, task: str, path: Path, profile: Profile, reuse: dict, report: ProgressCallback,
        transformers_from: Path | None = None,
    ):  # fmt: skip
        from diffusers import UniPCMultistepScheduler

        on_gpu = profile.placement != "cpu"
        dtype = (
            {"default": torch.bfloat16, "vae": torch.float32, "image_encoder": torch.float32}
            if on_gpu
            else {"default": torch.float32}
        )
        cls = _pipeline_class(task)
        heavy = _load_heavy_components(cls, path, dtype, reuse, report, profile, self.device, transformers_from)
        pipe = cls.from_pretrained(str(path), dtype=dtype, **reuse, **heavy)
        pipe.set_progress_bar_config(disable=True)  # callers draw their own from Progress reports
        self.loads += 1
        if isinstance(pipe.scheduler, UniPCMultistepScheduler):
            pipe.scheduler = UniPCMultistepScheduler.from_config(pipe.scheduler.config, flow_shift=spec.flow_shift)
        _place(pipe, profile, self.device, prepare_modules=True)
        return pipe


# The transformers first: on fp8 profiles each is cast to fp8 before the next module loads, so host RAM
# peaks at one expert in bf16 beside the others in fp8, never at the whole pipeline in bf16.
HEAVY_COMPONENTS = ("transformer", "transformer_2", "text_encoder", "image_encoder", "vae")


def _load_heavy_components(
    cls, path: Path, dtype: dict, reuse: dict, report: ProgressCallback, profile: Profile, device: torch.device,
    transformers_from: Path | None = None,
) -> dict:  # fmt: skip
    """The large modules, each through its own from_pretrained (as the pipeline would), so the caller sees the
    load advance by size: tens of GB take minutes from a slow disk. The pipeline then loads only the light rest.
    Each module is settled for `profile` (`_settle`) before the next one loads. `transformers_from`: a distilled
    checkpoint whose transformer(s) replace the model's own."""
    index = json.loads((path / "model_index.json").read_text())
    accepted = inspect.signature(cls.__init__).parameters
    names = [
        name for name in HEAVY_COMPONENTS
        if name in accepted and name not in reuse and (index.get(name) or [None])[0] is not None
    ]  # fmt: skip
    folders = {name: path / name for name in names}
    if transformers_from is not None:
        folders.update({n: transformers_from / n for n in ("transformer", "transformer_2") if n in folders})
    sizes = {name: sum(f.stat().st_size for f in folders[name].rglob("*") if f.is_file()) for name in names}
    total = sum(sizes.values()) or 1
    done = 0
    loaded = {}
    for name in names:
        library, class_name = index[name]
        module_cls = getattr(importlib.import_module(library), class_name)
        what = name.replace("_", " ").replace("transformer 2", "second transformer")
        report(Progress("load", 0.9 * done / total, f"Loading the {what} ({human_size(sizes[name])})"))
        loaded[name] = module_cls.from_pretrained(str(folders[name]), dtype=dtype.get(name, dtype["default"]))
        _settle(name, loaded[name], profile, device)
        done += sizes[name]
    return loaded


def _settle(name: str, module: torch.nn.Module, profile: Profile, device: torch.device) -> None:
    """A module just loaded, made as small as its profile keeps it (fp8) and sent where the profile keeps it
    for good, so that it leaves host RAM before the next module arrives (an A14B pair is 57 GB in bf16)."""
    if profile.fp8 and name in ("transformer", "transformer_2"):
        _store_in_fp8(module)
    if profile.placement == "gpu" or (profile.placement == "gpu_text_cpu" and name != "text_encoder"):
        module.to(device)


def _store_in_fp8(transformer: torch.nn.Module) -> None:
    """Weights stored in fp8, each layer cast back to the dtype it was loaded in when it runs."""
    if any(p.dtype == torch.float8_e4m3fn for p in transformer.parameters()):
        return  # already stored in fp8 (settled as it loaded, or an adopted pipeline placed again)
    transformer.enable_layerwise_casting(storage_dtype=torch.float8_e4m3fn, compute_dtype=transformer.dtype)


def _switch_task(pipe, task: str):
    """The other task's pipeline class around the very same modules: nothing is reloaded or copied."""
    cls = _pipeline_class(task)
    accepted = inspect.signature(cls.__init__).parameters
    modules = {name: module for name, module in pipe.components.items() if name in accepted}
    new = cls(**modules, boundary_ratio=pipe.config.boundary_ratio, expand_timesteps=pipe.config.expand_timesteps)
    new.set_progress_bar_config(disable=True)
    return new


def _transformers(pipe) -> list[torch.nn.Module]:
    return [m for m in (pipe.transformer, getattr(pipe, "transformer_2", None)) if m is not None]


def _place(pipe, profile: Profile, device: torch.device, prepare_modules: bool) -> None:
    """Put a pipeline where its profile says. Module-level changes (fp8, tiling, group offload) stay on
    the modules and are applied once; pipeline-level model offload hooks are set per pipeline object."""
    if prepare_modules:
        if profile.fp8:
            for transformer in _transformers(pipe):
                _store_in_fp8(transformer)
        if profile.vae_tiling:
            pipe.vae.enable_tiling()
    if profile.placement == "cpu":
        pipe.to("cpu")
    elif profile.placement == "gpu":
        pipe.to(device)
    elif profile.placement == "gpu_text_cpu":
        # diffusers runs a text encoder where it sits and computes the rest on the pipeline's accelerator
        for name, module in pipe.components.items():
            if isinstance(module, torch.nn.Module):
                module.to("cpu" if name == "text_encoder" else device)
    elif profile.placement == "model_offload":
        if _takes_image(pipe):
            # The VAE encodes image-to-video's picture before denoising: in the pipeline's own order (VAE last)
            # no transformer sends it back and it would sit on the GPU through every step. Text-to-video keeps
            # the pipeline's order (there the text encoder must be the transformer's predecessor). Our decode
            # runs after the pipeline has offloaded everything, so the VAE's place costs nothing there.
            pipe.model_cpu_offload_seq = "text_encoder->image_encoder->vae->transformer->transformer_2"
        pipe.enable_model_cpu_offload(device=device)
    elif profile.placement == "group_offload" and prepare_modules:
        # The transformers stream through the GPU a block at a time. The text encoder runs on the CPU as in
        # gpu_text_cpu (block-level offload would move UMT5's one encoder stack, 11.4 GB, in a single group),
        # and the VAE stays on the GPU; neither carries offload hooks, so reusing them in another model works.
        from diffusers.hooks import apply_group_offloading

        _pin_at_size()
        for name, module in pipe.components.items():
            if not isinstance(module, torch.nn.Module) or name in ("vae", "text_encoder"):
                continue
            apply_group_offloading(
                module, onload_device=device, offload_device=torch.device("cpu"), offload_type="block_level",
                num_blocks_per_group=1, use_stream=device.type == "cuda",
            )  # fmt: skip
        pipe.text_encoder.to("cpu")
        pipe.vae.to(device)


PINNED_ROUND_LIMIT_MB = 1  # pinned allocations above this many MB are made at their size


def _pin_at_size() -> None:
    """Group offload keeps a pinned copy of every block's weights. PyTorch's pinned-memory allocator rounds
    each allocation up to a power of two, which made those copies 1.5-1.65x their size (43 GB instead of
    28 for an A14B pair in fp8, counted on the real layouts); above 1 MB they are now pinned at their size
    where PyTorch has the setting (memory.pinned_copy_factor: one version check for this and the estimate).
    The setting is added to the user's own (each call replaces the whole set)."""
    if pinned_copy_factor() != 1.0:
        return  # older PyTorch refuses the key (ValueError on CUDA builds): the copies stay rounded, as estimated
    current = getattr(torch._C, "_accelerator_getAllocatorSettings", lambda: "")() or ""
    if "pinned_max_round_threshold_mb" in current:
        return
    wanted = f"pinned_max_round_threshold_mb:{PINNED_ROUND_LIMIT_MB}"
    try:
        torch._C._accelerator_setAllocatorSettings(f"{current},{wanted}" if current else wanted)
    except (AttributeError, RuntimeError, ValueError):
        pass


def _takes_image(pipe) -> bool:
    from diffusers import WanImageToVideoPipeline

    return isinstance(pipe, WanImageToVideoPipeline)


def _rest(pipe) -> None:
    """Back to the profile's placement between runs: model offload moves every module off the GPU (the
    pipeline does this itself only when its call returns normally); other profiles have nothing to move."""
    pipe.maybe_free_model_hooks()


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _free_memory() -> None:
    gc.collect()
    # Only a CUDA already in use holds caches. Asking an uninitialised one (ipc_collect initialises it) would
    # crash a ZeroGPU Space, whose main process must never initialise CUDA (the `spaces` package forbids it).
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.empty_cache()
        torch.cuda.ipc_collect()
        # pinned host memory freed by a dropped model (group offload's copies) stays cached, locked in RAM
        accelerator = getattr(torch, "accelerator", None)  # PyTorch 2.6+; _host_emptyCache before that
        release = getattr(accelerator, "empty_host_cache", None) or getattr(torch._C, "_host_emptyCache", None)
        if release is not None:
            release()
