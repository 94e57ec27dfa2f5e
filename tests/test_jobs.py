"""The server-owned job queue: one worker, records on disk, restarts that lose nothing."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from library import Library, LibraryError, Shot, Storyboard
from library.clips import list_clips
from library.files import read_json
from pipelines.request import GenerationRequest, ValidRequest, validate_request
from studio.jobs.queue import CANCELLED, CLIP, DONE, FAILED, FILM, INTERRUPTED, QUEUED, Job, JobQueue, default_generate

TINY = "test-tiny"


def wait_until(predicate, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def paused_on_entry(function):
    """`function`, made to wait on entry until released: (the wrapper, reached, release), two Events. A test
    holds a job at one stage this way, acts on it there, then lets it go on."""
    reached, release = threading.Event(), threading.Event()

    def wrapper(*args, **kwargs):
        reached.set()
        release.wait(30)
        return function(*args, **kwargs)

    return wrapper, reached, release


def request(**fields) -> ValidRequest:
    fields.setdefault("prompt", "a red cat")
    fields.setdefault("model", TINY)
    return validate_request(GenerationRequest(**fields), default_model=TINY)


def picture() -> Image.Image:
    y, x = np.mgrid[0:64, 0:96]
    return Image.fromarray(np.stack([x * 2, y * 3, np.full_like(x, 128)], axis=-1).astype(np.uint8))


def test_jobs_run_in_order_and_land_in_the_library(manager, out_dir):
    order = []

    def recorded(manager_, request_, report, cancel):
        order.append(request_.seed)
        return default_generate(manager_, request_, report, cancel)

    jobs = JobQueue(manager, Library.open(out_dir), generate=recorded)
    submitted = [jobs.submit(request(seed=seed, prompt=f"clip {seed}")) for seed in (3, 1, 2)]
    wait_until(lambda: all(jobs.get(job.id).finished for job in submitted))
    assert order == [3, 1, 2]  # first in, first out
    assert all(jobs.get(job.id).status == DONE for job in submitted)
    clips = list_clips(out_dir)
    assert [c.settings["seed"] for c in reversed(clips)] == [3, 1, 2]  # newest first in the library
    # the record is written just after the state changes in memory (under the queue's lock): wait for it
    wait_until(lambda: read_json(out_dir / ".jobs" / f"{submitted[-1].id}.json")["status"] == DONE)


def test_the_seed_is_drawn_once_at_submit_and_shown_while_the_job_waits(manager, out_dir):
    gate = threading.Event()

    def held(manager_, request_, report, cancel):
        gate.wait(30)
        return default_generate(manager_, request_, report, cancel)

    jobs = JobQueue(manager, Library.open(out_dir), generate=held)
    blocker = jobs.submit(request(seed=1))
    waiting = jobs.submit(request())  # a random seed
    seed = jobs.get(waiting.id).seed
    assert isinstance(seed, int) and jobs.get(waiting.id).status == QUEUED
    assert read_json(out_dir / ".jobs" / f"{waiting.id}.json")["request"]["seed"] == seed
    gate.set()
    wait_until(lambda: jobs.get(waiting.id).finished and jobs.get(blocker.id).finished)
    clip = next(c for c in list_clips(out_dir) if c.name == Path(jobs.get(waiting.id).result).name)
    assert clip.settings["seed"] == seed  # the clip has the seed shown while it waited


def test_a_job_record_round_trips_its_type_exactly(out_dir):
    jobs_dir = out_dir / ".jobs"
    jobs_dir.mkdir(parents=True)
    clip_job = Job(id="abc123", kind=CLIP, request=request(image=picture(), seed=77), append_to_storyboard=True)
    picture_path = jobs_dir / "abc123.input.png"
    clip_job.request.image.save(picture_path)
    again = Job.from_record(json.loads(json.dumps(clip_job.record())), jobs_dir)
    assert again.request == clip_job.request  # every field, the model's spec and the seed
    assert np.array_equal(np.asarray(again.request.image), np.asarray(clip_job.request.image))
    assert again.append_to_storyboard is True and again.kind == CLIP and again.seed == 77
    board = Storyboard(shots=[Shot("a.mp4", end_s=1.5, transition="crossfade")], title="T", size=(96, 64))
    film_job = Job(id="film01", kind=FILM, storyboard=board)
    assert Job.from_record(json.loads(json.dumps(film_job.record())), jobs_dir).storyboard == board


def test_cancel_a_queued_job_and_a_running_one(manager, out_dir):
    gate = threading.Event()

    def held(manager_, request_, report, cancel):
        def on_progress(progress):
            report(progress)
            if progress.step == 1:
                gate.wait(30)

        return manager_.generate(request_, on_progress=on_progress, cancel=cancel)

    jobs = JobQueue(manager, Library.open(out_dir), generate=held)
    running = jobs.submit(request(steps=6))
    waiting = jobs.submit(request())
    wait_until(lambda: jobs.get(running.id).step == 1)
    assert jobs.position(waiting.id) == 1
    assert jobs.cancel(waiting.id) and jobs.get(waiting.id).status == CANCELLED
    assert jobs.cancel(running.id)
    gate.set()
    wait_until(lambda: jobs.get(running.id).finished)
    assert jobs.get(running.id).status == CANCELLED
    # the step under way when Cancel came was the last: no later step was reported
    assert jobs.get(running.id).message == "Cancelled at step 1/6; nothing was published"
    assert list_clips(out_dir) == []


def test_a_failure_is_recorded_and_the_worker_keeps_going(manager, out_dir):
    calls = []

    def flaky(manager_, request_, report, cancel):
        calls.append(request_.seed)
        if len(calls) == 1:
            raise RuntimeError("driver crashed")
        return default_generate(manager_, request_, report, cancel)

    jobs = JobQueue(manager, Library.open(out_dir), generate=flaky)
    broken, fine = jobs.submit(request(seed=5)), jobs.submit(request(seed=6))
    wait_until(lambda: jobs.get(fine.id).finished)
    failed = jobs.get(broken.id)
    # an unexpected error: a reference to the log, never the raw Python message
    assert failed.status == FAILED and failed.message.startswith("Internal error (reference ")
    assert "driver crashed" not in failed.message
    assert jobs.get(fine.id).status == DONE


def test_the_worker_survives_its_own_bookkeeping_failing(manager, out_dir, monkeypatch):
    from studio.jobs import queue as jobs_module

    jobs = JobQueue(manager, Library.open(out_dir))
    real = jobs_module.write_json
    monkeypatch.setattr(jobs_module, "write_json", lambda path, data: (_ for _ in ()).throw(OSError(28, "full")))
    with pytest.raises(LibraryError, match="The output folder is full"):
        jobs.submit(request(seed=8))
    assert jobs.jobs() == []  # no phantom job left "queued" forever
    monkeypatch.setattr(jobs_module, "write_json", real)
    job = jobs.submit(request(seed=9))
    monkeypatch.setattr(jobs_module, "write_json", lambda path, data: (_ for _ in ()).throw(OSError(28, "full")))
    wait_until(lambda: jobs.get(job.id).finished)  # its record can no longer be saved: it runs on
    monkeypatch.setattr(jobs_module, "write_json", real)
    assert jobs.get(job.id).status == DONE
    later = jobs.submit(request(seed=10))
    wait_until(lambda: jobs.get(later.id).finished)
    assert jobs.get(later.id).status == DONE  # and the worker is alive for the next one


def test_restart_resumes_queued_jobs_and_marks_running_ones_interrupted(manager, out_dir):
    jobs_dir = out_dir / ".jobs"
    jobs_dir.mkdir(parents=True)
    queued = Job(id="queued000001", kind=CLIP, request=request(prompt="resumed after restart", seed=11))
    running = Job(id="running00001", kind=CLIP, request=request(prompt="was running"), status="running", step=3)
    for job in (queued, running):
        (jobs_dir / f"{job.id}.json").write_text(json.dumps(job.record()))
    (jobs_dir / "damaged.json").write_text("{not json")
    (jobs_dir / "a-list.json").write_text("[1, 2]")

    jobs = JobQueue(manager, Library.open(out_dir))
    assert jobs.get(running.id).status == INTERRUPTED
    assert "Interrupted" in jobs.get(running.id).message
    wait_until(lambda: jobs.get(queued.id).status == DONE)
    assert [c.settings["prompt"] for c in list_clips(out_dir)] == ["resumed after restart"]
    assert len(jobs.warnings) == 2 and all("set aside" in w for w in jobs.warnings)
    assert not (jobs_dir / "damaged.json").exists() and list(jobs_dir.glob("damaged.json.corrupt-*"))


def test_share_launches_the_studio_behind_a_login(tmp_path, monkeypatch, capsys):
    """`python app.py --share`: what Gradio's launch receives, not only what resolve_auth returns."""
    import gradio as gr

    from studio.server import main

    monkeypatch.setenv("WAN_STUDIO_HOME", str(tmp_path / "home"))
    launched = {}
    monkeypatch.setattr(gr.Blocks, "launch", lambda self, **kwargs: launched.update(kwargs))
    assert main(["--share", "--model", "test-tiny", "--output-dir", str(tmp_path / "out"), "--offline"]) == 0
    user, password = launched["auth"]
    assert launched["share"] is True and user == "wan" and len(password) >= 20
    assert password in capsys.readouterr().out  # shown once, to the person who started it
    launched.clear()
    assert main(["--model", "test-tiny", "--output-dir", str(tmp_path / "out"), "--offline"]) == 0
    assert launched["share"] is False and launched["auth"] is None  # local only: no login asked


