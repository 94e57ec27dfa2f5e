"""Post-production of a library clip: learned upscaling and learned frame interpolation. Each makes a new
clip beside its source; frames stream from the source file through the model into ffmpeg, so memory stays
flat in the clip's length.

The new clip's sidecar keeps its source's generation settings (so *Reuse settings* gives the source's),
names the source (`source`) and lists every post step so far (`post`: action, model file and SHA-256,
settings, the result's size and frame rate). Its Content Credentials open the source as the parent
ingredient and add the edit; the watermark is embedded again when it is on.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from library import provenance
from library.clips import Clip, ClipFiles, ClipOptions, marked, publish_clip, signer
from library.media import Mp4Writer, estimate_mp4_mb, read_frames, video_info
from pipelines import APP_NAME, __version__, engine_versions
from pipelines.errors import UserError
from pipelines.interpolate import InterpolationCancelled, Interpolator
from pipelines.manager import Progress
from pipelines.upscale import UpscaleCancelled, Upscaler, UpscalerError, plan_size

UPSCALE, INTERPOLATE = "upscale", "interpolate"
FACTORS = (2, 4)
TARGET_HEIGHTS = (1080, 2160)
MAX_FPS = 120
PREVIEW_EVERY_S = 0.5
WRITING = "write"  # the job's last stage, as the queue names it: encoding, signing, publishing (not cancellable)


class PostError(UserError):
    """A post-production request that cannot be done (the message names the field and the limit)."""


class PostCancelled(Exception):
    """Cancelled between frames: nothing was published."""


@dataclass(frozen=True)
class PostRequest:
    """A checked post-production job: what to do to which library clip, with which model file."""

    action: str  # UPSCALE or INTERPOLATE
    source: str  # the clip's file name in the library
    model: str  # the model choice as the user gave it ("default", "test", a folder name or a path)
    scale: int | None = None  # upscale: 2 or 4
    height: int | None = None  # upscale: a target height instead of a scale
    factor: int | None = None  # interpolate: 2 or 4 times the frames
    fps: float | None = None  # interpolate: a target frame rate instead

    @property
    def label(self) -> str:
        if self.action == UPSCALE:
            how = f"×{self.scale}" if self.scale else f"to {self.height}p"
            return f"Upscale {how}: {self.source}"
        how = f"×{self.factor}" if self.factor else f"to {self.fps:g} fps"
        return f"Smooth motion {how}: {self.source}"

    def record(self) -> dict[str, Any]:
        return dict(self.__dict__)


def check_upscale(clip: Clip, model: str, scale: Any = None, height: Any = None, model_scale: int = 2) -> PostRequest:
    """A valid upscale of `clip`, or PostError naming the field: exactly one of `scale` (2 or 4) and `height`
    (1080 or 2160), and a result of at most the upscaler's limit a side."""
    scale, height = _whole(scale, "scale"), _whole(height, "height")
    if (scale is None) == (height is None):
        raise PostError("Upscale needs either a scale (2 or 4) or a target height (1080 or 2160), not both.")
    if scale is not None and scale not in FACTORS:
        raise PostError(f"scale must be 2 or 4, not {scale}.")
    if height is not None and height not in TARGET_HEIGHTS:
        raise PostError(f"height must be 1080 or 2160, not {height}.")
    info = video_info(clip.video)
    try:
        plan_size(info.width, info.height, scale, height, model_scale)
    except UpscalerError as err:  # too big: it names the limit
        raise PostError(str(err)) from None
    return PostRequest(UPSCALE, clip.name, model, scale=scale, height=height)


