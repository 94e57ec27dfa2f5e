"""A studio worker that spans several GPUs: each clip split over them (context parallelism).

`python app.py --gpus 0,1,2,3 --context-parallel 2` gives two such workers of two GPUs each. A worker is
one `torch.distributed.run` group, started once and kept (so the weights stay loaded between jobs): one
process per GPU, each holding the pipeline with its attention split (`pipelines/parallel.py`). Rank 0
talks to the studio over a local authenticated socket; it passes each job to the other ranks with a
broadcast (in a gloo group on the CPU, beside NCCL's: see `pipelines/parallel.py`), so every rank runs the
same request, and sends progress, previews and the frames back. The
studio writes, signs and publishes the clip as for any other worker.

Cancel must reach every rank at the same step, or the others would wait forever in the next all-to-all:
`SharedCancel` answers each rank's per-step check with rank 0's flag, broadcast. A group that dies
(a rank crashed, the launcher was killed) raises `WorkerLost`: the queue runs the job again once, and the
group is started afresh for the next job.
"""

from __future__ import annotations

import logging
import os
import queue
import secrets
import subprocess
import sys
import threading
import time
from multiprocessing.connection import Client, Connection, Listener
from pathlib import Path
from typing import Any

from pipelines.manager import GenerationResult
from pipelines.request import ValidRequest
from pipelines.speed import SpeedOptions
from studio.jobs.workers import Report, WorkerLost, run_as_messages, settle, worker_labels

log = logging.getLogger("wan_studio")
ROOT = Path(__file__).resolve().parents[2]
ADDRESS_ENV, KEY_ENV, DEVICES_ENV, OFFLINE_ENV = (
    "WAN_STUDIO_SPLIT_ADDRESS", "WAN_STUDIO_SPLIT_KEY", "WAN_STUDIO_SPLIT_DEVICES", "WAN_STUDIO_SPLIT_OFFLINE",
)  # fmt: skip
START_TIMEOUT_S = 300


class SplitWorker:
    """One group of GPUs that runs each clip together, seen by the job queue as one worker."""

    def __init__(self, devices: list[str], profile: str, speed: SpeedOptions, offline: bool = False,
                 rank_module: str = "studio.jobs.split"):  # fmt: skip
        """`rank_module`: what each rank runs (tests pass one that wraps `serve` to hold a run at a step)."""
        self.rank_module = rank_module
        self.devices = devices
        self.device = devices[0]  # post-production and the enhancer run here while this group's slot is held
        self.degree = len(devices)  # each clip's attention is split this many ways
        names = worker_labels(devices)
        self.label = f"{' + '.join(names)} (one clip split)"
        self.settings: dict[str, Any] = {"profile": profile, "speed": speed}
        self.offline = offline
        self._process: subprocess.Popen | None = None
        self._conn: Connection | None = None
        self._holds: str | None = None

    def holds(self) -> str | None:
        return self._holds

    def configure(self, profile: str, speed: SpeedOptions) -> None:
        self.settings = {"profile": profile, "speed": speed}

    def generate(self, request: ValidRequest, report: Report, cancel: threading.Event) -> GenerationResult:
        try:
            conn = self._started()
            conn.send(("job", request, dict(self.settings)))
            told = False
            while True:
                if cancel.is_set() and not told:
                    conn.send(("cancel",))
                    told = True
                if not conn.poll(0.1):
                    if self._process.poll() is not None:
                        raise EOFError(f"the group exited with code {self._process.returncode}")
                    continue
                kind, payload = conn.recv()
                if kind == "progress":
                    report(payload)
                    continue
                self._holds = request.spec.id
                return settle(kind, payload, request, self.label)
        except (EOFError, OSError) as err:
            self.close()
            raise WorkerLost(str(err) or type(err).__name__) from None

    def _started(self) -> Connection:
        """The group, started on first use (and again after it died): rank 0 connects back to us."""
        if self._conn is not None and self._process is not None and self._process.poll() is None:
            return self._conn
        self.close()
        key = secrets.token_bytes(32)
        with Listener(("127.0.0.1", 0), authkey=key) as listener:
            host, port = listener.address
            env = dict(os.environ)
            env.update({ADDRESS_ENV: f"{host}:{port}", KEY_ENV: key.hex(), DEVICES_ENV: ",".join(self.devices),
                        OFFLINE_ENV: "1" if self.offline else ""})  # fmt: skip
            env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH")) if p)
            self._process = subprocess.Popen(
                [sys.executable, "-m", "torch.distributed.run", "--standalone",
                 f"--nproc-per-node={len(self.devices)}", "-m", self.rank_module],
                cwd=ROOT, env=env,
            )  # fmt: skip
            accepted: list[Connection] = []
            waiter = threading.Thread(target=lambda: accepted.append(listener.accept()), daemon=True)
            waiter.start()
            deadline = time.monotonic() + START_TIMEOUT_S
            while waiter.is_alive():  # rank 0 calls back once every rank has joined the group
                waiter.join(0.2)
                if waiter.is_alive() and (self._process.poll() is not None or time.monotonic() > deadline):
                    code = self._process.poll()
                    self.close()
                    raise EOFError(f"the group did not start (exit code {code})")
            self._conn = accepted[0]
        return self._conn

    def close(self) -> None:
        """Stop the group (at shutdown, or after it failed)."""
        conn, process, self._conn, self._process = self._conn, self._process, None, None
        self._holds = None
        if conn is not None:
            try:
                conn.send(("stop",))
                conn.close()
            except OSError:
                pass
        if process is not None and process.poll() is None:
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()


