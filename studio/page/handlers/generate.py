"""Text to video, image to video and cancel: from widget (or API) values to a queued job, then the job's
stream of (preview, status, clip, job id, seed) until it ends."""

from __future__ import annotations

import json
import math
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

from library import LibraryError
from pipelines.catalogue import IMAGE_TO_VIDEO, TEXT_TO_VIDEO, ModelSpec
from pipelines.long_take import CLEAN_LATENTS, LATENT_REPLACEMENT, MASK_CHANNELS, continuation_for, max_overlap
from pipelines.loras import EXPERTS, MAX_LORAS, LoraChoice
from pipelines.request import GenerationRequest, RequestError
from studio.jobs.queue import FILM, Job
from studio.page.handlers import AUTO_SIZE
from studio.page.watch import watch

if TYPE_CHECKING:
    from studio.core import Studio

Update = tuple[Any, str, str | None, str, int | None]


async def text_to_video(
    studio: Studio, prompt: str, negative_prompt: str = "", size: str = "", frames: float = 0, steps: float = 0,
    guidance_scale: float = -1, seed: float = -1, loras: str = "[]", fast: bool = False, window_prompts: Any = "",
    seconds: float = 0, overlap: float = 0,
) -> AsyncIterator[Update]:  # fmt: skip
    """Generate a video clip from a text prompt with the studio's current model (a queued job on the GPU).

    Args:
        prompt: what the clip shows: subject, setting, motion, camera, light, style (up to 2000 characters).
        negative_prompt: what to avoid; empty for the model's own default.
        size: "WIDTHxHEIGHT" such as "1280x704" or "832x480" (multiples of 16 or 32, per model); empty for the
            model's default.
        frames: frames of the clip, 4n+1 within the model's range (TI2V-5B: up to 121 at 24 fps); 0 for the
            model's default.
        steps: denoising steps, 1 to 100; 0 for the model's default (more is slower and finer).
        guidance_scale: how closely to follow the prompt, 0 to 20; -1 for the model's default.
        seed: a whole number for a repeatable clip, or -1 for a random one (reported back).
        loras: a JSON list of LoRAs of the studio's LoRA folder, like [{"file": "ink.safetensors", "strength":
            0.8}]; "[]" for none.
        fast: true for Fast mode (the model's step-distilled weights, about 10-20x faster).

    Returns:
        a stream of (live preview image, status text, clip file or None, job id, seed); the last one holds the
        finished clip (MP4) and the seed used. A refusal raises its reason.
    """
    request = form_request(studio.settings.model, TEXT_TO_VIDEO, prompt, negative_prompt, size, frames, steps,
                           guidance_scale, seed)  # fmt: skip
    job = submit_form(studio, with_extras(studio, request, loras, fast), window_prompts, seconds, overlap)
    async for update in watch(studio, job):
        yield update


async def image_to_video(
    studio: Studio, image: Any, prompt: str, negative_prompt: str = "", size: str = AUTO_SIZE, frames: float = 0,
    steps: float = 0, guidance_scale: float = -1, seed: float = -1, loras: str = "[]", fast: bool = False,
    match_colour: bool = True, end_image: Any = None, window_prompts: Any = "", seconds: float = 0,
    overlap: float = 0,
) -> AsyncIterator[Update]:  # fmt: skip
    """Generate a video clip that starts from a picture and follows a prompt (a queued job on the GPU).

    Args:
        image: the start picture (PNG or JPEG); the clip's first frame.
        prompt: what happens in the clip, starting from the picture (up to 2000 characters).
        negative_prompt: what to avoid; empty for the model's own default.
        size: "WIDTHxHEIGHT", or "auto (match the picture)" for the preset nearest the picture's shape.
        frames: frames of the clip, 4n+1 within the model's range; 0 for the model's default.
        steps: denoising steps, 1 to 100; 0 for the model's default.
        guidance_scale: how closely to follow the prompt, 0 to 20; -1 for the model's default.
        seed: a whole number for a repeatable clip, or -1 for a random one.
        loras: a JSON list of LoRAs of the studio's LoRA folder; "[]" for none.
        fast: true for Fast mode.
        match_colour: true to keep the picture's colours across the clip.
        end_image: a picture the clip ends on (only models that take one: I2V-A14B); empty for none.

    Returns:
        a stream of (live preview image, status text, clip file or None, job id, seed), ending with the clip.
    """
    request = image_request(studio, image, prompt, negative_prompt, size, frames, steps, guidance_scale, seed, loras,
                            fast, match_colour, end_image)  # fmt: skip
    async for update in watch(studio, submit_form(studio, request, window_prompts, seconds, overlap)):
        yield update


