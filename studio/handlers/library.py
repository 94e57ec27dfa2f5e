"""The Library tab: the clip list, one clip's video and details, reuse its settings, continue from its last
frame, move it to the trash."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from PIL import Image

from library import Clip
from pipelines.catalogue import IMAGE_TO_VIDEO

if TYPE_CHECKING:
    from studio.server import Studio


def clip_choices(studio: Studio) -> list[tuple[str, str]]:
    """(title, file name) of every clip, newest first."""
    return [(c.title, c.name) for c in studio.library.clips()]


def show_clip(studio: Studio, name: str | None) -> tuple[str | None, dict | None]:
    """The clip's video and its sidecar, or nothing when no clip is picked."""
    if not name:
        return None, None
    clip = studio.library.clip(name)
    return str(clip.video), clip.sidecar


def reuse(studio: Studio, name: str | None) -> tuple[str, dict[str, Any], str | None]:
    """(task, settings by control name, input picture path) to put a clip's settings back into its form.
    Refused (LibraryError) when a LoRA it used is no longer in the LoRA folder or has changed."""
    clip = _picked(studio, name)
    task = clip.sidecar.get("task")
    for lora in clip.settings.get("loras") or []:
        studio.loras.check_unchanged(lora.get("file", ""), lora.get("sha256", ""))
    picture = clip.input_image if task == IMAGE_TO_VIDEO and clip.input_image and clip.input_image.is_file() else None
    values = reuse_values(clip.settings)
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
    }  # fmt: skip


def trash(studio: Studio, name: str | None) -> str:
    """Move the clip to the trash; the sentence that says where (LibraryError while a shot uses it)."""
    folder = studio.library.trash(_picked(studio, name).name)
    return f"Moved to {folder}. Move the files back to restore the clip."


def last_frame(studio: Studio, name: str | None) -> Image.Image:
    return studio.library.last_frame(_picked(studio, name).name)


def _picked(studio: Studio, name: str | None) -> Clip:
    from library import LibraryError

    if not name:
        raise LibraryError("Pick a clip first.")
    return studio.library.clip(name)