# ---- inside the group: one process per GPU ------------------------------------------------------
class SharedCancel:
    """The cancel flag every rank reads alike: at each check (the same points on every rank) rank 0's
    answer is broadcast, so all ranks stop at the same step."""

    def __init__(self, local: threading.Event | None):
        self.local = local  # rank 0's, set by the studio's message; None on the other ranks

    def is_set(self) -> bool:
        from pipelines.parallel import same_everywhere

        return bool(same_everywhere(self.local is not None and self.local.is_set()))


def serve() -> None:
    """A rank's life: take each job rank 0 receives, run it with the others, until told to stop."""
    from pipelines import parallel, quiet_libraries
    from pipelines.manager import PipelineManager

    quiet_libraries()

    rank = parallel.launched_rank()
    devices = os.environ[DEVICES_ENV].split(",")
    device = devices[rank.local_rank]
    offline = bool(os.environ.get(OFFLINE_ENV))
    if offline:
        os.environ["HF_HUB_OFFLINE"] = "1"
    import torch

    parallel.init_group(torch.device(device))
    manager = PipelineManager(offline=offline, device=device, context_parallel=rank.world)
    conn = inbox = None
    if rank.leader:
        host, port = os.environ[ADDRESS_ENV].rsplit(":", 1)
        conn = Client((host, int(port)), authkey=bytes.fromhex(os.environ[KEY_ENV]))
        inbox = _Inbox(conn)
    try:
        while True:
            message = inbox.jobs.get() if inbox is not None else None
            message = parallel.same_everywhere(message)
            if message[0] != "job":
                return
            _, request, settings = message
            manager.requested_profile, manager.speed = settings["profile"], settings["speed"]
            cancel = SharedCancel(inbox.cancel if inbox is not None else None)
            _run(manager, request, cancel, conn)
    finally:
        parallel.close_group()


class _Inbox:
    """Rank 0's messages from the studio: jobs in order, and the running job's cancel flag."""

    def __init__(self, conn: Connection):
        self.jobs: queue.Queue = queue.Queue()
        self.cancel = threading.Event()
        threading.Thread(target=self._read, args=(conn,), daemon=True).start()

    def _read(self, conn: Connection) -> None:
        while True:
            try:
                message = conn.recv()
            except (EOFError, OSError):  # the studio went away: stop the group
                message = ("stop",)
            if message[0] == "cancel":
                self.cancel.set()
                continue
            if message[0] == "job":  # the studio sends one job at a time, after the last one's answer
                self.cancel = threading.Event()
            self.jobs.put(message)
            if message[0] == "stop":
                return


def _run(manager, request: ValidRequest, cancel: SharedCancel, conn: Connection | None) -> None:
    """Every rank runs the job; rank 0 (the one with `conn`) sends its messages to the studio."""
    for message in run_as_messages(manager, request, cancel):
        if conn is not None:
            conn.send(message)


def split_workers(devices: list[str], degree: int, profile: str, speed: SpeedOptions,
                  offline: bool = False) -> list[SplitWorker]:  # fmt: skip
    """`devices` in groups of `degree` (`--gpus 0,1,2,3 --context-parallel 2`: two workers of two GPUs)."""
    from pipelines.parallel import ParallelError

    if degree < 2 or len(devices) % degree:
        raise ParallelError(f"--context-parallel {degree} needs the GPUs of --gpus in groups of {degree} (two or "
                            f"more); {len(devices)} were given.")  # fmt: skip
    return [SplitWorker(devices[i : i + degree], profile, speed, offline) for i in range(0, len(devices), degree)]


if __name__ == "__main__":
    serve()
