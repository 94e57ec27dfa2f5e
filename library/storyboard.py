"""The storyboard: shots (library clips, trimmed) joined by cuts or crossfades, an optional title card and
audio track, and the film's size, frame rate and format; checked field by field, with limits, whoever
sends it (the page, the API, the saved file); and kept in the output folder behind one lock.

Saving is read-modify-write: a page saves the storyboard it edited together with the one it started from,
and shots that an extension appended meanwhile are kept; any other change made elsewhere is refused
rather than overwritten.
"""

from __future__ import annotations

import math
import re
import threading
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from library.files import read_json, set_aside, write_json
from library.layout import plain_name
from pipelines.errors import UserError

FORMATS = ("mp4", "webm", "gif")
UPSCALE_TO = {"none": None, "1080p": 1080, "4k": 2160}  # the film's height after a learned upscale
INTERPOLATIONS = ("learned", "ffmpeg")  # RIFE, or ffmpeg's minterpolate
TRANSITIONS = ("cut", "crossfade")
MAX_SHOTS = 200
MAX_TITLE_CHARS = 120
MAX_TITLE_S = 30.0
MAX_FADE_S = 10.0
MAX_FILM_S = 30 * 60.0  # half an hour of film
MAX_SIZE = (3840, 2160)
MIN_SIDE = 64
COLOUR = re.compile(r"^#[0-9a-fA-F]{6}$")


class StoryboardError(UserError, ValueError):
    """A storyboard that cannot be used; the message names the field (and the shot) to change."""


class StoryboardConflict(StoryboardError):
    """The saved storyboard changed elsewhere in a way a save would undo."""


@dataclass
class Shot:
    clip: str  # file name of a clip in the library
    start_s: float = 0.0
    end_s: float | None = None  # None: to the clip's end
    transition: str = "cut"  # into the next shot: "cut" or "crossfade"
    crossfade_s: float = 0.5


