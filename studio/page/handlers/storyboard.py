"""The Storyboard tab and the `/assemble` API: from widget values (or JSON) to a checked storyboard, saved
read-modify-write against the one the page loaded, exported as a film job, extended by a generated shot.

The page's controls, in `VALUES` order: shot rows, title, title colour, title seconds, audio (a file path),
audio fade, format, frame rate, slow motion, size, upscale, interpolation. `base` is the saved storyboard the
page last loaded or saved, as JSON: saving against it keeps shots an extension appended meanwhile.
"""

from __future__ import annotations

import asyncio
import json
import math
from collections.abc import AsyncIterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from library import LibraryError, Shot, Storyboard, StoryboardError
from pipelines.catalogue import IMAGE_TO_VIDEO, UnknownModelError, get_spec, image_to_video_model_for
from pipelines.request import GenerationRequest
from studio.jobs.queue import CANCELLED, DONE
from studio.page.watch import POLL_S, status_text, watch

if TYPE_CHECKING:
    from studio.core import Studio

SHOT_HEADERS = ["clip", "start_s", "end_s", "transition", "crossfade_s"]
FPS_CHOICES = ["source", "16", "24", "30"]
MAX_JSON_CHARS = 256_000  # an /assemble storyboard; 200 shots take about 30 000


def board_to_rows(board: Storyboard) -> list[list]:
    """The shots as plain rows (the page keeps them in a State): clip, start_s, end_s, transition, crossfade_s."""
    return [[s.clip, s.start_s, s.end_s, s.transition, s.crossfade_s] for s in board.shots]


def rows_to_shots(rows: Any) -> list[Shot]:
    """Table rows (a DataFrame or lists) to shots; a bad cell names its row."""
    values = rows.values.tolist() if hasattr(rows, "values") else list(rows or [])
    shots = []
    for n, row in enumerate(values, start=1):
        row = list(row) + [""] * (5 - len(row))
        clip, start, end, transition, crossfade = row[:5]
        if not str(clip or "").strip():
            continue  # an empty row the table added
        try:
            shot = Shot(
                clip=str(clip).strip(), start_s=_seconds(start, 0.0), end_s=_seconds(end, None),
                transition=str(transition or "cut").strip().lower(), crossfade_s=_seconds(crossfade, 0.5),
            )  # fmt: skip
        except ValueError:
            raise StoryboardError(f"Row {n}: start, end and crossfade are seconds (numbers).") from None
        shots.append(shot)
    return shots


def _seconds(value: Any, empty: float | None) -> float | None:
    if value is None or value == "" or (isinstance(value, float) and math.isnan(value)):
        return empty
    number = float(value)
    if not math.isfinite(number):
        raise ValueError(value)
    return number


def board_from(
    studio: Studio, rows: Any, title: Any, colour: Any, card_s: Any, audio: Any, fade_s: Any, fmt: Any, fps: Any,
    slow: Any, size: Any, upscale: Any = "none", interpolation: Any = "learned",
) -> Storyboard:  # fmt: skip
    """The page's controls as a checked storyboard (uploaded audio is kept in the library)."""
    try:
        board = Storyboard(
            shots=rows_to_shots(rows), title=(str(title or "")).strip() or None, title_colour=colour or "#101828",
            title_s=float(card_s), audio=studio.library.keep_audio(Path(audio)) if audio else None,
            audio_fade_s=float(fade_s), format=fmt, fps=None if fps in (None, "", "source") else float(fps),
            slow_motion=bool(slow), size=_parse_size(size), upscale=upscale or "none",
            interpolation=interpolation or "learned",
        )  # fmt: skip
    except (TypeError, ValueError) as err:
        if isinstance(err, StoryboardError):
            raise
        raise StoryboardError(f"A storyboard setting is not a number where one is needed: {err}") from None
    return board.validate()


def _parse_size(text: Any) -> tuple[int, int] | None:
    if not text or not str(text).strip():
        return None
    parts = str(text).lower().replace(" ", "").split("x")
    if len(parts) != 2 or not all(p.isdigit() for p in parts):
        raise StoryboardError(f"Size must look like 1280x704; got '{str(text)[:30]}'.")
    return int(parts[0]), int(parts[1])


