"""Long takes in the studio: a take of window prompts queued, streamed to disk and published as one clip (frames
decoded from the file), its sidecar, cancel with and without keeping the finished windows, a restart in the
middle of a take, Reuse settings, and the refusals of the form and the API."""

from __future__ import annotations

import json
import threading
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from library import Library
from library.clips import list_clips
from pipelines.long_take import window_seed
from pipelines.manager import PipelineManager
from pipelines.request import GenerationRequest, RequestError
from studio.core import Studio
from studio.jobs.queue import CANCELLED, DONE, FAILED, INTERRUPTED, JobQueue
from studio.jobs.workers import LocalWorker
from studio.page.handlers.generate import take_fields
from studio.page.handlers.library import reuse_values
from studio.settings import Settings
from tests.media import decode_video

TINY = "test-tiny"
PROMPTS = ["a cat walks in the city", "the cat climbs a wall", "the cat sleeps on the roof"]
FRAMES, OVERLAP = 17, 5  # per window; windows share 5 frames (a whole latent frame and one)


@pytest.fixture
def studio(tmp_path, monkeypatch) -> Studio:
    monkeypatch.setenv("WAN_STUDIO_HOME", str(tmp_path / "home"))
    return Studio(Settings(model=TINY, output_dir=str(tmp_path / "outputs")), offline=True)


def finished(studio_or_queue, job_id: str, timeout: float = 120):
    jobs = getattr(studio_or_queue, "jobs", studio_or_queue)
    deadline = time.monotonic() + timeout
    while not jobs.get(job_id).finished:
        assert time.monotonic() < deadline, jobs.get(job_id).message
        time.sleep(0.05)
    return jobs.get(job_id)


def flat(window: int, frames: int, like: np.ndarray) -> np.ndarray:
    """Frames that say where they came from and survive the encoder: frame j of window w is flat grey
    20 + 60 w + 2 j."""
    levels = 20 + 60 * window + 2 * np.arange(frames)
    return np.broadcast_to(levels[:, None, None, None], like.shape).astype(np.uint8).copy()


def spy(studio: Studio, hold_at: str | None = None, marked: bool = False):
    """Each window's request and frames as the manager made them (with `marked`, replaced by `flat` frames
    before the take gets them); with `hold_at`, the window of that prompt waits at its first step until
    released: (made, reached, release)."""
    made, reached, release = [], threading.Event(), threading.Event()
    original = studio.manager.generate

    def generate(request, on_progress=None, cancel=None, **kwargs):
        def progress(p):
            if on_progress is not None:
                on_progress(p)
            if request.prompt == hold_at and p.stage == "denoise" and p.step == 1:
                reached.set()
                release.wait(60)

        result = original(request, progress, cancel, **kwargs)
        if marked:
            result = replace(result, frames=flat(len(made), len(result.frames), result.frames))
        made.append((request, result.frames.copy()))
        return result

    studio.manager.generate = generate
    return made, reached, release


def take(studio: Studio, prompts=PROMPTS, **fields):
    request = GenerationRequest(prompt="", steps=2, frames=FRAMES, seed=5, **fields)
    return studio.submit_take(request, prompts, overlap=OVERLAP)