def test_sharing_always_needs_a_login():
    from studio.server import resolve_auth

    auth, notice = resolve_auth(share=True, auth_value=None)
    assert auth[0] == "wan" and len(auth[1]) >= 20 and auth[1] in notice
    assert resolve_auth(share=True, auth_value=None)[0][1] != auth[1]  # a fresh password each start
    assert resolve_auth(share=True, auth_value="me:pw") == (("me", "pw"), None)
    assert resolve_auth(share=False, auth_value=None) == (None, None)
    with pytest.raises(SystemExit, match="USER:PASSWORD"):
        resolve_auth(share=False, auth_value="no-colon")


def test_an_extension_joins_the_storyboard_and_a_failing_append_never_loses_the_clip(manager, out_dir):
    library = Library.open(out_dir)
    jobs = JobQueue(manager, library)
    first = jobs.submit(request(seed=3), append_to_storyboard=True)
    wait_until(lambda: jobs.get(first.id).finished)
    assert "Added to the storyboard" in jobs.get(first.id).message
    assert [s.clip for s in library.storyboard.load().shots] == [Path(jobs.get(first.id).result).name]

    library.storyboard.append = lambda shot: (_ for _ in ()).throw(OSError("storyboard folder is read-only"))
    job = jobs.submit(request(seed=4), append_to_storyboard=True)
    wait_until(lambda: jobs.get(job.id).finished)
    assert jobs.get(job.id).status == DONE and "could not be added to the storyboard" in jobs.get(job.id).message
    assert sorted(c.settings["seed"] for c in list_clips(out_dir)) == [3, 4]
    assert read_json(out_dir / ".jobs" / f"{job.id}.json")["append_to_storyboard"] is True


