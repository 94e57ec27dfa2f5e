"""Server-owned jobs: clips and post-production (upscale, smooth motion) on the GPU workers, films on the
film worker, state kept on disk.

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
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from library import ClipOptions, Library, Shot, Storyboard
from library.files import discard, read_json, set_aside, write_json, write_png
from library.film import ExportCancelled
from library.post import PostCancelled, PostRequest
from library.takes import CANCELLED as TAKE_CANCELLED
from library.takes import FAILED as TAKE_FAILED
from pipelines.enhance import EnhanceCancelled
from pipelines.errors import UserError
from pipelines.long_take import TakePlan, run_take
from pipelines.manager import GenerationCancelled, PipelineManager, Progress
from pipelines.request import ValidRequest
from studio.errors import internal_error
from studio.jobs.enhancing import EnhanceRequest, run_enhance
from studio.jobs.workers import GenerateFn, GpuWorker, LocalWorker, WorkerLost, free_memory, post_device
from studio.jobs.workers import default_generate as default_generate  # where callers have always found it

log = logging.getLogger("wan_studio")

QUEUED, RUNNING, DONE, FAILED, CANCELLED, INTERRUPTED = (
    "queued", "running", "done", "failed", "cancelled", "interrupted",
)  # fmt: skip
FINISHED = (DONE, FAILED, CANCELLED, INTERRUPTED)
CLIP, FILM, POST, ENHANCE = "clip", "film", "post", "enhance"
WRITING = "write"  # a clip job's last stage: encoding, signing, publishing (not cancellable)
RECORD_FORMAT = 2


@dataclass
class Job:
    id: str
    kind: str  # CLIP, FILM or POST
    request: ValidRequest | None = None  # a clip job's request, validated at submit (its seed is final)
    post: PostRequest | None = None  # a post-production job's request, checked at submit
    enhance: EnhanceRequest | None = None  # a prompt enhancement's request
    text: str | None = None  # an enhancement's result
    storyboard: Storyboard | None = None  # a film job's storyboard, checked at submit
    append_to_storyboard: bool = False  # a clip job from "extend the last shot": its clip joins the storyboard
    take: TakePlan | None = None  # a long take's windows (a clip job of several windows, one clip)
    take_asked: dict | None = None  # what the user asked for the take (prompts, seconds, overlap): for its sidecar
    lead_in: dict | None = None  # a take continuing a storyboard shot: {"clip", "end_s", "frames"}
    keep: bool = False  # a take cancelled with "keep the finished windows"
    window: int = 0  # the take's window running now (1-based)
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
    worker: str = ""  # the worker that runs or ran it ("GPU 1"); empty while queued
    retried: bool = False  # ran again once after its worker was lost
    lost_on: str = ""  # the worker lost under it: its run again goes to another worker where there is one
    started: float | None = None
    ended: float | None = None

    @property
    def finished(self) -> bool:
        return self.status in FINISHED

    @property
    def picture(self) -> Image.Image | None:
        """The start picture kept beside the record: a clip's input, or the picture an enhancement looks at."""
        if self.request is not None:
            return self.request.image
        return self.enhance.image if self.enhance is not None else None

    @property
    def seed(self) -> int | None:
        return self.request.seed if self.request is not None else None

    @property
    def label(self) -> str:
        """What the queue panel calls the job."""
        if self.request is not None:
            return self.request.prompt
        if self.post is not None:
            return self.post.label
        if self.enhance is not None:
            return self.enhance.label
        board = self.storyboard
        count = len(board.shots) if board else 0
        return f"Film: {board.title or 'untitled'} ({count} shot{'' if count == 1 else 's'})"

    def record(self) -> dict[str, Any]:
        """The job as plain JSON data; `from_record` gives it back (the picture is stored beside it)."""
        return {
            "format": RECORD_FORMAT, "id": self.id, "kind": self.kind,
            "request": self.request.to_record() if self.request is not None else None,
            "image": f"{self.id}.input.png" if self.picture is not None else None,
            "end_image": f"{self.id}.end.png" if self.request is not None and self.request.end_image is not None
            else None,
            "storyboard": self.storyboard.to_json() if self.storyboard is not None else None,
            "take": self.take.record() if self.take is not None else None, "take_asked": self.take_asked,
            "lead_in": self.lead_in,
            "post": self.post.record() if self.post is not None else None,
            "enhance": self.enhance.record() if self.enhance is not None else None, "text": self.text,
            "append_to_storyboard": self.append_to_storyboard, "status": self.status, "created": self.created,
            "message": self.message, "window": self.window, "step": self.step, "total_steps": self.total_steps,
            "result": self.result, "error": self.error, "worker": self.worker, "retried": self.retried,
            "started": self.started, "ended": self.ended,
        }  # fmt: skip

    @classmethod
    def from_record(cls, data: dict[str, Any], jobs_dir: Path) -> Job:
        """ValueError (or a UserError) when the record cannot be a job."""
        if (
            not isinstance(data, dict)
            or data.get("format") != RECORD_FORMAT
            or data.get("kind") not in (CLIP, FILM, POST, ENHANCE)
        ):
            raise ValueError("not a job record of this version")
        request = None
        if data["kind"] == CLIP:
            image, end = (Image.open(jobs_dir / data[key]).convert("RGB") if data.get(key) else None
                          for key in ("image", "end_image"))  # fmt: skip
            request = ValidRequest.from_record(data["request"], image=image, end_image=end)
        storyboard = Storyboard.from_json(data["storyboard"]) if data["kind"] == FILM else None
        post = PostRequest(**data["post"]) if data["kind"] == POST else None
        enhance = None
        if data["kind"] == ENHANCE:
            image = Image.open(jobs_dir / data["image"]).convert("RGB") if data.get("image") else None
            enhance = EnhanceRequest(**data["enhance"], image=image)
        return cls(
            id=str(data["id"]), kind=data["kind"], request=request, storyboard=storyboard, post=post, enhance=enhance,
            text=data.get("text"), take=TakePlan.from_record(data["take"]) if data.get("take") else None,
            take_asked=data.get("take_asked"), lead_in=data.get("lead_in"), window=int(data.get("window", 0) or 0),
            append_to_storyboard=bool(data.get("append_to_storyboard")), status=data["status"],
            created=float(data["created"]), message=str(data.get("message", "")), step=int(data.get("step", 0)),
            total_steps=int(data.get("total_steps", 0)), result=data.get("result"), error=data.get("error"),
            worker=str(data.get("worker") or ""), retried=bool(data.get("retried")), started=data.get("started"),
            ended=data.get("ended"),
        )  # fmt: skip


