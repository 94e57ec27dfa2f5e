"""GPU workers: where clip jobs run. The job queue owns the order and the state; a worker only runs one
job at a time and says which model it holds, so the queue can send a job where no reload is needed.

- `LocalWorker`: a `PipelineManager` bound to one device of this machine (`--gpus 0,1`: one each).
- `studio.jobs.ray_actors.RayWorker`: a Ray actor on a cluster (`--ray ADDRESS`), same contract.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable, Iterator
from typing import Any, Protocol

import torch

from pipelines.errors import UserError
from pipelines.manager import GenerationCancelled, GenerationResult, PipelineManager, Progress
from pipelines.request import ValidRequest
from pipelines.speed import SpeedOptions

log = logging.getLogger("wan_studio")
Report = Callable[[Progress], None]
GenerateFn = Callable[[PipelineManager, ValidRequest, Report, threading.Event], GenerationResult]


class WorkerLost(Exception):
    """The worker died under a job (a cluster node went away): the job may run again on another worker."""


class GpuWorker(Protocol):
    label: str  # what the queue panel says runs a job: "GPU 1", "CPU", "ray: node 10.0.0.5 GPU 0"

    def holds(self) -> str | None:
        """The model id the worker has loaded (None: nothing), without waiting for a running job."""

    def generate(self, request: ValidRequest, report: Report, cancel: threading.Event) -> GenerationResult:
        """Run one job: GenerationCancelled, a UserError, or WorkerLost when the worker died under it."""

    def configure(self, profile: str, speed: SpeedOptions) -> None:
        """The memory profile and speed options from Settings, for the next job."""


def default_generate(
    manager: PipelineManager, request: ValidRequest, report: Report, cancel: threading.Event
) -> GenerationResult:
    return manager.generate(request, on_progress=report, cancel=cancel)


class LocalWorker:
    """A pipeline manager on one device of this machine."""

    def __init__(self, manager: PipelineManager, generate: GenerateFn = default_generate, label: str | None = None):
        self.manager = manager
        self.generate_fn = generate  # ZeroGPU wraps it so the GPU is taken only for the run
        self.label = label or device_label(manager.device)

    @property
    def device(self) -> torch.device:
        return self.manager.device

    def holds(self) -> str | None:
        loaded = self.manager.loaded
        return loaded[0] if loaded else None

    def generate(self, request: ValidRequest, report: Report, cancel: threading.Event) -> GenerationResult:
        return self.generate_fn(self.manager, request, report, cancel)

    def configure(self, profile: str, speed: SpeedOptions) -> None:
        self.manager.requested_profile, self.manager.speed = profile, speed


def post_device(worker: GpuWorker) -> str:
    """Where a post-production job or an enhancement runs, in the studio's process: a local worker's own
    device (a split group's first GPU); for a remote worker (a Ray actor), whose GPU is on another machine
    or taken by its actor, the CPU."""
    device = getattr(worker, "device", None)
    return str(device) if device is not None else "cpu"


def free_memory(worker: GpuWorker) -> bool:
    """Make room on a local worker's GPU by unloading its video model (the next clip loads it again); False
    when there was nothing to unload."""
    manager = getattr(worker, "manager", None)
    if manager is None or not manager.loaded:
        return False
    manager.unload()
    return True


def device_label(device: torch.device | str) -> str:
    device = torch.device(device)
    if device.type == "cuda":
        return f"GPU {device.index or 0}"
    return device.type.upper()


def worker_labels(devices: list[torch.device]) -> list[str]:
    """ "GPU 0", "GPU 1"; several CPU workers are told apart by number ("CPU 1", "CPU 2")."""
    labels = [device_label(d) for d in devices]
    for label in set(labels):
        if labels.count(label) > 1:
            numbers = iter(range(1, len(labels) + 1))
            labels = [f"{name} {next(numbers)}" if name == label else name for name in labels]
    return labels


class DevicesError(UserError, ValueError):
    pass


def parse_devices(value: str | None, cuda_count: int | None = None) -> list[str]:
    """`--gpus`: "0,1,3" → one worker per listed CUDA device; empty → every visible GPU (one CPU worker
    without a GPU). "cpu" entries give CPU workers (several for trying the multi-worker queue without a GPU)."""
    count = torch.cuda.device_count() if cuda_count is None else cuda_count
    if not value or not value.strip():
        return [f"cuda:{i}" for i in range(count)] or ["cpu"]
    devices = []
    for part in (p.strip().lower() for p in value.split(",")):
        if part == "cpu":
            devices.append("cpu")
        elif part.isdigit() and int(part) < count:
            devices.append(f"cuda:{int(part)}")
        elif part.isdigit():
            seen = f"GPUs 0–{count - 1}" if count else "no CUDA GPU"
            raise DevicesError(f"--gpus names GPU {part}, but this machine has {seen}.")
        else:
            raise DevicesError(f"--gpus takes GPU numbers and 'cpu', separated by commas (like 0,1); got '{part}'.")
    if len(set(d for d in devices if d != "cpu")) != len([d for d in devices if d != "cpu"]):
        raise DevicesError("--gpus names a GPU twice; each GPU has one worker.")
    return devices


# ---- a job that runs in another process (Ray actor, split group, ZeroGPU): plain, picklable messages ------
Message = tuple[str, Any]


class RemoteRefusal(UserError, RuntimeError):
    """A refusal raised where the job ran (out of memory, a missing model), passed on as said there."""


def run_as_messages(manager: PipelineManager, request: ValidRequest, cancel: Any) -> Iterator[Message]:
    """One run as messages to send elsewhere: ("progress", Progress) per report, then one of ("done", the
    result's fields but the request), ("cancelled", None), ("failed", message), ("crashed", description).
    The run has its own thread, so each report leaves as it comes; closing the iterator early sets `cancel`
    (when it is an Event) and waits for the run to stop at the end of its step."""
    reports: queue.Queue[Message] = queue.Queue()

    def run() -> None:
        try:
            result = manager.generate(request, on_progress=lambda p: reports.put(("progress", p)), cancel=cancel)
            reports.put(("done", {**vars(result), "request": None}))
        except GenerationCancelled:
            reports.put(("cancelled", None))
        except UserError as err:
            reports.put(("failed", str(err)))
        except Exception as err:  # shown as an internal error by the studio; the worker lives on
            log.exception("a job failed in a worker process")
            reports.put(("crashed", f"{type(err).__name__}: {err}"))

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    try:
        while True:
            kind, payload = reports.get()
            yield kind, payload
            if kind != "progress":
                return
    finally:
        if isinstance(cancel, threading.Event):
            cancel.set()
        thread.join()


def settle(kind: str, payload: Any, request: ValidRequest, where: str) -> GenerationResult:
    """The last message of a run: the result, or the exception that says how it ended."""
    if kind == "done":
        return GenerationResult(**{**payload, "request": request})
    if kind == "cancelled":
        raise GenerationCancelled()
    if kind == "failed":
        raise RemoteRefusal(payload)
    raise RuntimeError(f"on {where}: {payload}")
