"""From a storyboard to a film: trimmed shots with cuts or crossfades, an optional title card and audio
track, exported with moviepy; another frame rate or slow motion by learned frame interpolation (RIFE; ffmpeg's
minterpolate when asked or when no interpolation model is available), and an optional learned upscale.

Frames are streamed from the clip files by moviepy's readers (never an ImageSequenceClip holding the
whole film in RAM), at most MAX_OPEN_READERS decoders running at once, so memory stays flat however long
the film. The film is written under a temporary name and linked into place, so a failed or cancelled
export leaves nothing behind and never replaces an earlier film. The export checks a cancel event at
every frame.
"""

from __future__ import annotations

import os
import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from library import provenance, watermark
from library.clips import Clip, find_clip
from library.files import (
    LibraryError,
    check_room,
    discard,
    disk_error,
    link_no_overwrite,
    publish,
    read_json,
    temporary,
    write_error,
    write_json,
)
from library.layout import AUDIO_DIR, FILMS_DIR
from library.media import Mp4Writer, estimate_mp4_mb, ffmpeg_exe, label_args, read_frames, slugify, video_info
from library.storyboard import MAX_FILM_S, UPSCALE_TO, Shot, Storyboard, StoryboardError
from pipelines import APP_NAME, __version__
from pipelines.errors import UserError
from pipelines.interpolate import InterpolationCancelled, Interpolator
from pipelines.upscale import UpscaleCancelled, Upscaler, plan_size

COMMENT = "AI-generated: assembled in Wan Studio from clips made with Wan models"
FORMATS = {
    "mp4": dict(
        codec="libx264",
        audio_codec="aac",
        audio_ext="m4a",
        audio_fps=44100,
        ffmpeg_params=["-pix_fmt", "yuv420p", "-movflags", "+faststart", *label_args(COMMENT)],
    ),  # fmt: skip
    "gif": dict(),  # no sound; scaled to at most GIF_MAX_WIDTH wide
    "webm": dict(
        codec="libvpx-vp9",
        audio_codec="libopus",
        audio_ext="ogg",
        audio_fps=48000,  # Opus takes no 44.1 kHz
        ffmpeg_params=["-pix_fmt", "yuv420p", *label_args(COMMENT)],
    ),  # fmt: skip
}
GIF_MAX_WIDTH = 480


@dataclass(frozen=True)
class FilmModels:
    """The learned models an export may use, each loaded only when a step needs it; either raises a UserError
    when its model is not available (offline and not downloaded: the interpolation then falls back to ffmpeg)."""

    interpolator: Callable[[], Interpolator]
    upscaler: Callable[[], Upscaler]


class ExportCancelled(Exception):
    """The export was cancelled; nothing was published."""


@dataclass(frozen=True)
class _CheckedShot:
    shot: Shot
    video: Path
    start_s: float
    end_s: float

    @property
    def duration(self) -> float:
        return self.end_s - self.start_s


def _check(board: Storyboard, output_dir: Path) -> list[_CheckedShot]:
    """Check every shot against the library's sidecars (no video is opened) and the film against the limits;
    StoryboardError names the first problem."""
    board.validate()
    if not board.shots:
        raise StoryboardError("The storyboard is empty: add at least one clip from the library.")
    checked = []
    for n, shot in enumerate(board.shots, start=1):
        clip = find_clip(output_dir, shot.clip)
        if clip is None:
            raise StoryboardError(f"Shot {n}: the clip '{shot.clip}' is not in the library.")
        length = _length(clip)
        end = length if shot.end_s is None else shot.end_s
        if not 0 <= shot.start_s < end <= length + 1e-3:
            raise StoryboardError(
                f"Shot {n}: the trim {shot.start_s:g}–{end:g} s is empty or outside the clip (0–{length:g} s)."
            )
        checked.append(_CheckedShot(shot, clip.video, shot.start_s, min(end, length)))
    for n, (this, following) in enumerate(zip(checked[:-1], checked[1:], strict=False), start=1):
        if this.shot.transition == "crossfade" and not 0 < this.shot.crossfade_s < min(
            this.duration, following.duration
        ):
            raise StoryboardError(f"Shot {n}: the crossfade must be shorter than both shots it joins.")
    total = _duration(board, checked)
    if total > MAX_FILM_S:
        raise StoryboardError(f"The film would last {total / 60:.1f} minutes; at most {MAX_FILM_S / 60:.0f} are made.")
    if board.audio and not audio_path(output_dir, board.audio).is_file():
        raise StoryboardError(f"The audio file '{board.audio}' is not among the storyboard's audio files.")
    return checked


