"""Peak memory and time of a film export as the film grows: memory must stay flat in the number of clips.

    python bench/bench_film.py --size 832x480 --frames 33 --clips 2 8 16

Each export runs in a fresh process so its peak RSS is its own.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def make_clips(out: Path, count: int, width: int, height: int, frames: int) -> list[str]:
    import numpy as np

    from library.clips import write_clip
    from pipelines import APP_NAME

    names = []
    rng = np.random.default_rng(0)
    for i in range(count):
        base = rng.integers(0, 255, (height // 16, width // 16, 3), dtype=np.uint8)
        still = np.kron(base, np.ones((16, 16, 1), np.uint8))
        video = np.stack([np.roll(still, 4 * t, axis=1) for t in range(frames)])
        files = write_clip(video, 16, out, f"clip{i}", {"app": APP_NAME, "settings": {"prompt": f"clip {i}"}})
        names.append(files.video.name)
    return names


def export_once(out: str, names: list[str]) -> dict:
    from library.film import export_film
    from library.storyboard import Shot, Storyboard

    shots = [Shot(n, transition="crossfade", crossfade_s=0.25) for n in names]
    t0 = time.perf_counter()
    film = export_film(Storyboard(shots=shots), Path(out))
    return {
        "seconds": round(time.perf_counter() - t0, 2),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
        "film": film.name,
    }


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--size", default="832x480")
    p.add_argument("--frames", type=int, default=33)
    p.add_argument("--clips", type=int, nargs="+", default=[2, 8, 16])
    p.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        print(json.dumps(export_once(args.child[0], json.loads(args.child[1]))))
        return 0
    width, height = (int(v) for v in args.size.split("x"))
    results = []
    with tempfile.TemporaryDirectory() as out:
        names = make_clips(Path(out), max(args.clips), width, height, args.frames)
        for count in args.clips:
            child = subprocess.run(
                [sys.executable, __file__, "--child", out, json.dumps(names[:count])],
                capture_output=True, text=True, check=True,
            )  # fmt: skip
            result = json.loads(child.stdout.strip().splitlines()[-1])
            result.update(clips=count, film_frames=count * args.frames, size=args.size)
            results.append(result)
            print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
