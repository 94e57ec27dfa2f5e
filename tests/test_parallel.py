"""One clip across several GPUs (context parallelism): two ranks over gloo on CPU, started by the CLI with
torch's own launcher, give the frames of a single-process run with the same seed."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from pipelines.catalogue import get_spec
from pipelines.parallel import ParallelError, check_degree, tokens
from tests.media import decode_video
from tests.test_cli import ROOT, cli_in_process, run_cli

TI2V = "Wan-AI/Wan2.2-TI2V-5B-Diffusers"
A14B = "Wan-AI/Wan2.2-T2V-A14B-Diffusers"


def test_a_degree_must_divide_the_heads_and_the_video_tokens():
    ti2v, a14b = get_spec(TI2V), get_spec(A14B)
    assert (ti2v.attention_heads, a14b.attention_heads) == (24, 40)
    for degree in (2, 4, 8):
        check_degree(ti2v, degree, 1280, 704, 121)  # 31 latent frames × 22 × 40 = 27,280 tokens
    assert tokens(ti2v, 1280, 704, 121) == 27_280
    with pytest.raises(ParallelError, match=r"24 attention heads, which do not split over 5 GPUs; use 2, 3, 4, 6, 8"):
        check_degree(ti2v, 5, 1280, 704, 121)
    with pytest.raises(ParallelError, match=r"40 attention heads, which do not split over 3 GPUs; use 2, 4, 5, 8"):
        check_degree(a14b, 3, 1280, 720, 81)
    with pytest.raises(ParallelError, match="27280 video tokens, which do not split evenly over 3 GPUs"):
        check_degree(ti2v, 3, 1280, 704, 121)


def test_context_parallel_refusals_from_the_command_line(tmp_path, capsys):
    code, stderr = cli_in_process(capsys, "--model", "test-tiny", "--prompt", "a cat", "--gpus", "cpu",
                                  "--context-parallel", "--out-dir", str(tmp_path), "--offline")  # fmt: skip
    assert code == 2 and "two or more GPUs" in stderr
    code, stderr = cli_in_process(capsys, "--model", "test-tiny", "--prompt", "a cat", "--gpus", "cpu,cpu",
                                  "--context-parallel", "--fast", "--out-dir", str(tmp_path), "--offline")  # fmt: skip
    assert code == 2 and "does not combine with Fast mode" in stderr
    code, stderr = cli_in_process(capsys, "--model", "test-tiny", "--prompt", "a cat", "--gpus", "cpu,cpu,cpu",
                                  "--context-parallel", "--out-dir", str(tmp_path), "--offline")  # fmt: skip
    assert code == 2 and "2 attention heads, which do not split over 3 GPUs" in stderr
    assert not list(tmp_path.glob("*.mp4"))


def test_two_ranks_over_gloo_give_the_single_process_frames(tmp_path, manager):
    """The engine's split run (2 gloo ranks under torch.distributed.run) against one process, same request."""
    from pipelines.request import GenerationRequest, validate_request
    from tests.cp_rank import REQUEST

    saved = tmp_path / "frames.npy"
    env = dict(os.environ, OMP_NUM_THREADS="1")
    done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2",
                           str(ROOT / "tests" / "cp_rank.py"), str(saved)], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=300)  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    assert "split 2" in done.stdout  # as diffusers applied it to the transformer
    split = np.load(saved)
    single = manager.generate(validate_request(GenerationRequest(**REQUEST), "test-tiny")).frames
    assert split.shape == single.shape == (9, 64, 96, 3)
    diff = np.abs(split.astype(np.int16) - single.astype(np.int16))
    # the split changes the order of float sums only (latents agree to ~4e-6): a rare sample rounds the other way
    assert diff.max() <= 1 and (diff > 0).mean() < 0.001, (diff.max(), (diff > 0).mean())


def test_ranks_waiting_for_the_next_job_outlive_the_groups_timeout():
    """Between jobs, ranks 1.. of a split worker wait in a broadcast for rank 0's next job. Over the default
    group that wait died at its timeout (NCCL: 10 minutes, then the process is killed); here the default
    group's timeout is 1 s and the job comes after 3 s."""
    env = dict(os.environ, OMP_NUM_THREADS="1")
    done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2",
                           str(ROOT / "tests" / "idle_rank.py")], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=120)  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    assert "rank 0 got ('job', 42)" in done.stdout and "rank 1 got ('job', 42)" in done.stdout


