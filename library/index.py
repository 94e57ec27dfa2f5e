"""`ClipIndex`: the library's clips read from their sidecars once and then kept, so that listing, search and
finding one clip by name stay fast at tens of thousands of clips.

The sidecars stay the history (no database to drift out of step): the index is only a cache of them in
memory. Every look at the list checks the folder's sidecars by (mtime, size) in one directory scan and
re-reads only the ones that are new or changed, so clips added, trashed or edited outside the studio show
at once. Finding one clip by name reads only that clip's sidecar (when it changed). A sidecar that cannot be
read, is not JSON or is not ours is left out, and is looked at again only when it changes.
"""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass
from pathlib import Path

from library.clips import Clip, is_ours
from library.files import read_json
from library.layout import SIDECAR_SUFFIX, plain_name


@dataclass(frozen=True)
class _Entry:
    stamp: tuple[int, int]  # the sidecar's (mtime_ns, size) when it was read
    clip: Clip | None  # None: not one of our clips (unreadable, damaged or foreign); kept to skip re-reading


class ClipIndex:
    """The clips of one output folder, newest first, kept in step with the folder. Thread-safe."""

    def __init__(self, root: Path):
        self.root = Path(root)
        self._entries: dict[str, _Entry] = {}  # by video file name
        self._sorted: list[Clip] | None = None
        self._lock = threading.Lock()

    def clips(self) -> list[Clip]:
        """Every clip whose video and sidecar are both there, newest first (made time, then the sidecar's
        write time for clips made within the same second)."""
        with self._lock:
            if self._refresh():
                self._sorted = None
            if self._sorted is None:
                ready = [e for e in self._entries.values() if e.clip is not None]
                ready.sort(key=lambda e: (str(e.clip.sidecar.get("created_at", "")), e.stamp[0]), reverse=True)
                self._sorted = [e.clip for e in ready]
            return list(self._sorted)

    def find(self, name: str) -> Clip | None:
        """The clip whose video is called `name`, reading at most its own sidecar; names from callers are
        never used as paths."""
        name = plain_name(name) if isinstance(name, str) else None
        if name is None or not name.endswith(".mp4"):
            return None
        video = self.root / name
        sidecar = video.with_suffix(SIDECAR_SUFFIX)
        try:
            stat = sidecar.stat()
            present = video.is_file()
        except OSError:
            present = False
        with self._lock:
            if not present:
                if self._entries.pop(name, None) is not None:
                    self._sorted = None
                return None
            entry = self._entries.get(name)
            stamp = (stat.st_mtime_ns, stat.st_size)
            if entry is None or entry.stamp != stamp:
                entry = _read(video, stamp)
                self._entries[name] = entry
                self._sorted = None
            return entry.clip

    def _refresh(self) -> bool:
        """Bring the entries in step with the folder in one scan; True when anything changed."""
        stamps: dict[str, tuple[int, int]] = {}  # video name -> its sidecar's (mtime_ns, size)
        videos: set[str] = set()
        try:
            with os.scandir(self.root) as scan:
                for item in scan:
                    name = item.name
                    if name.endswith(".mp4"):
                        videos.add(name)
                    elif name.endswith(SIDECAR_SUFFIX) and name[0] != ".":
                        try:
                            stat = item.stat()
                        except OSError:
                            continue
                        stamps[name[: -len(SIDECAR_SUFFIX)] + ".mp4"] = (stat.st_mtime_ns, stat.st_size)
        except OSError:  # the folder is gone or unreadable: an empty library, not an error page
            changed = bool(self._entries)
            self._entries.clear()
            return changed
        gone = [name for name in self._entries if name not in videos or name not in stamps]
        for name in gone:
            del self._entries[name]
        changed = bool(gone)
        entries = self._entries
        for video, stamp in stamps.items():
            entry = entries.get(video)
            if (entry is None or entry.stamp != stamp) and video in videos:
                entries[video] = _read(self.root / video, stamp)
                changed = True
        return changed


def _read(video: Path, stamp: tuple[int, int]) -> _Entry:
    try:
        data = read_json(video.with_suffix(SIDECAR_SUFFIX))
    except ValueError:
        return _Entry(stamp, None)
    return _Entry(stamp, Clip(video, data) if is_ours(data) else None)
