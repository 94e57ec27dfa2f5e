"""ZeroGPU: the GPU function crosses a process boundary. Its arguments and yields must pickle, previews
must stream back, cancel must stop it within a step, and off ZeroGPU the real `spaces` package changes
nothing."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
from PIL import Image

from library import Library, provenance
from library.clips import list_clips
from pipelines.catalogue import IMAGE_TO_VIDEO
from pipelines.manager import PipelineManager, Progress
from pipelines.request import GenerationRequest
from studio.jobs import zerogpu
from studio.jobs.queue import CANCELLED, DONE, JobQueue
from tests import zerogpu_harness
from tests.test_jobs import picture, request, wait_until


def requests():
    end = Image.fromarray(np.full((64, 96, 3), 30, np.uint8))
    return {
        "text": request(seed=5, steps=2, frames=9),
        "image": request(seed=6, steps=2, frames=9, image=picture(), model="test-tiny-i2v-a14b", end_image=end),
    }


@pytest.mark.parametrize("kind", ["text", "image"])
def test_the_gpu_functions_arguments_and_every_yield_survive_pickle(kind, manager):
    valid = requests()[kind]
    data = zerogpu.request_to_data(valid)
    again = zerogpu.request_from_data(pickle.loads(pickle.dumps(data)))
    assert again.to_record() == valid.to_record()
    if kind == "image":
        assert again.task == IMAGE_TO_VIDEO and np.array_equal(np.asarray(again.image), np.asarray(valid.image))
        assert np.array_equal(np.asarray(again.end_image), np.asarray(valid.end_image))
    zerogpu._MANAGER = manager
    yields = list(zerogpu.run_on_gpu(data))
    assert [k for k, _ in yields[:-1]] == ["progress"] * (len(yields) - 1) and yields[-1][0] == "done"
    assert any(isinstance(p, Progress) and p.preview is not None for _, p in yields[:-1])
    for value in yields:
        copy = pickle.loads(pickle.dumps(value))
        assert copy[0] == value[0]
    frames = pickle.loads(pickle.dumps(yields[-1]))[1]["frames"]
    assert frames.dtype == np.uint8 and frames.shape == (valid.frames, valid.height, valid.width, 3)
    assert 60 <= zerogpu.duration(data) <= zerogpu.MAX_DURATION_S


# Set by a test to let a run held in its second step (a prompt starting "hold") go on. Made before the fork,
# so the forked GPU worker shares it.
RELEASE = zerogpu_harness.FORK.Event()


def held_at_step_2(generate):
    """The manager's generate, holding a "hold" run after reporting its second step until RELEASE is set."""

    def wrapper(request_, on_progress=None, cancel=None, wait=True):
        def hooked(progress):
            on_progress(progress)
            if progress.stage == "denoise" and progress.step == 2 and request_.prompt.startswith("hold"):
                RELEASE.wait(120)

        return generate(request_, on_progress=hooked, cancel=cancel, wait=wait)

    return wrapper


@pytest.fixture(scope="module")
def forked_worker():
    """A worker whose GPU function runs in a forked process, the way ZeroGPU runs it; the model is loaded
    in this (the main) process first, as the studio does at start-up on ZeroGPU."""
    manager = PipelineManager(offline=True, device="cpu")
    zerogpu.preload(manager, "test-tiny", "t2v", say=lambda line: None)
    assert manager.loads == 1
    manager.generate = held_at_step_2(manager.generate)  # before the fork: the forked worker inherits it
    return zerogpu.ZeroGpuWorker(manager, gpu=zerogpu_harness.GPU)