def values_of(studio: Studio, board: Storyboard) -> tuple:
    """A storyboard back into the page's controls (the `VALUES` order)."""
    return (
        board_to_rows(board), board.title or "", board.title_colour, board.title_s,
        str(studio.library.audio_path(board.audio)) if board.audio else None, board.audio_fade_s, board.format,
        str(int(board.fps)) if board.fps else "source", board.slow_motion,
        "x".join(map(str, board.size)) if board.size else "", board.upscale, board.interpolation,
    )  # fmt: skip


def reload(studio: Studio) -> tuple:
    """The saved storyboard into every control, and it as the page's base."""
    board = studio.library.storyboard.load()
    return (*values_of(studio, board), json.dumps(board.to_json()))


def summarise(studio: Studio, *values: Any) -> str:
    try:
        return describe(studio, board_from(studio, *values))
    except StoryboardError as err:
        return f"**Not ready:** {err}"


def describe(studio: Studio, board: Storyboard) -> str:
    try:
        seconds = studio.library.film_duration(board)
    except StoryboardError as err:
        return f"**Not ready:** {err}"
    count = len(board.shots)
    return f"**Film: {count} shot{'' if count == 1 else 's'}, {seconds:.1f} s**"


def add_shot(studio: Studio, name: str | None, rows: Any) -> tuple[list[list], int]:
    """The rows with the picked library clip as a new last shot, and that shot's index (it is selected)."""
    if not name:
        raise StoryboardError("Pick a clip from the library first.")
    clip = studio.library.clip(name)
    shots = [*rows_to_shots(rows), Shot(clip=clip.name)]
    return board_to_rows(Storyboard(shots=shots)), len(shots) - 1


def strip(studio: Studio, rows: Any) -> list[tuple[Any, str]]:
    """The shots in order as poster frames, each captioned with its number, trim and transition."""
    from PIL import Image

    cells = []
    for n, shot in enumerate(rows_to_shots(rows), start=1):
        try:
            poster = studio.library.poster(studio.library.clip(shot.clip))
        except LibraryError:
            poster = None
        end = f"{shot.end_s:.1f}" if shot.end_s is not None else "end"
        joint = f" · {shot.transition} {shot.crossfade_s:g} s" if shot.transition == "crossfade" else ""
        cells.append((str(poster) if poster else Image.new("RGB", (160, 90), (60, 60, 60)),
                      f"{n} · {shot.start_s:.1f}–{end} s{joint}"))  # fmt: skip
    return cells


def _shot(rows: Any, index: Any) -> tuple[list[Shot], int]:
    shots = rows_to_shots(rows)
    if not shots:
        raise StoryboardError("The storyboard has no shots yet: add one from the library.")
    if not isinstance(index, int) or isinstance(index, bool) or not 0 <= index < len(shots):
        raise StoryboardError("Pick a shot in the strip first.")
    return shots, index


def shot_view(studio: Studio, rows: Any, index: Any) -> dict[str, Any]:
    """What the shot editor shows for the picked shot: its frames at the in and out points, its trim (with
    the clip's length as the limit) and how it joins the next shot."""
    shots, i = _shot(rows, index)
    shot = shots[i]
    length = studio.library.clip_seconds(shot.clip)
    end = length if shot.end_s is None else min(shot.end_s, length)
    return {
        "title": f"Shot {i + 1} of {len(shots)} — {studio.library.clip(shot.clip).title}",
        "length": length, "start": shot.start_s, "end": end,
        "in_frame": studio.library.frame_at(shot.clip, shot.start_s),
        "out_frame": studio.library.out_frame(shot),
        "transition": shot.transition, "crossfade": shot.crossfade_s, "last": i == len(shots) - 1,
    }  # fmt: skip


