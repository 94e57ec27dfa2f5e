"""A pool of machines (`--ray ADDRESS`): GPU workers as Ray actors on a local two-CPU cluster started once
for the module. The studio's queue stays the source of truth; clips land in its own output folder."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from library import Library, provenance
from library.clips import list_clips
from studio.jobs import CANCELLED, DONE, JobQueue
from tests.test_jobs import request, wait_until

ray = pytest.importorskip("ray")
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def pool():
    from ray.cluster_utils import Cluster

    from studio.ray_workers import ray_pool

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 2, "object_store_memory": 150 * 2**20})
    try:
        yield ray_pool(cluster.address, "auto", None, offline=True, count=2)
    finally:
        ray.shutdown()
        cluster.shutdown()


def test_two_jobs_run_on_two_actors_with_previews_and_land_signed_in_the_studios_folder(pool, out_dir):
    jobs = JobQueue(pool, Library.open(out_dir))
    previews: dict[str, int] = {}
    submitted = [jobs.submit(request(seed=seed, steps=4, prompt=f"clip {seed}")) for seed in (1, 2)]

    def done() -> bool:
        for job in submitted:
            previews[job.id] = max(previews.get(job.id, 0), jobs.get(job.id).preview_version)
        return all(jobs.get(j.id).finished for j in submitted)

    wait_until(done, timeout=180)
    finished = [jobs.get(j.id) for j in submitted]
    assert [j.status for j in finished] == [DONE, DONE], [j.message for j in finished]
    assert {j.worker for j in finished} == {w.label for w in pool} and len(pool) == 2  # one job on each actor
    assert all(count >= 1 for count in previews.values())  # previews came back from the actors
    assert finished[0].started < finished[1].ended and finished[1].started < finished[0].ended  # side by side
    clips = list_clips(out_dir)
    assert sorted(c.settings["seed"] for c in clips) == [1, 2]
    for clip in clips:
        assert provenance.verify_file(clip.video).valid  # written and signed by the studio, not the actor


def test_cancel_reaches_the_actor_within_a_step(pool, out_dir):
    jobs = JobQueue(pool, Library.open(out_dir))
    job = jobs.submit(request(seed=3, steps=40, frames=17))
    wait_until(lambda: jobs.get(job.id).step >= 2, timeout=120)
    asked = time.monotonic()
    assert jobs.cancel(job.id)
    wait_until(lambda: jobs.get(job.id).finished, timeout=60)
    waited = time.monotonic() - asked
    stopped = jobs.get(job.id)
    # test-model steps take ~0.05 s here, so the second or so of the round trip spans a few of them
    assert stopped.status == CANCELLED and stopped.step < 40 and waited < 3, (stopped.message, waited)
    assert list_clips(out_dir) == []


def test_an_actor_killed_mid_job_is_replaced_and_the_job_runs_again_elsewhere(pool, out_dir):
    jobs = JobQueue(pool, Library.open(out_dir))
    job = jobs.submit(request(seed=4, steps=30, frames=17))
    wait_until(lambda: jobs.get(job.id).step >= 2, timeout=120)
    victim = next(w for w in pool if w.label == jobs.get(job.id).worker)
    ray.kill(victim.actor, no_restart=False)  # as when its machine dies; Ray starts a new one
    wait_until(lambda: jobs.get(job.id).finished, timeout=180)
    again = jobs.get(job.id)
    assert again.status == DONE and again.retried, again.message
    assert [c.settings["seed"] for c in list_clips(out_dir)] == [4]  # published once
    later = jobs.submit(request(seed=5, steps=2))  # the restarted actor takes work again
    wait_until(lambda: jobs.get(later.id).finished, timeout=180)
    assert jobs.get(later.id).status == DONE


def test_an_unreachable_cluster_is_refused_at_start_with_what_to_do(tmp_path):
    env = dict(os.environ, WAN_STUDIO_HOME=str(tmp_path / "home"))
    started = time.monotonic()
    done = subprocess.run(
        [sys.executable, "app.py", "--ray", "127.0.0.1:9", "--output-dir", str(tmp_path / "out"), "--port", "0"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 2, done.stderr[-2000:]
    assert "Could not reach the Ray cluster at 127.0.0.1:9" in done.stderr and "ray start --head" in done.stderr
    assert time.monotonic() - started < 60  # refused at once, not after Ray's own minutes of retrying