def test_cancel_during_the_decode_is_honoured_and_nothing_is_published(manager, out_dir):
    """The page said "Cancelling…" while the VAE decoded: the job must end cancelled, not done."""
    from pipelines.manager import Progress

    decoding, gate = threading.Event(), threading.Event()

    def slow_decode(manager_, request_, report, cancel):
        result = default_generate(manager_, request_, report, cancel)
        report(Progress("decode", 0.5, "Decoding the frames with the VAE"))
        decoding.set()
        gate.wait(30)  # the decode is still running when the user cancels
        return result

    jobs = JobQueue(manager, Library.open(out_dir), generate=slow_decode)
    job = jobs.submit(request(seed=31))
    assert decoding.wait(60)
    assert jobs.cancel(job.id)
    gate.set()
    wait_until(lambda: jobs.get(job.id).finished)
    assert jobs.get(job.id).status == CANCELLED and "nothing was published" in jobs.get(job.id).message
    assert list_clips(out_dir) == []


def test_cancel_while_the_clip_is_written_is_refused_and_says_so(manager, out_dir, monkeypatch):
    from studio.page.handlers.generate import cancel

    library = Library.open(out_dir)
    slow_save, writing, gate = paused_on_entry(library.save_clip)
    monkeypatch.setattr(library, "save_clip", slow_save)
    jobs = JobQueue(manager, library)

    class Studio:
        pass

    Studio.jobs = jobs
    job = jobs.submit(request(seed=32))
    assert writing.wait(60)
    assert not jobs.cancel(job.id)
    assert cancel(Studio, job.id).startswith("Too late to cancel: the clip is being written")
    gate.set()
    wait_until(lambda: jobs.get(job.id).finished)
    assert jobs.get(job.id).status == DONE and len(list_clips(out_dir)) == 1  # what the page said: kept


def test_cancel_during_the_download_stops_before_the_model_loads(out_dir, monkeypatch):
    from pipelines.manager import PipelineManager

    fresh = PipelineManager(offline=True)  # nothing loaded yet
    slow_download, downloading, gate = paused_on_entry(fresh.download)
    monkeypatch.setattr(fresh, "download", slow_download)
    jobs = JobQueue(fresh, Library.open(out_dir))
    job = jobs.submit(request(seed=33))
    assert downloading.wait(60)
    assert jobs.cancel(job.id)
    gate.set()
    wait_until(lambda: jobs.get(job.id).finished)
    assert jobs.get(job.id).status == CANCELLED and "before denoising began" in jobs.get(job.id).message
    assert fresh.loads == 0 and fresh.loaded is None  # the load never started