async def long_take(
    studio: Studio, prompt: str, negative_prompt: str = "", size: str = "", frames: float = 0, steps: float = 0,
    guidance_scale: float = -1, seed: float = -1, loras: str = "[]", fast: bool = False, window_prompts: Any = "",
    seconds: float = 0, overlap: float = 0,
) -> AsyncIterator[Update]:  # fmt: skip
    """Generate one long clip (a long take, up to the studio's limit, 60 s by default) as windows of `frames`
    each, every window continuing from the last frames of the one before, so motion carries across.

    Args:
        prompt: the first window's prompt (and every window's, without window_prompts).
        negative_prompt: what to avoid; empty for the model's own default.
        size: "WIDTHxHEIGHT"; empty for the model's default.
        frames: frames per window, 4n+1 within the model's range; 0 for the model's default.
        steps: denoising steps per window, 1 to 100; 0 for the model's default.
        guidance_scale: 0 to 20; -1 for the model's default.
        seed: a whole number for a repeatable take, or -1 for a random one.
        loras: a JSON list of LoRAs of the studio's LoRA folder; "[]" for none.
        fast: true for Fast mode.
        window_prompts: one prompt per window, in order: a JSON list of strings, or one prompt per line; with
            fewer prompts than windows the last one holds to the end.
        seconds: the take's length in seconds; 0 for one window per prompt.
        overlap: frames each window continues from, 1 or 4n+1 up to half a window; 0 for the model's default.

    Returns:
        a stream of (preview image, status text naming the running window, clip file or None, job id, seed),
        ending with the whole take as one MP4.
    """
    async for update in text_to_video(studio, prompt, negative_prompt, size, frames, steps, guidance_scale, seed,
                                      loras, fast, window_prompts, seconds, overlap):  # fmt: skip
        yield update


async def long_take_from_image(
    studio: Studio, image: Any, prompt: str, negative_prompt: str = "", size: str = AUTO_SIZE, frames: float = 0,
    steps: float = 0, guidance_scale: float = -1, seed: float = -1, loras: str = "[]", fast: bool = False,
    match_colour: bool = True, end_image: Any = None, window_prompts: Any = "", seconds: float = 0,
    overlap: float = 0,
) -> AsyncIterator[Update]:  # fmt: skip
    """A long take that starts from a picture: `image_to_video`'s arguments, then `long_take`'s window_prompts,
    seconds and overlap (end_image must stay empty: a take does not end on a given picture)."""
    async for update in image_to_video(studio, image, prompt, negative_prompt, size, frames, steps, guidance_scale,
                                       seed, loras, fast, match_colour, end_image, window_prompts, seconds,
                                       overlap):  # fmt: skip
        yield update


def image_request(
    studio: Studio, image: Any, prompt: Any, negative_prompt: Any, size: Any, frames: Any, steps: Any,
    guidance_scale: Any, seed: Any, loras: Any = "[]", fast: Any = False, match_colour: Any = True,
    end_image: Any = None,
) -> GenerationRequest:  # fmt: skip
    if image is None:
        raise RequestError({"image": "Image-to-video needs a picture: upload one or pick a clip's last frame."})
    if not isinstance(match_colour, bool):
        raise RequestError({"match_colour": f"match_colour must be true or false; got {str(match_colour)[:20]!r}."})
    request = form_request(studio.settings.model, IMAGE_TO_VIDEO, prompt, negative_prompt, size, frames, steps,
                           guidance_scale, seed, image=image)  # fmt: skip
    request.match_colour = match_colour
    request.end_image = end_image or None
    return with_extras(studio, request, loras, fast)


