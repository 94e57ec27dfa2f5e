"""Frames to a browser-playable MP4 plus a JSON sidecar, written so that nothing is half-written or overwritten.

Both files are written under temporary names in the output folder, then hard-linked to their final
names: a link fails instead of replacing an existing file, so two runs that pick the same name never
clobber each other, and a crash leaves only a temporary file that `clean_temporaries` removes.
The sidecar is written last: a clip without a sidecar is not in the history.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import time
import unicodedata
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import imageio_ffmpeg
import numpy as np

TMP_PREFIX = ".partial-"
SIDECAR_SUFFIX = ".json"
INPUT_IMAGE_SUFFIX = ".input.png"


@dataclass(frozen=True)
class ClipFiles:
    video: Path
    sidecar: Path
    input_image: Path | None = None


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


def link_no_overwrite(src: Path, dst: Path) -> None:
    """Give `src` the name `dst`, failing with FileExistsError rather than replacing anything there."""
    try:
        os.link(src, dst)
    except FileExistsError:
        raise
    except OSError:  # a filesystem without hard links: check, then rename
        if dst.exists():
            raise FileExistsError(dst) from None
        os.replace(src, dst)


def write_clip(
    frames: np.ndarray,
    fps: float,
    out_dir: Path,
    stem_hint: str,
    sidecar: dict[str, Any],
    input_image: Any | None = None,
    comment: str | None = None,
    sign: Callable[[Path, Path], None] | None = None,
) -> ClipFiles:
    """Encode and publish a clip under a fresh name `<time>_<hint>[-n].mp4` with its sidecar.

    `sign(unsigned, signed)` adds Content Credentials; if it fails the unsigned clip is published and the
    sidecar says why, so a signing problem never loses a clip."""
    out_dir.mkdir(parents=True, exist_ok=True)
    token = f"{os.getpid()}-{time.monotonic_ns()}"
    tmp_video = out_dir / f"{TMP_PREFIX}{token}.mp4"
    tmp_sidecar = out_dir / f"{TMP_PREFIX}{token}.json"
    tmp_image = out_dir / f"{TMP_PREFIX}{token}.png"
    stamp = time.strftime("%Y%m%d-%H%M%S")
    tmp_signed = out_dir / f"{TMP_PREFIX}{token}.signed.mp4"
    provenance: dict[str, Any] = {"signed": False}
    try:
        encode_mp4(frames, fps, tmp_video, comment=comment)
        if sign is not None:
            try:
                sign(tmp_video, tmp_signed)
                os.replace(tmp_signed, tmp_video)
                provenance = {"signed": True}
            except Exception as err:  # any signing failure: keep the clip, say why
                provenance = {"signed": False, "signing_error": str(err)}
        if input_image is not None:
            input_image.save(tmp_image, format="PNG")
        for n in range(1, 10_000):
            stem = f"{stamp}_{stem_hint}" + (f"-{n}" if n > 1 else "")
            video = out_dir / f"{stem}.mp4"
            meta = out_dir / f"{stem}{SIDECAR_SUFFIX}"
            image = out_dir / f"{stem}{INPUT_IMAGE_SUFFIX}" if input_image is not None else None
            if meta.exists() or (image is not None and image.exists()):
                continue
            try:
                link_no_overwrite(tmp_video, video)
            except FileExistsError:
                continue
            break
        else:
            raise RuntimeError(f"no free file name for {stem_hint} in {out_dir}")
        if image is not None:
            link_no_overwrite(tmp_image, image)
        data = dict(sidecar, file=video.name, input_image=image.name if image is not None else None)
        data["provenance"] = {**data.get("provenance", {}), **provenance}
        tmp_sidecar.write_text(json.dumps(data, indent=2, ensure_ascii=False))
        link_no_overwrite(tmp_sidecar, meta)
        return ClipFiles(video, meta, image)
    finally:
        for tmp in (tmp_video, tmp_sidecar, tmp_image, tmp_signed):
            tmp.unlink(missing_ok=True)


def read_sidecar(video: Path) -> dict[str, Any]:
    return json.loads(video.with_suffix(SIDECAR_SUFFIX).read_text())


def clean_temporaries(out_dir: Path, older_than_s: float = 3600) -> int:
    """Remove what crashed runs left behind; recent ones may belong to a run still writing."""
    removed = 0
    now = time.time()
    for path in out_dir.glob(f"{TMP_PREFIX}*"):
        if now - path.stat().st_mtime > older_than_s:
            path.unlink(missing_ok=True)
            removed += 1
    return removed