def trim(studio: Studio, rows: Any, index: Any, start: Any, end: Any) -> list[list]:
    """The rows with the picked shot trimmed to [start, end] seconds of its clip (end at the clip's end:
    to the end, whatever its length)."""
    shots, i = _shot(rows, index)
    length = studio.library.clip_seconds(shots[i].clip)
    try:
        start, end = float(start), float(end)
    except (TypeError, ValueError):
        raise StoryboardError("The in and out points are seconds.") from None
    if not 0 <= start < end:
        raise StoryboardError(f"Shot {i + 1}: the in point ({start:.2f} s) must come before the out point "
                              f"({end:.2f} s).")  # fmt: skip
    shots[i] = Shot(shots[i].clip, start, None if end >= length - 1e-3 else end, shots[i].transition,
                    shots[i].crossfade_s)  # fmt: skip
    return board_to_rows(Storyboard(shots=shots))


def join(studio: Studio, rows: Any, index: Any, transition: Any, crossfade: Any) -> list[list]:
    """The rows with the picked shot's transition into the next one set."""
    shots, i = _shot(rows, index)
    if transition not in ("cut", "crossfade"):
        raise StoryboardError("The transition is a cut or a crossfade.")
    shot = shots[i]
    shots[i] = Shot(shot.clip, shot.start_s, shot.end_s, transition, float(crossfade or shot.crossfade_s))
    return board_to_rows(Storyboard(shots=shots))


def move(studio: Studio, rows: Any, index: Any, delta: int) -> tuple[list[list], int | None]:
    """Move the picked shot left (-1) or right (+1), or remove it (0); the rows and the shot now picked."""
    shots, i = _shot(rows, index)
    if delta == 0:
        shots.pop(i)
        return board_to_rows(Storyboard(shots=shots)), (min(i, len(shots) - 1) if shots else None)
    j = min(max(i + delta, 0), len(shots) - 1)
    shots[i], shots[j] = shots[j], shots[i]
    return board_to_rows(Storyboard(shots=shots)), j


def move_left(studio: Studio, rows: Any, index: Any) -> tuple[list[list], int | None]:
    return move(studio, rows, index, -1)


def move_right(studio: Studio, rows: Any, index: Any) -> tuple[list[list], int | None]:
    return move(studio, rows, index, 1)


def remove(studio: Studio, rows: Any, index: Any) -> tuple[list[list], int | None]:
    return move(studio, rows, index, 0)


async def preview(studio: Studio, *values: Any) -> str:
    """A quick low-resolution film of the storyboard as the page has it (not saved, not signed)."""
    board = board_from(studio, *values)
    if not board.shots:
        raise StoryboardError("Add a shot first.")
    return str(await asyncio.to_thread(studio.library.preview_film, board))


def save(studio: Studio, base: str, *values: Any) -> tuple:
    """Store the page's storyboard against its base; returns (summary, rows, new base). Shots appended
    elsewhere since the base are kept (and shown); a conflicting change is refused (StoryboardConflict)."""
    stored = _save(studio, base, values)
    return f"Saved. {describe(studio, stored)}", board_to_rows(stored), json.dumps(stored.to_json())


def _save(studio: Studio, base: str, values: tuple) -> Storyboard:
    board = board_from(studio, *values)
    return studio.library.storyboard.save(board, base=_base(base))


def _base(base: Any) -> Storyboard | None:
    if not base:
        return None
    try:
        return Storyboard.from_json(json.loads(base))
    except (ValueError, TypeError):
        return None


async def export(studio: Studio, base: str, *values: Any) -> AsyncIterator[tuple]:
    """Save, then export as a film job: yields (status, film to play or None, film to download or None,
    rows, base) while the job runs; the job shows in the queue and can be cancelled there."""
    stored = _save(studio, base, values)
    studio.library.check_film(stored)
    job = studio.jobs.submit_film(stored)
    rows, base = board_to_rows(stored), json.dumps(stored.to_json())
    async for current in _follow(studio, job.id):
        done = current.status == DONE
        film = current.result if done else None
        yield status_text(current, studio.jobs.position(current.id)), \
            (film if film and not film.endswith(".gif") else None), film, rows, base  # fmt: skip


