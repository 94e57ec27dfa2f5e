"""Start the real studio (`python app.py`) on a free loopback port for API and browser tests.

A test that must catch a job at a stage (running while another is queued, cancelled mid-run, stopped with
the studio) starts the studio with a `Gate`: the studio's process then reports every clip job's denoising
steps to the test over a local socket, and a job whose prompt the test holds waits at the steps held until
the test lets it go. No test has to hope that a job outlasts a round trip."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
GATE_ENV = "WAN_STUDIO_TEST_GATE"  # the gate's socket, for the studio's process


class Hold:
    """The jobs with one prompt, held at each of `steps` (reported, so the page and the API show it) until the
    test lets them go on (`go_on`) or `release`s them (or the hold ends)."""

    def __init__(self, prompt: str, steps: tuple[int, ...] = (1,)):
        self.prompt, self.steps = prompt, frozenset(steps)
        self._reached = {step: threading.Event() for step in self.steps}
        self._waiting: list[socket.socket] = []
        self._released = False
        self._lock = threading.Lock()

    def wait(self, timeout: float = 120, step: int | None = None) -> None:
        """Return once a job with this prompt is held at `step` (the first held step by default): running,
        at that step, and staying there."""
        step = min(self.steps) if step is None else step
        assert self._reached[step].wait(timeout), f"no job {self.prompt!r} reached its denoising step {step}"

    def go_on(self) -> None:
        """Let the held jobs go on to the next step this hold holds them at."""
        with self._lock:
            waiting, self._waiting = self._waiting, []
        for connection in waiting:
            _answer(connection)

    def release(self) -> None:
        """Let every held job go on; later jobs with this prompt are not held."""
        with self._lock:
            self._released = True
        self.go_on()

    def _arrived(self, connection: socket.socket, step: int) -> None:
        with self._lock:
            if not self._released and step in self.steps:
                self._waiting.append(connection)
                self._reached[step].set()
                return
        _answer(connection)


class Gate:
    """The test's end of the gate: a Unix socket the studio's process asks at each job's first step."""

    def __init__(self) -> None:
        self._folder = tempfile.mkdtemp(prefix="wan-gate-")  # short: a socket path has a length limit
        self.address = os.path.join(self._folder, "gate.sock")
        self._server = socket.socket(socket.AF_UNIX)
        self._server.bind(self.address)
        self._server.listen()
        self._holds: dict[str, Hold] = {}
        self._lock = threading.Lock()
        threading.Thread(target=self._serve, name="test-gate", daemon=True).start()

    @contextlib.contextmanager
    def holding(self, prompt: str, steps: tuple[int, ...] = (1,)) -> Iterator[Hold]:
        """Hold the jobs with this prompt at these steps (the first by default) for the block; released when it
        ends, whatever happens in it (a failed test leaves no job blocking the studio for the tests after it)."""
        hold = Hold(prompt, steps)
        with self._lock:
            assert prompt not in self._holds, f"{prompt!r} is held already"
            self._holds[prompt] = hold
        try:
            yield hold
        finally:
            with self._lock:
                del self._holds[prompt]
            hold.release()

    def close(self) -> None:
        self._server.close()
        shutil.rmtree(self._folder, ignore_errors=True)

    def __enter__(self) -> Gate:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _serve(self) -> None:
        while True:
            try:
                connection, _ = self._server.accept()
            except OSError:  # closed
                return
            threading.Thread(target=self._judge, args=(connection,), daemon=True).start()

    def _judge(self, connection: socket.socket) -> None:
        with connection.makefile("r") as lines:
            asked = json.loads(lines.readline() or "{}")
        with self._lock:
            hold = self._holds.get(asked.get("prompt"))
        if hold is None:
            _answer(connection)
        else:
            hold._arrived(connection, asked.get("step", 1))


def _answer(connection: socket.socket) -> None:
    with contextlib.suppress(OSError):  # the studio may be gone already
        connection.sendall(b"go\n")
    connection.close()


