"""Media through the ffmpeg inside imageio-ffmpeg: frames to a browser-playable H.264 MP4 (all at once, or
streamed frame by frame), labels players show, and reading a clip's frames back."""

from __future__ import annotations

import os
import re
import subprocess
import time
import unicodedata
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import imageio_ffmpeg
import numpy as np
from PIL import Image

from library import watermark


def ffmpeg_exe() -> str:
    """The ffmpeg that ships inside imageio-ffmpeg (a static build with libx264), so no system ffmpeg is needed."""
    return imageio_ffmpeg.get_ffmpeg_exe()


def encode_mp4(frames: np.ndarray, fps: float, path: Path, crf: int = 18, comment: str | None = None,
               joinable: bool = False, mark: int | None = None) -> None:  # fmt: skip
    """H.264 in yuv420p with the index at the front (+faststart): plays in every browser and phone. `joinable`
    and `mark`: see `Mp4Writer`."""
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
        raise ValueError(f"frames must be uint8 (F, H, W, 3), got {frames.dtype} {frames.shape}")
    if len(frames) == 0:
        raise ValueError("no frames to encode")
    writer = Mp4Writer(path, fps, crf, comment, joinable, mark)
    try:
        for frame in frames:
            writer.write(frame)
    except BaseException:
        writer.abort()
        raise
    writer.close()


class Mp4Writer:
    """Frames streamed into ffmpeg one at a time as they are made, so memory stays flat in the clip's length
    (a 4K upscale of a 5 s clip is 3 GB of frames). The encoder starts on the first frame (its size);
    `close()` finishes the file and raises RuntimeError with ffmpeg's words; `abort()` kills it. `joinable`: no
    B-frames, so each frame's presentation and decoding times are equal from 0 and segments join end to end
    without re-encoding (`join_mp4`; with B-frames the decoder's start delay leaves gaps at the joints). `mark`:
    a watermark payload laid into each frame as it is written (`watermark.embed_frame`), so the mark of frame n
    is computed while x264 encodes the frames before it, and no marked copy of the clip is held."""

    def __init__(self, path: Path, fps: float, crf: int = 18, comment: str | None = None, joinable: bool = False,
                 mark: int | None = None):  # fmt: skip
        self.path, self.fps, self.crf, self.comment = Path(path), fps, crf, comment
        self.joinable, self.mark = joinable, mark
        self.frames = 0
        self._proc: subprocess.Popen | None = None

    def write(self, frame: np.ndarray) -> None:
        if frame.ndim != 3 or frame.shape[-1] != 3 or frame.dtype != np.uint8:
            raise ValueError(f"a frame must be uint8 (H, W, 3), got {frame.dtype} {frame.shape}")
        height, width, _ = frame.shape
        if self._proc is None:
            if width % 2 or height % 2:
                raise ValueError(f"H.264 in yuv420p needs even dimensions, got {width}x{height}")
            self.size = (width, height)
            args = [
                ffmpeg_exe(), "-hide_banner", "-loglevel", "error", "-y",
                "-f", "rawvideo", "-pix_fmt", "rgb24", "-s", f"{width}x{height}", "-r", f"{self.fps}", "-i", "-",
                "-an", "-c:v", "libx264", "-preset", "medium", "-crf", str(self.crf), "-pix_fmt", "yuv420p",
                "-movflags", "+faststart", "-f", "mp4",
            ]  # fmt: skip
            args += label_args(self.comment) if self.comment else []
            args += ["-bf", "0"] if self.joinable else []
            self._proc = subprocess.Popen([*args, str(self.path)], stdin=subprocess.PIPE, stderr=subprocess.PIPE)
        elif (width, height) != self.size:
            raise ValueError(f"frame {self.frames} is {width}x{height}, the clip is {self.size[0]}x{self.size[1]}")
        if self.mark is not None:
            frame = watermark.embed_frame(frame, self.mark)
        try:
            self._proc.stdin.write(memoryview(np.ascontiguousarray(frame)).cast("B"))  # no copy
        except BrokenPipeError:
            self.close()  # raises with ffmpeg's reason
            raise RuntimeError("ffmpeg stopped taking frames") from None
        self.frames += 1

    def close(self) -> None:
        if self._proc is None:
            raise ValueError("no frames to encode")
        try:
            self._proc.stdin.close()
        except BrokenPipeError:
            pass
        stderr = self._proc.stderr.read().decode(errors="replace")
        if self._proc.wait() != 0:
            raise RuntimeError(f"ffmpeg could not encode the clip: {stderr.strip()[-500:]}")

    def abort(self) -> None:
        if self._proc is not None and self._proc.poll() is None:
            self._proc.kill()
            self._proc.wait()


def join_mp4(segments: list[Path], path: Path, comment: str | None = None) -> None:
    """MP4 segments written by `Mp4Writer` with the same size and rate, joined into one file without re-encoding
    (ffmpeg's concat demuxer, stream copy: one encoder's settings, so the joint is seamless and lossless)."""
    if not segments:
        raise ValueError("no segments to join")
    folder = Path(segments[0]).parent
    listing = folder / f".join-{os.getpid()}-{time.monotonic_ns()}.txt"  # names relative to the listing's folder
    listing.write_text("".join(f"file '{Path(s).name}'\n" for s in segments))
    args = [ffmpeg_exe(), "-hide_banner", "-loglevel", "error", "-y", "-f", "concat", "-safe", "0", "-i",
            str(listing), "-c", "copy", "-movflags", "+faststart", *(label_args(comment) if comment else []),
            "-f", "mp4", str(path)]  # fmt: skip
    try:
        done = subprocess.run(args, capture_output=True)
    finally:
        listing.unlink(missing_ok=True)
    if done.returncode != 0:
        raise RuntimeError(f"ffmpeg could not join the clip: {done.stderr.decode(errors='replace').strip()[-500:]}")


@dataclass(frozen=True)
class VideoInfo:
    width: int
    height: int
    fps: float
    frames: int  # as the container says (ffmpeg's estimate from duration × fps)


def video_info(video: Path) -> VideoInfo:
    """Size, frame rate and frame count of a video, read from its header only."""
    reader = imageio_ffmpeg.read_frames(str(video))
    meta = next(reader)
    reader.close()
    width, height = meta["size"]
    fps = float(meta.get("fps") or 0)
    return VideoInfo(width, height, fps, round(float(meta.get("duration") or 0) * fps))


def read_frames(video: Path) -> Iterator[np.ndarray]:
    """A video's frames, decoded one at a time as uint8 (H, W, 3) arrays; the decoder stops when the
    consumer does (the generator is closed)."""
    reader = imageio_ffmpeg.read_frames(str(video))
    meta = next(reader)
    width, height = meta["size"]
    try:
        for buffer in reader:
            yield np.frombuffer(buffer, np.uint8).reshape(height, width, 3).copy()  # writable, as torch wants
    finally:
        reader.close()


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
