"""The library at scale: list, first grid view, next page, search and find one clip, at 100, 1,000 and
10,000 clips (copies of one test clip with their own sidecars and no posters, as a restored backup or a
folder from another machine would be).

    python bench/bench_library.py --clips 100 1000 10000

Each size is measured in a fresh process (its own page cache of Python objects, nothing warmed by the size
before). Columns, in seconds:
- list cold / warm: every clip, newest first, from a fresh `Library` (each sidecar read once), then again
  (only changed sidecars read: none).
- first view cold: the grid's first page from a fresh `Library`, as when the tab is opened before the
  start-up's background read of the index has finished (on screen with placeholders); page posters: until
  that page's missing posters are made in the background; first view: the same page with the index read
  (what the studio does at start-up).
- next page, search (a word in 1 % of the prompts), find one (a fresh `Library`, one clip by name).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def make_library(out: Path, count: int) -> None:
    import numpy as np

    from library.clips import write_clip
    from pipelines import APP_NAME

    frames = np.random.default_rng(0).integers(0, 255, (33, 480, 832, 3), dtype=np.uint8)
    source = write_clip(frames, 16, out, "source", {"app": APP_NAME, "task": "t2v", "model": "test-tiny",
                                                    "settings": {"prompt": "source"}})  # fmt: skip
    sidecar = json.loads(source.sidecar.read_text())
    for n in range(count):
        stem = f"20990101-{n:06d}_copy"
        os.link(source.video, out / f"{stem}.mp4")
        word = "lighthouse" if n % 100 == 7 else "harbour"
        settings = {**sidecar["settings"], "prompt": f"take {n} of the {word} at dusk", "seed": n}
        made = f"2099-01-01T{n // 3600:02d}:{n // 60 % 60:02d}:{n % 60:02d}"
        data = dict(sidecar, created_at=made, settings=settings)
        (out / f"{stem}.json").write_text(json.dumps(data, indent=2))
    source.video.unlink()
    source.sidecar.unlink()


def measure(out: Path) -> dict:
    from concurrent.futures import wait

    from library import Library
    from studio.page.handlers import library as lib

    def timed(work):
        t0 = time.perf_counter()
        value = work()
        return value, round(time.perf_counter() - t0, 4)

    fresh = Library(out)
    clips, list_cold = timed(fresh.clips)
    _, list_warm = timed(fresh.clips)
    first, first_cold = timed(lambda: lib.grid(SimpleNamespace(library=Library(out))))
    _, posters = timed(lambda: wait(first.making))
    started = Library(out)
    started.clips()  # the studio reads the index at start-up
    studio = SimpleNamespace(library=started)
    page, first_view = timed(lambda: lib.grid(studio))
    second, next_page = timed(lambda: lib.grid(studio, page=2))
    wait(second.making)
    found, search = timed(lambda: lib.grid(studio, "lighthouse"))
    wait(found.making)
    _, find_one = timed(lambda: Library(out).clip(clips[len(clips) // 2].name))
    return {
        "clips": len(clips), "list_cold_s": list_cold, "list_warm_s": list_warm, "first_view_cold_s": first_cold,
        "first_view_s": first_view, "page_posters_s": posters, "cells": len(page.cells), "next_page_s": next_page,
        "search_s": search, "search_hits": found.total, "find_one_s": find_one,
    }  # fmt: skip


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--clips", type=int, nargs="+", default=[100, 1000, 10000])
    p.add_argument("--child", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        print(json.dumps(measure(Path(args.child))))
        return 0
    for count in args.clips:
        with tempfile.TemporaryDirectory() as tmp:
            out = Path(tmp) / "outputs"
            make_library(out, count)
            child = subprocess.run([sys.executable, __file__, "--child", str(out)], capture_output=True, text=True,
                                   check=True)  # fmt: skip
            print(child.stdout.strip().splitlines()[-1], flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
