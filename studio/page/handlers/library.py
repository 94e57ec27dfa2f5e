"""The Library tab: the clip list, one clip's video and details, reuse its settings, continue from its last
frame, move it to the trash."""

from __future__ import annotations

import json
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from PIL import Image

from library import Clip
from library.presets import ensure_lora
from pipelines.catalogue import IMAGE_TO_VIDEO, TEXT_TO_VIDEO
from studio.page.handlers import ASSETS

if TYPE_CHECKING:
    from studio.core import Studio


ALL = "all"
PAGE_SIZE = 24  # grid cells a page holds: four rows of six on a desktop, and no more posters than that
POST_WORDS = {"upscale": "Upscaled", "interpolate": "Smoothed"}  # a post-production step, as the page says it
MAKING, UNREADABLE = ASSETS / "poster-making.png", ASSETS / "poster-unreadable.png"  # a cell without its poster


def clip_choices(studio: Studio) -> list[tuple[str, str]]:
    """(title, file name) of every clip, newest first."""
    return [(c.title, c.name) for c in studio.library.clips()]


@dataclass(frozen=True)
class GridPage:
    """One page of the library grid, newest first: the cells (poster or placeholder, caption), the clip name of
    each cell, which page of how many, and the posters still being made for it."""

    cells: list[tuple[str, str]]
    names: list[str]
    page: int
    pages: int
    total: int
    filtered: bool = False
    making: list[Future] = field(default_factory=list)

    @property
    def summary(self) -> str:
        if not self.total:
            return "No clip matches." if self.filtered else "No clips yet: the ones you make appear here."
        clips = f"{self.total:,} clip{'s' if self.total != 1 else ''}"
        return f"{clips} · page {self.page} of {self.pages}" if self.pages > 1 else clips


