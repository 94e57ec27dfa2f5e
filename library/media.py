"""Media through the ffmpeg inside imageio-ffmpeg: frames to a browser-playable H.264 MP4, labels players
show, and reading a clip's last frame back."""

from __future__ import annotations

import re
import subprocess
import unicodedata
from collections.abc import Callable
from pathlib import Path

import imageio_ffmpeg
import numpy as np
from PIL import Image


def ffmpeg_exe() -> str:
    """The ffmpeg that ships inside imageio-ffmpeg (a static build with libx264), so no system ffmpeg is needed."""
    return imageio_ffmpeg.get_ffmpeg_exe()


def encode_mp4(frames: np.ndarray, fps: float, path: Path, crf: int = 18, comment: str | None = None) -> None:
    """H.264 in yuv420p with the index at the front (+faststart): plays in every browser and phone."""
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
        raise ValueError(f"frames must be uint8 (F, H, W, 3), got {frames.dtype} {frames.shape}")
    count, height, width, _ = frames.shape
    if count == 0:
        raise ValueError("no frames to encode")
    if width % 2 or height % 2:
        raise ValueError(f"H.264 in yuv420p needs even dimensions, got {width}x{height}")
    args = [
        ffmpeg_exe(), "-hide_banner", "-loglevel", "error", "-y",
        "-f", "rawvideo", "-pix_fmt", "rgb24", "-s", f"{width}x{height}", "-r", f"{fps}", "-i", "-",
        "-an", "-c:v", "libx264", "-preset", "medium", "-crf", str(crf), "-pix_fmt", "yuv420p",
        "-movflags", "+faststart", "-f", "mp4",
    ]  # fmt: skip
    if comment:
        args += label_args(comment)
    args.append(str(path))
    proc = subprocess.Popen(args, stdin=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        for frame in frames:
            proc.stdin.write(np.ascontiguousarray(frame).tobytes())
        proc.stdin.close()
    except BrokenPipeError:
        pass  # ffmpeg died; its stderr says why
    stderr = proc.stderr.read().decode(errors="replace")
    if proc.wait() != 0:
        raise RuntimeError(f"ffmpeg could not encode the clip: {stderr.strip()[-500:]}")


def label_args(comment: str) -> list[str]:
    """ffmpeg arguments for the plain-text label players show (comment and description tags)."""
    return ["-metadata", f"comment={comment}", "-metadata", f"description={comment}"]


def slugify(text: str, limit: int = 40) -> str:
    ascii_text = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode()
    slug = re.sub(r"[^a-zA-Z0-9]+", "-", ascii_text).strip("-").lower()
    return slug[:limit].rstrip("-") or "clip"


def last_frame(video: Path) -> Image.Image:
    """A clip's final frame, to start the next shot from."""
    reader = imageio_ffmpeg.read_frames(str(video))
    meta = next(reader)
    width, height = meta["size"]
    frame = None
    for buffer in reader:  # H.264 has no cheap seek to the last frame of a short clip; read through
        frame = buffer
    if frame is None:
        raise ValueError(f"{video.name} has no frames")
    return Image.fromarray(np.frombuffer(frame, np.uint8).reshape(height, width, 3).copy())


def frame_at(video: Path, seconds: float) -> Image.Image:
    """The frame shown at `seconds` into a clip (the last one past its end): a trim point's picture."""
    return _frame(video, lambda meta: max(0, int(seconds * meta.get("fps", 0) + 1e-6)))


def middle_frame(video: Path) -> Image.Image:
    """The frame in the middle of a clip: its poster (the first frame of an image-to-video clip is only
    its input picture)."""
    return _frame(video, lambda meta: max(0, round(meta.get("duration", 0) * meta.get("fps", 0) / 2)))


def _frame(video: Path, index: Callable[[dict], int]) -> Image.Image:
    """Frame number `index(metadata)` of a video (its last frame when it has fewer), decoding no further."""
    reader = imageio_ffmpeg.read_frames(str(video))
    meta = next(reader)
    width, height = meta["size"]
    wanted = index(meta)
    frame = None
    for n, buffer in enumerate(reader):
        frame = buffer
        if n >= wanted:
            break
    reader.close()
    if frame is None:
        raise ValueError(f"{video.name} has no frames")
    return Image.fromarray(np.frombuffer(frame, np.uint8).reshape(height, width, 3).copy())


def estimate_mp4_mb(frames: int, width: int, height: int) -> float:
    """A generous size of a clip as the studio encodes it (CRF 18 on generated video stays well under a
    quarter of a bit per pixel); twice over while the signed copy is written beside it."""
    return 2 * frames * width * height * 0.25 / 8 / 2**20 + 0.5
