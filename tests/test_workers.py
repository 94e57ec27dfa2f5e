"""Several GPU workers behind one queue (`--gpus`): jobs run side by side, and go where their model is."""

from __future__ import annotations

import threading

import pytest

from library import Library
from library.clips import list_clips
from pipelines.manager import PipelineManager
from studio.jobs.queue import DONE, JobQueue
from studio.jobs.workers import DevicesError, LocalWorker, parse_devices, worker_labels
from tests.test_jobs import TINY, request, wait_until

WAN21 = "test-tiny-wan21"


def test_gpus_flag_names_devices_and_refuses_what_the_machine_lacks():
    assert parse_devices(None, cuda_count=4) == ["cuda:0", "cuda:1", "cuda:2", "cuda:3"]  # default: all visible
    assert parse_devices("", cuda_count=0) == ["cpu"]  # no GPU: one CPU worker, the studio as it always was
    assert parse_devices("0, 2", cuda_count=4) == ["cuda:0", "cuda:2"]
    assert parse_devices("cpu,cpu", cuda_count=0) == ["cpu", "cpu"]
    with pytest.raises(DevicesError, match="names GPU 4, but this machine has GPUs 0–3"):
        parse_devices("0,4", cuda_count=4)
    with pytest.raises(DevicesError, match="no CUDA GPU"):
        parse_devices("0", cuda_count=0)
    with pytest.raises(DevicesError, match="twice"):
        parse_devices("1,1", cuda_count=2)
    with pytest.raises(DevicesError, match="like 0,1"):
        parse_devices("gpu0", cuda_count=2)
    assert worker_labels(["cuda:0", "cuda:1"]) == ["GPU 0", "GPU 1"]
    assert worker_labels(["cpu", "cpu"]) == ["CPU 1", "CPU 2"]


class Rendezvous:
    """Holds each armed run inside its first denoising step until every armed run has entered its own: runs
    that really go side by side all meet; runs made to take turns (a lock anywhere around a worker's run)
    would wait for each other forever, so each waits `timeout` seconds at most and says whether all met."""

    def __init__(self, seeds: tuple[int, ...], timeout: float = 60.0):
        self.entered = {seed: threading.Event() for seed in seeds}
        self.met: dict[int, bool] = {}
        self.timeout = timeout

    def generate(self, manager, request_, report, cancel):
        def on_progress(progress):
            report(progress)
            entered = self.entered.get(request_.seed)
            if entered is not None and progress.stage == "denoise" and progress.step == 1:
                entered.set()
                self.met[request_.seed] = all(e.wait(self.timeout) for e in self.entered.values())

        return manager.generate(request_, on_progress=on_progress, cancel=cancel)


class ArmedRendezvous:
    """The workers' generate function: a `Rendezvous` when a test arms one, a plain run otherwise."""

    def __init__(self):
        self.armed: Rendezvous | None = None

    def generate(self, manager, request_, report, cancel):
        if self.armed is not None:
            return self.armed.generate(manager, request_, report, cancel)
        return manager.generate(request_, on_progress=report, cancel=cancel)


MEETING = ArmedRendezvous()


@pytest.fixture(scope="module")
def two_workers():
    managers = [PipelineManager(offline=True, device="cpu") for _ in range(2)]
    return [LocalWorker(m, generate=MEETING.generate, label=label)
            for m, label in zip(managers, ("CPU 1", "CPU 2"), strict=True)]  # fmt: skip


def test_two_workers_run_two_jobs_at_once_and_a_job_goes_to_the_worker_holding_its_model(two_workers, out_dir):
    jobs = JobQueue(two_workers, Library.open(out_dir))
    MEETING.armed = meeting = Rendezvous(seeds=(1, 2))
    try:
        first = [jobs.submit(request(model=model, seed=seed, steps=3)) for model, seed in ((TINY, 1), (WAN21, 2))]
        wait_until(lambda: all(jobs.get(j.id).finished for j in first), timeout=180)
    finally:
        MEETING.armed = None
    a, b = (jobs.get(j.id) for j in first)
    assert a.status == b.status == DONE
    assert {a.worker, b.worker} == {"CPU 1", "CPU 2"}
    # each run waited inside its first step until the other's run was inside its own: both were denoising at once
    assert meeting.met == {1: True, 2: True}
    holder = {w.holds(): w for w in two_workers}
    assert set(holder) == {TINY, WAN21}
    loads = [w.manager.loads for w in two_workers]

    # both free: each job goes to the worker that holds its model, whichever is submitted first
    for pair in ((WAN21, TINY), (TINY, WAN21)):
        again = [jobs.submit(request(model=model, seed=2, steps=2)) for model in pair]
        wait_until(lambda: all(jobs.get(j.id).finished for j in again), timeout=120)  # noqa: B023
        for job in (jobs.get(j.id) for j in again):
            assert job.status == DONE and job.worker == holder[job.request.spec.id].label
    assert [w.manager.loads for w in two_workers] == loads  # no reload anywhere
    assert len(list_clips(out_dir)) == 6


def test_the_queue_panel_says_which_worker_runs_each_job(two_workers, tmp_path):
    from studio.page.handlers.queue import table

    class Studio:  # the part of the studio the panel reads
        jobs = JobQueue(two_workers, Library.open(tmp_path / "outputs"))

    job = Studio.jobs.submit(request(model=TINY, seed=3, steps=2))
    wait_until(lambda: Studio.jobs.get(job.id).finished)
    text, _ = table(Studio)
    assert f"on {Studio.jobs.get(job.id).worker}" in text and "Done" in text


def test_a_manager_on_gpu_1_selects_gpu_1_in_the_thread_that_runs_the_job(monkeypatch):
    """The current GPU is per thread, and a worker's thread starts on GPU 0: without selecting its own GPU,
    CUDA streams (group offload) and broadcasts of a worker on cuda:1 landed on GPU 0."""
    import threading

    import torch

    selected = []

    class Selected(Exception):
        pass

    def set_device(device):
        selected.append((torch.device(device), threading.get_ident()))
        raise Selected()  # far enough: the rest of a run needs a real GPU

    monkeypatch.setattr(torch.cuda, "set_device", set_device)
    manager = PipelineManager(offline=True, device="cuda:1")
    ran_in = []

    def job():
        ran_in.append(threading.get_ident())
        with pytest.raises(Selected):
            manager.generate(request())

    thread = threading.Thread(target=job)
    thread.start()
    thread.join()
    assert selected == [(torch.device("cuda:1"), ran_in[0])]