def check_interpolate(clip: Clip, model: str, factor: Any = None, fps: Any = None) -> PostRequest:
    """A valid frame interpolation of `clip`, or PostError naming the field: a factor of 2 or 4, or a target
    frame rate above the clip's and at most MAX_FPS."""
    factor = _whole(factor, "factor")
    if fps not in (None, "", 0):  # 0: none given, as the API's default
        try:
            fps = float(fps)
        except (TypeError, ValueError):
            raise PostError(f"fps must be a number, not {str(fps)[:20]!r}.") from None
        if not math.isfinite(fps):
            raise PostError(f"fps must be a number, not {fps}.")
    else:
        fps = None
    if (factor is None) == (fps is None):
        raise PostError("Smooth motion needs either a factor (2 or 4) or a target frame rate, not both.")
    if factor is not None and factor not in FACTORS:
        raise PostError(f"factor must be 2 or 4, not {factor}.")
    source_fps = video_info(clip.video).fps
    if fps is not None and not (source_fps < fps <= MAX_FPS):
        raise PostError(f"fps must be above the clip's {source_fps:g} fps and at most {MAX_FPS}, not {fps:g}.")
    if factor is not None and source_fps * factor > MAX_FPS:
        raise PostError(f"×{factor} would make {source_fps * factor:g} fps; at most {MAX_FPS} fps.")
    return PostRequest(INTERPOLATE, clip.name, model, factor=factor, fps=fps)


def upscale_clip(
    clip: Clip, request: PostRequest, upscaler: Upscaler, out_dir: Path, options: ClipOptions = ClipOptions(),  # noqa: B008
    cancel: threading.Event | None = None, report: Callable[[Progress], None] | None = None,
) -> ClipFiles:  # fmt: skip
    """The clip upscaled by `upscaler` to the request's scale or height, published as a new clip."""
    info = video_info(clip.video)
    plan = upscaler.plan(info.width, info.height, request.scale, request.height)
    width, height = plan.width, plan.height
    settings = {"scale": request.scale} if request.scale else {"height": request.height}
    frames = upscaler.upscale(read_frames(clip.video), plan, cancel=cancel)
    suffix = f"x{request.scale}" if request.scale else f"{request.height}p"
    return _derive(clip, request, frames, info.fps, info.frames, (width, height), upscaler.info, "c2pa.resized",
                   settings, suffix, out_dir, options, cancel, report)  # fmt: skip


def interpolate_clip(
    clip: Clip, request: PostRequest, interpolator: Interpolator, out_dir: Path,
    options: ClipOptions = ClipOptions(),  # noqa: B008
    cancel: threading.Event | None = None, report: Callable[[Progress], None] | None = None,
) -> ClipFiles:  # fmt: skip
    """The clip with learned in-between frames (×factor, or to a frame rate; same duration), as a new clip."""
    info = video_info(clip.video)
    if request.factor:
        fps, count = info.fps * request.factor, (info.frames - 1) * request.factor + 1
        frames = interpolator.by_factor(read_frames(clip.video), request.factor, cancel=cancel)
        settings, suffix = {"factor": request.factor}, f"smooth-x{request.factor}"
    else:
        fps, count = request.fps, round(info.frames * request.fps / info.fps)
        frames = interpolator.to_fps(read_frames(clip.video), info.fps, request.fps, cancel=cancel)
        settings, suffix = {"fps": request.fps}, f"{request.fps:g}fps"
    return _derive(clip, request, frames, fps, count, (info.width, info.height), interpolator.info, "c2pa.edited",
                   settings, suffix, out_dir, options, cancel, report)  # fmt: skip


