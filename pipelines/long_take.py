"""Long takes: one clip of any length up to a limit, made as windows of the model's frame count.

Each window after the first is conditioned on the last K frames of the window before (the overlap), the K
frames the two windows share are crossfaded, and every window is colour-matched to the take's first frame, so
motion and colour carry across each joint. A finished window's new frames go to the caller at once (to be
streamed to disk) and only the K overlap frames are kept for the next one: memory does not grow with the take.

How K frames can condition a window without forking diffusers' pipelines (diffusers 0.42,
pipelines/wan/pipeline_wan.py and pipeline_wan_i2v.py). The Wan VAEs are causal with a temporal factor of 4:
latent frame 0 holds pixel frame 0 alone, latent frame j the pixel frames 4j-3..4j, and the first 4m+1 pixel
frames encode to the first m+1 latent frames whatever follows them. So K is 1 or 4m+1 (whole latent frames).

| model | windows 2+ made by | conditioning on the last K frames (method) | default K |
|---|---|---|---|
| Wan2.2 TI2V-5B | itself, image-to-video | clean latent frames at timestep 0 (`clean-latents`) [1] | 9 (0.38 s) |
| Wan2.2 I2V-A14B | itself | VAE condition + mask channels (`mask-channels`) [2] | 5 (0.31 s) |
| Wan2.2 T2V-A14B | the paired I2V-A14B [3] | as I2V-A14B (`mask-channels`) | 5 (0.31 s) |
| Wan2.1 T2V-1.3B | itself, text-to-video [4] | latents written back each step (`latent-replacement`) | 9 (0.56 s) |
| a local folder | by its layout: both tasks as TI2V-5B, image-to-video as I2V-A14B, else as T2V-1.3B | | |

[1] `WanImageToVideoPipeline` with `expand_timesteps`: `prepare_latents` returns (noise, `condition`,
`first_frame_mask`); each step the transformer sees `(1 - mask) * condition + mask * latents` with per-token
timesteps `mask * t`, and the output is clamped to `condition` where the mask is 0. diffusers masks frame 0
only (and ignores `last_image`), but the mechanism is per latent frame: `prepare_latents` is replaced for the
call so that the K frames, VAE-encoded, fill the first m+1 latent frames under a 0 mask. They stay clean at
timestep 0 and come out as given, exactly as the pipeline keeps its one start frame (ComfyUI's
Wan22ImageToVideoLatent masks a start sequence the same way). The task switch reloads nothing.
[2] Without `expand_timesteps`, `prepare_latents` VAE-encodes `[image, zeros..., (last_image)]` over the whole
window and concatenates a 4-channel mask with one value per pixel frame (16 + 4 + 16 input channels). The Wan2.1
report says its image-to-video models were pre-trained with this mask on image-to-video, video continuation,
first-last frame and frame interpolation (I2V-A14B has the same input layout); ComfyUI's WanImageToVideo
takes a start sequence of several frames this way (the mask over ((K - 1) // 4) + 1 latent frames).
`prepare_latents` is replaced for the call: `[K frames, zeros...]` encoded, the mask 1 on pixel frames 0..K-1.
[3] `WanPipeline` takes no picture: its only ways in are `latents` (the initial noise) and the step callback's
returned `latents`. The I2V-A14B pair shares its text encoder and VAE (they stay loaded; the experts switch
once, after the first window); its guidance defaults apply unless the request changed T2V-A14B's.
[4] No image-to-video model of its size shares its VAE: I2V-A14B does, at 2x14B, beyond the 8-12 GB cards this
model is for; TI2V-5B has another VAE and 24 fps. So the K frames' latents x0 are written over the first m+1
latent frames as (1 - sigma) x0 + sigma e (noise e fixed, sigma the current level) before the first step and
after each (through `prepare_latents` and the step callback), and are exact after the last: temporal
inpainting the model was not trained for, which carries motion less surely than the masks above.

K = 1 on a model that takes a picture is today's extension: the previous window's last frame is the
pipeline's own start image (`start-image`), with no replacement of `prepare_latents`. The first window is made
from the prompt (`prompt`) or from the request's picture (`picture`). Each window's seed is derived from the
take's (window 1 uses it as it is), so a take is reproducible from its seed. An end frame is not taken: where it
would go in a take (the last window) is for a later change.
"""

