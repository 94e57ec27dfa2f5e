"""A small RAM disk for tests of full or read-only disks: real ENOSPC and EROFS, not patched free space."""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest


@contextmanager
def tmpfs(folder: Path, options: str) -> Iterator[Path]:
    """`folder` (made here) as a tmpfs mounted with `options` ("size=6m", "ro,size=1m"), unmounted after; the
    test is skipped where mounting is not allowed (not root, no mount, no tmpfs)."""
    if os.geteuid() != 0 or not shutil.which("mount"):
        pytest.skip("mounting a tmpfs needs root")
    folder.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(folder)], capture_output=True)
    if done.returncode != 0:
        pytest.skip(f"tmpfs not available: {done.stderr.decode().strip()}")
    try:
        yield folder
    finally:
        subprocess.run(["umount", "-l", str(folder)], check=False)


def remount(folder: Path, options: str) -> None:
    """Change a mounted tmpfs's options while it is in use ("ro": the disk turns read-only under the studio,
    for root too, which file permissions alone never stop)."""
    subprocess.run(["mount", "-o", f"remount,{options}", str(folder)], check=True, capture_output=True)
