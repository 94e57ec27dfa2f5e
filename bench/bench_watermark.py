"""Watermark robustness: bit accuracy after H.264 re-encoding at several CRFs, and its visibility (PSNR).

    python bench/bench_watermark.py --size 832x480 --frames 33

Content: the example picture (assets/) panning sideways. "raw" is the share of single block readings
that are right before any voting; "payload" says whether the 32-bit payload came back (CRC checked).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402

from library import watermark  # noqa: E402
from library.media import encode_mp4  # noqa: E402
from tests.media import decode_video  # noqa: E402


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--size", default="832x480")
    p.add_argument("--frames", type=int, default=33)
    p.add_argument("--crf", type=int, nargs="+", default=[18, 23, 28])
    args = p.parse_args()
    width, height = (int(v) for v in args.size.split("x"))
    base = np.asarray(Image.open(ROOT / "assets" / "example-landscape.png").convert("RGB").resize((width, height)))
    frames = np.stack([np.roll(base, 3 * t, axis=1) for t in range(args.frames)])
    payload = 0x5EED1234
    t0 = time.perf_counter()
    marked = watermark.embed(frames, payload)
    embed_s = time.perf_counter() - t0
    psnr = 10 * np.log10(255**2 / ((marked.astype(float) - frames) ** 2).mean())
    print(json.dumps({"size": args.size, "frames": args.frames, "psnr_db": round(psnr, 1),
                      "embed_s": round(embed_s, 2)}))  # fmt: skip
    with tempfile.TemporaryDirectory() as tmp:
        for crf in args.crf:
            clip = Path(tmp) / f"crf{crf}.mp4"
            encode_mp4(marked, 16, clip, crf=crf)
            decoded, _ = decode_video(clip)
            t0 = time.perf_counter()
            reading = watermark.extract(decoded)
            row = {
                "crf": crf,
                "raw_bit_accuracy": round(watermark.raw_bit_accuracy(decoded, payload), 3),
                "payload_recovered": reading.payload == payload,
                "extract_s": round(time.perf_counter() - t0, 2),
                "file_kb": clip.stat().st_size // 1024,
            }
            print(json.dumps(row), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
