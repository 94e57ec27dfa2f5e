"""Start the real studio (`python app.py`) on a free loopback port for API and browser tests."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


@dataclass
class RunningStudio:
    url: str
    output_dir: Path
    home: Path
    log: Path
    pid: int = 0  # the studio's process


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def studio(
    tmp: Path,
    *args: str,
    home: Path | None = None,
    timeout: float = 120,
    env: dict[str, str] | None = None,
    offline: bool = True,
) -> Iterator[RunningStudio]:
    """`python app.py` with its own settings home and output folder; offline unless asked (test models never
    need the Hub either way)."""
    port = free_port()
    home = home or tmp / "home"
    output_dir = tmp / "outputs"
    tmp.mkdir(parents=True, exist_ok=True)
    log = tmp / f"studio-{port}.log"
    env = dict(os.environ, WAN_STUDIO_HOME=str(home), PYTHONUNBUFFERED="1", **(env or {}))
    env.pop("WAN_STUDIO_AUTH", None)
    cmd = [sys.executable, "app.py", "--host", "127.0.0.1", "--port", str(port)]
    if offline:
        env["HF_HUB_OFFLINE"] = "1"
        cmd.append("--offline")
    else:
        env.pop("HF_HUB_OFFLINE", None)
    if "--model" not in args:
        cmd += ["--model", "test-tiny"]
    if "--output-dir" not in args:
        cmd += ["--output-dir", str(output_dir)]
    with open(log, "w") as log_file:
        proc = subprocess.Popen([*cmd, *args], cwd=ROOT, env=env, stdout=log_file, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}/"
    try:
        deadline = time.monotonic() + timeout
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"the studio exited early:\n{log.read_text()[-3000:]}")
            try:
                urllib.request.urlopen(url, timeout=2)
                break
            except urllib.error.HTTPError:
                break  # it answers (with auth on, the page may say 401)
            except (urllib.error.URLError, OSError):
                if time.monotonic() > deadline:
                    raise RuntimeError(f"the studio did not start:\n{log.read_text()[-3000:]}") from None
                time.sleep(0.3)
        yield RunningStudio(url, output_dir, home, log, proc.pid)
    finally:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
