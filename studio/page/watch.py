"""Watching a server-owned job from a page or an API stream: status lines, preview strips, the stream itself."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

import gradio as gr
import numpy as np

from studio.jobs.queue import CANCELLED, DONE, FILM, QUEUED, RUNNING, WRITING, Job

if TYPE_CHECKING:
    from studio.core import Studio

POLL_S = 0.1  # how often a watching page looks at its job


def text_bar(fraction: float, width: int = 20) -> str:
    filled = round(max(0.0, min(1.0, fraction)) * width)
    return f"`{'█' * filled}{'░' * (width - filled)}` {fraction:.0%}"


def status_text(job: Job, position: int) -> str:
    """One line per state, with a bar for every wait that has a measure (download, load, steps)."""
    if job.status == QUEUED:
        on_cpu = job.enhance is not None and job.enhance.on_cpu
        where = "film queue" if job.kind == FILM else "CPU queue" if on_cpu else "GPU queue"
        return f"**Queued** — position {position} in the {where}. {job.message}"
    if job.status == RUNNING:
        if job.kind == FILM:
            return f"**Film** {text_bar(job.fraction)} {job.message}"
        if job.take is not None and job.window and job.stage != WRITING:
            return take_status(job)
        if job.stage == "denoise" and job.total_steps:
            eta = f", about {job.eta_s:.0f} s left" if job.eta_s is not None else ""
            bar = text_bar(job.step / job.total_steps)
            return f"**Step {job.step}/{job.total_steps}** {bar}{eta} · seed {job.seed}"
        if job.stage in ("upscale", "interpolate") and job.total_steps:
            eta = f", about {job.eta_s:.0f} s left" if job.eta_s is not None else ""
            what = "Upscaling" if job.stage == "upscale" else "Smoothing"
            return f"**{what}: frame {job.step}/{job.total_steps}** {text_bar(job.step / job.total_steps)}{eta}"
        if job.stage in ("download", "load"):
            return f"**{job.stage.capitalize()}** {text_bar(job.fraction)} {job.message}"
        return f"**{job.stage.capitalize() or 'Starting'}**: {job.message}"
    word = job.status.capitalize()
    if job.message.lower().startswith(job.status):  # "Done in 5.7 s", not "Done — Done in 5.7 s"
        return f"**{word}**{job.message[len(word) :]}"
    return f"**{word}** — {job.message}"


def take_status(job: Job) -> str:
    """A long take's line: which window runs, its step, one bar and one ETA for the whole take."""
    windows, window = job.take.windows, job.window
    where = f"Window {window}/{windows}"
    if job.stage == "denoise" and job.total_steps:
        done = (window - 1 + job.step / job.total_steps) / windows
        eta = f", about {job.eta_s:.0f} s left for the take" if job.eta_s is not None else ""
        return f"**{where} · step {job.step}/{job.total_steps}** {text_bar(done)}{eta} · seed {job.seed}"
    return f"**{where}** {text_bar((window - 1) / windows)} {job.message}"


def plain(status: str) -> str:
    """A status line without its Markdown, for API clients."""
    return status.replace("**", "").replace("`", "")


BAR_COLOURS = {RUNNING: (99, 102, 241), DONE: (74, 190, 120)}


def preview_with_bar(job: Job) -> np.ndarray:
    """The preview strip with a progress bar under it: indigo while denoising, green when the clip is done."""
    strip = job.preview
    bar = np.full((8, strip.shape[1], 3), 40, np.uint8)
    fraction = 1.0 if job.status == DONE else (job.step / job.total_steps if job.total_steps else 0.0)
    bar[:, : round(strip.shape[1] * fraction)] = BAR_COLOURS.get(job.status, (120, 120, 120))
    return np.concatenate([strip, bar])


async def watch(
    studio: Studio, job: Job, page: bool = False
) -> AsyncIterator[tuple[Any, str, str | None, str, int | None]]:
    """Yield (preview, status, clip, job id, seed) whenever the job changes, until it finishes. The seed is
    given once the clip is done. For the page (`page`) a failed job ends with its message as the status line
    (Markdown); for API clients the status is plain text and a failed job raises its message.

    If the browser goes away Gradio stops iterating this generator; the job itself runs on. Polling
    keeps no thread busy per watcher, so many open pages cost nothing while they wait."""
    seen = -1
    shown = None
    while True:
        current = studio.jobs.snapshot(job.id)
        if current is None:
            raise gr.Error("The job disappeared from the queue.")
        if current.version != seen:
            seen = current.version
            clip = current.result if current.status in (DONE, CANCELLED) else None  # a stopped take's kept windows
            position = studio.jobs.position(current.id)
            # A chunk carries the preview only when it changed: no image is sent twice.
            key = (current.preview_version, current.status)
            preview = gr.skip() if key == shown or current.preview is None else preview_with_bar(current)
            shown = key
            status = status_text(current, position)
            failed = current.finished and current.status not in (DONE, CANCELLED)
            if failed and not page:
                raise gr.Error(current.message)
            seed = current.seed if current.status == DONE else None
            yield preview, status if page else plain(status), clip, current.id, seed
            if current.finished:
                return
        await asyncio.sleep(POLL_S)