async def text_to_video_in_page(studio: Studio, *values: Any) -> AsyncIterator[Update]:
    """The page's text-to-video: a refusal or a failure is the form's status line, in Markdown: one message
    where the user looks, never an error Gradio paints over every output."""
    try:
        request = with_extras(studio, form_request(studio.settings.model, TEXT_TO_VIDEO, *values[:7]), *values[7:9])
        job = submit_form(studio, request, *values[9:])
    except Exception as err:  # noqa: BLE001 (every failure becomes the status line)
        yield not_started(err)
        return
    async for update in watch(studio, job, page=True):
        yield update


async def image_to_video_in_page(studio: Studio, *values: Any) -> AsyncIterator[Update]:
    """The page's image-to-video, like `text_to_video_in_page`."""
    try:
        job = submit_form(studio, image_request(studio, *values[:12]), *values[12:])
    except Exception as err:  # noqa: BLE001
        yield not_started(err)
        return
    async for update in watch(studio, job, page=True):
        yield update


async def resume(studio: Studio, job_id: Any) -> AsyncIterator[Update]:
    """After a reload: the form's own job (its id remembered by the browser) as it is now, followed to its end;
    nothing changes when there is none."""
    import gradio as gr

    job = studio.jobs.get(job_id) if isinstance(job_id, str) and job_id else None
    if job is None or job.kind == FILM:
        yield (gr.skip(),) * 5
        return
    async for update in watch(studio, job, page=True):
        yield update


def submit_form(studio: Studio, request: GenerationRequest, window_prompts: Any = "", seconds: Any = 0,
                overlap: Any = 0) -> Job:  # fmt: skip
    """Queue the form's request: one clip, or a long take when it has a length in seconds or several window
    prompts (one prompt and no length: a clip of that prompt)."""
    prompts, seconds, overlap = take_fields(window_prompts, seconds, overlap)
    if seconds is None and len(prompts) <= 1:
        if prompts:
            request.prompt = prompts[0]
        return studio.submit(request)
    return studio.submit_take(request, prompts, seconds, overlap)


def take_fields(window_prompts: Any, seconds: Any, overlap: Any) -> tuple[list[str], float | None, int | None]:
    """(prompts, seconds or None, overlap or None) from the form or the API: prompts as a list, a JSON list or
    one per line; 0 or empty for "not given". RequestError names what is wrong."""
    problems: dict[str, str] = {}
    if window_prompts is None or window_prompts == "":
        prompts = []
    elif isinstance(window_prompts, list):
        prompts = window_prompts
    elif isinstance(window_prompts, str) and window_prompts.lstrip().startswith("["):
        try:
            prompts = json.loads(window_prompts)
        except (ValueError, RecursionError):
            prompts = None
    elif isinstance(window_prompts, str):
        prompts = window_prompts.splitlines()
    else:
        prompts = None
    if not isinstance(prompts, list) or not all(isinstance(p, str) for p in prompts):
        problems["window_prompts"] = "window_prompts must be a list of prompts (a JSON list, or one per line)."
        prompts = []
    length = _number(seconds or 0, "seconds", "The take's length in seconds", problems)
    if length is not None and length < 0:
        problems["seconds"] = f"The take's length must be 0 (no take) or a number of seconds; got {length:g}."
    frames = _whole(overlap or 0, "overlap", "The overlap in frames", problems)
    if problems:
        raise RequestError(problems)
    return [p.strip() for p in prompts if p.strip()], length or None, frames or None


def is_take(window_prompts: Any, seconds: Any) -> bool:
    """Whether the form, as filled in, makes a long take (the page then offers to stop it keeping its windows)."""
    try:
        prompts, length, _ = take_fields(window_prompts, seconds, 0)
    except RequestError:
        return False
    return length is not None or len(prompts) > 1