# A studio process that stops (is killed) while it exports one film and a second waits behind it: it prints
# the two job ids once the first export is writing its file, then holds that export until it is killed.
STOPPED_MID_EXPORT = """
import sys, threading
from pathlib import Path
from library import Library, Shot, Storyboard
from studio.jobs.queue import JobQueue

library = Library.open(Path(sys.argv[1]))
export, exporting = library.export_film, threading.Event()

def held(board, on_progress=None, cancel=None, **rest):
    def progress(fraction, message):
        if list((library.root / "films").glob(".partial-*.mp4")):  # the film's file is being written
            exporting.set()
            threading.Event().wait()  # mid-film, until the process is killed
    return export(board, on_progress=progress, cancel=cancel, **rest)

library.export_film = held
jobs = JobQueue([], library)  # no GPU worker: only the film worker
running = jobs.submit_film(Storyboard([Shot(sys.argv[2])]))
exporting.wait()
queued = jobs.submit_film(Storyboard([Shot(sys.argv[2], end_s=0.5)]))
print(running.id, queued.id, flush=True)
threading.Event().wait()
"""


def test_restart_runs_a_queued_film_export_and_marks_the_one_exporting_interrupted(manager, out_dir):
    import subprocess
    import sys

    from tests.media import decode_video

    clip = Library.open(out_dir).save_clip(manager.generate(request(prompt="the only shot", frames=9, steps=2))).video
    root = Path(__file__).resolve().parents[1]
    stopped = subprocess.Popen([sys.executable, "-c", STOPPED_MID_EXPORT, str(out_dir), clip.name], cwd=root,
                               stdout=subprocess.PIPE, text=True)  # fmt: skip
    try:
        running, queued = stopped.stdout.readline().split()  # waits for the export to be under way
    finally:
        stopped.kill()  # the studio stops: no clean-up, no last record written
        stopped.wait(60)
    assert read_json(out_dir / ".jobs" / f"{queued}.json")["status"] == QUEUED
    assert list((out_dir / "films").glob(".partial-*.mp4"))  # the film it was writing, half done

    jobs = JobQueue(manager, Library.open(out_dir))  # the studio starts again on the same folder
    assert jobs.get(running).status == INTERRUPTED and "Interrupted" in jobs.get(running).message
    wait_until(lambda: jobs.get(queued).finished)
    assert jobs.get(queued).status == DONE, jobs.get(queued).message
    film = Path(jobs.get(queued).result)
    # the film and its record; nothing of the interrupted export is left behind
    assert sorted(p.name for p in (out_dir / "films").iterdir()) == [film.name, f"{film.name}.json"]
    frames, fps = decode_video(film)
    source, _ = decode_video(clip)
    assert fps == 8 and len(frames) == 4  # the shot's 0.5 s of the clip at 8 fps
    # each of its frames is the clip's frame shown then (the film is re-encoded: a few levels off, while the
    # test model's frames differ from each other by about 20)
    errors = np.abs(frames[:, None].astype(np.int16) - source[None].astype(np.int16)).mean(axis=(2, 3, 4))
    assert errors.argmin(axis=1).tolist() == [0, 1, 2, 3] and (errors.min(axis=1) < 8).all(), errors
    assert read_json(out_dir / ".jobs" / f"{queued}.json")["status"] == DONE


def test_a_job_lost_under_a_worker_runs_again_on_another_worker_not_on_the_one_that_lost_it(manager, out_dir):
    """A worker that died under a job (a Ray actor, restarting) still says it holds the model: the job's run
    again must go to another worker, or the restarting one loses it a second time and it ends interrupted."""
    from pipelines.manager import PipelineManager
    from studio.jobs.workers import LocalWorker, WorkerLost

    manager.generate(request(steps=1, frames=5), wait=True)  # the first worker holds the model: it claims first
    tried: list[str] = []

    def restarting(manager_, request_, report, cancel):
        tried.append("restarting")
        raise WorkerLost("The actor is restarting.")

    def healthy(manager_, request_, report, cancel):
        tried.append("healthy")
        return default_generate(manager_, request_, report, cancel)

    workers = [LocalWorker(manager, restarting, label="worker A"),
               LocalWorker(PipelineManager(offline=True), healthy, label="worker B")]  # fmt: skip
    jobs = JobQueue(workers, Library.open(out_dir))
    job = jobs.submit(request(seed=8, steps=2, frames=5))
    wait_until(lambda: jobs.get(job.id).finished)
    done = jobs.get(job.id)
    assert (done.status, done.retried, done.worker) == (DONE, True, "worker B"), done.message
    assert tried == ["restarting", "healthy"]