def audio_path(output_dir: Path, name: str) -> Path:
    """Where a storyboard's audio file (named by the page's upload) lives: `<output>/audio/<name>`."""
    return Path(output_dir) / AUDIO_DIR / Path(name).name


def clip_seconds(clip: Clip) -> float:
    """A clip's length in seconds: how far a shot of it can be trimmed."""
    return _length(clip)


def _length(clip: Clip) -> float:
    """Seconds, from the sidecar when it says (every studio clip's does), else counted from the file."""
    if clip.duration_s:
        return clip.duration_s
    import imageio_ffmpeg

    return float(imageio_ffmpeg.count_frames_and_secs(str(clip.video))[1])


def _duration(board: Storyboard, checked: list[_CheckedShot]) -> float:
    total = sum(c.duration for c in checked) + (board.title_s if board.title else 0.0)
    total -= sum(c.shot.crossfade_s for c in checked[:-1] if c.shot.transition == "crossfade")
    return total * (2 if board.slow_motion else 1)


MAX_OPEN_READERS = 3  # a crossfade decodes two shots at once


class _ReaderPool:
    """At most `limit` ffmpeg decoders running, however many shots the film has.

    moviepy starts a decoder process per VideoFileClip and keeps it until close(); a film of hundreds of
    shots would run hundreds. Shots play in order, so the least recently used decoder belongs to a shot
    that is done; it is stopped, and restarted at the right time should that shot be needed again.
    """

    def __init__(self, limit: int = MAX_OPEN_READERS) -> None:
        self.limit = limit
        self.running: list = []  # moviepy FFMPEG_VideoReaders, most recently used last

    def use(self, reader, t: float) -> None:
        if reader in self.running:
            self.running.remove(reader)
        elif reader.proc is None:
            reader.initialize(t)
        self.running.append(reader)
        while len(self.running) > self.limit:
            self.running.pop(0).close()

    def frames_of(self, reader) -> Callable:
        """A moviepy transform that reads each frame through the pool."""

        def pooled(get_frame: Callable, t: float):
            self.use(reader, t)
            return get_frame(t)

        return pooled


def _open(checked: list[_CheckedShot]) -> tuple[list, list]:
    """Each shot as a moviepy clip streaming frames from its file (nothing held in RAM), its decoder started
    only when the shot plays."""
    from moviepy import VideoFileClip

    pool = _ReaderPool()
    files = []
    try:
        for c in checked:
            files.append(VideoFileClip(str(c.video), audio=False))
            files[-1].reader.close()  # moviepy starts it at once; the pool restarts it
        shots = []
        for clip, c in zip(files, checked, strict=True):
            pooled = clip.transform(pool.frames_of(clip.reader))
            shots.append(pooled.subclipped(c.start_s, min(c.end_s, clip.duration)))
        return files, shots
    except Exception:
        for clip in files:
            clip.close()
        raise


def _letterbox(clip, size: tuple[int, int]):
    """Fit inside the film's size keeping the aspect ratio; bars fill the rest. Never stretched."""
    from moviepy import ColorClip, CompositeVideoClip

    if tuple(clip.size) == tuple(size):
        return clip
    scale = min(size[0] / clip.w, size[1] / clip.h)
    fitted = clip.resized((max(2, round(clip.w * scale)), max(2, round(clip.h * scale))))
    background = ColorClip(size, color=(0, 0, 0), duration=clip.duration)
    return CompositeVideoClip([background, fitted.with_position("center")], size=size)


def _fade_in(clip, seconds: float):
    """A crossfade's incoming shot: its opacity ramps from 0 to 1 over `seconds`.

    moviepy's CrossFadeIn gives each shot a stored full-frame float mask (7 MB at 720P) for the length of the
    export; this mask is computed per frame, so memory does not grow with the number of crossfades."""
    from moviepy import VideoClip

    w, h = clip.size
    ramp = VideoClip(lambda t: np.full((h, w), min(1.0, t / seconds)), is_mask=True, duration=clip.duration)
    return clip.with_mask(ramp)