def overlap_note(spec: ModelSpec) -> str:
    """The overlap's help line: the model's own choice and what the value may be."""
    choice = continuation_for(spec)
    frames = min(choice.default_overlap, max_overlap(spec.frames, spec.frame_step))
    how = "its start picture" if frames == 1 and choice.method != LATENT_REPLACEMENT else CONTINUED[choice.method]
    return (f"This model's own: {frames} frame{'s' * (frames > 1)} ({frames / spec.fps:.2f} s), {how}. Any of 1 or "
            f"{spec.frame_step}n+1, up to half a window.")  # fmt: skip


CONTINUED = {  # how the next window takes the overlap, in the user's words (pipelines.long_take's table)
    CLEAN_LATENTS: "kept as they are at the start of the next window",
    MASK_CHANNELS: "given to the next window as its first frames",
    LATENT_REPLACEMENT: "written into the next window at every step",
}


def not_started(err: BaseException) -> Update:
    """The form's outputs for a request that never became a job: the reason, nothing else."""
    import gradio as gr

    from studio.errors import message_for

    return gr.skip(), f"**Not started** — {message_for(err)}", None, "", None


def with_extras(studio: Studio, request: GenerationRequest, loras: Any, fast: Any) -> GenerationRequest:
    """The request with its LoRAs (named in the LoRA folder), Fast mode, and the studio's step cache."""
    if not isinstance(fast, bool):
        raise RequestError({"fast": f"fast must be true or false; got {str(fast)[:20]!r}."})
    request.loras = parse_loras(studio, loras)
    request.fast = fast
    request.cache, request.cache_threshold = studio.settings.step_cache, studio.settings.cache_threshold
    return request


def parse_loras(studio: Studio, text: Any) -> list[LoraChoice]:
    """`loras` as the API and the page send it: a JSON list of {"file": name in the LoRA folder, "strength":
    number (1), "experts": "both" | "high" | "low" (both)}. RequestError names what is wrong."""
    if text is None or text == "":
        return []
    try:
        items = json.loads(text) if isinstance(text, str) else text
    except (ValueError, RecursionError):
        raise RequestError({"loras": "loras must be a JSON list like [{\"file\": \"style.safetensors\", "
                                     "\"strength\": 0.8}]."}) from None  # fmt: skip
    if not isinstance(items, list):
        raise RequestError({"loras": "loras must be a JSON list of LoRAs."})
    if len(items) > MAX_LORAS:
        raise RequestError({"loras": f"At most {MAX_LORAS} LoRAs at once; {len(items)} were sent."})
    choices = []
    for n, item in enumerate(items, start=1):
        if not isinstance(item, dict) or not isinstance(item.get("file"), str):
            raise RequestError({"loras": f"LoRA {n} must be an object with a 'file' (a name in the LoRA folder)."})
        unknown = set(item) - {"file", "strength", "experts"}
        if unknown:
            raise RequestError(
                {"loras": f"LoRA {n} has fields Wan Studio does not know: {', '.join(sorted(unknown))}."}
            )
        experts = item.get("experts", "both")
        if not isinstance(experts, str) or experts not in EXPERTS:
            raise RequestError({"loras": f"LoRA {n}: experts must be 'both', 'high' or 'low' (in the form: tick "
                                         f"High-noise, Low-noise or both); got {str(experts)[:20]!r}."})  # fmt: skip
        try:
            path = studio.loras.path_of(item["file"])
        except LibraryError as err:
            raise RequestError({"loras": f"LoRA {n}: {err}"}) from None
        high, low = EXPERTS[experts]
        choices.append(LoraChoice(str(path), item.get("strength", 1.0), high, low))
    return choices


def cancel(studio: Studio, job_id: str) -> str:
    if not isinstance(job_id, str) or not job_id:
        return "Nothing to cancel."
    if studio.jobs.cancel(job_id):
        return "Cancelling…"
    job = studio.jobs.get(job_id)
    if job is not None and studio.jobs.too_late_to_cancel(job):
        return "Too late to cancel: the clip is being written, and it will be kept in the library."
    return "Nothing to cancel."