def _derive(
    clip: Clip, request: PostRequest, frames: Iterator[np.ndarray], fps: float, count: int, size: tuple[int, int],
    model_info: Any, action: str, settings: dict, suffix: str, out_dir: Path, options: ClipOptions,
    cancel: threading.Event | None, report: Callable[[Progress], None] | None,
) -> ClipFiles:  # fmt: skip
    """Stream `frames` into a new clip beside `clip`: watermark, sign with the source as parent, publish."""
    started = time.monotonic()
    model = {"name": model_info.name, "file": Path(model_info.path).name, "sha256": model_info.sha256,
             "architecture": model_info.architecture}  # fmt: skip
    step = {"action": request.action, "model": model, "settings": settings, "size": list(size), "fps": fps,
            "frames": count}  # fmt: skip
    sidecar = _sidecar(clip, step, fps, count)
    claim = provenance.edit_manifest(f"{clip.video.stem}_{suffix}.mp4", clip.name, action, model, settings)
    inherited = clip.sidecar.get("provenance", {}).get("watermark")
    if inherited and options.watermark:
        # the source's mark is in every frame already (resized or blended with its neighbours, still readable):
        # a second one over it would blur both, so the copy carries its source's, bound to its manifest too
        payload, (_, claim) = None, provenance.bind_mark(claim, int(inherited, 16))
        sidecar["provenance"] = {**sidecar.get("provenance", {}), "watermark": inherited, "watermark_of": clip.name}
    else:
        payload, claim = marked(claim, options, sidecar)
    comment = f"AI-generated with {clip.sidecar.get('model_name', 'Wan')}, {request.label.split(':')[0].lower()} " \
              f"({APP_NAME} {__version__})"  # fmt: skip

    def encode(path: Path) -> None:
        writer = Mp4Writer(path, fps, comment=comment, mark=payload)
        shown = 0.0
        try:
            for n, frame in enumerate(frames, start=1):
                if cancel is not None and cancel.is_set():
                    raise PostCancelled()
                writer.write(frame)
                if report is not None:
                    now = time.monotonic()
                    preview = _small(frame)[None] if now - shown >= PREVIEW_EVERY_S or n == count else None
                    shown = now if preview is not None else shown
                    elapsed = now - started
                    eta = elapsed / n * max(0, count - n) if n else None
                    report(Progress(request.action, min(1.0, n / max(count, 1)), f"Frame {n}/{count}", step=n,
                                    total_steps=count, eta_s=eta, preview=preview))  # fmt: skip
            if report is not None:  # every frame made: from here on the clip is written, not cancelled
                report(Progress(WRITING, 1.0, "Writing the clip"))
            writer.close()
        except (UpscaleCancelled, InterpolationCancelled):
            writer.abort()
            raise PostCancelled() from None
        except BaseException:
            writer.abort()
            raise
        finally:
            if hasattr(frames, "close"):
                frames.close()  # stops the model and the source's decoder

    sign = signer(claim, [clip.video], "parentOf") if options.sign else None

    hint = f"{_without_stamp(clip.video.stem)}_{suffix}"
    pictures = {key: _picture(clip.video.parent / clip.sidecar[key]) if clip.sidecar.get(key) else None
                for key in ("input_image", "end_image")}  # fmt: skip
    try:
        return publish_clip(encode, estimate_mp4_mb(count, *size), Path(out_dir), hint, sidecar, sign=sign,
                            input_image=pictures["input_image"], end_image=pictures["end_image"])  # fmt: skip
    except UpscalerError as err:
        raise PostError(str(err)) from None


def _sidecar(clip: Clip, step: dict, fps: float, count: int) -> dict[str, Any]:
    """The source's sidecar (its generation settings, so Reuse gives them), with this step on its chain."""
    keep = {k: v for k, v in clip.sidecar.items() if k not in ("file", "input_image", "end_image", "provenance",
                                                                 "timings", "post", "source", "video")}  # fmt: skip
    return {
        **keep,
        "created_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "app_version": __version__,
        "versions": engine_versions(),
        "source": clip.name,
        "post": [*clip.sidecar.get("post", []), step],
        "video": {"width": step["size"][0], "height": step["size"][1], "fps": fps, "frames": count},
        "duration_s": round(count / fps, 3) if fps else clip.sidecar.get("duration_s"),
    }


def _whole(value: Any, field: str) -> int | None:
    if value in (None, "", 0):
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise PostError(f"{field} must be a whole number, not {str(value)[:20]!r}.") from None
    if not math.isfinite(number) or number != int(number):
        raise PostError(f"{field} must be a whole number, not {value}.")
    return int(number)


def _without_stamp(stem: str) -> str:
    parts = stem.split("_", 1)
    return parts[1] if len(parts) == 2 and parts[0][:8].isdigit() else stem


def _picture(path: Path) -> Image.Image | None:
    try:
        return Image.open(path).convert("RGB")
    except OSError:
        return None


def _small(frame: np.ndarray, height: int = 160) -> np.ndarray:
    """A preview-sized copy (the page shows previews small; a 4K frame would be 25 MB a second)."""
    h, w, _ = frame.shape
    if h <= height:
        return frame
    image = Image.fromarray(frame).resize((max(2, round(w * height / h)), height), Image.BILINEAR)
    return np.asarray(image)
