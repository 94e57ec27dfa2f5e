"""What a caller asks for, and the checks that turn it into a request the engine can run.

Everything is checked here, before any model loads, because the pipeline itself silently rounds
sizes and frame counts instead of refusing them.
"""

from __future__ import annotations

import secrets
from dataclasses import asdict, dataclass, field
from typing import Any

from PIL import Image

from pipelines import caching
from pipelines import loras as lora_files
from pipelines.caching import CacheChoice, CacheError
from pipelines.catalogue import IMAGE_TO_VIDEO, TASK_NAMES, TEXT_TO_VIDEO, ModelSpec, UnknownModelError, get_spec
from pipelines.errors import UserError
from pipelines.images import ImageError, ImageInput, closest_size, fit_image, load_image
from pipelines.loras import LoraChoice, LoraError, ResolvedLora

MAX_PROMPT_CHARS = 2000  # UMT5 reads 512 tokens; longer prompts would be cut silently
MAX_STEPS = 100
MAX_GUIDANCE = 20.0
MAX_SEED = 2**32 - 1


@dataclass
class GenerationRequest:
    """A request as a UI, API or CLI caller gives it: only `prompt` is required; None means the model's default."""

    prompt: str
    model: str | None = None
    task: str | None = None  # None: image-to-video when an image is given, else text-to-video
    negative_prompt: str | None = None
    width: int | None = None
    height: int | None = None
    frames: int | None = None
    steps: int | None = None
    guidance_scale: float | None = None
    guidance_scale_2: float | None = None
    seed: int | None = None  # None or -1: a random seed, reported back
    image: ImageInput | None = field(default=None, repr=False)
    loras: list[LoraChoice | dict] | None = None  # files (paths), strengths, experts
    fast: bool = False  # the model's step-distilled preset, with the settings its authors prescribe
    cache: str | dict | None = None  # step cache: "off", "first-block", "taylorseer", "magcache" (or its record)
    cache_threshold: float | None = None
    match_colour: bool = True  # image-to-video: keep the start picture's colours (no drift across extensions)
    end_image: ImageInput | None = field(default=None, repr=False)  # image-to-video: the last frame, where supported


@dataclass(frozen=True)
class ValidRequest:
    """A request with every default resolved and every rule checked; the engine accepts nothing else."""

    spec: ModelSpec
    task: str
    prompt: str
    negative_prompt: str
    width: int
    height: int
    frames: int
    fps: int
    steps: int
    guidance_scale: float
    guidance_scale_2: float | None
    seed: int
    image: Image.Image | None = field(default=None, repr=False, compare=False)
    loras: tuple[ResolvedLora, ...] = ()
    fast: bool = False
    cache: CacheChoice = CacheChoice()
    match_colour: bool = False  # frames colour-matched to the start picture (image-to-video only)
    end_image: Image.Image | None = field(default=None, repr=False, compare=False)

    @property
    def duration_s(self) -> float:
        return self.frames / self.fps

    def settings(self) -> dict[str, Any]:
        """The settings that reproduce this clip (with the same input image), as stored in the sidecar: each
        LoRA by file name, SHA-256, strength and expert(s)."""
        data = asdict(self)
        for name in ("spec", "image", "loras", "cache", "end_image"):
            data.pop(name)
        data["end_frame"] = self.end_image is not None
        data["model"] = self.spec.id
        data["loras"] = [lora.record() for lora in self.loras]
        data["cache"] = self.cache.record()
        return data

    def to_record(self) -> dict[str, Any]:
        """Plain data that `from_record` turns back into this very request (the picture is kept apart)."""
        return dict(self.settings(), loras=[asdict(lora) for lora in self.loras])

    @classmethod
    def from_record(
        cls, data: dict[str, Any], image: Image.Image | None = None, end_image: Image.Image | None = None
    ) -> ValidRequest:
        """The request a record describes, exactly: nothing is drawn or defaulted again (the seed, the model
        and every setting were fixed when it was first validated). UnknownModelError if the model is gone."""
        fields_ = {k: data[k] for k in (
            "task", "prompt", "negative_prompt", "width", "height", "frames", "fps", "steps", "guidance_scale",
            "guidance_scale_2", "seed",
        )}  # fmt: skip
        return cls(
            spec=get_spec(data["model"]), image=image, **fields_,
            loras=tuple(ResolvedLora(**lora) for lora in data.get("loras", [])), fast=bool(data.get("fast", False)),
            cache=CacheChoice(**data["cache"]) if data.get("cache") else CacheChoice(),
            match_colour=bool(data.get("match_colour", False)), end_image=end_image,
        )  # fmt: skip