def grid(studio: Studio, query: Any = "", model: Any = ALL, task: Any = ALL, page: Any = 1) -> GridPage:
    """Page `page` of the library grid (PAGE_SIZE cells), narrowed to the clips whose prompt holds every word
    of `query` (any case), made by `model` and of `task`. Only this page's posters are looked at: a missing one
    shows MAKING while the background maker makes it (`making`), a clip that cannot be read UNREADABLE."""
    model = None if model in (None, "", ALL) else model
    task = None if task in (None, "", ALL) else task
    found = studio.library.search(str(query or ""), model=model, task=task)
    pages = max(1, -(-len(found) // PAGE_SIZE))
    try:
        page = min(max(1, int(page)), pages)
    except (TypeError, ValueError):
        page = 1
    shown = found[(page - 1) * PAGE_SIZE : page * PAGE_SIZE]
    posters = studio.library.posters
    making = posters.request(shown)
    cells = []
    for clip in shown:
        poster = posters.ready(clip) or (UNREADABLE if posters.unreadable(clip) else MAKING)
        cells.append((str(poster), caption(clip)))
    filtered = bool(str(query or "").strip()) or model is not None or task is not None
    return GridPage(cells, [clip.name for clip in shown], page, pages, len(found), filtered, making)


MAX_SEARCH_RESULTS = 100


def search_library(studio: Studio, query: str = "", model: str = "", task: str = "", limit: float = 20) -> str:
    """Search the studio's library of generated clips, newest first.

    Args:
        query: words that must all appear in a clip's prompt (any case); empty for every clip.
        model: only clips made by this model id (e.g. "Wan-AI/Wan2.2-TI2V-5B-Diffusers"); empty for any model.
        task: "t2v" (text to video) or "i2v" (image to video); empty for both.
        limit: the most clips to return, from 1 to 100 (default 20).

    Returns:
        a JSON list, one object per clip: its file name (what assemble and upscale take), prompt, seed, model,
        task, size, frames, fps, seconds, when it was made, and a long take's window prompts.
    """
    from library import LibraryError

    if not isinstance(limit, (int, float)) or isinstance(limit, bool) or not 1 <= limit <= MAX_SEARCH_RESULTS:
        raise LibraryError(f"limit must be a number from 1 to {MAX_SEARCH_RESULTS}; got {str(limit)[:20]!r}.")
    if task not in ("", None, IMAGE_TO_VIDEO, TEXT_TO_VIDEO):
        raise LibraryError(f"task must be 't2v', 'i2v' or empty; got {str(task)[:20]!r}.")
    found = studio.library.search(str(query or ""), model=model or None, task=task or None)[: int(limit)]
    out = []
    for clip in found:
        s, side = clip.settings, clip.sidecar
        video = side.get("video") or s
        out.append({
            "file": clip.name, "prompt": s.get("prompt"), "seed": s.get("seed"), "model": side.get("model"),
            "task": side.get("task"), "width": video.get("width"), "height": video.get("height"),
            "frames": video.get("frames"), "fps": video.get("fps"), "seconds": side.get("duration_s"),
            "created": side.get("created_at"),
            "window_prompts": [w.get("prompt") for w in side.get("windows") or []] or None,
        })  # fmt: skip
    return json.dumps(out, ensure_ascii=False)


def caption(clip: Clip) -> str:
    """A grid cell's caption: the prompt, shortened, after what post-production made of it ("[upscaled ×2]"),
    so a clip and the one made from it are told apart."""
    prompt = str(clip.settings.get("prompt", ""))
    steps = clip.sidecar.get("post") or []
    if steps:
        how = steps[-1].get("settings", {})
        amount = next((f"×{v}" if k in ("scale", "factor") else f"{v}{'p' if k == 'height' else ' fps'}"
                       for k, v in how.items()), "")  # fmt: skip
        word = POST_WORDS.get(steps[-1].get("action"), "edited").lower()
        prompt = f"[{word} {amount}] {prompt}"
    return prompt if len(prompt) <= 48 else prompt[:45] + "..."


def filters(studio: Studio) -> list[tuple[str, str]]:
    """The model filter's choices: every model the library's clips were made with."""
    models = {c.sidecar.get("model"): c.sidecar.get("model_name") or c.sidecar.get("model") for c in
              studio.library.clips() if c.sidecar.get("model")}  # fmt: skip
    return [("All models", ALL), *sorted(((label, model) for model, label in models.items()), key=lambda c: c[0])]


def details(clip_sidecar: dict) -> str:
    """A clip's settings as a person reads them (the raw JSON stays one click away)."""
    from html import escape

    side = clip_sidecar
    s = side.get("settings", {})
    video = side.get("video") or {
        "width": s.get("width"),
        "height": s.get("height"),
        "frames": s.get("frames"),
        "fps": s.get("fps"),
    }  # a post-production clip's own; else as generated
    lines = [f"**{escape(str(s.get('prompt', '')))}**", ""]
    rows = [
        ("Seed", s.get("seed")),
        ("Size", f"{video.get('width')}×{video.get('height')}, {video.get('frames')} frames at "
                 f"{video.get('fps')} fps ({side.get('duration_s', 0):.1f} s)"),
        ("Steps, guidance", f"{s.get('steps')}, {s.get('guidance_scale')}"
                            + (f" / {s['guidance_scale_2']}" if s.get("guidance_scale_2") is not None else "")),
        ("Model", side.get("model_name") or side.get("model")),
        ("Made", str(side.get("created_at", "")).replace("T", " ")[:16]),
    ]  # fmt: skip
    if side.get("source"):
        rows.append(("Made from", side["source"]))
        for step in side.get("post", []):
            what = POST_WORDS.get(step.get("action"), step.get("action"))
            how = ", ".join(f"{k} {v}" for k, v in step.get("settings", {}).items())
            model = step.get("model", {})
            rows.append((what, f"{how} with {model.get('file')} ({model.get('architecture')}, SHA-256 "
                               f"{str(model.get('sha256'))[:12]}…)"))  # fmt: skip
    else:
        rows.append(("Took", f"{side.get('timings', {}).get('total_s', 0):.1f} s on {side.get('device', '?')}"))
    take = side.get("take")
    if isinstance(take, dict):
        stopped = f", stopped ({take['stopped']}) after {take.get('kept_windows')}" if take.get("stopped") else ""
        rows.append(("Long take", f"{take.get('windows')} windows of {take.get('window_frames', [0])[0]} frames, "
                                  f"{take.get('overlap')} frames of overlap{stopped}"))  # fmt: skip
        for w in side.get("windows") or []:
            rows.append((f"Window {w.get('index', 0) + 1}", f"{w.get('prompt')} (seed {w.get('seed')}, "
                                                            f"{w.get('conditioning')})"))  # fmt: skip
    if side.get("fast_preset"):
        rows.append(("Fast mode", side["fast_preset"]))
    two_experts = s.get("guidance_scale_2") is not None  # the A14B pair: which expert a LoRA went to matters
    for lora in s.get("loras") or []:
        where = f" ({lora.get('experts')})" if two_experts else ""
        rows.append(("LoRA", f"{lora.get('file')} × {lora.get('strength')}{where}"))
    cache = s.get("cache") or {}
    if cache.get("kind", "off") != "off":
        rows.append(("Step cache", f"{cache['kind']} {cache.get('threshold')}"))
    if s.get("match_colour"):
        rows.append(("Colours", "kept on the start picture's"))
    signed = side.get("provenance", {})
    rows.append(("Content Credentials", "signed by this studio" if signed.get("signed") else
                 f"not signed ({signed.get('signing_error', 'signing was off')})"))  # fmt: skip
    lines += [f"- {name}: {escape(str(value))}" for name, value in rows]
    negative = str(s.get("negative_prompt", ""))
    if negative:
        lines += ["", f"Negative prompt: {escape(negative[:300])}"]
    return "\n".join(lines)


def show_clip(studio: Studio, name: str | None) -> tuple[str | None, str, dict | None]:
    """The clip's video, its readable details and its sidecar, or nothing when no clip is picked."""
    if not name:
        return None, "Pick a clip in the grid.", None
    clip = studio.library.clip(name)
    return str(clip.video), details(clip.sidecar), clip.sidecar


def reuse(studio: Studio, name: str | None) -> tuple[str, dict[str, Any], str | None]:
    """(task, settings by control name, input picture path) to put a clip's settings back into its form. A LoRA
    it used that is gone is fetched again from the link it was added from; refused (LibraryError) when it
    cannot be had or has changed."""
    clip = _picked(studio, name)
    task = clip.sidecar.get("task")
    values = reuse_values(clip.settings)
    for lora, wanted in zip(values["loras"], clip.settings.get("loras") or [], strict=False):
        # the very file: the one in the folder, the same file under another name, or fetched again from its link
        lora["file"] = ensure_lora(studio.loras, wanted.get("file", ""), wanted.get("sha256", ""), wanted.get("link"),
                                   offline=studio.jobs.offline)  # fmt: skip
    picture = clip.input_image if task == IMAGE_TO_VIDEO and clip.input_image and clip.input_image.is_file() else None
    end = clip.end_image
    values["end_image"] = str(end) if end is not None and end.is_file() else None
    return task, values, str(picture) if picture else None


def reuse_values(settings: dict) -> dict[str, Any]:
    """A clip's stored settings by the name of the control that shows each."""
    s = settings
    return {
        "prompt": s.get("prompt", ""), "negative_prompt": s.get("negative_prompt", ""),
        "size": f"{s.get('width')}x{s.get('height')}", "frames": s.get("frames"), "steps": s.get("steps"),
        "guidance_scale": s.get("guidance_scale"), "seed": s.get("seed", -1), "fast": bool(s.get("fast", False)),
        "loras": [{k: lora[k] for k in ("file", "strength", "experts") if k in lora} for lora in s.get("loras") or []],
        "cache": s.get("cache") or {"kind": "off"},  # clips from before the step cache ran without one
        "match_colour": bool(s.get("match_colour", False)),
        **take_values(s.get("take")),
    }  # fmt: skip


def take_values(take: Any) -> dict[str, Any]:
    """A long take's window prompts, length and overlap as the form shows them (empty for a single clip)."""
    take = take if isinstance(take, dict) else {}
    prompts = [p for p in take.get("prompts") or [] if isinstance(p, str)]
    return {"window_prompts": "\n".join(prompts), "take_seconds": take.get("seconds") or 0,
            "take_overlap": take.get("overlap") or 0}  # fmt: skip


def trash(studio: Studio, name: str | None) -> str:
    """Move the clip to the trash; the sentence that says where (LibraryError while a shot uses it)."""
    clip = _picked(studio, name).name
    folder = studio.library.trash(clip)
    return f"Moved {clip} to {folder}. Move the files back to restore the clip."


def last_frame(studio: Studio, name: str | None) -> Image.Image:
    return studio.library.last_frame(_picked(studio, name).name)


def _picked(studio: Studio, name: str | None) -> Clip:
    from library import LibraryError

    if not name:
        raise LibraryError("Pick a clip first.")
    return studio.library.clip(name)
