"""Upscale and Smooth motion: a library clip made bigger or smoother by a learned model, as a queued job
whose stream (preview, status, clip, job id) the Library's details panel and the API follow to its end."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

from library.post import INTERPOLATE, UPSCALE
from library.post_models import DEFAULT, DEFAULT_UPSCALER_NAME, TEST
from studio.page.watch import watch

if TYPE_CHECKING:
    from studio.core import Studio

Update = tuple[Any, str, str | None, str, int | None]

# What the page offers (the API and the CLI take the numbers themselves).
UPSCALE_CHOICES = {"×2": {"scale": 2}, "×4": {"scale": 4}, "1080p": {"height": 1080}, "4K (2160p)": {"height": 2160}}
SMOOTH_CHOICES = {"×2 frames": {"factor": 2}, "×4 frames": {"factor": 4}, "24 fps": {"fps": 24},
                  "30 fps": {"fps": 30}, "60 fps": {"fps": 60}}  # fmt: skip


async def upscale(
    studio: Studio, clip: str, scale: float = 0, height: float = 0, upscaler: str = ""
) -> AsyncIterator[Update]:
    """The API's upscale of a library clip (its file name) by `scale` (2 or 4) or to `height` (1080 or 2160)
    with `upscaler` (empty: the default; a file name of the Upscalers folder; "test"): plain-text status
    lines, the new clip's path at the end; a refusal or a failed job raises its message."""
    job = studio.submit_post(UPSCALE, clip, upscaler or None, scale=scale, height=height)
    async for update in watch(studio, job):
        yield update


async def interpolate(
    studio: Studio, clip: str, factor: float = 0, fps: float = 0, model: str = ""
) -> AsyncIterator[Update]:
    """The API's Smooth motion: learned in-between frames, ×`factor` (2 or 4) or to `fps`, same duration."""
    job = studio.submit_post(INTERPOLATE, clip, model or None, factor=factor, fps=fps)
    async for update in watch(studio, job):
        yield update


async def upscale_in_page(studio: Studio, clip: str | None, how: str, upscaler: str) -> AsyncIterator[Update]:
    """The details panel's Upscale button: the job's stream, a refusal as the status line."""
    job = studio.submit_post(UPSCALE, clip or "", upscaler_choice(upscaler), **UPSCALE_CHOICES.get(how, {}))
    async for update in watch(studio, job, page=True):
        yield update


async def interpolate_in_page(studio: Studio, clip: str | None, how: str) -> AsyncIterator[Update]:
    job = studio.submit_post(INTERPOLATE, clip or "", None, **SMOOTH_CHOICES.get(how, {}))
    async for update in watch(studio, job, page=True):
        yield update


def upscaler_choices(studio: Studio) -> list[tuple[str, str]]:
    """(label, value) for the upscaler picker: the default, the test model where the studio runs test models,
    then the Upscalers folder's files."""
    choices = [(f"{DEFAULT_UPSCALER_NAME} (default; downloads on first use)", DEFAULT)]
    if studio.include_test_models:
        choices.insert(0 if studio.library.post_models.default == TEST else 1,
                       ("Test upscaler ×2 (random weights)", TEST))  # fmt: skip
    return choices + [(name, name) for name in studio.upscalers.names()]


def upscaler_choice(value: Any) -> str | None:
    return str(value) if value else None


def add_upscaler(studio: Studio, upload: Any) -> tuple[str, list[tuple[str, str]]]:
    """Settings' *Add an upscaler*: the file checked (spandrel must recognise it, no code runs) and kept."""
    if not upload:
        return "Choose an upscaler file (.safetensors, or .pth).", upscaler_choices(studio)
    from pathlib import Path

    name = studio.upscalers.keep(Path(getattr(upload, "name", upload)))
    return f"Added **{name}** to the Upscalers folder ({studio.upscalers.root}).", upscaler_choices(studio)
