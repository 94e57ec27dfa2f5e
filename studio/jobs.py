"""Server-owned jobs: one queue for the GPU, one worker thread, state kept on disk.

A job belongs to the server, not to a browser tab: the page only watches it. Closing the page, a
dropped connection or a client that stops reading never stops a job. Each job's record is written to
`<output>/.jobs/<id>.json` on every state change (not on every step), so after a restart queued jobs
run again and a job that was running is listed as interrupted.
"""

from __future__ import annotations

import json
import queue
import threading
import time
import traceback
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from pipelines.attention import AttentionUnavailableError
from pipelines.catalogue import DEFAULT_MODEL
from pipelines.clip import ClipOptions, save_clip
from pipelines.manager import GenerationCancelled, GenerationResult, OutOfMemoryError, PipelineManager, Progress
from pipelines.memory import DoesNotFitError
from pipelines.preview import tile
from pipelines.request import GenerationRequest, RequestError, ValidRequest, validate_request
from pipelines.video import read_sidecar
from pipelines.weights import ModelUnavailableError

QUEUED, RUNNING, DONE, FAILED, CANCELLED, INTERRUPTED = (
    "queued",
    "running",
    "done",
    "failed",
    "cancelled",
    "interrupted",
)
FINISHED = (DONE, FAILED, CANCELLED, INTERRUPTED)
EXPECTED_ERRORS = (RequestError, DoesNotFitError, OutOfMemoryError, ModelUnavailableError, AttentionUnavailableError)


@dataclass
class Job:
    id: str
    fields: dict[str, Any]  # GenerationRequest fields; the image is stored beside the record
    status: str = QUEUED
    created: float = field(default_factory=time.time)
    message: str = "Waiting in the queue"
    stage: str = ""
    fraction: float = 0.0
    step: int = 0
    total_steps: int = 0
    eta_s: float | None = None
    seed: int | None = None
    clip: str | None = None  # the finished MP4's path
    error: str | None = None
    image_path: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)  # what the studio wants done with the clip (kept on disk)
    version: int = 0  # bumped on every change, so watchers know when to redraw
    preview_version: int = 0  # bumped when a new preview arrives
    preview: np.ndarray | None = field(default=None, repr=False)  # the latest preview strip, memory only

    def record(self) -> dict[str, Any]:
        data = asdict(self)
        data.pop("preview")
        return data

    @property
    def finished(self) -> bool:
        return self.status in FINISHED


GenerateFn = Callable[[PipelineManager, ValidRequest, Callable[[Progress], None], threading.Event], GenerationResult]


def default_generate(
    manager: PipelineManager, request: ValidRequest, report: Callable[[Progress], None], cancel: threading.Event
) -> GenerationResult:
    return manager.generate(request, on_progress=report, cancel=cancel)


