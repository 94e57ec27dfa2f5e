"""The studio's saved settings: one JSON file in the user's config folder, checked on load and on save."""

from __future__ import annotations

import json
import threading
from dataclasses import asdict, dataclass, fields
from pathlib import Path

from library import ClipOptions
from library.files import write_json
from pipelines import attention, caching
from pipelines.catalogue import CATALOGUE, DEFAULT_MODEL, UnknownModelError, get_spec
from pipelines.enhance import DEFAULT_TEXT_ENHANCER, DEFAULT_VISION_ENHANCER, ENHANCERS
from pipelines.errors import UserError
from pipelines.long_take import DEFAULT_LIMIT_S, MAX_LIMIT_S
from pipelines.memory import AUTO, PROFILES
from pipelines.paths import config_dir
from pipelines.request import MAX_GUIDANCE, MAX_PROMPT_CHARS, MAX_STEPS
from pipelines.speed import VAE_PRECISIONS, SpeedOptions

PRECISIONS = ("auto", "bf16", "fp8")


class SettingsError(UserError, ValueError):
    """A setting that cannot be saved; the message names it and says what it may be."""


_save_lock = threading.Lock()


@dataclass
class Settings:
    model: str = DEFAULT_MODEL
    memory_profile: str = AUTO
    precision: str = "auto"  # "fp8" keeps only fp8 profiles, "bf16" only full-precision ones
    output_dir: str = "outputs"
    steps: int | None = None  # None: each model's own default
    guidance_scale: float | None = None
    negative_prompt: str | None = None
    watermark: bool = True  # invisible watermark in every new clip (bound to its manifest)
    include_prompt: bool = False  # the prompt inside the signed Content Credentials
    attention: str = attention.AUTO  # attention backend (pipelines.attention.CHOICES)
    compile: bool = False  # regional compilation of the transformer blocks
    vae_precision: str = "float32"  # "bfloat16" decodes faster, within a measured tolerance
    lora_dir: str = ""  # empty: loras/ in the user's data folder
    step_cache: str = "off"  # pipelines.caching.KINDS
    cache_threshold: float | None = None  # None: the cache's own default
    enhancer: str = DEFAULT_TEXT_ENHANCER  # the prompt enhancer for text (pipelines.enhance.ENHANCERS)
    vision_enhancer: str = DEFAULT_VISION_ENHANCER  # the one that also looks at an image-to-video picture
    enhance_keep_language: bool = False  # False: the enhanced prompt comes back in English
    enhance_on_cpu: bool = False  # True: the enhancer runs on the CPU and never waits for the GPU
    mcp_server: bool = False  # also serve the studio's tools over MCP (from the next start)
    take_limit_s: float = DEFAULT_LIMIT_S  # the longest long take (pipelines.long_take.MAX_LIMIT_S at most)

    @property
    def speed(self) -> SpeedOptions:
        return SpeedOptions(attention=self.attention, compile=self.compile, vae_precision=self.vae_precision)

    @property
    def clip_options(self) -> ClipOptions:
        return ClipOptions(sign=True, include_prompt=self.include_prompt, watermark=self.watermark)

    def validate(self) -> Settings:
        """Raise SettingsError with the reason for the first bad value."""
        for name in ("model", "memory_profile", "precision", "output_dir", "attention", "vae_precision", "lora_dir",
                     "step_cache"):  # fmt: skip
            if not isinstance(getattr(self, name), str):
                raise SettingsError(f"The setting '{name}' must be text; got {getattr(self, name)!r}.")
        for name, kind in (("enhancer", "text"), ("vision_enhancer", "vision")):
            spec = ENHANCERS.get(getattr(self, name)) if isinstance(getattr(self, name), str) else None
            if spec is None or spec.kind != kind:
                choices = ", ".join(s.id for s in ENHANCERS.values() if s.kind == kind)
                raise SettingsError(f"The setting '{name}' must be one of {choices}; got {getattr(self, name)!r}.")
        for name in ("watermark", "include_prompt", "compile", "enhance_keep_language", "enhance_on_cpu", "mcp_server"):
            if not isinstance(getattr(self, name), bool):
                raise SettingsError(f"The setting '{name}' must be true or false; got {getattr(self, name)!r}.")
        if self.negative_prompt is not None and not isinstance(self.negative_prompt, str):
            raise SettingsError("The default negative prompt must be text.")
        try:
            get_spec(self.model)
        except UnknownModelError as err:
            raise SettingsError(str(err)) from err
        if self.memory_profile != AUTO and self.memory_profile not in PROFILES:
            raise SettingsError(
                f"Unknown memory profile '{self.memory_profile}'. Use auto or one of: {', '.join(PROFILES)}."
            )
        if self.attention not in attention.CHOICES:
            raise SettingsError(
                f"Unknown attention backend '{self.attention}'. Use one of: {', '.join(attention.CHOICES)}."
            )
        if self.step_cache not in caching.KINDS:
            raise SettingsError(f"The step cache must be one of {', '.join(caching.KINDS)}; got '{self.step_cache}'.")
        if self.cache_threshold is not None and not (
            isinstance(self.cache_threshold, (int, float)) and not isinstance(self.cache_threshold, bool)
            and 0 <= self.cache_threshold <= 1
        ):  # fmt: skip
            raise SettingsError(f"The cache threshold must be from 0 to 1; got {self.cache_threshold!r}.")
        if self.vae_precision not in VAE_PRECISIONS:
            choices = ", ".join(VAE_PRECISIONS)
            raise SettingsError(f"VAE precision must be one of {choices}; got '{self.vae_precision}'.")
        if self.precision not in PRECISIONS:
            raise SettingsError(f"Precision must be one of {', '.join(PRECISIONS)}; got '{self.precision}'.")
        if not str(self.output_dir).strip():
            raise SettingsError("The output folder cannot be empty.")
        out = Path(self.output_dir).expanduser()
        if out.exists() and not out.is_dir():
            raise SettingsError(f"The output folder '{out}' is a file, not a folder.")
        if self.steps is not None and not (
            isinstance(self.steps, int) and not isinstance(self.steps, bool) and 1 <= self.steps <= MAX_STEPS
        ):
            raise SettingsError(f"Default steps must be a whole number from 1 to {MAX_STEPS}; got {self.steps!r}.")
        if self.guidance_scale is not None and not (
            isinstance(self.guidance_scale, (int, float)) and not isinstance(self.guidance_scale, bool)
            and 0 <= self.guidance_scale <= MAX_GUIDANCE
        ):  # fmt: skip
            raise SettingsError(f"Default guidance must be from 0 to {MAX_GUIDANCE:g}; got {self.guidance_scale!r}.")
        if (
            isinstance(self.take_limit_s, bool)
            or not isinstance(self.take_limit_s, (int, float))
            or not (DEFAULT_LIMIT_S <= self.take_limit_s <= MAX_LIMIT_S)
        ):
            raise SettingsError(f"The long-take limit must be from {DEFAULT_LIMIT_S:g} to {MAX_LIMIT_S:g} seconds; "
                                f"got {self.take_limit_s!r}.")  # fmt: skip
        if self.negative_prompt is not None and len(self.negative_prompt) > MAX_PROMPT_CHARS:
            raise SettingsError(f"The default negative prompt must stay under {MAX_PROMPT_CHARS} characters.")
        return self

    @property
    def profile_choice(self) -> str:
        """The profile request for the engine: a manual profile wins; precision narrows auto."""
        if self.memory_profile != AUTO or self.precision == "auto":
            return self.memory_profile
        return f"{AUTO}:{self.precision}"


def settings_path() -> Path:
    return config_dir() / "settings.json"


def load_settings() -> tuple[Settings, str | None]:
    """The saved settings, or defaults with a warning when the file is damaged (it is never overwritten then
    until the user saves)."""
    path = settings_path()
    if not path.is_file():
        return Settings(), None
    try:
        data = json.loads(path.read_text())
        if not isinstance(data, dict):
            raise SettingsError("it is not a JSON object")
        known = {f.name for f in fields(Settings)}
        return Settings(**{k: v for k, v in data.items() if k in known}).validate(), None
    except (OSError, ValueError, TypeError) as err:
        return Settings(), f"The settings file {path} could not be used ({err}); defaults are in effect until you save."


def save_settings(settings: Settings) -> Path:
    """Write the settings atomically; concurrent saves never share a temporary file (the last one wins)."""
    settings.validate()
    path = settings_path()
    with _save_lock:
        path.parent.mkdir(parents=True, exist_ok=True)
        write_json(path, asdict(settings))
    return path


def model_choices(include_tests: bool) -> list[tuple[str, str]]:
    return [(spec.label, spec.id) for spec in CATALOGUE.values() if include_tests or not spec.is_test]
