"""Upscale and Smooth motion of library clips: the new clip decoded and measured, its sidecar's chain, its
Content Credentials, refusals, cancel and a full disk; through the library, the queue and the CLI."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from library import Library, provenance
from library.clips import list_clips
from library.layout import TMP_PREFIX
from library.post import PostCancelled, PostError
from library.post_models import TEST
from pipelines.digests import sha256_of
from pipelines.errors import UserError
from pipelines.interpolate import ensure_test_rife
from pipelines.request import GenerationRequest, validate_request
from pipelines.upscale import build_test_upscaler, ensure_test_upscaler, load_upscaler
from studio.jobs.queue import CANCELLED, DONE, JobQueue
from studio.page.handlers.library import reuse_values
from tests.media import decode_video

ROOT = Path(__file__).resolve().parents[1]
TINY = "test-tiny"


@pytest.fixture(scope="module")
def source(manager, tmp_path_factory) -> Path:
    """A clip with a real generation's sidecar (the test model's) and smooth moving pictures in place of its
    noise, which the encoder could not keep closely enough to tell one upscaler's output from another's."""
    out = tmp_path_factory.mktemp("post-source")
    valid = validate_request(GenerationRequest(prompt="a lantern in the fog", model=TINY, seed=7, steps=2, frames=9),
                             default_model=TINY)  # fmt: skip
    result = manager.generate(valid)
    _, height, width, _ = result.frames.shape
    y, x = np.mgrid[0:height, 0:width]
    pictures = []
    for t in range(len(result.frames)):  # a gradient with a bright disc moving right, 8 px a frame (wrapping)
        disc = (((x - 10 - 8 * t) % width) ** 2 + (y - height / 2) ** 2 < 100) * 150
        plane = np.clip(40 + x * 120 / width + disc, 0, 255)
        pictures.append(np.stack([plane, 60 + y * 100 / height + 0 * x, 255 - plane], axis=-1).astype(np.uint8))
    result = replace(result, frames=np.stack(pictures))
    return Library.open(out).save_clip(result).video


@pytest.fixture
def library(source, tmp_path) -> Library:
    """A fresh copy of the source's library for each test (what one test publishes, another does not see)."""
    out = tmp_path / "outputs"
    out.mkdir()
    for path in source.parent.iterdir():
        if path.is_file():
            (out / path.name).write_bytes(path.read_bytes())
    lib = Library.open(out)
    lib.post_models.default = TEST
    return lib


