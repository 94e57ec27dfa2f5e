"""The studio's saved settings: one JSON file in the user's config folder, checked on load and on save."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, fields
from pathlib import Path

from pipelines import attention
from pipelines.catalogue import CATALOGUE, DEFAULT_MODEL, UnknownModelError, get_spec
from pipelines.clip import ClipOptions
from pipelines.decode import VAE_PRECISIONS
from pipelines.memory import AUTO, PROFILES
from pipelines.paths import config_dir
from pipelines.request import MAX_GUIDANCE, MAX_PROMPT_CHARS, MAX_STEPS
from pipelines.speed import SpeedOptions

PRECISIONS = ("auto", "bf16", "fp8")


class SettingsError(ValueError):
    pass


@dataclass
class Settings:
    model: str = DEFAULT_MODEL
    memory_profile: str = AUTO
    precision: str = "auto"  # "fp8" keeps only fp8 profiles, "bf16" only full-precision ones
    output_dir: str = "outputs"
    steps: int | None = None  # None: each model's own default
    guidance_scale: float | None = None
    negative_prompt: str | None = None
    watermark: bool = False  # invisible watermark in every new clip
    include_prompt: bool = False  # the prompt inside the signed Content Credentials
    attention: str = attention.AUTO  # attention backend (pipelines.attention.CHOICES)
    compile: bool = False  # regional compilation of the transformer blocks
    vae_precision: str = "float32"  # "bfloat16" decodes faster, within a measured tolerance

    @property
    def speed(self) -> SpeedOptions:
        return SpeedOptions(attention=self.attention, compile=self.compile, vae_precision=self.vae_precision)

    @property
    def clip_options(self) -> ClipOptions:
        return ClipOptions(sign=True, include_prompt=self.include_prompt, watermark=self.watermark)

    def validate(self) -> Settings:
        """Raise SettingsError with the reason for the first bad value."""
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
        if self.steps is not None and not (isinstance(self.steps, int) and 1 <= self.steps <= MAX_STEPS):
            raise SettingsError(f"Default steps must be a whole number from 1 to {MAX_STEPS}; got {self.steps!r}.")
        if self.guidance_scale is not None and not (0 <= self.guidance_scale <= MAX_GUIDANCE):
            raise SettingsError(f"Default guidance must be from 0 to {MAX_GUIDANCE:g}; got {self.guidance_scale!r}.")
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
        known = {f.name for f in fields(Settings)}
        return Settings(**{k: v for k, v in data.items() if k in known}).validate(), None
    except (ValueError, TypeError, SettingsError) as err:
        return Settings(), f"The settings file {path} could not be used ({err}); defaults are in effect."


def save_settings(settings: Settings) -> Path:
    settings.validate()
    path = settings_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(asdict(settings), indent=2))
    tmp.replace(path)
    return path


def model_choices(include_tests: bool) -> list[tuple[str, str]]:
    return [(spec.label, spec.id) for spec in CATALOGUE.values() if include_tests or not spec.is_test]