def test_a_three_window_take_is_one_clip_of_the_planned_frames_with_every_window_in_its_sidecar(studio):
    made, _, _ = spy(studio, marked=True)
    job = finished(studio, take(studio).id)
    assert job.status == DONE, job.message
    assert "take of 3 windows" in job.message
    frames, fps = decode_video(Path(job.result))
    total = 3 * FRAMES - 2 * OVERLAP
    assert frames.shape[0] == total and fps == 8
    # the windows ran with their own prompts, in order, with the seeds drawn from the take's
    assert [r.prompt for r, _ in made] == PROMPTS
    assert [r.seed for r, _ in made] == [window_seed(5, n) for n in range(3)]
    # every frame of the file is the one it should be: each window's own frames in order, and where two windows
    # share frames, frame j of the overlap takes (j + 1) / 6 of the later window
    levels = [20 + 60 * w + 2 * np.arange(FRAMES, dtype=float) for w in range(3)]
    weights = np.arange(1, OVERLAP + 1) / (OVERLAP + 1)
    expected = list(levels[0][:-OVERLAP])
    for before, after in zip(levels[:-1], levels[1:], strict=True):
        expected += list(before[-OVERLAP:] * (1 - weights) + after[:OVERLAP] * weights)
        expected += list(after[OVERLAP:-OVERLAP] if after is not levels[-1] else after[OVERLAP:])
    assert np.abs(frames.reshape(total, -1).mean(axis=1) - np.array(expected)).max() < 1.5
    clip = studio.library.clip(Path(job.result).name)
    side = clip.sidecar
    assert [w["prompt"] for w in side["windows"]] == PROMPTS
    assert [w["overlap"] for w in side["windows"]] == [0, OVERLAP, OVERLAP]
    assert side["windows"][1]["conditioning"] == "clean-latents"  # TI2V's choice (the test model's layout)
    assert side["take"]["total_frames"] == total and side["take"]["stopped"] is None
    assert side["video"]["frames"] == total and side["duration_s"] == pytest.approx(total / 8, abs=1e-3)
    assert side["settings"]["take"] == {"prompts": PROMPTS, "seconds": None, "overlap": OVERLAP}
    # Reuse settings gives the take back to the form
    values = reuse_values(clip.settings)
    assert values["window_prompts"].splitlines() == PROMPTS and values["take_overlap"] == OVERLAP
    assert values["prompt"] == PROMPTS[0] and values["frames"] == FRAMES
    assert not studio.library.take_folder(job.id).exists()  # its windows' segments are gone once it is a clip


def test_a_take_in_seconds_has_the_length_asked(studio):
    request = GenerationRequest(prompt=PROMPTS[0], steps=2, frames=FRAMES, seed=3)
    job = finished(studio, studio.submit_take(request, [], seconds=4.0, overlap=OVERLAP).id)
    assert job.status == DONE, job.message
    frames, fps = decode_video(Path(job.result))
    assert abs(frames.shape[0] / fps - 4.0) <= 4 / fps  # the last window rounds up to whole latent frames
    assert studio.library.clip(Path(job.result).name).sidecar["settings"]["take"]["seconds"] == 4.0


def test_cancel_in_window_two_keeping_the_finished_windows_publishes_window_one_whole(studio):
    made, reached, release = spy(studio, hold_at=PROMPTS[1], marked=True)
    job = take(studio)
    assert reached.wait(60)
    assert studio.jobs.cancel(job.id, keep=True)
    release.set()
    job = finished(studio, job.id)
    assert job.status == CANCELLED and "were kept as" in job.message, job.message
    frames, _ = decode_video(Path(job.result))
    assert frames.shape[0] == FRAMES  # window 1 whole: its held frames handed on when the take stopped
    assert np.abs(frames.reshape(FRAMES, -1).mean(axis=1) - made[0][1][:, 0, 0, 0]).max() < 1.5  # window 1's
    side = studio.library.clip(Path(job.result).name).sidecar
    assert side["take"]["stopped"] == "cancelled" and side["take"]["kept_windows"] == 1
    assert [w["prompt"] for w in side["windows"]] == PROMPTS[:1]


def test_a_plain_cancel_in_window_two_publishes_nothing_and_leaves_no_segment(studio):
    _, reached, release = spy(studio, hold_at=PROMPTS[1])
    job = take(studio)
    assert reached.wait(60)
    assert studio.jobs.cancel(job.id)
    release.set()
    job = finished(studio, job.id)
    assert job.status == CANCELLED and "nothing was published" in job.message
    assert job.result is None and list_clips(studio.output_dir) == []
    assert not studio.library.take_folder(job.id).exists()