class RequestError(UserError, ValueError):
    """One or more fields are wrong; `problems` maps each field to a sentence a user can act on."""

    def __init__(self, problems: dict[str, str]):
        self.problems = problems
        super().__init__(" ".join(problems.values()))


def validate_request(request: GenerationRequest, default_model: str) -> ValidRequest:
    """Check every field and fill in defaults; raise RequestError listing every problem at once."""
    problems: dict[str, str] = {}
    try:
        spec = get_spec(request.model or default_model)
    except UnknownModelError as err:
        raise RequestError({"model": str(err)}) from err

    task = request.task or (IMAGE_TO_VIDEO if request.image is not None else TEXT_TO_VIDEO)
    if task not in TASK_NAMES:
        raise RequestError({"task": f"Unknown task '{task}'; use 't2v' (text-to-video) or 'i2v' (image-to-video)."})
    if not spec.supports(task):
        others = [s.id for s in _catalogue_models_for(task)]
        raise RequestError(
            {"task": f"{spec.name} does not do {TASK_NAMES[task]}. Models that do: {', '.join(others)}."}
        )

    prompt = (request.prompt or "").strip()
    if not prompt:
        problems["prompt"] = "Write a prompt: describe what the video should show."
    elif len(prompt) > MAX_PROMPT_CHARS:
        problems["prompt"] = f"The prompt is {len(prompt)} characters; keep it under {MAX_PROMPT_CHARS}."
    negative = spec.negative_prompt if request.negative_prompt is None else request.negative_prompt.strip()
    if len(negative) > MAX_PROMPT_CHARS:
        problems["negative_prompt"] = (
            f"The negative prompt is {len(negative)} characters; keep it under {MAX_PROMPT_CHARS}."
        )

    image = None
    if task == IMAGE_TO_VIDEO:
        if request.image is None:
            problems["image"] = "Image-to-video needs a picture: upload one or pick a clip's last frame."
        else:
            try:
                image = load_image(request.image)
            except ImageError as err:
                problems["image"] = str(err)
    elif request.image is not None:
        problems["image"] = "Text-to-video takes no picture; use image-to-video to start from one."
    end_image = None
    if request.end_image is not None:
        if task != IMAGE_TO_VIDEO:
            problems["end_image"] = "An end frame goes with image-to-video (a start picture and an end picture)."
        elif not spec.end_frame:
            problems["end_image"] = (f"{spec.name} cannot end on a given frame (its pipeline ignores one); "
                                     "Wan2.2 I2V-A14B can.")  # fmt: skip
        else:
            try:
                end_image = load_image(request.end_image)
            except ImageError as err:
                problems["end_image"] = f"The end frame: {err}"

    width, height = _resolve_size(request, spec, image, problems)
    frames = _resolve_frames(request.frames, spec, problems)
    steps = _int_in_range("steps", request.steps, spec.steps, 1, MAX_STEPS, problems)
    guidance = _float_in_range("guidance_scale", request.guidance_scale, spec.guidance_scale, problems)
    guidance_2 = None
    if spec.guidance_scale_2 is not None:
        guidance_2 = _float_in_range("guidance_scale_2", request.guidance_scale_2, spec.guidance_scale_2, problems)
    elif request.guidance_scale_2 is not None:
        problems["guidance_scale_2"] = f"{spec.name} has one expert; the second guidance scale is for the A14B models."
    seed = _resolve_seed(request.seed, problems)
    fast = bool(request.fast)
    if fast:
        if spec.fast is None:
            problems["fast"] = f"{spec.name} has no fast mode: no step-distilled weights are published for it."
        else:  # the preset's own settings: the wrong ones give slow motion or broken frames
            steps, guidance = spec.fast.steps, spec.fast.guidance_scale
            guidance_2 = spec.fast.guidance_scale if spec.guidance_scale_2 is not None else None
    chosen_loras: tuple[ResolvedLora, ...] = ()
    try:
        chosen_loras = lora_files.resolve([_lora_choice(item) for item in request.loras or []], spec)
    except (LoraError, TypeError, ValueError) as err:
        problems["loras"] = str(err) if isinstance(err, LoraError) else f"A LoRA entry is not understood: {err}"
    cache = CacheChoice()  # Fast mode runs without one: its few distilled steps differ too much to skip any
    try:
        kind, threshold = (None, None) if fast else (request.cache, request.cache_threshold)
        if isinstance(kind, dict):
            kind, threshold = kind.get("kind"), kind.get("threshold", threshold)
        cache = caching.check(kind, threshold, spec.id)
    except CacheError as err:
        problems["cache"] = str(err)

    if problems:
        raise RequestError(problems)
    if image is not None:
        image = fit_image(image, width, height)
    if end_image is not None:
        end_image = fit_image(end_image, width, height)
    return ValidRequest(
        spec=spec, task=task, prompt=prompt, negative_prompt=negative, width=width, height=height,
        frames=frames, fps=spec.fps, steps=steps, guidance_scale=guidance, guidance_scale_2=guidance_2,
        seed=seed, image=image, loras=chosen_loras, fast=fast, cache=cache,
        match_colour=task == IMAGE_TO_VIDEO and request.match_colour is not False, end_image=end_image,
    )  # fmt: skip