from __future__ import annotations

import hashlib
import logging
import math
import threading
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace

import numpy as np
import torch
from PIL import Image

from pipelines.catalogue import CATALOGUE, IMAGE_TO_VIDEO, TEXT_TO_VIDEO, ModelSpec
from pipelines.errors import UserError
from pipelines.manager import GenerationCancelled, GenerationResult, PipelineManager, Progress, RunHook
from pipelines.request import MAX_PROMPT_CHARS, MAX_SEED, ValidRequest

log = logging.getLogger("wan_studio")

DEFAULT_LIMIT_S = 60.0  # the longest take unless the settings raise it
MAX_LIMIT_S = 300.0  # the most the setting allows

PROMPT, PICTURE = "prompt", "picture"  # how a take's first window starts
START_IMAGE = "start-image"  # K = 1 on a model that takes a picture: the pipeline's own start image
CLEAN_LATENTS = "clean-latents"  # TI2V-5B: K frames as clean latent frames under the per-token timestep mask
MASK_CHANNELS = "mask-channels"  # I2V-A14B: K frames in the VAE condition, the mask 1 over them
LATENT_REPLACEMENT = "latent-replacement"  # text-to-video only: K frames' latents written back after each step


class TakeError(UserError, ValueError):
    """A long take that cannot be planned or run as asked; `field` names what to change."""

    def __init__(self, field: str, message: str):
        self.field = field
        super().__init__(message)


@dataclass(frozen=True)
class Continuation:
    """How a model's windows after the first are made: by which model and task, conditioned how."""

    model: str
    task: str
    method: str  # CLEAN_LATENTS, MASK_CHANNELS or LATENT_REPLACEMENT (START_IMAGE at K = 1 for the first two)
    default_overlap: int


def continuation_for(spec: ModelSpec) -> Continuation:
    """The choice in the module's table, for a catalogue model or a local folder's spec."""
    if spec.supports(IMAGE_TO_VIDEO) and spec.supports(TEXT_TO_VIDEO):  # the TI2V layout (expand_timesteps)
        return Continuation(spec.id, IMAGE_TO_VIDEO, CLEAN_LATENTS, 9)
    if spec.supports(IMAGE_TO_VIDEO):
        return Continuation(spec.id, IMAGE_TO_VIDEO, MASK_CHANNELS, 5)
    partner = _image_to_video_partner(spec)
    if partner is not None:
        return Continuation(partner.id, IMAGE_TO_VIDEO, MASK_CHANNELS, 5)
    return Continuation(spec.id, TEXT_TO_VIDEO, LATENT_REPLACEMENT, 9)


def _image_to_video_partner(spec: ModelSpec) -> ModelSpec | None:
    """The two-expert image-to-video model sharing a two-expert text-to-video model's text encoder and VAE."""
    if not spec.two_experts or not spec.shared_components:
        return None
    for other in CATALOGUE.values():
        if (
            other.supports(IMAGE_TO_VIDEO)
            and other.two_experts
            and other.shared_components == spec.shared_components
            and other.is_test == spec.is_test
        ):
            return other
    return None


# ---- the plan ------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class TakePlan:
    """The windows of a take. Every window but the last has `frames_per_window` frames (the last is shorter
    when the take was asked in seconds); window n+1 shares `overlap` frames with window n."""

    model: str
    fps: int
    window_frames: tuple[int, ...]
    overlap: int
    prompts: tuple[str, ...]  # one per window
    limit_s: float

    @property
    def windows(self) -> int:
        return len(self.window_frames)

    @property
    def frames_per_window(self) -> int:
        return self.window_frames[0]

    @property
    def total_frames(self) -> int:
        """sum(window frames) - (windows - 1) * overlap: windows x F - (windows - 1) x K when all are whole."""
        return sum(self.window_frames) - (self.windows - 1) * self.overlap

    @property
    def duration_s(self) -> float:
        return self.total_frames / self.fps

    def start_of(self, index: int) -> int:
        """The take's frame index of window `index`'s first frame."""
        return sum(self.window_frames[:index]) - index * self.overlap

    def record(self) -> dict:
        return dict(asdict(self), window_frames=list(self.window_frames), prompts=list(self.prompts),
                    windows=self.windows, total_frames=self.total_frames)  # fmt: skip

    @classmethod
    def from_record(cls, data: dict) -> TakePlan:
        """The plan `record()` wrote (a job record read after a restart)."""
        return cls(str(data["model"]), int(data["fps"]), tuple(int(n) for n in data["window_frames"]),
                   int(data["overlap"]), tuple(str(p) for p in data["prompts"]), float(data["limit_s"]))  # fmt: skip


