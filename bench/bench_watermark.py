"""Watermark robustness, visibility, speed and false positives.

    python bench/bench_watermark.py --size 1280x704 --frames 121 --nulls 500
    python bench/bench_watermark.py --speed-only      # the write times alone

First the PSNR of the mark (a 720P pan of the example picture, 2 px a frame, and a flat sky-like gradient), then
a clip's write time as the studio writes it (`save_clip`) with the mark on and off (`write_times`). Then the
pan is marked and written as the studio writes (x264 medium, CRF 18), and put through each attack of
tests/test_watermark.py (real ffmpeg) and read with read_file. Per row: raw bit accuracy (the 48 codeword bits
read from the file before any correction), whether the payload came back, and the read time per second of
video. Last, false positives on unmarked clips (small ones, --null-size: the example picture cropped and panned
at random, noise, gradients, flat colours; each read with the full scale search).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402

from library import watermark  # noqa: E402
from library.media import encode_mp4  # noqa: E402
from tests.media import decode_video  # noqa: E402
from tests.test_watermark import ATTACKS, FPS, PAYLOAD, attack, landscape_clip, psnr  # noqa: E402


def null_clip(n: int, width: int, height: int, frames: int) -> np.ndarray:
    rng = np.random.default_rng(10_000 + n)
    kind = n % 5
    if kind in (0, 1):
        return landscape_clip(width, height, frames, seed=n)
    if kind == 2:
        return rng.integers(0, 256, (frames, height, width, 3), dtype=np.uint8)
    if kind == 3:
        ramp = np.linspace(0, 1, width, dtype=np.float32)[None, :, None] * rng.uniform(50, 255, 3)
        ramp = ramp + np.linspace(0, 1, height, dtype=np.float32)[:, None, None] * rng.uniform(0, 100, 3)
        return np.broadcast_to(np.clip(ramp, 0, 255).astype(np.uint8), (frames, height, width, 3)).copy()
    return np.full((frames, height, width, 3), rng.integers(0, 256, 3), np.uint8)


def write_times(frames: np.ndarray, reps: int, tmp: Path) -> None:
    """A clip's write time as the studio writes it (`save_clip`: x264, Content Credentials, sidecar, poster) with
    the watermark on and off, for three contents: the pan (a still picture sliding, which x264 codes almost for
    free), and the pan with grain of sigma 2 and 8 levels (a new grain every frame: detail as in real clips).
    Writes alternate on and off; the fastest of `reps` counts. "x264 on the mark" is the part of the difference
    that is x264 coding the mark's texture: the marked frames written plainly, less the unmarked."""
    from dataclasses import replace

    from library.clips import ClipOptions, save_clip
    from pipelines.manager import GenerationResult
    from pipelines.request import GenerationRequest, validate_request

    request = validate_request(GenerationRequest(prompt="bench", model="test-tiny", seed=1), default_model="test-tiny")
    request = replace(request, fps=FPS)  # TI2V-5B's 720P rate (x264's rate control depends on it)
    count, height, width, _ = frames.shape
    print(
        f"| {width}x{height}, {count} frames | plain MP4 | write, mark off | write, mark on | added | "
        "of which x264 on the mark |"
    )
    print("|---|---|---|---|---|---|")
    rng = np.random.default_rng(7)
    for name, sigma in (("pan", 0), ("pan + grain sigma 2", 2), ("pan + grain sigma 8", 8)):
        grain = rng.normal(0, sigma, frames.shape[:3] + (1,)).astype(np.float32) if sigma else 0
        content = np.clip(frames + grain, 0, 255).astype(np.uint8) if sigma else frames
        result = GenerationResult(request, content, {"total_s": 1.0}, "cpu", "cpu", "bench")
        best: dict[str, float] = {}
        marked = watermark.embed(content, PAYLOAD)
        for rep in range(reps):
            for label, on in (("off", False), ("on", True)):
                out = tmp / f"write-{rep}-{label}"
                t0 = time.perf_counter()
                files = save_clip(result, out, ClipOptions(watermark=on))
                best[label] = min(best.get(label, 1e9), time.perf_counter() - t0)
                if label == "off":
                    size_mb = files.video.stat().st_size / 1e6
            for label, clip in (("x264 plain", content), ("x264 marked", marked)):
                t0 = time.perf_counter()
                encode_mp4(clip, FPS, tmp / "x264.mp4")
                best[label] = min(best.get(label, 1e9), time.perf_counter() - t0)
        added = best["on"] - best["off"]
        mbps = size_mb * 8 / (count / FPS)
        print(f"| {name} | {size_mb:.1f} MB ({mbps:.1f} Mbit/s) | {best['off']:.2f} s | {best['on']:.2f} s | "
              f"{added:+.2f} s ({100 * added / best['off']:+.1f} %) | "
              f"{best['x264 marked'] - best['x264 plain']:+.2f} s |", flush=True)  # fmt: skip
    print()


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--size", default="1280x704")
    p.add_argument("--frames", type=int, default=121)
    p.add_argument("--nulls", type=int, default=500)
    p.add_argument("--null-size", default="320x176")
    p.add_argument("--null-frames", type=int, default=24)
    p.add_argument("--reps", type=int, default=3, help="writes per content and setting (the fastest is kept)")
    p.add_argument("--speed-only", action="store_true", help="only the write times")
    args = p.parse_args()
    width, height = (int(v) for v in args.size.split("x"))
    frames = landscape_clip(width, height, args.frames)
    marked_frames = watermark.embed(frames, PAYLOAD)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    sky = np.stack([150 + 40 * yy / height + 5 * xx / width, 180 + 30 * yy / height, 230 - 10 * yy / height], -1)
    sky = np.clip(sky, 0, 255).astype(np.uint8)[None]
    print(f"PSNR {psnr(marked_frames, frames):.1f} dB (pan), {psnr(watermark.embed(sky, PAYLOAD), sky):.1f} dB "
          "(flat sky)\n")  # fmt: skip
    with tempfile.TemporaryDirectory() as tmp:
        write_times(frames, args.reps, Path(tmp))
        if args.speed_only:
            return 0
        path = Path(tmp) / "marked.mp4"
        encode_mp4(frames, FPS, path, mark=PAYLOAD)
        print("| attack | raw bit accuracy | payload back | scale found | confidence | read s per s of video |")
        print("|---|---|---|---|---|---|")
        for name in ATTACKS:
            out = attack(path, name, Path(tmp) / "attacked.mp4")
            t0 = time.perf_counter()
            reading = watermark.read_file(str(out))
            read_s = time.perf_counter() - t0
            decoded, _ = decode_video(out)
            accuracy = float((np.array(reading.bits) == watermark.codeword(PAYLOAD)).mean())
            back = "yes" if reading.payload == PAYLOAD else "no"
            print(f"| {name} | {accuracy:.3f} | {back} | {reading.scale:.3f} | {reading.confidence:.1f} | "
                  f"{read_s / (len(decoded) / FPS):.2f} |", flush=True)  # fmt: skip
        nw, nh = (int(v) for v in args.null_size.split("x"))
        found = 0
        top = 0.0
        t0 = time.perf_counter()
        for n in range(args.nulls):
            clip = null_clip(n, nw, nh, args.null_frames)
            null_path = Path(tmp) / "null.mp4"
            encode_mp4(clip, FPS, null_path, crf=23)
            reading = watermark.read_file(str(null_path))
            found += reading.payload is not None
            top = max(top, reading.confidence)
        print(f"\nfalse positives: {found} of {args.nulls} unmarked {args.null_size} clips of {args.null_frames} "
              f"frames (CRF 23); highest sync confidence {top:.2f} (threshold {watermark.CONFIDENCE_MIN}); "
              f"{time.perf_counter() - t0:.0f} s")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