@dataclass
class Storyboard:
    shots: list[Shot] = field(default_factory=list)
    title: str | None = None  # a title card before the first shot
    title_s: float = 2.0
    title_colour: str = "#101828"
    audio: str | None = None  # the name of an audio file kept in <output>/audio/
    audio_fade_s: float = 1.0
    size: tuple[int, int] | None = None  # None: the first shot's size
    fps: float | None = None  # None: the first shot's frame rate; another rate is motion-interpolated
    slow_motion: bool = False  # half speed, motion-interpolated
    format: str = "mp4"  # "mp4", "webm" or "gif"
    upscale: str = "none"  # "none", "1080p" or "4k": the film upscaled by the learned upscaler
    interpolation: str = "learned"  # how a frame-rate change and slow motion are made: "learned" or "ffmpeg"
    revision: int = 0  # bumped by every save; tells a stale page's save from a current one

    @classmethod
    def from_json(cls, data: Any) -> Storyboard:
        """A storyboard from JSON data, every field checked; StoryboardError names the first problem."""
        if not isinstance(data, dict):
            raise StoryboardError("A storyboard is a JSON object with a 'shots' list.")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            names = ", ".join(map(str, unknown))
            raise StoryboardError(f"The storyboard has fields Wan Studio does not know: {names}.")
        shots = data.get("shots", [])
        if not isinstance(shots, list):
            raise StoryboardError("'shots' must be a list of shots.")
        if len(shots) > MAX_SHOTS:
            raise StoryboardError(f"A storyboard holds at most {MAX_SHOTS} shots; this one has {len(shots)}.")
        parsed = [_shot(n, shot) for n, shot in enumerate(shots, start=1)]
        rest = {k: v for k, v in data.items() if k != "shots"}
        if isinstance(rest.get("size"), list):
            rest["size"] = tuple(rest["size"])
        board = cls(shots=parsed, **rest)
        return board.validate()

    def to_json(self) -> dict:
        data = asdict(self)
        data["size"] = list(self.size) if self.size else None
        return data

    def validate(self) -> Storyboard:
        """Types and bounds of every field (not whether the clips exist: that needs the library)."""
        if len(self.shots) > MAX_SHOTS:
            raise StoryboardError(f"A storyboard holds at most {MAX_SHOTS} shots; this one has {len(self.shots)}.")
        for n, shot in enumerate(self.shots, start=1):
            _check_shot(n, shot)
        if self.title is not None:
            if not isinstance(self.title, str):
                raise StoryboardError("The title must be text.")
            if len(self.title) > MAX_TITLE_CHARS:
                raise StoryboardError(f"The title card holds at most {MAX_TITLE_CHARS} characters.")
        _number(self.title_s, "The title card's length (title_s)", 0.5, MAX_TITLE_S)
        if not isinstance(self.title_colour, str) or not COLOUR.match(self.title_colour):
            raise StoryboardError(f"The title colour must look like #101828; got {self.title_colour!r}.")
        if self.audio is not None and plain_name(self.audio) is None:
            raise StoryboardError("The audio track is named by an audio file of the library (uploaded in the page).")
        _number(self.audio_fade_s, "The audio fade (audio_fade_s)", 0.0, MAX_FADE_S)
        if self.size is not None:
            ok = (
                isinstance(self.size, tuple) and len(self.size) == 2
                and all(isinstance(v, int) and not isinstance(v, bool) for v in self.size)
            )  # fmt: skip
            if not ok or not (MIN_SIDE <= self.size[0] <= MAX_SIZE[0] and MIN_SIDE <= self.size[1] <= MAX_SIZE[1]):
                raise StoryboardError(
                    f"The film size must be two whole numbers from {MIN_SIDE}x{MIN_SIDE} to "
                    f"{MAX_SIZE[0]}x{MAX_SIZE[1]}; got {self.size!r}."
                )
            if self.size[0] % 2 or self.size[1] % 2:
                raise StoryboardError(f"The film size must have even sides; got {self.size[0]}x{self.size[1]}.")
        if self.fps is not None:
            _number(self.fps, "The frame rate (fps)", 1.0, 60.0)
        if not isinstance(self.slow_motion, bool):
            raise StoryboardError("slow_motion must be true or false.")
        if self.format not in FORMATS:
            raise StoryboardError(f"The format must be one of {', '.join(FORMATS)}; got {self.format!r}.")
        if self.upscale not in UPSCALE_TO:
            raise StoryboardError(f"upscale must be one of {', '.join(UPSCALE_TO)}; got {str(self.upscale)[:20]!r}.")
        if self.upscale != "none" and self.format == "gif":
            raise StoryboardError("A GIF is at most 480 pixels wide: upscaling is for MP4 and WebM films.")
        if self.interpolation not in INTERPOLATIONS:
            raise StoryboardError(
                f"interpolation must be one of {', '.join(INTERPOLATIONS)}; got {str(self.interpolation)[:20]!r}."
            )
        if not isinstance(self.revision, int) or isinstance(self.revision, bool) or self.revision < 0:
            raise StoryboardError("revision must be a whole number.")
        return self