def install_gate(address: str) -> None:
    """In the studio's process: each run of the engine (a clip job, or a window of a long take, by its own
    prompt), once each denoising step is reported (the page and the API see "Step n/N"), asks the test's gate
    and waits for its answer; a post-production job does the same at each frame, by "<action> <clip name>"
    ("upscale 2026…mp4"). A cancel set meanwhile stops the job at the next step, as it would any job."""
    from pipelines.manager import PipelineManager

    plain = PipelineManager.generate

    def generate(self, request, on_progress=None, cancel=None, *args, **kwargs):
        def reported(progress) -> None:
            if on_progress is not None:
                on_progress(progress)
            if progress.stage == "denoise":
                _ask(address, request.prompt, progress.step)

        return plain(self, request, reported, cancel, *args, **kwargs)

    PipelineManager.generate = generate

    import library.post as post

    derive = post._derive

    def held_derive(clip, request, *args):  # a post-production job, held by "<action> <clip name>" at its frames
        *rest, report = args

        def reported(progress) -> None:
            if report is not None:
                report(progress)
            if progress.step:
                _ask(address, f"{request.action} {clip.name}", progress.step)

        return derive(clip, request, *rest, reported)

    post._derive = held_derive


def _ask(address: str, prompt: str, step: int) -> None:
    with socket.socket(socket.AF_UNIX) as asking:
        try:
            asking.connect(address)
        except OSError:  # the test's gate is closed: nothing holds this job
            return
        asking.sendall(json.dumps({"prompt": prompt, "step": step}).encode() + b"\n")
        asking.recv(16)  # the answer, or the test's end closing the socket


@dataclass
class RunningStudio:
    url: str
    output_dir: Path
    home: Path
    log: Path
    pid: int = 0  # the studio's process
    gate: Gate | None = None  # given to `studio`: holds jobs at their first step


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
    gate: Gate | None = None,
) -> Iterator[RunningStudio]:
    """`python app.py` with its own settings home and output folder; offline unless asked (test models never
    need the Hub either way). With a `gate`, `python -m tests.server`: the same studio, its jobs asking the
    gate at their first step."""
    port = free_port()
    home = home or tmp / "home"
    output_dir = tmp / "outputs"
    tmp.mkdir(parents=True, exist_ok=True)
    log = tmp / f"studio-{port}.log"
    asked = env or {}  # a login (WAN_STUDIO_AUTH) or an address (GRADIO_SERVER_*) only when the test asks
    env = dict(os.environ, WAN_STUDIO_HOME=str(home), PYTHONUNBUFFERED="1")
    env.pop("WAN_STUDIO_AUTH", None)
    env.pop(GATE_ENV, None)
    env.update(asked)
    cmd = [sys.executable, "app.py", "--host", "127.0.0.1", "--port", str(port)]
    host = "127.0.0.1"
    if "GRADIO_SERVER_PORT" in asked:  # as on a Space: the studio takes its address from the environment
        host, port = asked.get("GRADIO_SERVER_NAME", host), int(asked["GRADIO_SERVER_PORT"])
        del cmd[2:]
    if gate is not None:
        env[GATE_ENV] = gate.address
        cmd[1:2] = ["-m", "tests.server"]
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
    url = f"http://{host}:{port}/"
    try:
        deadline = time.monotonic() + timeout
        while True:  # no event says the port is open: ask it until it answers
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
        yield RunningStudio(url, output_dir, home, log, proc.pid, gate)
    finally:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()


def _main(argv: list[str]) -> int:
    """`python -m tests.server ARGS`: `python app.py ARGS` with the test's gate (`$WAN_STUDIO_TEST_GATE`)."""
    import app  # first: it sets the environment (no telemetry) before anything else is imported

    install_gate(os.environ[GATE_ENV])
    return app.main(argv)


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))
