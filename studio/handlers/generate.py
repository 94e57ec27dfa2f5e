"""Text to video, image to video and cancel: from widget (or API) values to a queued job, then the job's
stream of (preview, status, clip, job id, seed) until it ends."""

from __future__ import annotations

import math
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

from pipelines.catalogue import IMAGE_TO_VIDEO, TEXT_TO_VIDEO
from pipelines.request import GenerationRequest, RequestError
from studio.watch import watch

if TYPE_CHECKING:
    from studio.server import Studio

AUTO_SIZE = "auto (match the picture)"
Update = tuple[Any, str, str | None, str, int | None]


async def text_to_video(
    studio: Studio, prompt: str, negative_prompt: str = "", size: str = "", frames: float = 0, steps: float = 0,
    guidance_scale: float = -1, seed: float = -1,
) -> AsyncIterator[Update]:  # fmt: skip
    request = form_request(studio.settings.model, TEXT_TO_VIDEO, prompt, negative_prompt, size, frames, steps,
                           guidance_scale, seed)  # fmt: skip
    async for update in watch(studio, studio.submit(request)):
        yield update


async def image_to_video(
    studio: Studio, image: Any, prompt: str, negative_prompt: str = "", size: str = AUTO_SIZE, frames: float = 0,
    steps: float = 0, guidance_scale: float = -1, seed: float = -1,
) -> AsyncIterator[Update]:  # fmt: skip
    if image is None:
        raise RequestError({"image": "Image-to-video needs a picture: upload one or pick a clip's last frame."})
    request = form_request(studio.settings.model, IMAGE_TO_VIDEO, prompt, negative_prompt, size, frames, steps,
                           guidance_scale, seed, image=image)  # fmt: skip
    async for update in watch(studio, studio.submit(request)):
        yield update


def cancel(studio: Studio, job_id: str) -> str:
    if isinstance(job_id, str) and job_id and studio.jobs.cancel(job_id):
        return "Cancelling…"
    return "Nothing to cancel."


def form_request(
    model: str, task: str, prompt: Any, negative_prompt: Any, size: Any, frames: Any, steps: Any,
    guidance_scale: Any, seed: Any, image: Any = None,
) -> GenerationRequest:  # fmt: skip
    """Widget or API values to a request. Empty and out-of-band values (0 frames or steps, guidance below 0,
    seed -1) mean "the model's default"; anything that is not the right kind of value is refused by name
    (RequestError), so no caller ever sees a raw Python error."""
    problems: dict[str, str] = {}
    if not isinstance(prompt, str):
        problems["prompt"] = "The prompt must be text."
    if negative_prompt is not None and not isinstance(negative_prompt, str):
        problems["negative_prompt"] = "The negative prompt must be text."
    width = height = None
    if size not in (None, "", AUTO_SIZE):
        parsed = parse_size(size)
        if parsed is None:
            problems["size"] = f"Size must look like 1280x704; got {str(size)[:40]!r}."
        else:
            width, height = parsed
    frames_ = _whole(frames, "frames", "The frame count", problems)
    steps_ = _whole(steps, "steps", "Steps", problems)
    seed_ = _whole(seed, "seed", "The seed", problems)
    guidance = _number(guidance_scale, "guidance_scale", "Guidance", problems)
    if problems:
        raise RequestError(problems)
    return GenerationRequest(
        prompt=prompt, model=model, task=task, negative_prompt=negative_prompt or None, width=width, height=height,
        frames=frames_ or None, steps=steps_ or None,
        guidance_scale=None if guidance is None or guidance < 0 else guidance,
        seed=None if seed_ in (None, -1) else seed_, image=image,
    )  # fmt: skip


def parse_size(text: Any) -> tuple[int, int] | None:
    """'1280x704' -> (1280, 704); None for anything else."""
    if not isinstance(text, str) or len(text) > 20:
        return None
    parts = text.lower().replace(" ", "").split("x")
    if len(parts) != 2 or not all(p.isdigit() for p in parts):
        return None
    return int(parts[0]), int(parts[1])


def _number(value: Any, name: str, what: str, problems: dict[str, str]) -> float | None:
    if value is None or value == "":
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        problems[name] = f"{what} must be a number; got {str(value)[:40]!r}."
        return None
    return float(value)


def _whole(value: Any, name: str, what: str, problems: dict[str, str]) -> int | None:
    """A whole number, or None when empty; ranges are checked by validate_request, which names them."""
    number = _number(value, name, what, problems)
    if number is None:
        return None
    if not number.is_integer() or abs(number) > 2**53:
        problems[name] = f"{what} must be a whole number; got {value!r}."
        return None
    return int(number)
