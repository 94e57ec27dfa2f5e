"""One clip across several GPUs (context parallelism): two ranks over gloo on CPU, started by the CLI with
torch's own launcher, give the frames of a single-process run with the same seed."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from pipelines.catalogue import get_spec
from pipelines.parallel import ParallelError, check_degree, tokens
from tests.media import decode_video
from tests.test_cli import run_cli

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


def test_context_parallel_refusals_from_the_command_line(tmp_path):
    one = run_cli("--model", "test-tiny", "--prompt", "a cat", "--gpus", "cpu", "--context-parallel",
                  "--out-dir", str(tmp_path), "--offline")  # fmt: skip
    assert one.returncode == 2 and "two or more GPUs" in one.stderr
    fast = run_cli("--model", "test-tiny", "--prompt", "a cat", "--gpus", "cpu,cpu", "--context-parallel", "--fast",
                   "--out-dir", str(tmp_path), "--offline")  # fmt: skip
    assert fast.returncode == 2 and "does not combine with Fast mode" in fast.stderr
    assert not list(tmp_path.glob("*.mp4"))


def test_two_ranks_over_gloo_give_the_single_process_frames(tmp_path):
    common = ("--model", "test-tiny", "--prompt", "a paper boat", "--frames", "9", "--steps", "3",
              "--offline")  # fmt: skip
    split = run_cli(*common, "--gpus", "cpu,cpu", "--context-parallel", "--out-dir", str(tmp_path / "two"))
    assert split.returncode == 0, split.stderr[-3000:]
    two = Path(split.stdout.strip().splitlines()[-1])
    sidecar = json.loads(two.with_suffix(".json").read_text())
    assert sidecar["context_parallel"] == 2  # as diffusers applied it to the transformer
    seed = sidecar["settings"]["seed"]  # drawn once by the launching process, passed to both ranks
    single = run_cli(*common, "--seed", str(seed), "--out-dir", str(tmp_path / "one"))
    assert single.returncode == 0, single.stderr
    one = Path(single.stdout.strip().splitlines()[-1])
    assert json.loads(one.with_suffix(".json").read_text())["context_parallel"] == 1
    assert len(list((tmp_path / "two").glob("*.mp4"))) == 1  # rank 0 publishes, rank 1 does not
    a, _ = decode_video(one)
    b, _ = decode_video(two)
    assert a.shape == b.shape == (9, 64, 96, 3)
    diff = np.abs(a.astype(np.int16) - b.astype(np.int16))
    # the split changes float summation order only (latents within ~4e-6); after uint8 and H.264 at most a level
    assert diff.mean() < 0.05 and diff.max() <= 2, (diff.mean(), diff.max())


@pytest.fixture(scope="module")
def split_worker():
    from pipelines.speed import SpeedOptions
    from studio.split_worker import SplitWorker

    worker = SplitWorker(["cpu", "cpu"], "auto", SpeedOptions(), offline=True)
    yield worker
    worker.close()


def test_a_studio_worker_spanning_two_ranks_runs_jobs_with_previews_and_stops_on_cancel(split_worker, out_dir):
    from library import Library, provenance
    from library.clips import list_clips
    from studio.jobs import CANCELLED, DONE, JobQueue
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
    slow = jobs.submit(request(seed=12, steps=60, frames=17))
    wait_until(lambda: jobs.get(slow.id).step >= 2, timeout=120)
    assert split_worker._process.pid == pid
    assert jobs.cancel(slow.id)
    wait_until(lambda: jobs.get(slow.id).finished, timeout=60)
    assert jobs.get(slow.id).status == CANCELLED and jobs.get(slow.id).step < 60
    after = jobs.submit(request(seed=13, steps=2, frames=9))  # no rank was left waiting in a collective
    wait_until(lambda: jobs.get(after.id).finished, timeout=120)
    assert jobs.get(after.id).status == DONE and split_worker._process.pid == pid
