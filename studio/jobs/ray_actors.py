"""GPU workers as Ray actors (`python app.py --ray ADDRESS`): a pool of machines behind one studio.

Ray places the actors (one per GPU of the cluster, by Ray's own `num_gpus` resource) and restarts one
whose machine died; the studio keeps everything else. Its queue on disk stays the one source of truth
(`JobQueue` sends each job to a free actor, as it does to a local GPU), previews stream back from the
actor as a Ray streaming generator, and the finished frames come back to the studio, which writes,
signs and publishes the clip in its own output folder. An actor lost under a job raises `WorkerLost`:
the queue runs the job again once, elsewhere. Cancel reaches the actor through a second method call
(the actor runs two threads: one generates, one listens).

Every machine needs this project at the same path with its requirements installed (its own Hugging
Face cache or a shared one): see docs/SCALING.md.
"""

from __future__ import annotations

import logging
import threading
import uuid
from pathlib import Path
from typing import Any

from pipelines.errors import UserError
from pipelines.manager import GenerationResult, PipelineManager
from pipelines.request import ValidRequest
from pipelines.speed import SpeedOptions
from studio.jobs.workers import Report, WorkerLost, run_as_messages, settle

log = logging.getLogger("wan_studio")
PROJECT = Path(__file__).resolve().parents[2]
CONNECT_TIMEOUT_S = 20
START_HINT = ("Start it with 'ray start --head' on one machine and 'ray start --address <head>:6379' on the "
              "others, then pass the head's address (see docs/SCALING.md).")  # fmt: skip


class ClusterError(UserError, RuntimeError):
    """The Ray cluster cannot be reached or has no room for a worker."""


class GenerationActor:
    """The body of each Ray actor: a pipeline manager on the GPU Ray gave it. Runs one job at a time."""

    def __init__(self, profile: str, offline: bool, speed: SpeedOptions | None):
        import os

        if offline:
            os.environ["HF_HUB_OFFLINE"] = "1"
        self.manager = PipelineManager(profile=profile, offline=offline, speed=speed)
        self.cancels: dict[str, threading.Event] = {}

    def where(self) -> str:
        import ray

        context = ray.get_runtime_context()
        gpus = context.get_accelerator_ids().get("GPU") or []
        return f"{ray.util.get_node_ip_address()} " + (f"GPU {','.join(gpus)}" if gpus else "CPU")

    def cancel(self, key: str) -> None:
        if key in self.cancels:
            self.cancels[key].set()

    def generate(self, key: str, request: ValidRequest, settings: dict[str, Any]):
        """A generator of the run's messages (`run_as_messages`), streamed back to the studio."""
        self.manager.requested_profile = settings["profile"]
        self.manager.speed = settings["speed"]
        cancel = self.cancels[key] = threading.Event()
        try:
            yield from run_as_messages(self.manager, request, cancel)
        finally:
            self.cancels.pop(key, None)


class RayWorker:
    """One actor, seen by the job queue as a GPU worker."""

    def __init__(self, actor: Any, label: str, settings: dict[str, Any]):
        self.actor = actor
        self.label = label
        self.settings = settings  # profile and speed, updated by the studio's Settings
        self._holds: str | None = None  # what it loaded last (asked of the queue while a job runs)

    def holds(self) -> str | None:
        return self._holds

    def configure(self, profile: str, speed: SpeedOptions) -> None:
        self.settings = {"profile": profile, "speed": speed}  # sent with each job

    def generate(self, request: ValidRequest, report: Report, cancel: threading.Event) -> GenerationResult:
        import ray
        from ray.exceptions import RayActorError

        key = uuid.uuid4().hex
        finished = threading.Event()

        def forward_cancel() -> None:
            while not finished.wait(0.1):
                if cancel.is_set():
                    self.actor.cancel.remote(key)
                    return

        threading.Thread(target=forward_cancel, daemon=True).start()
        try:
            stream = self.actor.generate.options(num_returns="streaming").remote(key, request, dict(self.settings))
            for ref in stream:
                kind, payload = ray.get(ref)
                if kind == "progress":
                    report(payload)
                    continue
                self._holds = request.spec.id
                return settle(kind, payload, request, self.label)
            raise WorkerLost("the worker ended the job without a result")
        except RayActorError as err:
            self._holds = None
            raise WorkerLost(_first_line(err)) from None
        finally:
            finished.set()


def connect(address: str) -> None:
    """ClusterError with what to do when the cluster cannot be reached."""
    try:
        import ray
    except ImportError:
        raise ClusterError("--ray needs Ray on every machine: pip install 'ray>=2.40,<3'.") from None

    if ray.is_initialized():
        return
    reachable(address)
    try:
        ray.init(address=address, logging_level=logging.WARNING, log_to_driver=False,
                 runtime_env={"env_vars": {"PYTHONPATH": str(PROJECT)}})  # fmt: skip
    except Exception as err:
        raise ClusterError(f"Could not reach the Ray cluster at {address} ({_first_line(err)}). {START_HINT}") from None


def reachable(address: str) -> None:
    """A plain TCP check first: Ray itself retries an address that answers nothing for minutes."""
    import socket

    if address in ("auto", "local"):
        return
    host, _, port = address.split("://")[-1].rpartition(":")
    try:
        with socket.create_connection((host or address, int(port) if port.isdigit() else 6379), timeout=5):
            return
    except OSError as err:
        raise ClusterError(
            f"Could not reach the Ray cluster at {address} ({err.strerror or err}). {START_HINT}"
        ) from None


def ray_pool(address: str, profile: str, speed: SpeedOptions | None, offline: bool = False,
             count: int | None = None, actor_body: type = GenerationActor) -> list[RayWorker]:  # fmt: skip
    """One actor per GPU of the cluster (or `count`; one per node on a cluster without GPUs). `actor_body`:
    the actors' class (tests pass a subclass that can hold a run inside a step, in the actor's process)."""
    import ray

    connect(address)
    resources = ray.cluster_resources()
    gpus = int(resources.get("GPU", 0))
    nodes = [node for node in ray.nodes() if node.get("Alive")]
    count = count or gpus or len(nodes)
    per_actor = {"num_gpus": 1} if gpus else {"num_cpus": 1}
    if gpus and count > gpus:
        raise ClusterError(f"The Ray cluster has {gpus} GPUs; {count} workers were asked for.")
    actor_class = ray.remote(max_restarts=-1, max_task_retries=0, max_concurrency=2, **per_actor)(actor_body)
    speed = speed or SpeedOptions()
    settings = {"profile": profile, "speed": speed}
    actors = [actor_class.remote(profile, offline, speed) for _ in range(count)]
    try:
        places = ray.get([actor.where.remote() for actor in actors], timeout=CONNECT_TIMEOUT_S * 6)
    except Exception as err:
        raise ClusterError(f"The Ray workers did not start: {_first_line(err)}") from None
    return [RayWorker(actor, f"ray worker {n} ({place})", settings) for n, (actor, place) in
            enumerate(zip(actors, places, strict=True), start=1)]  # fmt: skip


def _first_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return text[0][:300] if text else type(err).__name__