def test_a_forked_gpu_worker_streams_previews_in_order_and_the_clip_lands_signed(forked_worker, out_dir):
    jobs = JobQueue([forked_worker], Library.open(out_dir))
    steps: list[int] = []

    def watch() -> bool:
        job = jobs.get(job_id)
        if job.step and (not steps or steps[-1] != job.step):
            steps.append(job.step)
        return job.finished

    job_id = jobs.submit(request(seed=21, steps=6, frames=9, prompt="hold: stream previews")).id
    try:  # held after its second step until the studio has seen it there: a poll cannot miss it
        wait_until(lambda: watch() or 2 in steps, timeout=120)
        RELEASE.set()
        wait_until(watch, timeout=120)
    finally:
        RELEASE.set()  # never a run left waiting
    RELEASE.clear()
    done = jobs.get(job_id)
    assert done.status == DONE, done.message
    assert steps == sorted(steps) and steps[-1] == 6 and len(steps) >= 2  # previews arrived, in order
    assert done.preview_version >= 1
    clip = list_clips(out_dir)[0]
    assert clip.settings["seed"] == 21 and provenance.verify_file(clip.video).valid
    assert forked_worker.manager.loads == 1  # the worker used the weights loaded before the fork
    assert zerogpu_harness.durations[-1] >= 60


def test_cancel_on_zerogpu_stops_the_forked_run_within_a_step_and_the_gpu_is_free_again(forked_worker, out_dir):
    jobs = JobQueue([forked_worker], Library.open(out_dir))
    RELEASE.clear()
    job = jobs.submit(request(seed=22, steps=100, frames=17, prompt="hold: a red cat"))
    wait_until(lambda: jobs.get(job.id).step >= 2, timeout=120)  # the forked run waits there for RELEASE
    assert jobs.cancel(job.id)
    RELEASE.set()  # the cancel is asked while the run is under way; the studio acts on it at the next report
    wait_until(lambda: jobs.get(job.id).finished, timeout=120)
    stopped = jobs.get(job.id)
    assert (stopped.status, stopped.step) == (CANCELLED, 3), stopped.message  # the very next step's report
    assert list_clips(out_dir) == []
    after = jobs.submit(request(seed=23, steps=2, frames=9))  # the same forked worker takes the next call
    wait_until(lambda: jobs.get(after.id).finished, timeout=120)
    assert jobs.get(after.id).status == DONE
    assert forked_worker._on_gpu.worker[0].process.is_alive()


def test_with_the_real_spaces_package_and_no_zerogpu_the_studio_is_unchanged(tmp_path, monkeypatch):
    spaces = pytest.importorskip("spaces")  # the real package (requirements-dev), not a stand-in
    from studio.core import Studio
    from studio.jobs.workers import LocalWorker
    from studio.settings import Settings

    monkeypatch.delenv("SPACES_ZERO_GPU", raising=False)
    assert spaces.__file__ and not zerogpu.on_zerogpu()
    assert spaces.GPU(duration=zerogpu.duration)(zerogpu.run_on_gpu) is zerogpu.run_on_gpu  # a no-op here
    studio = Studio(Settings(model="test-tiny", output_dir=str(tmp_path / "out")).validate(), offline=True)
    assert [type(w) for w in studio.jobs.workers] == [LocalWorker]
    job = studio.submit(GenerationRequest(prompt="a red cat", steps=2, frames=9, seed=3))
    wait_until(lambda: studio.jobs.get(job.id).finished, timeout=120)
    assert studio.jobs.get(job.id).status == DONE


def test_on_a_space_with_persistent_storage_models_settings_and_clips_live_under_data(tmp_path):
    import os
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    probe = ("import app, os; from studio.server import build_parser; "
             "print(os.environ.get('HF_HOME')); print(os.environ.get('WAN_STUDIO_HOME')); "
             "print(build_parser().parse_args([]).output_dir)")  # fmt: skip
    env = {k: v for k, v in os.environ.items() if k not in ("HF_HOME", "WAN_STUDIO_HOME", "WAN_STUDIO_OUTPUT_DIR")}

    def run(**extra) -> list[str]:
        done = subprocess.run([sys.executable, "-c", probe], cwd=root, env={**env, **extra}, capture_output=True,
                              text=True, timeout=120)  # fmt: skip
        assert done.returncode == 0, done.stderr
        return done.stdout.split()

    on_space = run(SPACE_ID="someone/wan-studio", WAN_STUDIO_SPACE_DATA=str(tmp_path))
    assert on_space == [str(tmp_path / ".huggingface"), str(tmp_path / "wan-studio"), str(tmp_path / "outputs")]
    assert run(WAN_STUDIO_SPACE_DATA=str(tmp_path)) == ["None", "None", "None"]  # not a Space: nothing moves


