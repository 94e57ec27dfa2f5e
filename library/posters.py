"""Poster frames for the library grid, made without keeping anyone waiting.

A clip's poster is made when the clip is saved. A clip without one (from before, from another machine, a
restored backup) shows a placeholder while one background thread makes its poster: the grid asks for the
posters of the page it shows, and the page asked for last is served first. Decoding a clip's middle frame
takes about 80 ms on two cores (more for a large clip), so 10,000 missing posters made before the first view
would keep a creator waiting for minutes. A clip that cannot be read is remembered (until it changes) and
not decoded again on every look.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterable
from concurrent.futures import Future
from pathlib import Path

from library.clips import Clip
from library.files import write_png
from library.layout import POSTER_WIDTH, POSTERS_DIR
from library.media import middle_frame


class Posters:
    """The posters of one output folder: `<output>/posters/<clip stem>.png`, made again when missing or older
    than their clip."""

    def __init__(self, root: Path):
        self.folder = Path(root) / POSTERS_DIR
        self._lock = threading.Condition()
        self._queue: list[str] = []  # clip names, the next to make first
        self._pending: dict[str, tuple[Clip, Future]] = {}
        self._unreadable: dict[str, tuple[int, int]] = {}  # clip name -> the video's (mtime_ns, size) then
        self._thread: threading.Thread | None = None

    def ready(self, clip: Clip) -> Path | None:
        """The clip's poster if it is there and not older than the clip; never decodes anything."""
        poster = self.folder / f"{clip.video.stem}.png"
        try:
            if poster.stat().st_mtime >= clip.video.stat().st_mtime:
                return poster
        except OSError:
            pass
        return None

    def unreadable(self, clip: Clip) -> bool:
        """Whether making this clip's poster failed, and the clip has not changed since."""
        with self._lock:
            stamp = self._unreadable.get(clip.video.name)
        return stamp is not None and stamp == _stamp(clip.video)

    def make(self, clip: Clip) -> Path | None:
        """The clip's poster, made now (atomically) when it is missing or stale; None when the clip cannot be
        read (remembered, see `unreadable`), so one bad file never empties the grid."""
        poster = self.ready(clip)
        if poster is not None:
            return poster
        try:
            picture = middle_frame(clip.video)
            picture.thumbnail((POSTER_WIDTH, POSTER_WIDTH * 2))
            self.folder.mkdir(parents=True, exist_ok=True)
            poster = self.folder / f"{clip.video.stem}.png"
            write_png(poster, picture)
            made = clip.video.stat().st_mtime_ns
            if poster.stat().st_mtime_ns < made:  # a clip dated in the future (copied, clock skew): not stale
                os.utime(poster, ns=(made, made))
            return poster
        except Exception:  # whatever the decoder raises: one bad file never breaks the grid, nor is retried
            with self._lock:
                self._unreadable[clip.video.name] = _stamp(clip.video)
            return None

    def request(self, clips: Iterable[Clip]) -> list[Future]:
        """Have the missing posters of `clips` made in the background, in the order given and before any asked
        for earlier (the page on screen comes first); one future per clip still without a poster."""
        wanted = [c for c in clips if self.ready(c) is None and not self.unreadable(c)]
        futures = []
        with self._lock:
            first = []  # to the front of the queue; a poster being made now keeps its place (none)
            for clip in wanted:
                name = clip.video.name
                if name not in self._pending:
                    self._pending[name] = (clip, Future())
                    first.append(name)
                elif name in self._queue:
                    self._queue.remove(name)
                    first.append(name)
                futures.append(self._pending[name][1])
            self._queue[:0] = first
            if wanted and (self._thread is None or not self._thread.is_alive()):
                self._thread = threading.Thread(target=self._make_queued, name="posters", daemon=True)
                self._thread.start()
            self._lock.notify()
        return futures

    def _make_queued(self) -> None:
        """The background maker: one poster at a time, the most recently asked for first; a daemon thread, so
        quitting the studio never waits for posters."""
        while True:
            with self._lock:
                while not self._queue:
                    self._lock.wait()
                name = self._queue.pop(0)
                clip, future = self._pending[name]
            try:
                made, failure = self.make(clip), None
            except Exception as err:  # never a dead maker with futures left waiting
                made, failure = None, err
            with self._lock:
                del self._pending[name]
            if failure is None:
                future.set_result(made)
            else:
                future.set_exception(failure)


def _stamp(video: Path) -> tuple[int, int] | None:
    try:
        stat = video.stat()
    except OSError:
        return None
    return stat.st_mtime_ns, stat.st_size