class JobQueue:
    """The one source of truth for jobs. Clip jobs wait in `_pending` (submit order) until a free GPU
    worker claims one, preferring a job whose model it already holds; films go to one film worker."""

    def __init__(
        self,
        workers: PipelineManager | Sequence[GpuWorker],
        library: Library,
        generate: GenerateFn = default_generate,
        clip_options: ClipOptions = ClipOptions(),  # noqa: B008
    ):
        if isinstance(workers, PipelineManager):  # one device: the studio as it always was
            workers = [LocalWorker(workers, generate)]
        self.workers: list[GpuWorker] = list(workers)
        self.library = library
        self.jobs_dir = library.jobs_dir
        self.jobs_dir.mkdir(parents=True, exist_ok=True)
        self.clip_options = clip_options  # signing and watermark; the studio updates it from Settings
        self.warnings: list[str] = []  # records that could not be read at start-up, set aside
        self._jobs: dict[str, Job] = {}
        self._cancels: dict[str, threading.Event] = {}
        self._films: queue.Queue[str] = queue.Queue()
        self._cpu: queue.Queue[str] = queue.Queue()  # enhancements the user runs on the CPU
        self.offline = False  # the studio's flag: enhancer downloads obey it
        self._pending: list[str] = []  # queued clip jobs, oldest first
        self._busy: set[int] = set()  # indexes of the workers running a job
        self._lock = threading.Lock()
        self._wake = threading.Condition(self._lock)  # a job was queued or a worker came free
        with self._lock:
            self._restore()
        for n in range(len(self.workers)):
            threading.Thread(target=self._serve, args=(n,), name=f"wan-studio-worker-{n}", daemon=True).start()
        threading.Thread(target=self._export_forever, name="wan-studio-film-worker", daemon=True).start()
        threading.Thread(target=self._cpu_forever, name="wan-studio-cpu-worker", daemon=True).start()

    # ---- submitting and watching ----------------------------------------------------------------
    def submit(self, request: ValidRequest, append_to_storyboard: bool = False, take: TakePlan | None = None,
               take_asked: dict | None = None, lead_in: dict | None = None) -> Job:  # fmt: skip
        """Queue a validated request (its seed is final from here on), or a long take of it (`take`, planned
        for it; `lead_in`: the storyboard shot it continues); LibraryError when its record cannot be written,
        and then nothing is queued."""
        job = Job(id=uuid.uuid4().hex[:12], kind=CLIP, request=request, append_to_storyboard=append_to_storyboard,
                  take=take, take_asked=take_asked, lead_in=lead_in)  # fmt: skip
        return self._enqueue(job)

    def submit_post(self, post: PostRequest) -> Job:
        """Queue an upscale or a frame interpolation the caller has checked (`library.post.check_*`)."""
        return self._enqueue(Job(id=uuid.uuid4().hex[:12], kind=POST, post=post))

    def submit_enhance(self, request: EnhanceRequest) -> Job:
        """Queue a prompt enhancement: for a GPU worker, or for the CPU worker when the user prefers the CPU."""
        return self._enqueue(Job(id=uuid.uuid4().hex[:12], kind=ENHANCE, enhance=request))

    def submit_film(self, board: Storyboard) -> Job:
        """Queue the export of a storyboard the caller has checked (`Library.check_film`)."""
        return self._enqueue(Job(id=uuid.uuid4().hex[:12], kind=FILM, storyboard=board))

    def _enqueue(self, job: Job) -> Job:
        pictures = {self.jobs_dir / f"{job.id}.input.png": job.picture,
                    self.jobs_dir / f"{job.id}.end.png": job.request.end_image if job.request else None}  # fmt: skip
        try:
            for path, picture in pictures.items():
                if picture is not None:
                    write_png(path, picture)
            write_json(self.jobs_dir / f"{job.id}.json", job.record())
        except (OSError, UserError) as err:
            for path in pictures:
                discard(path)  # never raises: on a read-only disk the refusal below is what the user sees
            raise err if isinstance(err, UserError) else _disk(err, self.jobs_dir) from None
        with self._lock:
            self._jobs[job.id] = job
            self._cancels[job.id] = threading.Event()
            self._queue(job)
        return job

    def _queue(self, job: Job, first: bool = False) -> None:
        """Call with the lock held."""
        if job.kind == FILM:
            self._films.put(job.id)
            return
        if job.kind == ENHANCE and job.enhance.on_cpu:
            self._cpu.put(job.id)
            return
        self._pending.insert(0, job.id) if first else self._pending.append(job.id)
        self._wake.notify_all()

    @staticmethod
    def too_late_to_cancel(job: Job) -> bool:
        return job.status == RUNNING and job.stage == WRITING

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
        """1-based place in the queue the job waits in (0 when not queued): the GPU queue that clips,
        post-production and enhancements share, the film queue, or the CPU queue."""
        with self._lock:
            job = self._jobs.get(job_id)
            if job is None:
                return 0
            if job_id in self._pending:
                waiting = [i for i in self._pending if self._jobs[i].status == QUEUED]
                return waiting.index(job_id) + 1 if job_id in waiting else 0
            queued = sorted(
                (j for j in self._jobs.values() if j.status == QUEUED and j.kind == job.kind), key=lambda j: j.created
            )
        return next((i + 1 for i, j in enumerate(queued) if j.id == job_id), 0)

    def cancel(self, job_id: str, keep: bool = False) -> bool:
        """Stop a queued job at once, a running one within a denoising step (or a film frame), a download
        before the model loads, a decode before anything is published. A long take stopped with `keep` is
        published with its finished windows. False when there is nothing to stop, or the clip is already
        being written (then it is kept: `too_late_to_cancel`)."""
        with self._lock:
            job = self._jobs.get(job_id)
            if job is None or job.finished or self.too_late_to_cancel(job):
                return False
            job.keep = job.keep or keep
            self._cancels[job_id].set()
            if job.status == QUEUED:
                self._finish(job, CANCELLED, "Cancelled before it started")
        return True

    # ---- the workers ----------------------------------------------------------------------------
    def _serve(self, n: int) -> None:
        """GPU worker `n`'s thread: claim a job, run it, repeat. Outlives any one job's failure."""
        worker = self.workers[n]
        while True:
            with self._wake:
                job = self._claim(n)
                while job is None:
                    self._wake.wait()
                    job = self._claim(n)
            try:
                run = {POST: self._run_post, ENHANCE: self._run_enhance}.get(job.kind, self._run_clip)
                run = self._run_take if job.take is not None else run
                self._guarded(job, run, job, worker)
            finally:
                with self._wake:
                    self._busy.discard(n)
                    self._wake.notify_all()  # a job skipped for this worker's model may be this one's now

    def _claim(self, n: int) -> Job | None:
        """The job for free worker `n`: the oldest whose model it holds (no reload), else the oldest whose
        model no other free worker holds (that one takes it); never the run again of a job lost under this
        worker while there is another (a restarting Ray actor would lose it twice). Call with the lock held."""
        self._pending = [i for i in self._pending if self._jobs[i].status == QUEUED]
        if n in self._busy or not self._pending:
            return None
        holds = self.workers[n].holds()
        free = {m: self.workers[m].holds() for m in range(len(self.workers)) if m != n and m not in self._busy}
        model = {i: self._jobs[i].request.spec.id if self._jobs[i].request else None for i in self._pending}

        def may_take(i: str, m: int) -> bool:
            return self._jobs[i].lost_on != self.workers[m].label or len(self.workers) == 1

        mine = [i for i in self._pending if may_take(i, n)]
        job_id = next((i for i in mine if model[i] == holds), None) or next(
            (i for i in mine if not any(held == model[i] and may_take(i, m) for m, held in free.items())), None
        )
        if job_id is None:
            return None
        self._pending.remove(job_id)
        self._busy.add(n)
        job = self._jobs[job_id]
        job.status, job.message, job.worker, job.started = RUNNING, "Starting", self.workers[n].label, time.time()
        self._touch(job, save=True)
        return job

    def _export_forever(self) -> None:
        while True:
            job = self._jobs.get(self._films.get())
            if job is None or job.status != QUEUED:
                continue
            with self._lock:
                job.status, job.message, job.started = RUNNING, "Starting", time.time()
                self._touch(job, save=True)
            self._guarded(job, self._run_film, job)

    def _cpu_forever(self) -> None:
        while True:
            job = self._jobs.get(self._cpu.get())
            if job is None or job.status != QUEUED:
                continue
            with self._lock:
                job.status, job.message, job.started, job.worker = RUNNING, "Starting", time.time(), "CPU"
                self._touch(job, save=True)
            self._guarded(job, self._run_enhance, job, None)

    def _guarded(self, job: Job, run: Callable[..., None], *args: Any) -> None:
        try:
            run(*args)
        except Exception as err:  # the worker must outlive any one job, its bookkeeping included
            message = internal_error(err)
            with self._lock:
                self._finish(job, FAILED, message, error=message)

    def _run_clip(self, job: Job, worker: GpuWorker) -> None:
        cancel = self._cancels[job.id]
        try:
            result = worker.generate(job.request, lambda p: self._on_progress(job, p), cancel)
            with self._lock:
                if cancel.is_set():  # asked during the decode: honoured, nothing is published
                    self._finish(job, CANCELLED, "Cancelled while decoding; nothing was published")
                    return
                job.stage, job.message = WRITING, "Writing the clip"  # from here on, cancel is refused
                self._touch(job)
            files = self.library.save_clip(result, self.clip_options)
        except GenerationCancelled:
            with self._lock:
                where = f"at step {job.step}/{job.total_steps}" if job.step else "before denoising began"
                self._finish(job, CANCELLED, f"Cancelled {where}; nothing was published")
            return
        except UserError as err:
            self._failed(job, err)
            return
        except WorkerLost as err:
            with self._lock:
                self._lost(job, worker, err)
            return
        with self._lock:
            job.result = str(files.video)
        # Its first frame is the previous shot's last one: start one frame in, so the joint does not stall.
        note = self._append_shot(files.video.name, 1.0 / job.request.fps) if job.append_to_storyboard else ""
        unsigned = _unsigned(self.library.clip(files.video.name).sidecar.get("provenance", {}))
        with self._lock:
            self._finish(job, DONE, f"Done in {result.timings['total_s']:.1f} s (seed {job.seed}).{unsigned}{note}")

    def _run_take(self, job: Job, worker: GpuWorker) -> None:
        """A long take on a local worker's pipeline manager, window by window: the frames stream to the take's
        folder as each window finishes, then join into one clip. A cancel with `keep` (or a failure after a
        window was finished) publishes the finished windows; a plain cancel publishes nothing."""
        cancel, plan, request = self._cancels[job.id], job.take, job.request
        writer = self.library.start_take(job.id, plan.record(), job.take_asked or {}, (request.width, request.height),
                                         self.clip_options)  # fmt: skip
        report = TakeClock(plan, lambda index, progress: self._on_take_progress(job, index, progress))
        stopped, failure = None, None
        try:
            lead = job.lead_in
            frames = self.library.frames_before(Shot(lead["clip"], end_s=lead["end_s"]), lead["frames"]) if lead \
                else None  # fmt: skip
            run_take(worker.manager, request, plan, writer.add, report, cancel, on_record=writer.finished,
                     on_held=writer.held, lead_in=frames)  # fmt: skip
        except GenerationCancelled:
            stopped = TAKE_CANCELLED
        except UserError as err:
            stopped, failure = TAKE_FAILED, err
        except Exception as err:  # a bug or the disk under a window: the finished windows are still kept
            stopped, failure = TAKE_FAILED, TakeFailure(internal_error(err))
        if stopped is None and cancel.is_set():  # asked during the last window's decode: honoured
            stopped = TAKE_CANCELLED
        # the take's folder goes before the job says it has ended: nothing of it is left once it has
        try:
            window = f"window {job.window}/{plan.windows}"
            if stopped == TAKE_CANCELLED and (not job.keep or not writer.windows):
                what = "" if not writer.windows else f" ({writer.windows} finished window(s) not kept)"
                writer.remove()
                with self._lock:
                    self._finish(job, CANCELLED, f"Cancelled in {window}; nothing was published{what}")
                return
            if failure is not None and not writer.windows:
                raise failure
            with self._lock:
                job.stage, job.message = WRITING, "Writing the take"  # from here on, cancel is refused
                self._touch(job)
            files = self.library.publish_take(writer, request.image, stopped)
        except UserError as err:
            if writer.windows:  # the finished windows stay where they are, published at the next start
                err = TakeFailure(f"{err} The {writer.windows} finished window(s) are kept in {writer.folder}; "
                                  "make room and restart the studio to have them published.")  # fmt: skip
            else:
                writer.remove()
            self._failed(job, err)
            return
        seconds = writer.frames / plan.fps
        unsigned = _unsigned(self.library.clip(files.video.name).sidecar.get("provenance", {}))
        if job.append_to_storyboard and stopped is None:
            # it begins with its own version of the shot's last frames: the shot starts after them
            unsigned += self._append_shot(files.video.name, plan.overlap / plan.fps if job.lead_in else 0.0)
        with self._lock:
            job.result = str(files.video)
            took = time.time() - (job.started or time.time())
            kept = f"{writer.windows} of {plan.windows} windows finished and were kept as {files.video.name} " \
                   f"({seconds:.1f} s)."  # fmt: skip
            if failure is not None:
                message = f"Failed in window {job.window}/{plan.windows}: {failure} {kept}"
                self._finish(job, FAILED, message, error=str(failure))
            elif stopped == TAKE_CANCELLED:
                self._finish(job, CANCELLED, f"Stopped: {kept}{unsigned}")
            else:
                self._finish(job, DONE, f"Done in {took:.1f} s: a {seconds:.1f} s take of {plan.windows} windows "
                                        f"(seed {job.seed}).{unsigned}")  # fmt: skip

    def _on_take_progress(self, job: Job, index: int, progress: Progress) -> None:
        with self._lock:
            job.window = index + 1
        self._on_progress(job, progress)

    def _append_shot(self, clip: str, start_s: float) -> str:
        """Add a finished clip to the storyboard from `start_s`; what the job's message adds."""
        try:
            self.library.storyboard.append(Shot(clip=clip, start_s=start_s))
            return " Added to the storyboard."
        except Exception as err:  # the clip is safe in the library whatever happens here
            return f" The clip is in the library, but it could not be added to the storyboard: {_said(err)}"

    def _lost(self, job: Job, worker: GpuWorker, err: WorkerLost) -> None:
        """The worker died under the job: it runs again once, on whichever worker is free first; a second
        loss ends it as interrupted. Nothing was published, so nothing finished is lost. Lock held."""
        log.warning("worker %s was lost under job %s: %s", worker.label, job.id, err)
        if job.retried or self._cancels[job.id].is_set():
            self._finish(job, INTERRUPTED, f"Interrupted: {worker.label} stopped while it ran this job ({err}).")
            return
        job.retried, job.status, job.worker, job.lost_on = True, QUEUED, "", worker.label
        job.step = job.total_steps = 0
        job.preview = None
        job.message = f"{worker.label} stopped while it ran this job; it runs again on another worker"
        self._touch(job, save=True)
        self._queue(job, first=True)

    def _run_post(self, job: Job, worker: GpuWorker) -> None:
        """An upscale or a frame interpolation on this worker's device (in the studio's process: the model
        is small, and the worker's slot keeps a generation off the GPU meanwhile)."""
        cancel = self._cancels[job.id]

        def downloading(fraction: float, message: str) -> None:
            with self._lock:
                job.stage, job.fraction, job.message = "download", fraction, message
                self._touch(job)

        def run():
            return self.library.post(job.post, post_device(worker), self.clip_options, cancel,
                                     lambda p: self._on_progress(job, p), downloading)  # fmt: skip

        try:
            files = _beside_the_video_model(run, worker, "the upscaler or the interpolation model")
        except PostCancelled:
            with self._lock:
                where = f"at frame {job.step}/{job.total_steps}" if job.step else "before the first frame"
                self._finish(job, CANCELLED, f"Cancelled {where}; nothing was published")
            return
        except UserError as err:
            self._failed(job, err)
            return
        unsigned = _unsigned(self.library.clip(files.video.name).sidecar.get("provenance", {}))
        with self._lock:
            job.result = str(files.video)
            took = time.time() - (job.started or time.time())
            self._finish(job, DONE, f"Done in {took:.1f} s: {files.video.name}.{unsigned}")

    def _run_enhance(self, job: Job, worker: GpuWorker | None) -> None:
        """A prompt enhancement on this worker's device (the CPU worker's: the CPU); the text in `job.text`."""
        cancel = self._cancels[job.id]

        def progress(fraction: float, message: str) -> None:
            with self._lock:
                job.stage = "download" if fraction < 1.0 else "enhance"
                job.fraction, job.message = fraction, message
                self._touch(job)

        device = post_device(worker) if worker is not None else "cpu"
        try:
            text = _beside_the_video_model(lambda: run_enhance(job.enhance, device, self.offline, cancel, progress),
                                           worker, "the prompt enhancer")  # fmt: skip
        except EnhanceCancelled:
            with self._lock:
                self._finish(job, CANCELLED, "Cancelled; the prompt is as it was")
            return
        except UserError as err:
            self._failed(job, err)
            return
        took = time.time() - (job.started or time.time())
        with self._lock:
            job.text = text
            self._finish(job, DONE, f"Enhanced in {took:.1f} s: edit it as you like, then Generate.")

    def _run_film(self, job: Job) -> None:
        cancel = self._cancels[job.id]

        def progress(fraction: float, message: str) -> None:
            with self._lock:
                job.stage, job.fraction, job.message = "film", fraction, message
                self._touch(job)

        try:
            film = self.library.export_film(job.storyboard, on_progress=progress, cancel=cancel,
                                            mark=self.clip_options.watermark)  # fmt: skip
        except ExportCancelled:
            with self._lock:
                self._finish(job, CANCELLED, "Export cancelled; no film was written")
            return
        except UserError as err:
            self._failed(job, err)
            return
        record = read_json(film.with_suffix(film.suffix + ".json"))
        unsigned = _unsigned(record.get("provenance", {}))
        with self._lock:
            job.result = str(film)
            motion = f" Motion interpolated by {record['interpolation']}." if record.get("interpolation") else ""
            self._finish(job, DONE, f"Film ready: {film.name}.{motion}{unsigned}")

    def _failed(self, job: Job, err: UserError) -> None:
        """A job ended by something the user can change: its message is the error's own sentence."""
        with self._lock:
            self._finish(job, FAILED, str(err), error=str(err))

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
        job.eta_s, job.ended = None, time.time()
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
                if job.take is not None:
                    job.message = self._recovered(job)
                self._touch(job, save=True)
            elif job.take is not None and job.status == FAILED and self.library.take_folder(job.id).is_dir():
                job.message = self._recovered(job)  # windows kept when publishing failed (a full disk)
                self._touch(job, save=True)
            elif job.status == QUEUED:
                job.message = "Resumed after a restart; waiting in the queue"
                self._queue(job)

    def _recovered(self, job: Job) -> str:
        """A take the studio stopped under: its finished windows kept as a clip (the interrupted message)."""
        try:
            files = self.library.recover_take(job.id, job.request.image)
        except Exception as err:  # the studio starts regardless; the segments stay for a later look
            log.warning("could not keep the finished windows of take %s: %s", job.id, err)
            return f"Interrupted: the studio stopped while this take ran, and its finished windows could not be kept " \
                   f"({_said(err)})."  # fmt: skip
        if files is None:
            return "Interrupted: the studio stopped in the take's first window; nothing was kept. Start it again."
        job.result = str(files.video)
        windows = len(self.library.clip(files.video.name).sidecar.get("windows", []))
        return f"Interrupted: the studio stopped while this take ran; {windows} of {job.take.windows} windows " \
               f"finished and were kept as {files.video.name}."  # fmt: skip