def test_preloading_at_start_up_never_initialises_cuda_in_the_main_process(monkeypatch):
    """On a ZeroGPU Space the `spaces` package makes torch.cuda.is_available() say True in the main process
    and makes any real CUDA initialisation raise (torch._C._cuda_init). Freeing memory before a load used to
    call torch.cuda.ipc_collect(), which initialises CUDA: the Space failed to start."""
    import torch

    def forbidden():
        raise RuntimeError("Low-level CUDA init (`torch._C._cuda_init`) reached.")

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)  # what spaces.zero patches, verbatim
    monkeypatch.setattr(torch._C, "_cuda_init", forbidden, raising=False)
    monkeypatch.setattr(torch.cuda, "_lazy_init", forbidden)  # a CPU build of torch fails before _cuda_init
    manager = PipelineManager(offline=True, device="cpu")
    zerogpu.preload(manager, "test-tiny", "t2v", say=lambda line: None)
    assert manager.loads == 1 and not torch.cuda.is_initialized()


# FastWan's published figure (ANCHORS, "Published speeds"): TI2V-5B at 720P, 50 steps denoised in 157 s on one
# whole H200 (FlashAttention 2). A ZeroGPU call runs on a slice of an H200: it is never faster than that.
H200_TI2V_720P_STEP_S = 157 / 50
TI2V = "Wan-AI/Wan2.2-TI2V-5B-Diffusers"


def cfg_step_flops(model: str, width: int, height: int, frames: int) -> float:
    """The real model's transformer FLOPs per guided step at this size (torch's counter, on the meta device)."""
    import sys
    from pathlib import Path

    from pipelines.testmodels import full_size_components

    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from bench.gpu_suite import flops_per_cfg_step

    parts = full_size_components(model, device="meta")

    class Pipe:  # what the counter reads
        transformer, vae = parts["transformer"], parts["vae"]

        class config:
            expand_timesteps = parts.get("expand_timesteps", False)

    return flops_per_cfg_step(Pipe, width, height, frames)


@pytest.mark.parametrize(
    "model, width, height, frames, steps",
    [(TI2V, 1280, 704, 121, 50), ("Wan-AI/Wan2.2-T2V-A14B-Diffusers", 832, 480, 81, 40)],
    ids=["ti2v-5b-720p", "a14b-480p"],
)
def test_a_call_asks_for_at_least_the_time_its_steps_take_on_a_whole_h200(model, width, height, frames, steps):
    """ZeroGPU stops a call at the duration it asked for: asked too short, a clip is cut off mid-run and the
    GPU time is lost. The steps alone, at the published H200 rate scaled by the real transformer's FLOPs at
    this size, must fit in what is asked (the prompt encode and the VAE decode come on top)."""
    valid = request(model=model, width=width, height=height, frames=frames, steps=steps)
    assert valid.guidance_scale > 1  # guided, as the published figure: two transformer calls a step
    step_s = H200_TI2V_720P_STEP_S * cfg_step_flops(model, width, height, frames) / cfg_step_flops(TI2V, 1280, 704, 121)
    asked = zerogpu.duration(zerogpu.request_to_data(valid))
    assert asked >= steps * step_s, (asked, steps, round(step_s, 2))
    assert asked <= zerogpu.MAX_DURATION_S