def keep_windows(studio: Studio, job_id: str) -> str:
    """Stop a long take and keep its finished windows as a clip (a job that is not a take is cancelled)."""
    job = studio.jobs.get(job_id) if isinstance(job_id, str) and job_id else None
    if job is not None and job.take is not None and studio.jobs.cancel(job_id, keep=True):
        return "Stopping: the finished windows will be kept as a clip…"
    return cancel(studio, job_id)


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


PAIR = "pair:"  # a LoRA picker's value for an A14B high/low pair added together: "pair:HIGH|LOW"


def slots_to_loras(*values: Any) -> str:
    """The form's LoRA slots (file, strength, high-noise, low-noise, repeated) as the `loras` JSON; a pair picked
    as one choice is its two files, each on its own expert."""
    chosen = []
    for file, strength, high, low in zip(*[iter(values)] * 4, strict=False):
        if isinstance(file, str) and file.startswith(PAIR):
            high_file, _, low_file = file[len(PAIR) :].partition("|")
            chosen += [{"file": high_file, "strength": strength, "experts": "high"},
                       {"file": low_file, "strength": strength, "experts": "low"}]  # fmt: skip
        elif file:
            experts = {(True, True): "both", (True, False): "high", (False, True): "low"}.get((bool(high), bool(low)))
            chosen.append({"file": file, "strength": strength, "experts": experts or "none"})
    return json.dumps(chosen)


def toggle_fast(studio: Studio, fast: bool, steps: Any, guidance: Any, kept: Any) -> tuple[dict, dict, Any]:
    """The user's own click on Fast mode: (steps, guidance, kept). Ticked, the preset's values show and the
    user's are kept; unticked, the kept ones come back (the model's own when none were kept)."""
    shown_steps, shown_guidance = fast_controls(studio, fast)
    if fast:
        return shown_steps, shown_guidance, {"steps": steps, "guidance": guidance}
    if isinstance(kept, dict):
        shown_steps["value"] = kept.get("steps", shown_steps["value"])
        shown_guidance["value"] = kept.get("guidance", shown_guidance["value"])
    return shown_steps, shown_guidance, None


SEED_INFO = "-1 draws a new seed for every clip."


def seed_info(reused: Any = None) -> str:
    """The seed field's note: after Reuse, that the clip's seed stays for every clip made until it is changed."""
    if reused is None or reused == -1:
        return SEED_INFO
    return f"Seed {reused}, reused from the clip: every clip made now repeats it. ⚄ New seed: a new one per clip."


def frames_info(studio: Studio, typed: Any = None) -> str:
    """The Frames field's note for the current model (see `frames_note`)."""
    from pipelines.catalogue import get_spec

    return frames_note(get_spec(studio.settings.model), typed)


def frames_note(spec: ModelSpec, typed: Any = None) -> str:
    """The model's frame range, and, when a number typed into Frames is out of it, what the field set it to (the
    page moves it to the nearest end, which would otherwise go unsaid)."""
    span = f"This model makes {spec.min_frames} to {spec.max_frames} frames ({spec.frame_step}n+1)."
    if isinstance(typed, bool) or not isinstance(typed, (int, float)) or not math.isfinite(typed):
        return span
    if typed > spec.max_frames:
        return f"{typed:g} is more than this model makes: set to {spec.max_frames}, the most. {span}"
    if typed < spec.min_frames:
        return f"{typed:g} is fewer than this model makes: set to {spec.min_frames}, the fewest. {span}"
    return span


def fast_controls(studio: Studio, fast: bool) -> tuple[dict, dict]:
    """(steps, guidance) as Fast mode sets them for the current model, or the model's own (editable)."""
    from pipelines.catalogue import get_spec

    spec = get_spec(studio.settings.model)
    if fast and spec.fast is not None:
        return (
            {"value": spec.fast.steps, "interactive": False, "label": "Steps (set by Fast mode)"},
            {"value": spec.fast.guidance_scale, "interactive": False, "label": "Guidance (off in Fast mode)"},
        )
    return (
        {"value": studio.settings.steps or spec.steps, "interactive": True, "label": "Steps"},
        {"value": studio.settings.guidance_scale or spec.guidance_scale, "interactive": True, "label": "Guidance"},
    )
