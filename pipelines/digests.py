"""SHA-256 of files the studio names in sidecars and Content Credentials (LoRAs, post-production models, audio)."""

from __future__ import annotations

import hashlib
from pathlib import Path

_hashes: dict[tuple[str, int, int], str] = {}


def sha256_of(path: Path) -> str:
    """The file's SHA-256, remembered per (path, size, modification time): weights are hundreds of MB, and an
    edited file of the same name and size is read again."""
    stat = Path(path).stat()
    key = (str(Path(path).resolve()), stat.st_size, stat.st_mtime_ns)
    if key not in _hashes:
        digest = hashlib.sha256()
        with open(path, "rb") as f:
            while block := f.read(1 << 20):
                digest.update(block)
        _hashes[key] = digest.hexdigest()
    return _hashes[key]