def test_a_restart_during_a_take_marks_it_interrupted_and_keeps_its_finished_windows(studio, tmp_path):
    made, reached, release = spy(studio, hold_at=PROMPTS[2], marked=True)
    job = take(studio)
    assert reached.wait(60)  # windows 1 and 2 are on disk; the studio "dies" now
    again = JobQueue([LocalWorker(PipelineManager(offline=True))], Library.open(studio.output_dir))
    restarted = again.get(job.id)
    assert restarted.status == INTERRUPTED and "2 of 3 windows finished and were kept" in restarted.message
    frames, _ = decode_video(Path(restarted.result))
    assert frames.shape[0] == 2 * FRAMES - OVERLAP  # both windows whole, window 2's held frames included
    assert abs(frames[-1].mean() - made[1][1][-1].mean()) < 1.5  # the last frame is window 2's own last
    side = again.library.clip(Path(restarted.result).name).sidecar
    assert side["take"]["stopped"] == "interrupted" and [w["prompt"] for w in side["windows"]] == PROMPTS[:2]
    studio.jobs.cancel(job.id)  # the first studio's run ends; it finds its folder gone and publishes nothing more
    release.set()
    assert finished(studio, job.id).status in (CANCELLED, FAILED)
    assert len(list_clips(studio.output_dir)) == 1


def test_refusals_name_the_field(studio):
    with pytest.raises(RequestError) as err:
        take_fields("[1, 2]", 0, 0)
    assert "window_prompts" in err.value.problems
    with pytest.raises(RequestError) as err:
        take_fields("", -3, 0)
    assert "seconds" in err.value.problems
    with pytest.raises(RequestError) as err:
        take_fields("a\nb", 0, 2.5)
    assert "overlap" in err.value.problems
    assert take_fields('["a", " b "]', "", None) == (["a", "b"], None, None)
    from pipelines.long_take import TakeError

    with pytest.raises(TakeError, match="at most 60 s"):
        studio.submit_take(GenerationRequest(prompt="x", frames=FRAMES), [], seconds=61)
    with pytest.raises(TakeError, match="overlap"):
        studio.submit_take(GenerationRequest(prompt="x", frames=FRAMES), ["a", "b"], overlap=3)


def test_the_cli_makes_a_take_of_one_window_per_prompt_and_refuses_a_bad_overlap_by_name(tmp_path, capsys):
    from tests.test_cli import cli_in_process, run_cli

    done = run_cli("--model", TINY, "--prompt", PROMPTS[0], "--prompt", PROMPTS[1], "--prompt", PROMPTS[2],
                   "--frames", str(FRAMES), "--overlap", str(OVERLAP), "--steps", "2", "--seed", "4",
                   "--out-dir", str(tmp_path), "--offline")  # fmt: skip
    assert done.returncode == 0, done.stderr
    path = Path(done.stdout.strip().splitlines()[-1])
    frames, fps = decode_video(path)
    assert frames.shape[0] == 3 * FRAMES - 2 * OVERLAP and fps == 8
    assert "window 3/3: " + PROMPTS[2] in done.stderr and "take of 3 windows" in done.stderr
    side = Library.open(tmp_path).clip(path.name).sidecar
    assert [w["prompt"] for w in side["windows"]] == PROMPTS and side["windows"][2]["seed"] == window_seed(4, 2)
    assert not list((tmp_path / ".jobs").glob("*.take"))  # the take's segments are gone
    code, stderr = cli_in_process(capsys, "--model", TINY, "--prompt", "a", "--seconds", "3", "--overlap", "3",
                                  "--frames", str(FRAMES), "--out-dir", str(tmp_path / "bad"), "--offline")  # fmt: skip
    assert code == 2 and "overlap" in stderr.lower() and "Traceback" not in stderr
    assert not (tmp_path / "bad").exists() or not list((tmp_path / "bad").glob("*.mp4"))


