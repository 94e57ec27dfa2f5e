"""A pool of machines (`--ray ADDRESS`): GPU workers as Ray actors on a local two-CPU cluster started once
for the module. The studio's queue stays the source of truth; clips land in its own output folder."""

from __future__ import annotations

import asyncio
import contextlib
import os
import subprocess
import sys
from pathlib import Path

import pytest

from library import Library, provenance
from library.clips import list_clips
from studio.jobs.queue import CANCELLED, DONE, JobQueue
from tests.test_jobs import request, wait_until

ray = pytest.importorskip("ray")
ROOT = Path(__file__).resolve().parents[1]

from studio.jobs.ray_actors import GenerationActor  # noqa: E402  (after the skip: it needs no Ray, the tests do)


class HeldActor(GenerationActor):
    """The studio's actor with a test's hand inside each run, in the actor's own process. A prompt starting
    "meet" waits in its first denoising step at the named actor "rendezvous" until every run it expects is in
    its own; a prompt "hold GATE: ..." asks the named actor GATE at step 2 and, the first time only, waits
    there for the run's own cancel flag (so a cancel or a kill finds the run under way, never finished). Each
    test names its own gate: a gate killed at the end of one test was seen answering the next one's runs."""

    def __init__(self, *args):
        super().__init__(*args)
        run = self.manager.generate

        def generate(request_, on_progress=None, cancel=None, wait=True):
            def hooked(progress):
                on_progress(progress)
                if progress.stage == "denoise" and progress.step == 1 and request_.prompt.startswith("meet"):
                    ray.get(ray.get_actor("rendezvous").arrive.remote(request_.seed))
                if progress.stage == "denoise" and progress.step == 2 and request_.prompt.startswith("hold"):
                    gate = request_.prompt.split(":")[0].split()[1]  # "hold GATE: ..."
                    if ray.get(ray.get_actor(gate).enter.remote()):
                        cancel.wait(120)

            return run(request_, on_progress=hooked, cancel=cancel, wait=wait)

        self.manager.generate = generate


class Rendezvous:
    """Each arrival waits until `parties` runs have arrived (at most `timeout` s) and records whether they met."""

    def __init__(self, parties: int, timeout: float = 60.0):
        self.parties, self.timeout = parties, timeout
        self.arrived: list[int] = []
        self.met: dict[int, bool] = {}
        self.everyone: asyncio.Event | None = None

    async def arrive(self, who: int) -> bool:
        self.everyone = self.everyone or asyncio.Event()
        self.arrived.append(who)
        if len(self.arrived) >= self.parties:
            self.everyone.set()
        try:
            await asyncio.wait_for(self.everyone.wait(), self.timeout)
            self.met[who] = True
        except asyncio.TimeoutError:
            self.met[who] = False
        return self.met[who]

    async def outcome(self) -> dict[int, bool]:
        return self.met


class Gate:
    """True for the first run that enters (it is held), False after (a run again goes through)."""

    def __init__(self):
        self.entries = 0

    def enter(self) -> bool:
        self.entries += 1
        return self.entries == 1

    def entered(self) -> int:
        return self.entries


@contextlib.contextmanager
def named(body: type, name: str, *args):
    """A named helper actor the held runs find by name, with no CPU of its own (the workers hold both)."""
    actor = ray.remote(num_cpus=0)(body).options(name=name).remote(*args)
    try:
        yield actor
    finally:
        ray.kill(actor)


@pytest.fixture(scope="module")
def pool():
    from ray.cluster_utils import Cluster

    from studio.jobs.ray_actors import ray_pool

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 2, "object_store_memory": 150 * 2**20})
    try:
        yield ray_pool(cluster.address, "auto", None, offline=True, count=2, actor_body=HeldActor)
    finally:
        ray.shutdown()
        cluster.shutdown()