def blocky(frames: np.ndarray, k: int = 4) -> np.ndarray:
    """Each k×k block's mean: the picture without its finest detail."""
    f, h, w, c = frames.shape
    return frames[:, : h // k * k, : w // k * k].reshape(f, h // k, k, w // k, k, c).mean(axis=(2, 4))


def new_clips(library: Library, source: Path) -> list[Path]:
    return [c.video for c in list_clips(library.root) if c.video.name != source.name]


def test_upscale_x2_makes_a_new_signed_clip_whose_frames_are_the_test_upscalers(library, source):
    files = library.post(library.check_post("upscale", source.name, TEST, scale=2), "cpu")
    frames, fps = decode_video(files.video)
    original, source_fps = decode_video(source)
    assert frames.shape == (len(original), original.shape[1] * 2, original.shape[2] * 2, 3) and fps == source_fps
    # which weights ran: the frames are the test upscaler's output of the decoded source (up to the encoder),
    # and not another upscaler's of the same layout
    mine = load_upscaler(ensure_test_upscaler())
    other = load_upscaler(build_test_upscaler(library.root.parent / "other", seed=1))
    wanted = np.stack(list(mine.upscale(iter(original))))
    stranger = np.stack(list(other.upscale(iter(original))))
    # compared in 4x4 blocks: a random-weight upscaler draws a pixel-fine pattern the encoder smooths away
    err_mine, err_other = blocky(frames) - blocky(wanted), blocky(frames) - blocky(stranger)
    err_mine, err_other = np.abs(err_mine).mean(), np.abs(err_other).mean()
    assert err_mine < 2 and err_other > 2 * err_mine, (err_mine, err_other)

    side = json.loads(files.sidecar.read_text())
    source_side = json.loads(source.with_suffix(".json").read_text())
    assert side["source"] == source.name
    [step] = side["post"]
    assert step["action"] == "upscale" and step["settings"] == {"scale": 2}
    assert step["model"]["sha256"] == sha256_of(ensure_test_upscaler())
    assert side["video"] == {"width": frames.shape[2], "height": frames.shape[1], "fps": fps, "frames": len(frames)}
    assert reuse_values(side["settings"]) == reuse_values(source_side["settings"])  # Reuse gives the source's
    assert side["provenance"]["signed"]
    check = provenance.verify_file(files.video)
    assert check.valid and check.local_key, check.summary()
    assert check.declared["parents"] == [source.name]
    assert [e["action"] for e in check.declared["edits"]] == ["c2pa.resized"]
    assert check.declared["edits"][0]["model"]["sha256"] == step["model"]["sha256"]
    assert library.clip(files.video.name).sidecar["source"] == source.name  # in the library's index


def test_upscale_to_a_height_keeps_the_aspect_with_even_sides(library, source):
    files = library.post(library.check_post("upscale", source.name, TEST, height=1080), "cpu")
    frames, _ = decode_video(files.video)
    _, h, w, _ = decode_video(source)[0].shape
    assert frames.shape[1] == 1080 and frames.shape[2] % 2 == 0 and abs(frames.shape[2] - w * 1080 / h) <= 2


def test_smooth_x2_keeps_the_source_frames_in_place_and_the_duration(library, source):
    files = library.post(library.check_post("interpolate", source.name, TEST, factor=2), "cpu")
    frames, fps = decode_video(files.video)
    original, source_fps = decode_video(source)
    n = len(original)
    assert len(frames) == 2 * n - 1 and fps == 2 * source_fps
    assert abs(len(frames) / fps - (n - 0.5) / source_fps) < 1e-6  # the last source frame's time is kept

    def error(a: np.ndarray, b: np.ndarray) -> float:
        return float(np.abs(a.astype(int) - b).mean())

    # each source frame at its place (up to the encoder), the in-between frames unlike both neighbours
    kept = [error(frames[2 * k], original[k]) for k in range(n)]
    assert [int(np.argmin([error(frames[2 * k], o) for o in original])) for k in range(n)] == list(range(n))
    made = [min(error(frames[2 * k + 1], original[k]), error(frames[2 * k + 1], original[k + 1])) for k in range(n - 1)]
    assert max(kept) < 3 and min(made) > 1.5 * max(kept), (kept, made)
    side = json.loads(files.sidecar.read_text())
    assert side["post"][0]["model"]["sha256"] == sha256_of(ensure_test_rife())
    assert provenance.verify_file(files.video).declared["edits"][0]["action"] == "c2pa.edited"


def test_smooth_to_a_frame_rate_and_then_upscale_chains_both_steps(library, source):
    smooth = library.post(library.check_post("interpolate", source.name, TEST, fps=12), "cpu")
    frames, fps = decode_video(smooth.video)
    original, source_fps = decode_video(source)
    assert fps == 12 and len(frames) == round(len(original) * 12 / source_fps)
    big = library.post(library.check_post("upscale", smooth.video.name, TEST, scale=2), "cpu")
    side = json.loads(big.sidecar.read_text())
    assert side["source"] == smooth.video.name
    assert [s["action"] for s in side["post"]] == ["interpolate", "upscale"]
    assert provenance.verify_file(big.video).declared["parents"] == [smooth.video.name]


@pytest.mark.parametrize(
    ("action", "how", "said"),
    [
        ("interpolate", {"factor": 3}, "factor must be 2 or 4, not 3"),
        ("upscale", {"scale": 3}, "scale must be 2 or 4, not 3"),
        ("upscale", {"scale": 2, "height": 1080}, "not both"),
        ("upscale", {"height": 720}, "height must be 1080 or 2160"),
        ("interpolate", {"fps": 4}, "fps must be above the clip's"),
        ("interpolate", {"fps": "fast"}, "fps must be a number"),
    ],
)
def test_bad_requests_are_refused_by_name_before_anything_runs(library, source, action, how, said):
    with pytest.raises(PostError, match=said):
        library.check_post(action, source.name, TEST, **how)


def test_a_clip_that_is_not_in_the_library_is_refused(library):
    with pytest.raises(PostError, match="'elsewhere.mp4' is not a clip in the library"):
        library.check_post("upscale", "elsewhere.mp4", TEST, scale=2)
    with pytest.raises(PostError, match="is not a clip in the library"):
        library.check_post("upscale", "../outputs/x.mp4", TEST, scale=2)


def test_a_4k_upscale_x4_is_refused_naming_the_limit(library, source):
    big = Library.open(library.root)  # a 1280x704 clip: x4 would be 5120 wide
    from library.clips import write_clip

    frames = np.zeros((2, 704, 1280, 3), np.uint8)
    name = write_clip(frames, 8, big.root, "wide", dict(json.loads(source.with_suffix(".json").read_text()))).video
    with pytest.raises(PostError, match="at most 4096 pixels a side"):
        big.check_post("upscale", name.name, TEST, scale=4)


def test_a_cancel_between_frames_publishes_nothing(library, source):
    cancel = threading.Event()
    seen = []

    def report(progress):
        seen.append(progress.step)
        if progress.step == 2:
            cancel.set()

    request = library.check_post("interpolate", source.name, TEST, factor=4)
    with pytest.raises(PostCancelled):
        library.post(request, "cpu", cancel=cancel, report=report)
    assert max(seen) < (len(decode_video(source)[0]) - 1) * 4 + 1  # stopped before the end
    assert new_clips(library, source) == [] and list(library.root.glob(f"{TMP_PREFIX}*")) == []


def test_a_full_disk_mid_upscale_fails_plainly_and_leaves_nothing(source, tmp_path, monkeypatch):
    from library import clips
    from tests.test_disk_full import fill
    from tests.tmpfs import tmpfs

    with tmpfs(tmp_path / "disk", "size=4m") as disk:
        out = disk / "outputs"
        out.mkdir()
        for path in source.parent.iterdir():
            if path.is_file():
                (out / path.name).write_bytes(path.read_bytes())
        library = Library.open(out)
        monkeypatch.setattr(clips, "check_room", lambda *a: None)  # the writing itself runs out of space
        fill(disk, leave_mb=0.05)
        with pytest.raises(Exception, match="The output folder is full") as raised:
            library.post(library.check_post("upscale", source.name, TEST, scale=4), "cpu")
        assert isinstance(raised.value, UserError)  # the page and the API show its words as they are
        assert new_clips(library, source) == [] and list(out.glob(f"{TMP_PREFIX}*")) == []


def test_the_queue_runs_a_post_job_on_a_worker_and_a_restart_resumes_a_queued_one(manager, library, source):
    jobs = JobQueue(manager, library)
    request = library.check_post("upscale", source.name, TEST, scale=2)
    job = jobs.submit_post(request)
    deadline = time.monotonic() + 120
    while not jobs.get(job.id).finished:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    done = jobs.get(job.id)
    assert done.status == DONE, done.message
    assert done.worker == "CPU" and done.total_steps == len(decode_video(source)[0]) and done.preview is not None
    assert Path(done.result).name in {p.name for p in new_clips(library, source)}
    # a record of a queued post job is run again by the next studio
    record = dict(done.record(), id="again", status="queued", result=None)
    (library.jobs_dir / "again.json").write_text(json.dumps(record))
    later = JobQueue(manager, library)
    while not later.get("again").finished:
        assert time.monotonic() < deadline + 120
        time.sleep(0.05)
    assert later.get("again").status == DONE and later.get("again").post == request


def test_a_cancelled_post_job_says_where_it_stopped(manager, library, source):
    jobs = JobQueue(manager, library)
    arrived, release = threading.Event(), threading.Event()
    reported = jobs._on_progress

    def held(job, progress):  # the job waits after its first frame until the test has cancelled it
        reported(job, progress)
        if progress.step == 1:
            arrived.set()
            release.wait(60)

    jobs._on_progress = held
    job = jobs.submit_post(library.check_post("interpolate", source.name, TEST, factor=4))
    assert arrived.wait(120)
    assert jobs.cancel(job.id)
    release.set()
    deadline = time.monotonic() + 120
    while not jobs.get(job.id).finished:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    stopped = jobs.get(job.id)
    assert stopped.status == CANCELLED, stopped.message
    assert stopped.message == f"Cancelled at frame 1/{stopped.total_steps}; nothing was published"
    assert new_clips(library, source) == [] and list(library.root.glob(f"{TMP_PREFIX}*")) == []


def run_cli(*args: str, home: Path) -> subprocess.CompletedProcess:
    import os

    env = dict(os.environ, WAN_STUDIO_HOME=str(home))
    return subprocess.run([sys.executable, "app.py", *args], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=300)  # fmt: skip


def test_the_cli_upscales_and_smooths_a_clip_by_path_and_by_name(library, source, tmp_path):
    name = source.name
    done = run_cli("upscale", str(library.root / name), "--scale", "2", "--upscaler", "test", "--offline",
                   home=tmp_path / "home")  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    made = Path(done.stdout.strip().splitlines()[-1])
    assert made.parent == library.root and decode_video(made)[0].shape[1] == 2 * decode_video(source)[0].shape[1]
    assert "frame" in done.stderr  # a progress bar counted frames
    out = tmp_path / "elsewhere"
    done = run_cli("interpolate", name, "--library", str(library.root), "--factor", "2", "--model", "test",
                   "--out-dir", str(out), "--offline", home=tmp_path / "home")  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    made = Path(done.stdout.strip().splitlines()[-1])
    assert made.parent == out and len(decode_video(made)[0]) == 2 * len(decode_video(source)[0]) - 1


@pytest.mark.parametrize(
    ("args", "said"),
    [
        (["interpolate", "CLIP", "--factor", "3"], "--factor: invalid choice: 3"),
        (["upscale", "missing.mp4", "--upscaler", "test"], "'missing.mp4' is not a clip in the library"),
        (["upscale", "CLIP", "--height", "720", "--upscaler", "test"], "height must be 1080 or 2160"),
        (["upscale", "CLIP", "--upscaler", "nothing.safetensors"], "is not in the Upscalers folder"),
    ],
)
def test_the_cli_refuses_bad_input_with_exit_code_2_naming_the_field(library, source, tmp_path, args, said, capsys,
                                                                     monkeypatch):  # fmt: skip
    from app import main  # in this process: a refusal loads nothing (the test above runs the real command)

    monkeypatch.setenv("WAN_STUDIO_HOME", str(tmp_path / "home"))
    args = [str(library.root / source.name) if a == "CLIP" else a for a in args]
    capsys.readouterr()
    try:
        code = main([*args, "--library", str(library.root), "--offline"])
    except SystemExit as stop:  # argparse's own refusals exit (the process's exit code)
        code = stop.code
    out, err = capsys.readouterr()
    assert code == 2 and said in err, err[-2000:]
    assert out == ""


def test_a_film_exported_at_another_frame_rate_and_upscaled_runs_the_learned_models(library, source):
    from library import Shot, Storyboard

    original, source_fps = decode_video(source)
    board = Storyboard(shots=[Shot(source.name)], fps=source_fps * 2, upscale="1080p")
    film = library.export_film(board)
    frames, fps = decode_video(film)
    assert fps == source_fps * 2 and frames.shape[1] == 1080 and frames.shape[2] % 2 == 0
    assert len(frames) == round(len(original) / source_fps * fps)
    record = json.loads(film.with_suffix(".mp4.json").read_text())
    assert record["interpolation"].startswith("learned") and record["size"] == [frames.shape[2], 1080]
    # the storyboard can ask for ffmpeg's interpolation; the record says which ran
    board = Storyboard(shots=[Shot(source.name)], fps=source_fps * 2, interpolation="ffmpeg")
    record = json.loads(library.export_film(board).with_suffix(".mp4.json").read_text())
    assert record["interpolation"].startswith("ffmpeg minterpolate (the storyboard asks for it)")


def test_without_an_interpolation_model_a_film_falls_back_to_ffmpeg_and_says_why(library, source):
    from library import Shot, Storyboard
    from library.post_models import DEFAULT

    library.post_models.default = DEFAULT  # the pinned RIFE, offline and not downloaded here
    board = Storyboard(shots=[Shot(source.name)], fps=24)
    film = library.export_film(board)
    record = json.loads(film.with_suffix(".mp4.json").read_text())
    assert record["interpolation"].startswith("ffmpeg minterpolate (the interpolation model is not available:")
    assert "offline" in record["interpolation"]
    assert decode_video(film)[1] == 24


def test_the_upscalers_folder_keeps_a_recognised_upscaler_and_refuses_others_by_name(tmp_path):
    from library.post_models import UpscalerFolder
    from pipelines.upscale import UpscalerError

    folder = UpscalerFolder(tmp_path / "upscalers")
    good = build_test_upscaler(tmp_path / "upload", seed=2, name="my-upscaler.safetensors")
    assert folder.keep(good) == "my-upscaler.safetensors" and folder.names() == ["my-upscaler.safetensors"]
    assert folder.path_of("my-upscaler.safetensors").read_bytes() == good.read_bytes()
    foreign = tmp_path / "upload" / "notes.safetensors"
    import torch
    from safetensors.torch import save_file

    save_file({"some.weight": torch.zeros(3, 3)}, str(foreign))
    with pytest.raises(UpscalerError, match="'notes.safetensors' is not an upscaler spandrel recognises"):
        folder.keep(foreign)
    with pytest.raises(UserError, match="is not in the Upscalers folder"):
        folder.path_of("../upload/my-upscaler.safetensors")
    assert folder.names() == ["my-upscaler.safetensors"]  # nothing else was kept


def test_the_grid_tells_a_made_clip_from_its_source_by_its_caption(library, source):
    from studio.page.handlers.library import caption

    smooth = library.post(library.check_post("interpolate", source.name, TEST, fps=12), "cpu")
    prompt = library.clip(source.name).settings["prompt"]
    assert caption(library.clip(source.name)) == prompt
    assert caption(library.clip(smooth.video.name)) == f"[smoothed 12.0 fps] {prompt}"


def test_the_studio_takes_no_model_by_path_only_the_folders_names(source, tmp_path):
    """The API is open to whoever reaches the studio: a path would make a job read any file of the machine."""
    from library.files import LibraryError
    from library.post_models import PostModels, UpscalerFolder

    lib = Library.open(source.parent)
    lib.post_models = PostModels(UpscalerFolder(tmp_path / "upscalers"), offline=True)
    elsewhere = build_test_upscaler(tmp_path / "elsewhere", name="anywhere.safetensors")
    with pytest.raises(LibraryError, match="is not in the Upscalers folder"):
        lib.check_post("upscale", source.name, str(elsewhere), scale=2)
    with pytest.raises(LibraryError, match="The interpolation model is 'default' or 'test'"):
        lib.check_post("interpolate", source.name, str(elsewhere), factor=2)
    lib.post_models.allow_paths = True  # the CLI's user names files of their own machine
    assert lib.check_post("upscale", source.name, str(elsewhere), scale=2).model == str(elsewhere)


@pytest.mark.parametrize(("how", "said"), [({"scale": float("inf")}, "scale must be a whole number"),
                                           ({"fps": float("nan")}, "fps must be a number")])  # fmt: skip
def test_numbers_that_are_not_finite_are_refused_by_name(library, source, how, said):
    action = "upscale" if "scale" in how else "interpolate"
    with pytest.raises(PostError, match=said):
        library.check_post(action, source.name, TEST, **how)


def test_out_of_gpu_memory_beside_the_video_model_unloads_it_and_tries_once_more():
    from studio.jobs.queue import GpuMemoryError, _beside_the_video_model

    class Manager:
        loaded = ("test-tiny", "t2v", "cpu")

        def unload(self):
            self.loaded = None

    class Worker:
        manager = Manager()

    tries = []

    def run():
        tries.append(Worker.manager.loaded)
        if len(tries) == 1:
            raise torch.OutOfMemoryError("CUDA out of memory")
        return "made"

    assert _beside_the_video_model(run, Worker(), "the upscaler") == "made"
    assert tries == [("test-tiny", "t2v", "cpu"), None]  # the second try ran with the video model unloaded

    def never_fits():
        raise torch.OutOfMemoryError("CUDA out of memory")

    with pytest.raises(GpuMemoryError, match="Not enough GPU memory for the upscaler, even with the video model"):
        _beside_the_video_model(never_fits, Worker(), "the upscaler")


def test_a_post_job_behind_a_clip_says_its_place_in_the_shared_gpu_queue(manager, library, source):
    from pipelines.request import GenerationRequest, validate_request
    from studio.jobs.queue import default_generate

    entered, release = threading.Event(), threading.Event()

    def held(manager_, request_, report, cancel):
        entered.set()
        release.wait(120)
        return default_generate(manager_, request_, report, cancel)

    jobs = JobQueue(manager, library, generate=held)
    try:
        first = jobs.submit(validate_request(GenerationRequest(prompt="busy", model=TINY, steps=1),
                                             default_model=TINY))  # fmt: skip
        assert entered.wait(60)
        second = jobs.submit(validate_request(GenerationRequest(prompt="next", model=TINY, steps=1),
                                              default_model=TINY))  # fmt: skip
        post = jobs.submit_post(library.check_post("upscale", source.name, TEST, scale=2))
        assert (jobs.position(second.id), jobs.position(post.id)) == (1, 2)
    finally:
        release.set()
    deadline = time.monotonic() + 180  # every job ends before the test does (no thread left running at exit)
    while not all(jobs.get(j.id).finished for j in (first, second, post)):
        assert time.monotonic() < deadline
        time.sleep(0.05)
