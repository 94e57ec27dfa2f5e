"""The server-owned job queue: one worker, records on disk, restarts that lose nothing."""

from __future__ import annotations

import json
import threading
import time

import pytest

from pipelines.request import GenerationRequest, RequestError
from studio.history import list_clips
from studio.jobs import CANCELLED, DONE, FAILED, INTERRUPTED, QUEUED, Job, JobQueue, default_generate

TINY = "test-tiny"


def wait_until(predicate, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def request(**fields) -> GenerationRequest:
    fields.setdefault("prompt", "a red cat")
    fields.setdefault("model", TINY)
    return GenerationRequest(**fields)


def test_jobs_run_in_order_and_land_in_the_library(manager, out_dir):
    jobs = JobQueue(manager, out_dir, TINY)
    first, second = jobs.submit(request(seed=1)), jobs.submit(request(seed=2, prompt="a blue dog"))
    wait_until(lambda: jobs.get(second.id).status == DONE)
    assert jobs.get(first.id).status == DONE
    clips = list_clips(out_dir)
    assert {c.settings["seed"] for c in clips} == {1, 2}
    assert json.loads((out_dir / ".jobs" / f"{second.id}.json").read_text())["status"] == DONE


def test_bad_input_is_refused_at_submit_and_nothing_is_queued(manager, out_dir):
    jobs = JobQueue(manager, out_dir, TINY)
    with pytest.raises(RequestError, match="4n\\+1"):
        jobs.submit(request(frames=10))
    assert jobs.jobs() == []


def test_cancel_a_queued_job_and_a_running_one(manager, out_dir):
    gate = threading.Event()

    def held(manager_, request_, report, cancel):
        def on_progress(progress):
            report(progress)
            if progress.step == 1:
                gate.wait(30)

        return manager_.generate(request_, on_progress=on_progress, cancel=cancel)

    jobs = JobQueue(manager, out_dir, TINY, generate=held)
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
    assert jobs.get(running.id).message == "Cancelled at step 1/6"
    assert list_clips(out_dir) == []


def test_a_failure_is_recorded_and_the_worker_keeps_going(manager, out_dir):
    calls = []

    def flaky(manager_, request_, report, cancel):
        calls.append(request_.seed)
        if len(calls) == 1:
            raise RuntimeError("driver crashed")
        return default_generate(manager_, request_, report, cancel)

    jobs = JobQueue(manager, out_dir, TINY, generate=flaky)
    broken, fine = jobs.submit(request(seed=5)), jobs.submit(request(seed=6))
    wait_until(lambda: jobs.get(fine.id).finished)
    assert jobs.get(broken.id).status == FAILED and "driver crashed" in jobs.get(broken.id).error
    assert jobs.get(fine.id).status == DONE


def test_restart_resumes_queued_jobs_and_marks_running_ones_interrupted(manager, out_dir):
    jobs_dir = out_dir / ".jobs"
    jobs_dir.mkdir(parents=True)
    queued = Job(id="queued000001", fields={"prompt": "resumed after restart", "model": TINY, "seed": 11})
    running = Job(id="running00001", fields={"prompt": "was running", "model": TINY}, status="running", step=3)
    for job in (queued, running):
        (jobs_dir / f"{job.id}.json").write_text(json.dumps(job.record()))
    (jobs_dir / "damaged.json").write_text("{not json")

    jobs = JobQueue(manager, out_dir, TINY)
    assert jobs.get(running.id).status == INTERRUPTED
    assert "Interrupted" in jobs.get(running.id).message
    wait_until(lambda: jobs.get(queued.id).status == DONE)
    assert [c.settings["prompt"] for c in list_clips(out_dir)] == ["resumed after restart"]
    assert jobs.get(queued.id).status != QUEUED


def test_sharing_always_needs_a_login():
    from studio.server import resolve_auth

    auth, notice = resolve_auth(share=True, auth_value=None)
    assert auth[0] == "wan" and len(auth[1]) >= 20 and auth[1] in notice
    assert resolve_auth(share=True, auth_value=None)[0][1] != auth[1]  # a fresh password each start
    assert resolve_auth(share=True, auth_value="me:pw") == (("me", "pw"), None)
    assert resolve_auth(share=False, auth_value=None) == (None, None)
    with pytest.raises(SystemExit, match="USER:PASSWORD"):
        resolve_auth(share=False, auth_value="no-colon")


def test_a_failing_follow_up_never_loses_the_clip(manager, out_dir):
    def broken_hook(job):
        raise OSError("storyboard folder is read-only")

    jobs = JobQueue(manager, out_dir, TINY, on_done=broken_hook)
    job = jobs.submit(request(seed=3), extra={"append_to_storyboard": True})
    wait_until(lambda: jobs.get(job.id).finished)
    assert jobs.get(job.id).status == DONE and "follow-up failed" in jobs.get(job.id).message
    assert [c.settings["seed"] for c in list_clips(out_dir)] == [3]
    assert json.loads((out_dir / ".jobs" / f"{job.id}.json").read_text())["extra"] == {"append_to_storyboard": True}


def test_zerogpu_fetches_the_weights_before_taking_the_gpu(manager, monkeypatch):
    import sys
    import types

    from pipelines.request import validate_request
    from studio.server import gpu_generate_fn

    monkeypatch.setitem(sys.modules, "spaces", None)  # no `spaces` package: generation runs as it is
    assert gpu_generate_fn() is default_generate

    calls = []
    fake = types.ModuleType("spaces")

    def gpu(duration):  # like spaces.GPU: the GPU exists only while the decorated function runs
        def decorate(fn):
            def on_gpu(*args):
                calls.append(("gpu", duration(*args)))
                return fn(*args)

            return on_gpu

        return decorate

    fake.GPU = gpu
    monkeypatch.setitem(sys.modules, "spaces", fake)
    real_download = manager.download
    monkeypatch.setattr(
        manager, "download", lambda spec, report: calls.append(("download",)) or real_download(spec, report)
    )
    valid = validate_request(request(seed=5), TINY)
    result = gpu_generate_fn()(manager, valid, lambda p: None, threading.Event())
    assert result.frames.shape[0] == valid.frames
    assert [c[0] for c in calls] == ["download", "gpu"] and 60 <= calls[1][1] <= 600
