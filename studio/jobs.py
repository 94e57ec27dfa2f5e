"""Server-owned jobs: clips on the GPU worker, films on the film worker, state kept on disk.

A job belongs to the server, not to a browser tab: the page only watches it. Closing the page, a
dropped connection or a client that stops reading never stops a job. A clip job holds its validated
request (seed drawn and model fixed at submit) and a film job its checked storyboard; each job's record
is written to `<output>/.jobs/<id>.json` on every state change (not on every step), so after a restart
queued jobs run again and a job that was running is listed as interrupted.

The workers outlive anything a job does, their own bookkeeping included: a record that cannot be
written (a full disk) is logged and the job goes on in memory.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from library import ClipOptions, Library, Shot, Storyboard
from library.files import read_json, set_aside, temporary, write_json
from library.film import ExportCancelled
from pipelines.errors import UserError
from pipelines.manager import GenerationCancelled, GenerationResult, PipelineManager, Progress
from pipelines.request import ValidRequest
from studio.errors import internal_error

log = logging.getLogger("wan_studio")

QUEUED, RUNNING, DONE, FAILED, CANCELLED, INTERRUPTED = (
    "queued", "running", "done", "failed", "cancelled", "interrupted",
)  # fmt: skip
FINISHED = (DONE, FAILED, CANCELLED, INTERRUPTED)
CLIP, FILM = "clip", "film"
RECORD_FORMAT = 2


@dataclass
class Job:
    id: str
    kind: str  # CLIP or FILM
    request: ValidRequest | None = None  # a clip job's request, validated at submit (its seed is final)
    storyboard: Storyboard | None = None  # a film job's storyboard, checked at submit
    append_to_storyboard: bool = False  # a clip job from "extend the last shot": its clip joins the storyboard
    status: str = QUEUED
    created: float = field(default_factory=time.time)
    message: str = "Waiting in the queue"
    stage: str = ""
    fraction: float = 0.0
    step: int = 0
    total_steps: int = 0
    eta_s: float | None = None
    result: str | None = None  # the finished clip's or film's path
    error: str | None = None
    version: int = 0  # bumped on every change, so watchers know when to redraw
    preview_version: int = 0  # bumped when a new preview arrives
    preview: np.ndarray | None = field(default=None, repr=False)  # the latest preview strip, memory only

    @property
    def finished(self) -> bool:
        return self.status in FINISHED

    @property
    def seed(self) -> int | None:
        return self.request.seed if self.request is not None else None

    @property
    def label(self) -> str:
        """What the queue panel calls the job."""
        if self.request is not None:
            return self.request.prompt
        board = self.storyboard
        count = len(board.shots) if board else 0
        return f"Film: {board.title or 'untitled'} ({count} shot{'' if count == 1 else 's'})"

    def record(self) -> dict[str, Any]:
        """The job as plain JSON data; `from_record` gives it back (the picture is stored beside it)."""
        return {
            "format": RECORD_FORMAT, "id": self.id, "kind": self.kind,
            "request": self.request.to_record() if self.request is not None else None,
            "image": f"{self.id}.input.png" if self.request is not None and self.request.image is not None else None,
            "end_image": f"{self.id}.end.png" if self.request is not None and self.request.end_image is not None
            else None,
            "storyboard": self.storyboard.to_json() if self.storyboard is not None else None,
            "append_to_storyboard": self.append_to_storyboard, "status": self.status, "created": self.created,
            "message": self.message, "step": self.step, "total_steps": self.total_steps, "result": self.result,
            "error": self.error,
        }  # fmt: skip

    @classmethod
    def from_record(cls, data: dict[str, Any], jobs_dir: Path) -> Job:
        """ValueError (or a UserError) when the record cannot be a job."""
        if not isinstance(data, dict) or data.get("format") != RECORD_FORMAT or data.get("kind") not in (CLIP, FILM):
            raise ValueError("not a job record of this version")
        request = None
        if data["kind"] == CLIP:
            image, end = (Image.open(jobs_dir / data[key]).convert("RGB") if data.get(key) else None
                          for key in ("image", "end_image"))  # fmt: skip
            request = ValidRequest.from_record(data["request"], image=image, end_image=end)
        storyboard = Storyboard.from_json(data["storyboard"]) if data["kind"] == FILM else None
        return cls(
            id=str(data["id"]), kind=data["kind"], request=request, storyboard=storyboard,
            append_to_storyboard=bool(data.get("append_to_storyboard")), status=data["status"],
            created=float(data["created"]), message=str(data.get("message", "")), step=int(data.get("step", 0)),
            total_steps=int(data.get("total_steps", 0)), result=data.get("result"), error=data.get("error"),
        )  # fmt: skip


GenerateFn = Callable[[PipelineManager, ValidRequest, Callable[[Progress], None], threading.Event], GenerationResult]


def default_generate(
    manager: PipelineManager, request: ValidRequest, report: Callable[[Progress], None], cancel: threading.Event
) -> GenerationResult:
    return manager.generate(request, on_progress=report, cancel=cancel)


class JobQueue:
    def __init__(
        self,
        manager: PipelineManager,
        library: Library,
        generate: GenerateFn = default_generate,
        clip_options: ClipOptions = ClipOptions(),  # noqa: B008
    ):
        self.manager = manager
        self.library = library
        self.jobs_dir = library.jobs_dir
        self.jobs_dir.mkdir(parents=True, exist_ok=True)
        self._generate = generate
        self.clip_options = clip_options  # signing and watermark; the studio updates it from Settings
        self.warnings: list[str] = []  # records that could not be read at start-up, set aside
        self._jobs: dict[str, Job] = {}
        self._cancels: dict[str, threading.Event] = {}
        self._queues: dict[str, queue.Queue[str]] = {CLIP: queue.Queue(), FILM: queue.Queue()}
        self._lock = threading.Lock()
        self._restore()
        for kind, name in ((CLIP, "wan-studio-gpu-worker"), (FILM, "wan-studio-film-worker")):
            threading.Thread(target=self._run_forever, args=(kind,), name=name, daemon=True).start()

    # ---- submitting and watching ----------------------------------------------------------------
    def submit(self, request: ValidRequest, append_to_storyboard: bool = False) -> Job:
        """Queue a validated request (its seed is final from here on); LibraryError when its record cannot
        be written, and then nothing is queued."""
        job = Job(id=uuid.uuid4().hex[:12], kind=CLIP, request=request, append_to_storyboard=append_to_storyboard)
        return self._enqueue(job)

    def submit_film(self, board: Storyboard) -> Job:
        """Queue the export of a storyboard the caller has checked (`Library.check_film`)."""
        return self._enqueue(Job(id=uuid.uuid4().hex[:12], kind=FILM, storyboard=board))

    def _enqueue(self, job: Job) -> Job:
        pictures = {self.jobs_dir / f"{job.id}.input.png": job.request.image if job.request else None,
                    self.jobs_dir / f"{job.id}.end.png": job.request.end_image if job.request else None}  # fmt: skip
        try:
            for path, picture in pictures.items():
                if picture is None:
                    continue
                tmp = temporary(self.jobs_dir, ".png")
                try:
                    picture.save(tmp, format="PNG")
                    tmp.replace(path)
                finally:
                    tmp.unlink(missing_ok=True)
            write_json(self.jobs_dir / f"{job.id}.json", job.record())
        except (OSError, UserError) as err:
            for path in pictures:
                path.unlink(missing_ok=True)
            raise err if isinstance(err, UserError) else _disk(err, self.jobs_dir) from None
        with self._lock:
            self._jobs[job.id] = job
            self._cancels[job.id] = threading.Event()
        self._queues[job.kind].put(job.id)
        return job

    def get(self, job_id: str) -> Job | None:
        return self._jobs.get(job_id)

    def snapshot(self, job_id: str) -> Job | None:
        """A consistent copy: the worker changes the live job while a watcher is still reading it."""
        with self._lock:
            job = self._jobs.get(job_id)
            return None if job is None else replace(job)

    def jobs(self) -> list[Job]:
        """Newest first. Under the lock: pages read the table every second while submits add to it."""
        with self._lock:
            return sorted(self._jobs.values(), key=lambda j: j.created, reverse=True)

    def position(self, job_id: str) -> int:
        """1-based place among the queued jobs of its kind (0 when not queued)."""
        with self._lock:
            job = self._jobs.get(job_id)
            if job is None:
                return 0
            queued = sorted(
                (j for j in self._jobs.values() if j.status == QUEUED and j.kind == job.kind), key=lambda j: j.created
            )
        return next((i + 1 for i, j in enumerate(queued) if j.id == job_id), 0)

    def cancel(self, job_id: str) -> bool:
        """Stop a queued job at once, a running one within a denoising step (or a film frame)."""
        with self._lock:
            job = self._jobs.get(job_id)
            if job is None or job.finished:
                return False
            self._cancels[job_id].set()
            if job.status == QUEUED:
                self._finish(job, CANCELLED, "Cancelled before it started")
        return True

    # ---- the workers ----------------------------------------------------------------------------
    def _run_forever(self, kind: str) -> None:
        while True:
            job_id = self._queues[kind].get()
            job = self._jobs.get(job_id)
            if job is None or job.status != QUEUED:
                continue
            try:
                self._run_clip(job) if kind == CLIP else self._run_film(job)
            except Exception as err:  # the worker must outlive any one job, its bookkeeping included
                message = internal_error(err)
                with self._lock:
                    self._finish(job, FAILED, message, error=message)

    def _start(self, job: Job) -> threading.Event:
        with self._lock:
            job.status, job.message = RUNNING, "Starting"
            self._touch(job, save=True)
        return self._cancels[job.id]

    def _run_clip(self, job: Job) -> None:
        cancel = self._start(job)
        try:
            result = self._generate(self.manager, job.request, lambda p: self._on_progress(job, p), cancel)
            with self._lock:
                job.message = "Writing the clip"
                self._touch(job)
            files = self.library.save_clip(result, self.clip_options)
        except GenerationCancelled:
            with self._lock:
                self._finish(job, CANCELLED, f"Cancelled at step {job.step}/{job.total_steps}")
            return
        except UserError as err:
            with self._lock:
                self._finish(job, FAILED, str(err), error=str(err))
            return
        with self._lock:
            job.result = str(files.video)
        note = ""
        if job.append_to_storyboard:
            try:
                # Its first frame is the previous shot's last one: start one frame in, so the joint does not stall.
                self.library.storyboard.append(Shot(clip=files.video.name, start_s=1.0 / job.request.fps))
                note = " Added to the storyboard."
            except Exception as err:  # the clip is safe in the library whatever happens here
                note = f" The clip is in the library, but it could not be added to the storyboard: {_said(err)}"
        signing = self.library.clip(files.video.name).sidecar.get("provenance", {})
        unsigned = "" if signing.get("signed") else f" Not signed: {signing.get('signing_error')}."
        with self._lock:
            self._finish(job, DONE, f"Done in {result.timings['total_s']:.1f} s (seed {job.seed}).{unsigned}{note}")

    def _run_film(self, job: Job) -> None:
        cancel = self._start(job)

        def progress(fraction: float, message: str) -> None:
            with self._lock:
                job.stage, job.fraction, job.message = "film", fraction, message
                self._touch(job)

        try:
            film = self.library.export_film(job.storyboard, on_progress=progress, cancel=cancel)
        except ExportCancelled:
            with self._lock:
                self._finish(job, CANCELLED, "Export cancelled; no film was written")
            return
        except UserError as err:
            with self._lock:
                self._finish(job, FAILED, str(err), error=str(err))
            return
        record = read_json(film.with_suffix(film.suffix + ".json"))
        signing = record.get("provenance", {})
        unsigned = "" if signing.get("signed") else f" Not signed: {signing.get('signing_error')}."
        with self._lock:
            job.result = str(film)
            self._finish(job, DONE, f"Film ready: {film.name}.{unsigned}")

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
        """Call with the lock held."""
        job.status, job.message, job.error = status, message, error
        job.eta_s = None
        self._touch(job, save=True)

    def _touch(self, job: Job, save: bool = False) -> None:
        """Call with the lock held."""
        job.version += 1
        if save:
            try:
                write_json(self.jobs_dir / f"{job.id}.json", job.record())
            except Exception as err:  # the job goes on in memory; only a restart would not know it
                log.warning("could not save the record of job %s: %s", job.id, err)

    def _restore(self) -> None:
        """Queued jobs from the last run go back in the queue; running ones are marked interrupted. A
        record that cannot be read is set aside with a warning; the studio starts regardless."""
        jobs = []
        for path in self.jobs_dir.glob("*.json"):
            try:
                jobs.append(Job.from_record(read_json(path), self.jobs_dir))
            except Exception as err:
                kept = set_aside(path)
                self.warnings.append(
                    f"A job record could not be read ({_said(err)}); set aside as {kept.name if kept else path.name}."
                )
        for job in sorted(jobs, key=lambda j: j.created):
            self._jobs[job.id] = job
            self._cancels[job.id] = threading.Event()
            if job.status == RUNNING:
                job.status = INTERRUPTED
                job.message = "Interrupted: the studio stopped while this job ran. Start it again to redo it."
                self._touch(job, save=True)
            elif job.status == QUEUED:
                job.message = "Resumed after a restart; waiting in the queue"
                self._queues[job.kind].put(job.id)


def tile(frames: np.ndarray, gap: int = 4) -> np.ndarray:
    """Preview frames side by side on a dark strip, for a single image view."""
    k, h, w, _ = frames.shape
    strip = np.full((h, k * w + (k - 1) * gap, 3), 24, dtype=np.uint8)
    for i, frame in enumerate(frames):
        strip[:, i * (w + gap) : i * (w + gap) + w] = frame
    return strip


def _said(err: Exception) -> str:
    return str(err) if isinstance(err, (UserError, ValueError, KeyError)) else type(err).__name__


def _disk(err: OSError, folder: Path) -> Exception:
    from library.files import disk_error

    return disk_error(err, folder)