def max_overlap(frames_per_window: int, step: int = 4) -> int:
    """The largest K for windows of this many frames: 4m+1, at most half a window (each window adds at
    least as many frames as it shares)."""
    return max(1, ((frames_per_window - 1) // 2 - 1) // step * step + 1)


def plan_take(
    spec: ModelSpec,
    prompts: str | Sequence[str],
    *,
    seconds: float | None = None,
    windows: int | None = None,
    frames_per_window: int | None = None,
    overlap: int | None = None,
    limit_s: float = DEFAULT_LIMIT_S,
) -> TakePlan:
    """Plan a take of `seconds` (the last window as short as it can be) or of `windows` whole windows. `prompts`:
    one for the whole take, or one per window (fewer: the last holds for the rest; more: refused). TakeError
    names what to change."""
    if isinstance(limit_s, bool) or not isinstance(limit_s, (int, float)) or not 1 <= limit_s <= MAX_LIMIT_S:
        raise TakeError("limit", f"The long-take limit must be a number of seconds from 1 to {MAX_LIMIT_S:g}; "
                                 f"got {limit_s!r}.")  # fmt: skip
    step = spec.frame_step
    frames = spec.frames if frames_per_window is None else frames_per_window
    if (
        not isinstance(frames, int) or isinstance(frames, bool)
        or not spec.min_frames <= frames <= spec.max_frames or (frames - 1) % step
    ):  # fmt: skip
        raise TakeError("frames_per_window", f"{spec.name} makes windows of {step}n+1 frames from {spec.min_frames} "
                                             f"to {spec.max_frames}; got {frames!r}.")  # fmt: skip
    most = max_overlap(frames, step)
    if overlap is None:
        overlap = continuation_for(spec).default_overlap
        overlap = overlap if overlap <= most else most
    elif not isinstance(overlap, int) or isinstance(overlap, bool) or not 1 <= overlap <= most or (overlap - 1) % step:
        raise TakeError("overlap", f"The overlap must be 1 or {step}n+1 frames (whole latent frames), at most {most} "
                                   f"for windows of {frames}; got {overlap!r}.")  # fmt: skip
    limit_frames = math.floor(limit_s * spec.fps + 1e-9)
    too_long = (f"A long take is at most {limit_s:g} s (the limit in Settings, up to {MAX_LIMIT_S:g} s); this one "
                "would be {:.1f} s. Ask for fewer seconds or windows, or raise the limit.")  # fmt: skip
    if (seconds is None) == (windows is None):
        raise TakeError("seconds", "Give the take's length either in seconds or in windows.")
    if windows is not None:
        if not isinstance(windows, int) or isinstance(windows, bool) or windows < 1:
            raise TakeError("windows", f"The number of windows must be a whole number from 1; got {windows!r}.")
        window_frames = (frames,) * windows
        total = windows * frames - (windows - 1) * overlap
        if total > limit_frames:
            raise TakeError("limit", too_long.format(total / spec.fps))
    else:
        if isinstance(seconds, bool) or not isinstance(seconds, (int, float)) or not seconds > 0:
            raise TakeError("seconds", f"The take's length must be a positive number of seconds; got {seconds!r}.")
        if seconds > limit_s:
            raise TakeError("limit", too_long.format(seconds))
        window_frames = _windows_for(max(spec.min_frames, round(seconds * spec.fps)), frames, overlap, step,
                                     limit_frames)  # fmt: skip
    count = len(window_frames)
    prompts = (prompts,) if isinstance(prompts, str) else tuple(prompts)
    if not prompts:
        raise TakeError("prompts", "Write a prompt: describe what the take should show.")
    if len(prompts) > count:
        raise TakeError("prompts", f"{len(prompts)} prompts for a take of {count} window{'s' * (count > 1)}: give one "
                                   f"prompt for the whole take, or at most one per window ({count}).")  # fmt: skip
    cleaned = []
    for n, prompt in enumerate(prompts, 1):
        text = prompt.strip() if isinstance(prompt, str) else ""
        if not text:
            raise TakeError("prompts", f"Prompt {n} is empty: describe what window {n} should show.")
        if len(text) > MAX_PROMPT_CHARS:
            raise TakeError("prompts", f"Prompt {n} is {len(text)} characters; keep it under {MAX_PROMPT_CHARS}.")
        cleaned.append(text)
    cleaned += [cleaned[-1]] * (count - len(cleaned))
    return TakePlan(spec.id, spec.fps, window_frames, overlap, tuple(cleaned), float(limit_s))


def _windows_for(target: int, frames: int, overlap: int, step: int, limit_frames: int) -> tuple[int, ...]:
    """Whole windows, then a last one of the fewest 4n+1 frames reaching `target` (without passing the limit)."""

    def up(n: int) -> int:
        return (n - 1 + step - 1) // step * step + 1

    if target <= frames:
        last = up(target)
        return ((last if last <= limit_frames else last - step),)
    whole = math.ceil((target - frames) / (frames - overlap))  # whole windows before the last one
    last = up(target - whole * (frames - overlap))  # more than the overlap, at most a whole window
    if whole * (frames - overlap) + last > limit_frames:
        last -= step
        if last <= overlap:  # nothing left for it to add: the take ends with the whole windows
            return (frames,) * whole
    return (frames,) * whole + (last,)


# ---- running it ----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class WindowRecord:
    """What made one window, for the take's sidecar."""

    index: int
    prompt: str
    seed: int
    frames: int  # frames the window made
    start: int  # the take's frame index of its first frame
    overlap: int  # frames shared with (conditioned on and blended with) the window before; 0 for the first
    conditioning: str  # PROMPT, PICTURE, START_IMAGE, CLEAN_LATENTS, MASK_CHANNELS or LATENT_REPLACEMENT
    model: str
    task: str
    result: GenerationResult | None = field(default=None, repr=False, compare=False)  # frames dropped

    def record(self) -> dict:
        data = {k: v for k, v in asdict(self).items() if k != "result"}
        if self.result is not None:
            data["timings"] = dict(self.result.timings)
        return data


def window_seed(seed: int, index: int) -> int:
    """Window `index`'s seed: the take's own for the first, then drawn from it (reproducible)."""
    if index == 0:
        return seed
    digest = hashlib.sha256(f"wan-studio long take {seed} window {index}".encode()).digest()
    return int.from_bytes(digest[:4], "big") % (MAX_SEED + 1)


WindowCallback = Callable[[np.ndarray, int], None]  # (frames (n, H, W, 3) uint8, window index)
TakeProgress = Callable[[int, Progress], None]  # (window index, the manager's report)


def run_take(
    manager: PipelineManager,
    request: ValidRequest,
    plan: TakePlan,
    on_window: WindowCallback,
    on_progress: TakeProgress | None = None,
    cancel: threading.Event | None = None,
    *,
    continue_with: ValidRequest | None = None,
    match_colour: bool | None = None,
    on_record: Callable[[WindowRecord], None] | None = None,
    on_held: WindowCallback | None = None,
    lead_in: np.ndarray | None = None,
) -> list[WindowRecord]:
    """Make the take window by window through `manager.generate`. `request` makes the first window (its prompt,
    frames and seed come from `plan` and are derived per window); `continue_with` the others (default: the
    module table's choice for the request's model, with the request's settings).

    `on_window(frames, index)` receives the take's frames in order as each window finishes: window n's frames
    but its last K (held for the blend with window n+1), then, with window n+1, the K blended frames and its
    own. If the take stops (cancel, an error), the held frames are handed on first, so what was handed ends
    with whole windows. `match_colour` (default: on, or as the request says for image-to-video): every window
    colour-matched to the take's first frame. `on_record(record)` follows each window's `on_window`, so a
    caller can keep what made the frames it holds; `on_held(frames, index)` gets a copy of the K frames held back
    (before `on_record`), so a caller that keeps them can keep whole windows even if the process dies.
    `lead_in`: K frames of another clip the take continues (a storyboard's last shot, up to its Out point):
    window 1 is then made like the later windows, conditioned on them, and begins with its own version of
    them (not blended: they belong to the other clip, and an extension starts after them). Raises
    the manager's errors (GenerationCancelled, ...) and
    TakeError; returns each window's record."""
    if plan.model != request.spec.id:
        raise TakeError("model", f"The take was planned for {plan.model}, not {request.spec.id}.")
    if request.end_image is not None:
        raise TakeError("end_image", "A long take does not end on a given picture; leave the end frame out.")
    cancel = cancel or threading.Event()
    report = on_progress or (lambda index, progress: None)
    colours = match_colour if match_colour is not None else (request.match_colour or request.task == TEXT_TO_VIDEO)
    later, method = _later_windows(request, continue_with)
    k = plan.overlap
    records: list[WindowRecord] = []
    reference: np.ndarray | None = None  # the take's first frame, which every window's colours are matched to
    held: np.ndarray | None = None  # the previous window's last K frames: condition and first half of the blend
    if lead_in is not None:
        held = np.ascontiguousarray(lead_in, dtype=np.uint8)
        if held.ndim != 4 or held.shape[0] != k or held.shape[1:3] != (request.height, request.width):
            raise TakeError("lead_in", f"A take continues {k} frames of {request.width}x{request.height}; got "
                                       f"{held.shape[0] if held.ndim == 4 else 0} of another size.")  # fmt: skip
        reference = held[0] if colours else None
    for index in range(plan.windows):
        prompt, seed, frames = plan.prompts[index], window_seed(request.seed, index), plan.window_frames[index]
        conditioned = held is not None
        ours = conditioned and not (index == 0 and lead_in is not None)  # held frames of this take
        if index == 0 and lead_in is None:
            window = replace(request, prompt=prompt, seed=seed, frames=frames,
                             match_colour=colours and request.image is not None)  # fmt: skip
            hook, how = None, PICTURE if request.task == IMAGE_TO_VIDEO else PROMPT
            if colours and request.image is not None:
                reference = np.asarray(request.image)
        else:
            how = START_IMAGE if k == 1 and method != LATENT_REPLACEMENT else method
            takes_image = later.task == IMAGE_TO_VIDEO
            window = replace(later, prompt=prompt, seed=seed, frames=frames, match_colour=False, end_image=None,
                             image=Image.fromarray(held[0]) if takes_image else None)  # fmt: skip
            hook = _hook_for(how, held, reference)
        try:
            if cancel.is_set():
                raise GenerationCancelled()
            result = manager.generate(window, lambda p, i=index: report(i, p), cancel, hook=hook)
        except BaseException:
            if ours:  # the finished windows end whole where the frames went
                try:
                    on_window(held, index - 1)
                except Exception:  # the reason the take stopped (a cancel, the GPU) is the one to raise
                    log.warning("the held frames of window %d could not be handed on", index, exc_info=True)
            raise
        out = result.frames
        # the record keeps no frames and no picture: memory stays flat however many windows the take has
        result = replace(result, frames=np.empty((0, *out.shape[1:]), np.uint8),
                         request=replace(result.request, image=None, end_image=None))  # fmt: skip
        if index == 0 and colours and reference is None:
            reference = out[0].copy()  # text to video: the first window's first frame sets the take's colours
        if ours:
            out[:k] = crossfade(held, out[:k])
        last = index == plan.windows - 1
        held = None if last else out[-k:].copy()
        on_window(out if last else out[:-k], index)
        if held is not None and on_held is not None:
            on_held(held, index)
        records.append(WindowRecord(index, prompt, seed, frames, plan.start_of(index), k if conditioned else 0, how,
                                    window.spec.id, window.task, result))  # fmt: skip
        if on_record is not None:
            on_record(records[-1])
        del out
    return records


def crossfade(before: np.ndarray, after: np.ndarray) -> np.ndarray:
    """K frames of the window before and the same K frames of the window after, mixed linearly: frame j takes
    (j + 1) / (K + 1) of the later window, so the joint moves from one to the other across the overlap."""
    k = before.shape[0]
    weights = (np.arange(1, k + 1, dtype=np.float32) / (k + 1))[:, None, None, None]
    mixed = before.astype(np.float32) * (1 - weights) + after.astype(np.float32) * weights
    return np.clip(np.rint(mixed), 0, 255).astype(np.uint8)


def _later_windows(first: ValidRequest, continue_with: ValidRequest | None) -> tuple[ValidRequest, str]:
    """The request the windows after the first are made from (prompt, seed, frames and picture set per
    window), and how they are conditioned."""
    if continue_with is not None:
        spec, task = continue_with.spec, continue_with.task
        if task == TEXT_TO_VIDEO and spec.id != first.spec.id:
            raise TakeError("continue_with", f"{spec.name} cannot continue a take it did not start: text-to-video "
                                             "continues only the model's own windows.")  # fmt: skip
        if task == IMAGE_TO_VIDEO:
            both = spec.supports(TEXT_TO_VIDEO)
            return continue_with, CLEAN_LATENTS if both else MASK_CHANNELS
        return continue_with, LATENT_REPLACEMENT
    choice = continuation_for(first.spec)
    if choice.model == first.spec.id:
        return replace(first, task=choice.task), choice.method
    spec = CATALOGUE[choice.model]
    own_defaults = (first.guidance_scale, first.guidance_scale_2) == (first.spec.guidance_scale,
                                                                      first.spec.guidance_scale_2)  # fmt: skip
    guidance, guidance_2 = (spec.guidance_scale, spec.guidance_scale_2) if own_defaults else (
        first.guidance_scale, first.guidance_scale_2)  # fmt: skip
    fast, steps = first.fast and spec.fast is not None, first.steps
    if fast:
        steps, guidance = spec.fast.steps, spec.fast.guidance_scale
        guidance_2 = spec.fast.guidance_scale
    elif first.fast:  # the partner has no fast preset (a test layout): its own settings
        steps, guidance, guidance_2 = spec.steps, spec.guidance_scale, spec.guidance_scale_2
    loras = first.loras if spec.family == first.spec.family else ()
    later = replace(first, spec=spec, task=choice.task, fps=spec.fps, steps=steps, guidance_scale=guidance,
                    guidance_scale_2=guidance_2, fast=fast, loras=loras)  # fmt: skip
    return later, choice.method


def _hook_for(how: str, held: np.ndarray, reference: np.ndarray | None) -> RunHook:
    if how == START_IMAGE:
        hook = RunHook()  # the pipeline's own start image; only the colour reference changes
    elif how == LATENT_REPLACEMENT:
        hook = _LatentReplacement(held)
    else:
        hook = _FramesCondition(held)
    hook.colour_reference = reference
    return hook


def _as_video(frames: np.ndarray) -> torch.Tensor:
    """(K, H, W, 3) uint8 -> (1, 3, K, H, W) float32 in [-1, 1], as the pipelines' video processor scales."""
    return torch.from_numpy(np.ascontiguousarray(frames)).permute(3, 0, 1, 2)[None].float() / 127.5 - 1.0


def _encode(pipe, video: torch.Tensor, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """The VAE's normalised latents of `video`, as the pipelines encode their condition (argmax, then scaled by
    the VAE's latent statistics)."""
    from diffusers.pipelines.wan.pipeline_wan_i2v import retrieve_latents
    from diffusers.utils.torch_utils import get_module_execution_device

    vae = pipe.vae
    video = video.to(device=get_module_execution_device(vae), dtype=vae.dtype)
    latents = retrieve_latents(vae.encode(video), sample_mode="argmax").to(device=device, dtype=dtype)
    mean = torch.tensor(vae.config.latents_mean).view(1, vae.config.z_dim, 1, 1, 1).to(device, dtype)
    inverse_std = 1.0 / torch.tensor(vae.config.latents_std).view(1, vae.config.z_dim, 1, 1, 1).to(device, dtype)
    return (latents - mean) * inverse_std


class _FramesCondition(RunHook):
    """Image-to-video conditioned on K frames: `prepare_latents` of WanImageToVideoPipeline replaced for one call
    (CLEAN_LATENTS under expand_timesteps, else MASK_CHANNELS); the pipeline's picture is ignored."""

    def __init__(self, frames: np.ndarray):
        self.frames = frames

    def enter(self, pipe, kwargs: dict) -> None:
        def prepare(image, batch_size, num_channels_latents, height, width, num_frames, dtype, device, generator,
                    latents=None, last_image=None):  # fmt: skip
            return self._prepare(pipe, batch_size, num_channels_latents, height, width, num_frames, dtype, device,
                                 generator, latents)  # fmt: skip

        pipe.prepare_latents = prepare

    def exit(self, pipe) -> None:
        pipe.__dict__.pop("prepare_latents", None)

    def _prepare(self, pipe, batch_size, channels, height, width, num_frames, dtype, device, generator, latents):
        from diffusers.utils.torch_utils import randn_tensor

        temporal, spatial = pipe.vae_scale_factor_temporal, pipe.vae_scale_factor_spatial
        latent_frames, h, w = (num_frames - 1) // temporal + 1, height // spatial, width // spatial
        shape = (batch_size, channels, latent_frames, h, w)
        if latents is None:  # the very noise the pipeline would draw
            latents = randn_tensor(shape, generator=generator, device=device, dtype=dtype)
        else:
            latents = latents.to(device=device, dtype=dtype)
        k = self.frames.shape[0]
        held = (k - 1) // temporal + 1  # latent frames the K frames fill
        video = _as_video(self.frames)
        if pipe.config.expand_timesteps:
            encoded = _encode(pipe, video, device, dtype)[:, :, :held]
            condition = torch.zeros(shape, device=device, dtype=dtype)
            condition[:, :, :held] = encoded
            mask = torch.ones(1, 1, latent_frames, h, w, device=device, dtype=dtype)
            mask[:, :, :held] = 0
            return latents, condition, mask
        video = torch.cat([video, video.new_zeros(1, 3, num_frames - k, height, width)], dim=2)
        encoded = _encode(pipe, video, device, dtype).repeat(batch_size, 1, 1, 1, 1)
        # the pipeline's mask layout: one value per pixel frame, frame 0 repeated to fill latent frame 0's four
        mask = torch.zeros(batch_size, 1, num_frames, h, w)
        mask[:, :, :k] = 1
        mask = torch.cat([mask[:, :, :1].repeat_interleave(temporal, dim=2), mask[:, :, 1:]], dim=2)
        mask = mask.view(batch_size, -1, temporal, h, w).transpose(1, 2).to(encoded.device)
        return latents, torch.cat([mask, encoded], dim=1)


class _LatentReplacement(RunHook):
    """Text-to-video continued by temporal inpainting: the K frames' latents x0, with noise e drawn once, written
    over the first latent frames as (1 - sigma) x0 + sigma e at the start and after every step (the flow-matching
    noise of the current level), so they end as x0."""

    def __init__(self, frames: np.ndarray):
        self.frames = frames
        self.clean: torch.Tensor | None = None
        self.noise: torch.Tensor | None = None

    def enter(self, pipe, kwargs: dict) -> None:
        original = pipe.prepare_latents

        def prepare(*args, **kwargs):
            latents = original(*args, **kwargs)
            encoded = _encode(pipe, _as_video(self.frames), latents.device, latents.dtype)
            held = encoded.shape[2]
            self.clean, self.noise = encoded, latents[:, :, :held].clone()
            return self._mixed(latents, float(pipe.scheduler.sigmas[0]))

        pipe.prepare_latents = prepare

    def step(self, pipe, latents: torch.Tensor) -> torch.Tensor:
        return self._mixed(latents.clone(), float(pipe.scheduler.sigmas[pipe.scheduler.step_index]))

    def exit(self, pipe) -> None:
        pipe.__dict__.pop("prepare_latents", None)

    def _mixed(self, latents: torch.Tensor, sigma: float) -> torch.Tensor:
        held = self.clean.shape[2]
        clean = self.clean.to(latents.dtype)
        latents[:, :, :held] = (1.0 - sigma) * clean + sigma * self.noise.to(latents.dtype)
        return latents
