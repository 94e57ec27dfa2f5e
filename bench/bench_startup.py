"""How fast the studio opens: seconds from `python app.py` to the page answering, and the server's memory
then (no model is loaded until the first generation).

    python bench/bench_startup.py --runs 3 [--model Wan-AI/Wan2.2-TI2V-5B-Diffusers]

Each run starts a fresh server with an empty output folder and settings; the first run also pays for
cold file caches.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def one_start(model: str) -> dict:
    port = free_port()
    with tempfile.TemporaryDirectory() as tmp:
        env = dict(os.environ, WAN_STUDIO_HOME=str(Path(tmp) / "home"), HF_HUB_OFFLINE="1")
        cmd = [sys.executable, "app.py", "--port", str(port), "--offline", "--model", model, "--output-dir", tmp]
        t0 = time.perf_counter()
        proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            while True:
                if proc.poll() is not None:
                    raise RuntimeError("the studio exited early")
                try:
                    page = urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=2).read()
                    break
                except (urllib.error.URLError, OSError):
                    time.sleep(0.05)
            return {
                "model": model,
                "seconds_to_page": round(time.perf_counter() - t0, 2),
                "page_kb": round(len(page) / 1024, 1),
                "server_rss_mb": round(rss_mb(proc.pid)),
            }
        finally:
            proc.terminate()
            proc.wait(15)


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--model", default="test-tiny")
    args = p.parse_args()
    for run in range(args.runs):
        result = one_start(args.model)
        result["run"] = run + 1
        print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