def _shot(n: int, data: Any) -> Shot:
    if not isinstance(data, dict):
        raise StoryboardError(f'Shot {n} must be an object like {{"clip": "….mp4"}}.')
    known = {f.name for f in fields(Shot)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise StoryboardError(f"Shot {n} has fields Wan Studio does not know: {', '.join(map(str, unknown))}.")
    if "clip" not in data:
        raise StoryboardError(f"Shot {n} needs a 'clip': the file name of a library clip.")
    return Shot(**data)


def _check_shot(n: int, shot: Shot) -> None:
    if not isinstance(shot.clip, str) or plain_name(shot.clip) is None:
        raise StoryboardError(f"Shot {n}: 'clip' must be the file name of a library clip; got {shot.clip!r}.")
    _number(shot.start_s, f"Shot {n}: the start (start_s)", 0.0, MAX_FILM_S)
    if shot.end_s is not None:
        _number(shot.end_s, f"Shot {n}: the end (end_s)", 0.0, MAX_FILM_S)
        if shot.end_s <= shot.start_s:
            raise StoryboardError(f"Shot {n}: the end ({shot.end_s:g} s) must come after the start.")
    if shot.transition not in TRANSITIONS:
        raise StoryboardError(f"Shot {n}: the transition must be 'cut' or 'crossfade'; got {shot.transition!r}.")
    _number(shot.crossfade_s, f"Shot {n}: the crossfade (crossfade_s)", 0.0, MAX_FADE_S)


def _number(value: Any, what: str, low: float, high: float) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise StoryboardError(f"{what} must be a number; got {value!r}.")
    if not low <= value <= high:
        raise StoryboardError(f"{what} must be from {low:g} to {high:g}; got {value:g}.")
    return float(value)


class StoryboardStore:
    """The saved storyboard (`<output>/storyboard.json`), read and written under one lock: the pages and
    the GPU worker (extensions append shots) all go through here."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self._lock = threading.Lock()
        self.warning: str | None = None

    def load(self) -> Storyboard:
        """The saved storyboard; an empty one when none is saved. A damaged file is set aside once, with a
        warning (`self.warning`), and an empty storyboard takes its place."""
        with self._lock:
            return self._load()

    def _load(self) -> Storyboard:
        if not self.path.is_file():
            return Storyboard()
        try:
            board = Storyboard.from_json(_upgrade(read_json(self.path), self.path.parent))
        except (ValueError, TypeError) as err:
            kept = set_aside(self.path)
            self.warning = (
                f"The saved storyboard could not be used ({err}); it was set aside as "
                f"'{kept.name if kept else self.path.name}' and an empty storyboard started."
            )
            return Storyboard()
        return board

    def save(self, board: Storyboard, base: Storyboard | None = None) -> Storyboard:
        """Store `board`, edited from `base` (the storyboard the page loaded). Shots appended since `base` are
        kept at the end; StoryboardConflict when anything else changed meanwhile. Returns what is stored."""
        board.validate()
        with self._lock:
            current = self._load()
            if base is not None and current.revision != base.revision:
                appended = _appended_since(base, current)
                if appended is None:
                    raise StoryboardConflict(
                        "The storyboard was changed in another page since this one loaded it, so this save would "
                        "undo that change. Reload the storyboard (your edits here were not saved)."
                    )
                board = replace(board, shots=[*board.shots, *appended])
            stored = replace(board, revision=current.revision + 1)
            write_json(self.path, stored.to_json())
            return stored

    def append(self, shot: Shot) -> Storyboard:
        """Add a shot at the end (an extension joins its take), whatever pages are open."""
        with self._lock:
            current = self._load()
            if len(current.shots) >= MAX_SHOTS:
                raise StoryboardError(f"The storyboard already holds {MAX_SHOTS} shots, the most it can.")
            stored = replace(current, shots=[*current.shots, shot], revision=current.revision + 1)
            write_json(self.path, stored.validate().to_json())
            return stored


def _appended_since(base: Storyboard, current: Storyboard) -> list[Shot] | None:
    """The shots added at the end of `base` to make `current`, or None if anything else differs."""
    same_rest = replace(base, shots=[], revision=0) == replace(current, shots=[], revision=0)
    if not same_rest or current.shots[: len(base.shots)] != base.shots:
        return None
    return current.shots[len(base.shots) :]


def _upgrade(data: Any, output_dir: Path) -> Any:
    """Storyboards saved before audio was named by file name held a path into <output>/audio/."""
    if isinstance(data, dict) and isinstance(data.get("audio"), str) and "/" in data["audio"]:
        path = Path(data["audio"])
        data = dict(data, audio=path.name if path.parent.name == "audio" else data["audio"])
    return data