def test_two_jobs_run_on_two_actors_with_previews_and_land_signed_in_the_studios_folder(pool, out_dir):
    jobs = JobQueue(pool, Library.open(out_dir))
    previews: dict[str, int] = {}
    with named(Rendezvous, "rendezvous", 2) as rendezvous:
        submitted = [jobs.submit(request(seed=seed, steps=4, prompt=f"meet: clip {seed}")) for seed in (1, 2)]

        def done() -> bool:
            for job in submitted:
                previews[job.id] = max(previews.get(job.id, 0), jobs.get(job.id).preview_version)
            return all(jobs.get(j.id).finished for j in submitted)

        wait_until(done, timeout=240)
        met = ray.get(rendezvous.outcome.remote())
    finished = [jobs.get(j.id) for j in submitted]
    assert [j.status for j in finished] == [DONE, DONE], [j.message for j in finished]
    assert {j.worker for j in finished} == {w.label for w in pool} and len(pool) == 2  # one job on each actor
    assert all(count >= 1 for count in previews.values())  # previews came back from the actors
    # side by side: each run waited in its first step, in its actor, until the other run was in its own
    assert met == {1: True, 2: True}
    clips = list_clips(out_dir)
    assert sorted(c.settings["seed"] for c in clips) == [1, 2]
    for clip in clips:
        assert provenance.verify_file(clip.video).valid  # written and signed by the studio, not the actor


def test_cancel_reaches_the_actor_within_a_step(pool, out_dir):
    jobs = JobQueue(pool, Library.open(out_dir))
    with named(Gate, "gate-cancel") as gate:
        job = jobs.submit(request(seed=3, steps=40, frames=17, prompt="hold gate-cancel: cancel me"))
        wait_until(lambda: ray.get(gate.entered.remote()) == 1, timeout=120)  # held in step 2 until it hears
        assert jobs.cancel(job.id)
        wait_until(lambda: jobs.get(job.id).finished, timeout=240)
    stopped = jobs.get(job.id)
    # the flag reached the actor's run while it was held in step 2: it stopped at the end of the next step
    assert (stopped.status, stopped.step) == (CANCELLED, 2), stopped.message
    assert list_clips(out_dir) == []


def test_an_actor_killed_mid_job_is_replaced_and_the_job_runs_again_elsewhere(pool, out_dir):
    jobs = JobQueue(pool, Library.open(out_dir))
    with named(Gate, "gate-kill") as gate:
        job = jobs.submit(request(seed=4, steps=30, frames=17, prompt="hold gate-kill: kill me"))
        # held in step 2, so it cannot finish first; killed only once it is in the gate (killed on the step's
        # report, before it entered, its run again on the other actor took the hold and waited there for 120 s)
        wait_until(lambda: ray.get(gate.entered.remote()) == 1, timeout=120)
        victim = next(w for w in pool if w.label == jobs.get(job.id).worker)
        ray.kill(victim.actor, no_restart=False)  # as when its machine dies; Ray starts a new one
        wait_until(lambda: jobs.get(job.id).finished, timeout=180)  # run again, through the gate this time
    again = jobs.get(job.id)
    assert again.status == DONE and again.retried, again.message
    assert [c.settings["seed"] for c in list_clips(out_dir)] == [4]  # published once
    later = jobs.submit(request(seed=5, steps=2))  # the restarted actor takes work again
    wait_until(lambda: jobs.get(later.id).finished, timeout=180)
    assert jobs.get(later.id).status == DONE


def test_an_unreachable_cluster_is_refused_at_start_with_what_to_do(tmp_path):
    env = dict(os.environ, WAN_STUDIO_HOME=str(tmp_path / "home"))
    done = subprocess.run(
        [sys.executable, "app.py", "--ray", "127.0.0.1:9", "--output-dir", str(tmp_path / "out"), "--port", "0"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 2, done.stderr[-2000:]
    assert "ray start --head" in done.stderr
    # refused by the plain TCP check before Ray is asked (Ray itself retries such an address for minutes)
    assert "Could not reach the Ray cluster at 127.0.0.1:9 (Connection refused)" in done.stderr, done.stderr[-2000:]
