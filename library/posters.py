"""Poster frames for the library grid, made without keeping anyone waiting.

A clip's poster is made when the clip is saved. A clip without one (from before, from another machine, a
restored backup) shows a placeholder while one background thread makes its poster: the grid asks for the
posters of the page it shows, newest first, and waits for them only after it is on screen. Decoding a
clip's middle frame takes about 80 ms on two cores, so 10,000 missing posters made before the first view
would keep a creator waiting for minutes.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterable
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

from PIL import Image, ImageDraw

from library.clips import Clip
from library.files import write_png
from library.layout import POSTER_WIDTH, POSTERS_DIR
from library.media import middle_frame

PLACEHOLDER = "placeholder.png"  # clip stems start with a time stamp, so no poster can take this name


class Posters:
    """The posters of one output folder: `<output>/posters/<clip stem>.png`, made again when missing or older
    than their clip."""

    def __init__(self, root: Path):
        self.folder = Path(root) / POSTERS_DIR
        self._pending: dict[str, Future] = {}
        self._lock = threading.Lock()
        self._maker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="posters")

    def ready(self, clip: Clip) -> Path | None:
        """The clip's poster if it is there and not older than the clip; never decodes anything."""
        poster = self.folder / f"{clip.video.stem}.png"
        try:
            if poster.stat().st_mtime >= clip.video.stat().st_mtime:
                return poster
        except OSError:
            pass
        return None

    def make(self, clip: Clip) -> Path | None:
        """The clip's poster, made now (atomically) when it is missing or stale; None when the clip cannot be
        read, so one bad file never empties the grid."""
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
        except (OSError, ValueError, RuntimeError):
            return None

    def request(self, clips: Iterable[Clip]) -> list[Future]:
        """Have the missing posters of `clips` made in the background, in the order given; one future per
        clip that had none (a clip already asked for shares its future)."""
        futures = []
        with self._lock:
            for clip in clips:
                if self.ready(clip) is not None:
                    continue
                key = clip.video.name
                future = self._pending.get(key)
                if future is None or future.done():
                    future = self._maker.submit(self.make, clip)
                    future.add_done_callback(lambda done, key=key: self._forget(key, done))
                    self._pending[key] = future
                futures.append(future)
        return futures

    def placeholder(self) -> Path:
        """The picture a grid cell shows until its poster is made (made once in the posters folder)."""
        path = self.folder / PLACEHOLDER
        if not path.is_file():
            picture = Image.new("RGB", (POSTER_WIDTH, POSTER_WIDTH * 9 // 16), (58, 58, 66))
            draw = ImageDraw.Draw(picture)
            draw.text((POSTER_WIDTH // 2, POSTER_WIDTH * 9 // 32), "Making the poster...", fill=(200, 200, 210),
                      anchor="mm")  # fmt: skip
            self.folder.mkdir(parents=True, exist_ok=True)
            write_png(path, picture)
        return path

    def _forget(self, key: str, done: Future) -> None:
        with self._lock:
            if self._pending.get(key) is done:
                del self._pending[key]