def test_segments_of_any_length_join_into_exactly_their_frames(tmp_path):
    """A take stopped after window 1 joins a segment of 8 frames and one of 1 (its held frame): with B-frames the
    encoder's start delay left gaps at the joint that players filled with repeated frames (11 decoded, not 9)."""
    from library.media import encode_mp4, join_mp4

    parts = [flat(0, 8, np.zeros((8, 64, 96, 3), np.uint8)), flat(1, 1, np.zeros((1, 64, 96, 3), np.uint8)),
             flat(2, 5, np.zeros((5, 64, 96, 3), np.uint8))]  # fmt: skip
    for n, part in enumerate(parts):
        encode_mp4(part, 8, tmp_path / f"{n}.mp4", joinable=True)
    join_mp4([tmp_path / f"{n}.mp4" for n in range(3)], tmp_path / "joined.mp4")
    frames, fps = decode_video(tmp_path / "joined.mp4")
    expected = np.concatenate([part[:, 0, 0, 0] for part in parts]).astype(float)
    assert fps == 8 and frames.shape[0] == 14
    assert np.abs(frames.reshape(14, -1).mean(axis=1) - expected).max() < 1.5


def test_the_long_take_limit_is_a_setting_from_60_to_300_seconds(studio):
    from studio.page.handlers import settings as sett

    def save(limit):
        s = studio.settings
        return sett.save(studio, s.model, s.memory_profile, s.precision, s.output_dir, "", "", "", take_limit=limit)[0]

    assert "Not saved" in save(20) and "60 to 300 seconds" in save(20)
    assert studio.settings.take_limit_s == 60
    assert save(120).startswith("Saved") and studio.settings.take_limit_s == 120
    request = GenerationRequest(prompt="x", frames=FRAMES)
    job = studio.submit_take(request, [], seconds=100)
    studio.jobs.cancel(job.id)  # planned, not made
    assert job.take.duration_s == pytest.approx(100, abs=0.5)


def test_a_crash_in_window_three_keeps_windows_one_and_two_and_says_why(studio):
    """Not a refusal but a bug or the machine (here a RuntimeError from the engine): the finished windows are
    published all the same, the job says why it failed, and the take's folder is gone."""
    original = studio.manager.generate

    def generate(request, on_progress=None, cancel=None, **kwargs):
        if request.prompt == PROMPTS[2]:
            raise RuntimeError("the GPU fell off the bus")
        return original(request, on_progress, cancel, **kwargs)

    studio.manager.generate = generate
    job = finished(studio, take(studio).id)
    assert job.status == FAILED and "Internal error" in job.message and "2 of 3 windows" in job.message, job.message
    frames, _ = decode_video(Path(job.result))
    assert frames.shape[0] == 2 * FRAMES - OVERLAP  # windows 1 and 2 whole
    assert studio.library.clip(Path(job.result).name).sidecar["take"]["stopped"] == "failed"
    assert not studio.library.take_folder(job.id).exists()


def test_a_take_that_cannot_be_published_keeps_its_windows_for_the_next_start(studio, monkeypatch):
    from library import LibraryError

    def full(*args, **kwargs):
        raise LibraryError("The output folder's disk is full.")

    monkeypatch.setattr(studio.library, "publish_take", full)
    job = finished(studio, take(studio).id)
    assert job.status == FAILED and "disk is full" in job.message and "restart the studio" in job.message
    assert studio.library.take_folder(job.id).is_dir()  # hours of work are not thrown away
    record = studio.library.jobs_dir / f"{job.id}.json"  # written just after the state changes in memory
    deadline = time.monotonic() + 30
    while json.loads(record.read_text())["status"] != FAILED:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    again = JobQueue([LocalWorker(PipelineManager(offline=True))], Library.open(studio.output_dir))
    kept = again.get(job.id)
    assert "3 of 3 windows finished and were kept" in kept.message, kept.message
    assert decode_video(Path(kept.result))[0].shape[0] == 3 * FRAMES - 2 * OVERLAP
    assert not studio.library.take_folder(job.id).exists()