def _title_card(text: str, size: tuple[int, int], colour: str, duration: float):
    from moviepy import ImageClip

    image = Image.new("RGB", size, colour)
    draw = ImageDraw.Draw(image)
    font = ImageFont.load_default(size=max(12, size[1] // 10))
    box = draw.textbbox((0, 0), text, font=font)
    position = ((size[0] - (box[2] - box[0])) / 2, (size[1] - (box[3] - box[1])) / 2)
    draw.text(position, text, fill=(240, 240, 240), font=font)
    return ImageClip(np.asarray(image), duration=duration)


def _audio_track(path: Path, duration: float, fade_s: float):
    from moviepy import AudioFileClip, afx

    if not Path(path).is_file():
        raise StoryboardError(f"The audio file '{Path(path).name}' is not among the storyboard's audio files.")
    try:
        audio = AudioFileClip(str(path))
    except (OSError, KeyError, IndexError, ValueError) as err:
        raise StoryboardError(f"The audio file '{Path(path).name}' could not be read: {err}") from None
    if audio.duration is None or audio.duration <= 0:
        raise StoryboardError(f"The audio file '{Path(path).name}' holds no sound.")
    fitted = audio.with_effects([afx.AudioLoop(duration=duration)]) if audio.duration < duration else audio
    fitted = fitted.subclipped(0, duration)
    if fade_s > 0:
        fade = min(fade_s, duration / 2)
        fitted = fitted.with_effects([afx.AudioFadeIn(fade), afx.AudioFadeOut(fade)])
    return fitted


def film_duration(board: Storyboard, output_dir: Path) -> float:
    """The film's length in seconds, from the sidecars alone (cheap enough to run on every edit)."""
    return _duration(board, _check(board, output_dir))


def _stage_logger(
    on_progress: Callable[[float, str], None] | None, low: float, high: float, label: str,
    cancel: threading.Event | None = None,
):  # fmt: skip
    """moviepy's frame counter mapped onto [low, high] of the whole export; raises ExportCancelled between
    frames once `cancel` is set."""
    from proglog import ProgressBarLogger

    class _Logger(ProgressBarLogger):
        def bars_callback(self, bar, attr, value, old_value=None):
            if cancel is not None and cancel.is_set():
                raise ExportCancelled()
            total = self.bars[bar].get("total") or 0
            if on_progress and bar == "frame_index" and total:
                on_progress(low + (high - low) * min(1.0, value / total), f"{label}: frame {value}/{total}")

    return _Logger()


def _interpolate(
    source: Path, target: Path, fps: float, frames: int, source_fps: float, report: Callable[[float], None],
    cancel: threading.Event | None = None,
) -> None:  # fmt: skip
    """ffmpeg's motion-compensated frame interpolation (minterpolate) to a new frame rate.

    minterpolate ends at the last source frame's timestamp; holding that frame for one source frame's
    duration (tpad) keeps the film's length."""
    chain = f"minterpolate=fps={fps:g}:mi_mode=mci,tpad=stop_mode=clone:stop_duration={1 / source_fps:.6f}"
    args = [
        ffmpeg_exe(), "-hide_banner", "-loglevel", "error", "-y", "-i", str(source),
        "-vf", chain, "-frames:v", str(frames), "-an", "-c:v", "libx264", "-crf", "12",
        "-preset", "veryfast", "-pix_fmt", "yuv420p", "-progress", "pipe:1", "-nostats", str(target),
    ]  # fmt: skip
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    for line in proc.stdout:
        if cancel is not None and cancel.is_set():
            proc.kill()
            proc.wait()
            raise ExportCancelled()
        if line.startswith("frame=") and frames:
            report(min(1.0, int(line.split("=")[1]) / frames))
    stderr = proc.stderr.read()
    if proc.wait() != 0:
        raise RuntimeError(f"Frame interpolation failed: {stderr.strip()[-400:]}")


def _learned(
    frames_of: Callable[[], object], target: Path, fps: float, count: int, report: Callable[[float], None],
    cancel: threading.Event | None,
) -> None:  # fmt: skip
    """Stream a model's output frames (`frames_of()`) into an intermediate file, `count` expected."""
    writer = Mp4Writer(target, fps, crf=12)
    frames = frames_of()
    try:
        for n, frame in enumerate(frames, start=1):
            if cancel is not None and cancel.is_set():
                raise ExportCancelled()
            writer.write(frame)
            report(min(1.0, n / max(count, 1)))
        writer.close()
    except (InterpolationCancelled, UpscaleCancelled):
        writer.abort()
        raise ExportCancelled() from None
    except BaseException:
        writer.abort()
        raise
    finally:
        frames.close()


def _smooth(
    source: Path, target: Path, fps: float, frames: int, source_fps: float, board: Storyboard,
    models: FilmModels | None, report: Callable[[float], None], cancel: threading.Event | None,
) -> str:  # fmt: skip
    """Interpolate `source` to `fps`: learned (RIFE) unless the storyboard asks for ffmpeg or no interpolation
    model is available; says which ran (the film's record and the job's message carry it)."""
    problem = "the storyboard asks for it" if board.interpolation == "ffmpeg" else "no interpolation model was given"
    if board.interpolation == "learned" and models is not None:
        import torch

        try:
            interpolator = models.interpolator()
            _learned(lambda: interpolator.to_fps(read_frames(source), source_fps, fps, cancel=cancel), target, fps,
                     frames, report, cancel)  # fmt: skip
            return f"learned ({interpolator.info.name})"
        except UserError as err:
            problem = f"the interpolation model is not available: {err}"
        except torch.OutOfMemoryError:  # beside a generation on the same GPU: the film is still made
            torch.cuda.empty_cache()
            problem = "not enough GPU memory for the interpolation model beside the running jobs"
    _interpolate(source, target, fps, frames, source_fps, report, cancel)
    return f"ffmpeg minterpolate ({problem})"


def export_film(
    board: Storyboard,
    output_dir: Path,
    on_progress: Callable[[float, str], None] | None = None,
    sign: bool = True,
    cancel: threading.Event | None = None,
    into: str = FILMS_DIR,
    models: FilmModels | None = None,
    mark: bool = False,
) -> Path:
    """Render the storyboard to `<output>/<into>/<time>_<title>.<format>` (`into`: films/, or previews/ for a
    quick look); StoryboardError on bad input,
    ExportCancelled once `cancel` is set, LibraryError when the disk cannot take it.

    Stages: compose the shots (moviepy, frames streamed from the clip files); when the frame rate changes
    or for slow motion, interpolate motion (`models`' RIFE, else ffmpeg); upscale when the storyboard asks
    (`models`' upscaler); then add the audio and encode the chosen format.
    Every intermediate is a temporary file in the films folder, removed whatever happens; the film is
    published only once its file is complete. It is signed with Content Credentials listing its clips as
    ingredients; `<film>.json` records the storyboard and whether signing worked. `mark`: the invisible
    watermark with the film's own payload (a soft binding of its manifest; MP4 and WebM, not GIF's palette).
    """
    output_dir = Path(output_dir)
    checked = _check(board, output_dir)
    films_dir = output_dir / into
    try:
        films_dir.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise disk_error(err, output_dir) from None
    temporaries: list[Path] = []

    def scratch(suffix: str) -> Path:
        temporaries.append(temporary(films_dir, f".{suffix}"))
        return temporaries[-1]

    try:
        return _render(board, checked, output_dir, films_dir, scratch, on_progress, sign, cancel, models, mark)
    except (OSError, RuntimeError) as err:  # RuntimeError: ffmpeg's own words, e.g. on a read-only disk
        plain = write_error(err, films_dir)
        if plain is err:
            raise
        raise plain from None
    finally:
        for path in temporaries:
            discard(path)


def _render(board, checked, output_dir, films_dir, scratch, on_progress, sign, cancel, models, mark) -> Path:
    from moviepy import CompositeVideoClip, VideoFileClip, vfx

    if board.audio:
        _audio_track(audio_path(output_dir, board.audio), 1.0, 0.0).close()  # a broken file is refused first
    opened, clips = _open(checked)
    try:
        size = tuple(board.size) if board.size else tuple(clips[0].size)
        if size[0] % 2 or size[1] % 2:
            raise StoryboardError(f"The film size must have even sides; got {size[0]}x{size[1]}.")
        source_fps = clips[0].fps
        target_fps = float(board.fps or source_fps)
        seconds = _duration(board, checked)
        height = UPSCALE_TO[board.upscale]
        final = size if height is None else tuple(plan_size(size[0], size[1], None, height, 2)[:2])  # or too big
        # the film, and up to three intermediates of about its size while it is made
        check_room(films_dir, 4 * estimate_mp4_mb(round(seconds * target_fps), *final), "the film")
        audio = None
        pieces = [_letterbox(c, size) for c in clips]
        for n, shot in enumerate(board.shots[:-1]):
            if shot.transition == "crossfade":
                pieces[n + 1] = _fade_in(pieces[n + 1], shot.crossfade_s)
        if board.title:
            pieces.insert(0, _title_card(board.title, size, board.title_colour, board.title_s))
        # A crossfade pulls the next shot back by its length.
        start = 0.0
        timed = []
        shots = ([None] if board.title else []) + list(board.shots)
        for n, piece in enumerate(pieces):
            timed.append(piece.with_start(start))
            joins = n + 1 < len(pieces) and shots[n] is not None and shots[n].transition == "crossfade"
            start += piece.duration - (shots[n].crossfade_s if joins else 0.0)
        video = CompositeVideoClip(timed, size=size).with_duration(start)
        sample_fps = source_fps
        if board.slow_motion:
            video = video.with_effects([vfx.MultiplySpeed(0.5)])
            sample_fps = source_fps / 2  # each source frame once; interpolation makes the rest
        if board.audio:
            audio = _audio_track(audio_path(output_dir, board.audio), video.duration, board.audio_fade_s)

        interpolate = board.slow_motion or abs(target_fps - source_fps) > 1e-6
        motion = None
        if interpolate or height is not None:
            current = scratch("mp4")
            video.write_videofile(
                str(current), fps=sample_fps, codec="libx264", audio=False, preset="veryfast",
                ffmpeg_params=["-crf", "12", "-pix_fmt", "yuv420p"],
                logger=_stage_logger(on_progress, 0.0, 0.4, "Composing", cancel),
            )  # fmt: skip
            count = round(video.duration * target_fps)
            if interpolate:
                smooth = scratch("mp4")
                motion = _smooth(
                    current, smooth, target_fps, count, sample_fps, board, models,
                    lambda f: on_progress and on_progress(0.4 + 0.2 * f, f"Interpolating to {target_fps:g} fps"),
                    cancel,
                )  # fmt: skip
                current = smooth
            if height is not None:
                if models is None:
                    raise StoryboardError("This export has no upscaler: upscaling is not available here.")
                upscaler = models.upscaler()
                big, shown = scratch("mp4"), f"{board.upscale} ({upscaler.info.name})"
                info = video_info(current)
                plan = upscaler.plan(info.width, info.height, None, height)
                _learned(lambda: upscaler.upscale(read_frames(current), plan, cancel=cancel), big, info.fps,
                         count, lambda f: on_progress and on_progress(0.6 + 0.2 * f, f"Upscaling to {shown}"),
                         cancel)  # fmt: skip
                current = big
            video = VideoFileClip(str(current), audio=False)
            opened.append(video)
        low = 0.8 if interpolate or height is not None else 0.0
        tmp = scratch(board.format)
        claim = provenance.manifest(f"{slugify(board.title or 'film')}.{board.format}", model=None, composite=True)
        # shots made with the watermark carry their clips' marks, which name them; a film mark over them would
        # blur both, so the film gets its own only when none of its shots is marked
        inherited = _shot_marks(checked)
        payload = provenance.bind_mark(claim)[0] if mark and not inherited and board.format != "gif" else None
        if payload is not None:  # every frame as it is encoded
            video = video.image_transform(
                lambda frame: watermark.embed_frame(np.clip(frame, 0, 255).astype(np.uint8), payload)
            )
        if board.format == "gif":
            scale = min(1.0, GIF_MAX_WIDTH / size[0])
            gif = video.resized(scale) if scale < 1 else video
            gif.write_gif(str(tmp), fps=target_fps, logger=_stage_logger(on_progress, low, 1.0, "Writing GIF", cancel))
        else:
            if audio is not None:
                video = video.with_audio(audio)
            settings = FORMATS[board.format]
            video.write_videofile(
                str(tmp), fps=target_fps, codec=settings["codec"], audio=audio is not None,
                audio_codec=settings["audio_codec"], audio_fps=settings["audio_fps"],
                ffmpeg_params=settings["ffmpeg_params"], temp_audiofile=str(scratch(settings["audio_ext"])),
                logger=_stage_logger(on_progress, low, 1.0, "Encoding", cancel),
            )  # fmt: skip
        if cancel is not None and cancel.is_set():
            raise ExportCancelled()
        if not _complete(tmp, board.format):  # ffmpeg can end "successfully" on a full disk
            raise LibraryError("The film could not be written completely; is the output folder's disk full?")
        stem = f"{time.strftime('%Y%m%d-%H%M%S')}_{slugify(board.title or 'film')}"
        record = {"app": APP_NAME, "app_version": __version__, "storyboard": board.to_json(),
                  "size": list(final), "interpolation": motion}  # fmt: skip
        claim = provenance.manifest(f"{stem}.{board.format}", model=None, composite=True)
        if payload is not None:
            claim = provenance.bind_mark(claim, payload)[1]
            record["provenance"] = {"watermark": f"{payload:08x}"}
        elif inherited:
            claim = provenance.bind_marks(claim, [int(mark, 16) for mark in inherited.values()])
            record["provenance"] = {"shot_watermarks": inherited}
        if sign:
            signed = scratch(board.format)
            sources = [c.video for c in checked]
            try:
                provenance.sign_file(tmp, signed, claim, ingredients=sources)
                os.replace(signed, tmp)
                record["provenance"] = {**record.get("provenance", {}), "signed": True,
                                        "ingredients": [p.name for p in sources]}  # fmt: skip
            except provenance.SigningError as err:  # the film is kept unsigned; the record says why
                record["provenance"] = {**record.get("provenance", {}), "signed": False, "signing_error": str(err)}
        sidecar = scratch("json")
        write_json(sidecar, record)
        film = publish(tmp, films_dir, stem, f".{board.format}",
                       taken=lambda candidate: (films_dir / f"{candidate}.{board.format}.json").exists())  # fmt: skip
        try:
            link_no_overwrite(sidecar, film.with_suffix(film.suffix + ".json"))
        except OSError:
            film.unlink(missing_ok=True)  # never a film without its record
            raise
        if on_progress:
            on_progress(1.0, f"Film ready: {film.name}")
        return film
    finally:
        for clip in opened:
            clip.close()


def _shot_marks(checked: list[_CheckedShot]) -> dict[str, str]:
    """The watermark of each marked clip among the shots, by clip name (a clip used twice is named once)."""
    marks = {}
    for c in checked:
        try:
            sidecar = read_json(c.video.with_suffix(".json"))
        except (OSError, ValueError):
            continue
        mark = sidecar.get("provenance", {}).get("watermark") if isinstance(sidecar, dict) else None
        if isinstance(mark, str):
            marks[c.video.name] = mark
    return marks


def _complete(path: Path, fmt: str) -> bool:
    """Whether an encoded file is whole: an MP4 with both its index (moov) and its media (mdat), a GIF with
    its trailer, a WebM with its header and more."""
    try:
        data = path.read_bytes() if fmt != "mp4" else None
        if fmt == "gif":
            return data is not None and data[:3] == b"GIF" and data.rstrip(b"\0")[-1:] == b"\x3b"
        if fmt == "webm":
            return data is not None and data[:4] == b"\x1a\x45\xdf\xa3" and len(data) > 1024
        boxes, position, end = set(), 0, path.stat().st_size
        with open(path, "rb") as f:
            while position < end:
                f.seek(position)
                header = f.read(16)
                if len(header) < 8:
                    return False
                size, kind = int.from_bytes(header[:4], "big"), header[4:8]
                if size == 1 and len(header) == 16:
                    size = int.from_bytes(header[8:16], "big")
                if size < 8:
                    return False
                boxes.add(kind)
                position += size
        return {b"moov", b"mdat"} <= boxes and position == end
    except OSError:
        return False
