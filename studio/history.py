"""The library: every clip in the output folder that has a Wan Studio sidecar, newest first.

The sidecars are the history; there is no separate database to drift out of step or be corrupted.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import imageio_ffmpeg
import numpy as np
from PIL import Image

from pipelines import APP_NAME


@dataclass(frozen=True)
class Clip:
    video: Path
    sidecar: dict[str, Any]

    @property
    def settings(self) -> dict[str, Any]:
        return self.sidecar.get("settings", {})

    @property
    def title(self) -> str:
        s = self.settings
        prompt = s.get("prompt", "")
        short = prompt if len(prompt) <= 60 else prompt[:57] + "..."
        return f"{short} — seed {s.get('seed')}, {s.get('width')}x{s.get('height')}, {s.get('frames')} frames"

    @property
    def input_image(self) -> Path | None:
        name = self.sidecar.get("input_image")
        return self.video.parent / name if name else None


def list_clips(output_dir: Path) -> list[Clip]:
    clips = []
    for sidecar in Path(output_dir).glob("*.json"):
        video = sidecar.with_suffix(".mp4")
        if not video.is_file():
            continue
        try:
            data = json.loads(sidecar.read_text())
        except (OSError, ValueError):
            continue
        if data.get("app") == APP_NAME:
            clips.append(Clip(video, data))
    return sorted(clips, key=lambda c: (c.sidecar.get("created_at", ""), c.video.name), reverse=True)


def find_clip(output_dir: Path, name: str) -> Clip | None:
    """A clip by file name; names from the browser are never used as paths."""
    return next((c for c in list_clips(output_dir) if c.video.name == Path(name).name), None)


TRASH_DIR = "trash"


def move_to_trash(output_dir: Path, name: str) -> Path:
    """Take a clip out of the library without destroying it: its video, sidecar and input picture move to
    `<output>/trash/<clip>/`, and moving them back restores it. The video goes first, so a crash half-way
    leaves at most a sidecar without its video, which the library ignores."""
    clip = find_clip(output_dir, name)
    if clip is None:
        raise LookupError(f"'{Path(name).name}' is not in the library.")
    folder = Path(output_dir) / TRASH_DIR / clip.video.stem
    n = 1
    while folder.exists():
        n += 1
        folder = folder.with_name(f"{clip.video.stem}-{n}")
    folder.mkdir(parents=True)
    for path in (clip.video, clip.video.with_suffix(".json"), clip.input_image):
        if path is not None and path.is_file():
            os.replace(path, folder / path.name)
    return folder


def last_frame(video: Path) -> Image.Image:
    """The clip's final frame, to start the next shot from."""
    reader = imageio_ffmpeg.read_frames(str(video))
    meta = next(reader)
    width, height = meta["size"]
    frame = None
    for buffer in reader:  # H.264 has no cheap seek to the last frame of a short clip; read through
        frame = buffer
    if frame is None:
        raise ValueError(f"{video.name} has no frames")
    return Image.fromarray(np.frombuffer(frame, np.uint8).reshape(height, width, 3).copy())