def _lora_choice(item: LoraChoice | dict) -> LoraChoice:
    """A LoraChoice from itself or from a record ({"file", "strength", "experts"} or {"high", "low"})."""
    if isinstance(item, LoraChoice):
        return item
    if not isinstance(item, dict) or not isinstance(item.get("file"), str):
        raise ValueError("each LoRA needs a 'file'")
    high, low = lora_files.EXPERTS.get(item.get("experts", "both"), (item.get("high", True), item.get("low", True)))
    return LoraChoice(item["file"], item.get("strength", 1.0), item.get("high", high), item.get("low", low))


def _catalogue_models_for(task: str) -> list[ModelSpec]:
    from pipelines.catalogue import CATALOGUE

    return [spec for spec in CATALOGUE.values() if spec.supports(task) and not spec.is_test]


def _resolve_size(
    request: GenerationRequest, spec: ModelSpec, image: Image.Image | None, problems: dict[str, str]
) -> tuple[int, int]:
    if request.width is None and request.height is None:
        return closest_size(image.size, spec.sizes) if image is not None else spec.default_size
    if request.width is None or request.height is None:
        problems["size"] = "Give both width and height, or neither for the model's default size."
        return spec.default_size
    width, height = request.width, request.height
    m = spec.size_multiple
    for name, value in (("width", width), ("height", height)):
        if not isinstance(value, int) or isinstance(value, bool):
            problems["size"] = f"The {name} must be a whole number of pixels."
        elif not spec.min_side <= value <= spec.max_side:
            problems["size"] = f"The {name} must be between {spec.min_side} and {spec.max_side} px; got {value}."
        elif value % m:
            lower, upper = value // m * m, (value // m + 1) * m
            problems["size"] = (
                f"{spec.name} needs width and height in multiples of {m} px; {name} {value} is not "
                f"(nearest: {lower} or {upper})."
            )
    return width, height


def _resolve_frames(frames: int | None, spec: ModelSpec, problems: dict[str, str]) -> int:
    if frames is None:
        return spec.frames
    step = spec.frame_step
    if not isinstance(frames, int) or isinstance(frames, bool):
        problems["frames"] = "The frame count must be a whole number."
    elif not spec.min_frames <= frames <= spec.max_frames:
        problems["frames"] = f"{spec.name} makes {spec.min_frames} to {spec.max_frames} frames; got {frames}."
    elif (frames - 1) % step:
        lower = (frames - 1) // step * step + 1
        problems["frames"] = (
            f"The frame count must be {step}n+1 (like {spec.frames}); {frames} is not. "
            f"Nearest: {lower} or {lower + step}."
        )
    return frames


def _int_in_range(name: str, value: int | None, default: int, low: int, high: int, problems: dict[str, str]) -> int:
    if value is None:
        return default
    if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
        problems[name] = (
            f"{name.replace('_', ' ').capitalize()} must be a whole number from {low} to {high}; got {value!r}."
        )
    return value


def _float_in_range(name: str, value: float | None, default: float, problems: dict[str, str]) -> float:
    if value is None:
        return default
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not 0.0 <= value <= MAX_GUIDANCE:
        problems[name] = (
            f"{name.replace('_', ' ').capitalize()} must be a number from 0 to {MAX_GUIDANCE:g}; got {value!r}."
        )
        return default
    return float(value)


def _resolve_seed(seed: int | None, problems: dict[str, str]) -> int:
    if seed is None or seed == -1:
        return secrets.randbelow(MAX_SEED + 1)
    if not isinstance(seed, int) or isinstance(seed, bool) or not 0 <= seed <= MAX_SEED:
        problems["seed"] = f"The seed must be a whole number from 0 to {MAX_SEED} (or -1 for random); got {seed!r}."
        return 0
    return seed