class JobQueue:
    def __init__(
        self,
        manager: PipelineManager,
        output_dir: Path,
        default_model: str = DEFAULT_MODEL,
        generate: GenerateFn = default_generate,
        on_done: Callable[[Job], None] | None = None,
        clip_options: ClipOptions = ClipOptions(),  # noqa: B008
    ):
        self.manager = manager
        self.output_dir = Path(output_dir)
        self.jobs_dir = self.output_dir / ".jobs"
        self.jobs_dir.mkdir(parents=True, exist_ok=True)
        self.default_model = default_model
        self._generate = generate
        self._on_done = on_done  # called in the worker thread after a clip is written
        self.clip_options = clip_options  # signing and watermark; the studio updates it from Settings
        self._jobs: dict[str, Job] = {}
        self._cancels: dict[str, threading.Event] = {}
        self._queue: queue.Queue[str] = queue.Queue()
        self._lock = threading.Lock()
        self._restore()
        self._worker = threading.Thread(target=self._run_forever, name="wan-studio-gpu-worker", daemon=True)
        self._worker.start()

    # ---- submitting and watching ----------------------------------------------------------------
    def submit(self, request: GenerationRequest, extra: dict[str, Any] | None = None) -> Job:
        """Check the request now (so bad input is answered at once), then queue it."""
        validate_request(request, self.default_model)  # raises RequestError with every problem
        fields_ = {k: v for k, v in asdict(request).items() if k != "image"}
        job = Job(id=uuid.uuid4().hex[:12], fields=fields_, extra=dict(extra or {}))
        if request.image is not None:
            from pipelines.images import load_image

            path = self.jobs_dir / f"{job.id}.input.png"
            load_image(request.image).save(path)
            job.image_path = str(path)
        with self._lock:
            self._jobs[job.id] = job
            self._cancels[job.id] = threading.Event()
            self._save(job)
        self._queue.put(job.id)
        return job

    def get(self, job_id: str) -> Job | None:
        return self._jobs.get(job_id)

    def snapshot(self, job_id: str) -> Job | None:
        """A consistent copy: the worker changes the live job while a watcher is still reading it."""
        with self._lock:
            job = self._jobs.get(job_id)
            return None if job is None else replace(job, fields=dict(job.fields))

    def jobs(self) -> list[Job]:
        """Newest first. Under the lock: pages read the table every second while submits add to it."""
        with self._lock:
            return sorted(self._jobs.values(), key=lambda j: j.created, reverse=True)

    def position(self, job_id: str) -> int:
        """1-based place among queued jobs (0 when not queued)."""
        with self._lock:
            queued = sorted((j for j in self._jobs.values() if j.status == QUEUED), key=lambda j: j.created)
        return next((i + 1 for i, j in enumerate(queued) if j.id == job_id), 0)

    def cancel(self, job_id: str) -> bool:
        """Stop a queued job at once, a running one within a denoising step."""
        with self._lock:
            job = self._jobs.get(job_id)
            if job is None or job.finished:
                return False
            self._cancels[job_id].set()
            if job.status == QUEUED:
                self._finish(job, CANCELLED, "Cancelled before it started")
        return True

    # ---- the worker -----------------------------------------------------------------------------
    def _run_forever(self) -> None:
        while True:
            job_id = self._queue.get()
            job = self._jobs.get(job_id)
            if job is None or job.status != QUEUED:
                continue
            try:
                self._run(job)
            except Exception:  # the worker must outlive any one job
                with self._lock:
                    self._finish(job, FAILED, "Unexpected error", error=traceback.format_exc(limit=5))

    def _run(self, job: Job) -> None:
        cancel = self._cancels[job.id]
        with self._lock:
            job.status, job.message = RUNNING, "Starting"
            self._touch(job, save=True)
        try:
            request = validate_request(self._request_of(job), self.default_model)
            job.seed = request.seed
            result = self._generate(self.manager, request, lambda p: self._on_progress(job, p), cancel)
            with self._lock:
                job.message = "Writing the clip"
                self._touch(job)
            files = save_clip(result, self.output_dir, self.clip_options)
        except GenerationCancelled:
            with self._lock:
                self._finish(job, CANCELLED, f"Cancelled at step {job.step}/{job.total_steps}")
            return
        except EXPECTED_ERRORS as err:
            with self._lock:
                self._finish(job, FAILED, str(err), error=str(err))
            return
        with self._lock:
            job.clip = str(files.video)
        if self._on_done is not None:
            try:
                self._on_done(job)
            except Exception as err:  # the clip is safe in the library whatever the hook does
                with self._lock:
                    self._finish(job, DONE, f"Done, but the follow-up failed: {err}")
                return
        signing = read_sidecar(files.video).get("provenance", {})
        unsigned = "" if signing.get("signed") else f" Not signed: {signing.get('signing_error')}."
        with self._lock:
            self._finish(job, DONE, f"Done in {result.timings['total_s']:.1f} s (seed {request.seed}).{unsigned}")

    def _request_of(self, job: Job) -> GenerationRequest:
        image = Image.open(job.image_path) if job.image_path else None
        return GenerationRequest(**job.fields, image=image)

    def _on_progress(self, job: Job, progress: Progress) -> None:
        with self._lock:
            job.stage, job.fraction, job.message = progress.stage, progress.fraction, progress.message
            if progress.total_steps:
                job.total_steps = progress.total_steps
            if progress.step is not None:
                job.step = progress.step
            job.eta_s = progress.eta_s
            if progress.preview is not None:
                job.preview = tile(progress.preview)
                job.preview_version += 1
            self._touch(job)

    # ---- state ----------------------------------------------------------------------------------
    def _finish(self, job: Job, status: str, message: str, error: str | None = None) -> None:
        job.status, job.message, job.error = status, message, error
        job.eta_s = None
        self._touch(job, save=True)

    def _touch(self, job: Job, save: bool = False) -> None:
        """Call with the lock held."""
        job.version += 1
        if save:
            self._save(job)

    def _save(self, job: Job) -> None:
        path = self.jobs_dir / f"{job.id}.json"
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(job.record()))
        tmp.replace(path)

    def _restore(self) -> None:
        """Queued jobs from the last run go back in the queue; running ones are marked interrupted."""
        records = []
        for path in self.jobs_dir.glob("*.json"):
            try:
                records.append(json.loads(path.read_text()))
            except (OSError, ValueError):
                continue
        for data in sorted(records, key=lambda d: d.get("created", 0)):
            try:
                job = Job(**data)
            except TypeError:
                continue
            self._jobs[job.id] = job
            self._cancels[job.id] = threading.Event()
            if job.status == RUNNING:
                job.status = INTERRUPTED
                job.message = "Interrupted: the studio stopped while this job ran. Generate again to redo it."
                self._save(job)
            elif job.status == QUEUED:
                job.message = "Resumed after a restart; waiting in the queue"
                self._queue.put(job.id)