def test_the_cli_runs_one_clip_over_two_ranks_and_rank_0_publishes_it(tmp_path):
    split = run_cli("--model", "test-tiny", "--prompt", "a paper boat", "--frames", "9", "--steps", "3", "--offline",
                    "--gpus", "cpu,cpu", "--context-parallel", "--out-dir", str(tmp_path))  # fmt: skip
    assert split.returncode == 0, split.stderr[-3000:]
    clip = Path(split.stdout.strip().splitlines()[-1])
    assert json.loads(clip.with_suffix(".json").read_text())["context_parallel"] == 2
    assert [p.name for p in tmp_path.glob("*.mp4")] == [clip.name]  # rank 0 publishes, rank 1 does not
    frames, _ = decode_video(clip)
    assert frames.shape == (9, 64, 96, 3)


@pytest.fixture(scope="module")
def split_worker():
    from pipelines.speed import SpeedOptions
    from studio.jobs.split import SplitWorker

    worker = SplitWorker(["cpu", "cpu"], "auto", SpeedOptions(), offline=True, rank_module="tests.held_rank")
    yield worker
    worker.close()


def test_a_studio_worker_spanning_two_ranks_runs_jobs_with_previews_and_stops_on_cancel(split_worker, out_dir):
    from library import Library, provenance
    from library.clips import list_clips
    from studio.jobs.queue import CANCELLED, DONE, JobQueue
    from tests.test_jobs import request, wait_until

    jobs = JobQueue([split_worker], Library.open(out_dir))
    seen = []
    job = jobs.submit(request(seed=11, steps=4, frames=9))
    wait_until(lambda: seen.append(jobs.get(job.id).preview_version) or jobs.get(job.id).finished, timeout=240)
    done = jobs.get(job.id)
    assert done.status == DONE, done.message
    assert max(seen) >= 1 and done.worker == "CPU 1 + CPU 2 (one clip split)"
    clip = list_clips(out_dir)[0]
    assert clip.sidecar["context_parallel"] == 2 and provenance.verify_file(clip.video).valid
    pid = split_worker._process.pid

    # the group stays up between jobs (weights loaded); cancel stops every rank at the same step
    slow = jobs.submit(request(seed=12, steps=60, frames=17, prompt="hold until cancel: a red cat"))
    wait_until(lambda: jobs.get(slow.id).step >= 2, timeout=120)  # rank 0 holds there until the cancel arrives
    assert split_worker._process.pid == pid
    assert jobs.cancel(slow.id)
    wait_until(lambda: jobs.get(slow.id).finished, timeout=240)
    assert (jobs.get(slow.id).status, jobs.get(slow.id).step) == (CANCELLED, 2)  # stopped at the next check
    after = jobs.submit(request(seed=13, steps=2, frames=9))  # no rank was left waiting in a collective
    wait_until(lambda: jobs.get(after.id).finished, timeout=120)
    assert jobs.get(after.id).status == DONE and split_worker._process.pid == pid


def test_a_split_group_that_dies_mid_job_is_started_again_and_the_job_runs_again(tmp_path, monkeypatch, out_dir):
    """A rank that dies (a GPU fault, the OOM killer) takes its group down: the job goes back to the queue once
    and runs on a group started afresh; the clip is published once."""
    import signal

    from library import Library
    from library.clips import list_clips
    from pipelines.speed import SpeedOptions
    from studio.jobs.queue import DONE, JobQueue
    from studio.jobs.split import SplitWorker
    from tests.test_jobs import request, wait_until

    hold = tmp_path / "held"
    monkeypatch.setenv("WAN_STUDIO_TEST_HOLD", str(hold))
    worker = SplitWorker(["cpu", "cpu"], "auto", SpeedOptions(), offline=True, rank_module="tests.held_rank")
    try:
        jobs = JobQueue([worker], Library.open(out_dir))
        job = jobs.submit(request(seed=21, steps=4, frames=9, prompt="hold until killed: a red cat"))
        # rank 0 holds in step 2 (tests/held_rank.py) until killed: the job cannot end first
        wait_until(lambda: hold.is_file() and jobs.get(job.id).step >= 2, timeout=240)
        first_group = worker._process.pid
        os.kill(int(hold.read_text()), signal.SIGKILL)
        wait_until(lambda: jobs.get(job.id).finished, timeout=300)
        again = jobs.get(job.id)
        assert again.status == DONE and again.retried, again.message
        assert worker._process.pid != first_group  # a new group ran it
        clips = list_clips(out_dir)
        assert [c.settings["seed"] for c in clips] == [21] and clips[0].sidecar["context_parallel"] == 2
        frames, _ = decode_video(clips[0].video)
        assert frames.shape == (9, 64, 96, 3)
    finally:
        worker.close()