class TakeClock:
    """A take's progress as the queue shows it: the manager's reports per window, with the ETA for the whole
    take (the window's own, plus the remaining windows at the pace of the ones done, or of this one so far)."""

    def __init__(self, plan: TakePlan, report: Callable[[int, Progress], None]):
        self.plan, self.report = plan, report
        self.started: dict[int, float] = {}
        self.took: list[float] = []  # seconds per frame of each finished window

    def __call__(self, index: int, progress: Progress) -> None:
        now = time.monotonic()
        if index not in self.started:
            if index - 1 in self.started:
                self.took.append((now - self.started[index - 1]) / self.plan.window_frames[index - 1])
            self.started[index] = now
        eta = progress.eta_s
        if eta is not None:
            per_frame = (sum(self.took) / len(self.took) if self.took else
                         (now - self.started[index] + eta) / self.plan.window_frames[index])  # fmt: skip
            eta += per_frame * sum(self.plan.window_frames[index + 1 :])
        self.report(index, replace(progress, eta_s=eta))


def tile(frames: np.ndarray, gap: int = 4) -> np.ndarray:
    """Preview frames side by side on a dark strip, for a single image view."""
    k, h, w, _ = frames.shape
    strip = np.full((h, k * w + (k - 1) * gap, 3), 24, dtype=np.uint8)
    for i, frame in enumerate(frames):
        strip[:, i * (w + gap) : i * (w + gap) + w] = frame
    return strip


