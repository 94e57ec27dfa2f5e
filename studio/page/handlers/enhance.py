"""Enhance: the prompt rewritten by a local language model (a queued job), for the user to read and edit
before generating. The page puts the result into the prompt box; the API returns it."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

import gradio as gr
from PIL import Image

from pipelines.errors import UserError
from studio.jobs.queue import DONE
from studio.page.watch import POLL_S, plain, status_text

if TYPE_CHECKING:
    from studio.core import Studio


async def enhance(studio: Studio, prompt: str, image: Any = None, keep_language: bool = False,
                  seed: float = -1) -> str:  # fmt: skip
    """The API's enhance: `prompt` rewritten in the detailed style the Wan models were trained on (with
    `image`, by the vision enhancer, which looks at it); `keep_language` keeps the prompt's language instead
    of English; `seed` -1 draws one. Returns the text; a refusal or a failure raises its message."""
    job = studio.submit_enhance(prompt, _picture(image), bool(keep_language), seed)
    while not (current := studio.jobs.snapshot(job.id)).finished:
        await asyncio.sleep(POLL_S)
    if current.status != DONE:
        raise gr.Error(current.message)
    return current.text


async def enhance_in_page(studio: Studio, prompt: str, image: Any = None) -> AsyncIterator[tuple[Any, str]]:
    """The form's Enhance button: (prompt box, status line) while the job runs; the prompt box then holds the
    enhanced prompt, still editable. A refusal or failure is the status line; the prompt stays as typed."""
    try:
        job = studio.submit_enhance(prompt, _picture(image))
    except UserError as err:  # an empty prompt: said where the eye is, the prompt box left as it is
        yield gr.skip(), f"**Not enhanced** — {err}"
        return
    seen = -1
    while True:
        current = studio.jobs.snapshot(job.id)
        if current.version != seen:
            seen = current.version
            if current.finished:
                break
            yield gr.skip(), status_text(current, studio.jobs.position(current.id))
        await asyncio.sleep(POLL_S)
    if current.status == DONE:
        yield current.text, f"**Enhanced** — {plain(current.message)}"
    else:
        yield gr.skip(), f"**Not enhanced** — {current.message}"


def _picture(image: Any) -> Image.Image | None:
    """A picture from the page (PIL or numpy) or the API (a file path), or None."""
    if image is None or isinstance(image, Image.Image):
        return image
    if isinstance(image, (str, bytes)) or hasattr(image, "__fspath__"):
        return Image.open(image).convert("RGB")
    return Image.fromarray(image).convert("RGB")