async def assemble(studio: Studio, storyboard: str) -> str:
    """Assemble library clips into one film (a queued export) and return the film's file.

    Args:
        storyboard: the film as JSON text: {"shots": [{"clip": a file name from search_library, "start_s": 0,
            "end_s": null (to the clip's end), "transition": "cut" or "crossfade", "crossfade_s": 0.5}, ...],
            "title": an optional title card's text, "format": "mp4" (or "webm", "gif"), "fps": null (the clips'
            own), "upscale": "none", "1080p" or "4k", "slow_motion": false}; at least one shot.

    Returns:
        the path of the finished film; a refusal raises its reason (a missing clip, a bad trim).
    """
    if not isinstance(storyboard, str):
        raise StoryboardError("The storyboard must be sent as JSON text.")
    if len(storyboard) > MAX_JSON_CHARS:
        raise StoryboardError(f"The storyboard JSON is over {MAX_JSON_CHARS // 1000} kB.")
    try:
        data = json.loads(storyboard or "{}")
    except json.JSONDecodeError as err:
        raise StoryboardError(f"The storyboard is not valid JSON: {err}") from None
    except RecursionError:
        raise StoryboardError("The storyboard JSON is nested too deeply.") from None
    board = Storyboard.from_json(data)
    studio.library.check_film(board)
    job = studio.jobs.submit_film(board)
    async for current in _follow(studio, job.id):
        if current.status == DONE:
            return current.result
    raise StoryboardError("The export was cancelled.")


def _known(model: str) -> bool:
    try:
        get_spec(model)
    except UnknownModelError:
        return False
    return True


async def _follow(studio: Studio, job_id: str):
    """The job's snapshots while it changes, until it ends; a failure raises its message."""
    seen = -1
    while True:
        current = studio.jobs.snapshot(job_id)
        if current.version != seen:
            seen = current.version
            if current.finished and current.status not in (DONE, CANCELLED):
                raise StoryboardError(current.message)
            yield current
            if current.finished:
                return
        await asyncio.sleep(POLL_S)


async def extend_last(studio: Studio, base: str, prompt: Any, *values: Any) -> AsyncIterator[tuple]:
    """Generate the next shot from the frame at the storyboard's last shot's Out point (its last frame when
    untrimmed: where the film leaves it, so the cut does not jump back), image-to-video at the same size; the
    GPU worker appends it to the saved storyboard when done, with or without a page open."""
    stored = _save(studio, base, values)
    if not stored.shots:
        raise StoryboardError("Add a shot first: the extension starts from the last shot's Out point.")
    last = stored.shots[-1]
    clip = studio.library.clip(last.clip)
    s = clip.settings
    made_by = clip.sidecar.get("model") or studio.settings.model
    if studio.takes_run_here and not clip.sidecar.get("source") and _known(made_by):
        # continued from the shot's last frames as a long take's next window, by the clip's own model (or its
        # partner): motion carries across the cut
        task = clip.sidecar.get("task") or IMAGE_TO_VIDEO
        request = GenerationRequest(
            prompt=prompt, model=made_by, task=task, negative_prompt=s.get("negative_prompt"), width=s.get("width"),
            height=s.get("height"), frames=s.get("frames"), steps=s.get("steps"),
            guidance_scale=s.get("guidance_scale"), image=studio.library.out_frame(last) if task == IMAGE_TO_VIDEO
            else None,
        )  # fmt: skip
        job = studio.submit_take(request, [prompt], lead_in=last, append_to_storyboard=True)
    else:  # remote workers, or a clip made by post-production: from the Out point's one frame
        model = image_to_video_model_for(made_by)
        request = GenerationRequest(
            prompt=prompt, model=model.id, task=IMAGE_TO_VIDEO, negative_prompt=s.get("negative_prompt"),
            width=s.get("width"), height=s.get("height"), frames=s.get("frames"), steps=s.get("steps"),
            guidance_scale=s.get("guidance_scale"), image=studio.library.out_frame(last),
        )  # fmt: skip
        job = studio.submit(request, append_to_storyboard=True)
    async for update in watch(studio, job):
        yield update
