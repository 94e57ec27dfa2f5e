"""Watermark robustness, visibility, speed and false positives.

    python bench/bench_watermark.py --size 1280x704 --frames 121 --nulls 500

A 720P clip (the example picture panning, 2 px a frame) is marked, written as the studio writes (x264 medium,
CRF 18), then put through each attack of tests/test_watermark.py (real ffmpeg) and read with read_file. Per
row: raw bit accuracy (the 48 codeword bits read from the file before any correction), whether the payload
came back, and the read time per second of video. Then: PSNR of the mark (the pan, and a flat sky-like
gradient), embed time per second of video and its share of the x264 write, and false positives on unmarked
clips (small ones, --null-size: the example picture cropped and panned at random, noise, gradients, flat
colours; each read with the full scale search).
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


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--size", default="1280x704")
    p.add_argument("--frames", type=int, default=121)
    p.add_argument("--nulls", type=int, default=500)
    p.add_argument("--null-size", default="320x176")
    p.add_argument("--null-frames", type=int, default=24)
    args = p.parse_args()
    width, height = (int(v) for v in args.size.split("x"))
    frames = landscape_clip(width, height, args.frames)
    watermark.embed(frames[:1], PAYLOAD)  # the pattern is made and cached once per payload and size
    t0 = time.perf_counter()
    marked = watermark.embed(frames, PAYLOAD)
    embed_s = time.perf_counter() - t0
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    sky = np.stack([150 + 40 * yy / height + 5 * xx / width, 180 + 30 * yy / height, 230 - 10 * yy / height], -1)
    sky = np.clip(sky, 0, 255).astype(np.uint8)[None]
    with tempfile.TemporaryDirectory() as tmp:
        plain, path = Path(tmp) / "plain.mp4", Path(tmp) / "marked.mp4"
        t0 = time.perf_counter()
        encode_mp4(frames, FPS, plain)
        write_s = time.perf_counter() - t0
        encode_mp4(marked, FPS, path)
        # detailed content, as real clips are: the same pan with film grain (sigma 8 levels, new every frame)
        rng = np.random.default_rng(7)
        grainy = np.clip(frames + rng.normal(0, 8, frames.shape[:3] + (1,)).astype(np.float32), 0, 255).astype(np.uint8)
        t0 = time.perf_counter()
        watermark.embed(grainy, PAYLOAD)
        grain_embed_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        encode_mp4(grainy, FPS, Path(tmp) / "grain.mp4")
        grain_write_s = time.perf_counter() - t0
        print(f"with film grain: x264 write {grain_write_s:.1f} s ({1000 * grain_write_s / args.frames:.1f} ms/frame); "
              f"embed {grain_embed_s:.2f} s ({1000 * grain_embed_s / args.frames:.1f} ms/frame, "
              f"{100 * grain_embed_s / grain_write_s:.1f} % of the write)")  # fmt: skip
        print(f"{args.size}, {args.frames} frames: x264 medium CRF 18 write {write_s:.1f} s "
              f"({1000 * write_s / args.frames:.1f} ms/frame); embed {embed_s:.2f} s "
              f"({1000 * embed_s / args.frames:.1f} ms/frame, {100 * embed_s / write_s:.1f} % of the write); "
              f"PSNR {psnr(marked, frames):.1f} dB (pan), "
              f"{psnr(watermark.embed(sky, PAYLOAD), sky):.1f} dB (flat sky)")  # fmt: skip
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
