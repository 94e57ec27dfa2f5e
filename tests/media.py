"""Reading back what the studio wrote: real decoding of the files, never trusting our own metadata."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import imageio_ffmpeg
import numpy as np


def decode_video(path: Path) -> tuple[np.ndarray, float]:
    """All frames as (F, H, W, 3) uint8 and the container's frame rate."""
    reader = imageio_ffmpeg.read_frames(str(path))
    meta = next(reader)
    width, height = meta["size"]
    frames = [np.frombuffer(buf, np.uint8).reshape(height, width, 3) for buf in reader]
    return np.stack(frames), float(meta["fps"])


def probe(path: Path) -> dict:
    """ffprobe's view of the first video stream and the container's flags."""
    exe = shutil.which("ffprobe")
    assert exe, "ffprobe is missing: .ci/run installs Debian's ffmpeg"
    out = subprocess.run(
        [exe, "-v", "error", "-print_format", "json", "-show_streams", "-show_format", str(path)],
        check=True, capture_output=True, text=True,
    ).stdout  # fmt: skip
    return json.loads(out)


def moov_before_mdat(path: Path) -> bool:
    """+faststart puts the index (moov) before the media data (mdat) so browsers start playing at once."""
    data = path.read_bytes()
    return 0 <= data.find(b"moov") < data.find(b"mdat")