def _beside_the_video_model(run: Callable[[], Any], worker: GpuWorker | None, what: str) -> Any:
    """`run()` on a worker's GPU, where its video model may still be loaded: out of memory, the video model is
    unloaded (the next clip loads it again) and `run()` tried once more; out of memory again is a plain
    refusal. The GPU's cache is emptied after every run, so the studio holds no memory a generation needs."""
    import gc

    import torch

    try:
        try:
            return run()
        except torch.OutOfMemoryError:
            gc.collect()
            torch.cuda.empty_cache()
            if worker is None or not free_memory(worker):
                raise
            log.info("out of GPU memory beside the video model: unloaded it for %s", what)
            return run()
    except torch.OutOfMemoryError:
        raise GpuMemoryError(f"Not enough GPU memory for {what}, even with the video model unloaded. Close other "
                             "programs using the GPU, or choose a smaller scale (or the CPU for the "
                             "enhancer, in Settings).") from None  # fmt: skip
    finally:
        if torch.cuda.is_available():
            gc.collect()
            torch.cuda.empty_cache()


class TakeFailure(UserError):
    """Why a long take stopped, said with what became of its finished windows."""


class GpuMemoryError(UserError):
    """A post-production model or the enhancer did not fit on the GPU, even alone."""


def _unsigned(provenance: dict) -> str:
    """What a job's message adds when its clip or film could not be signed (empty when it was)."""
    return "" if provenance.get("signed") else f" Not signed: {provenance.get('signing_error')}."


def _said(err: Exception) -> str:
    return str(err) if isinstance(err, (UserError, ValueError, KeyError)) else type(err).__name__


def _disk(err: OSError, folder: Path) -> Exception:
    from library.files import disk_error

    return disk_error(err, folder)
