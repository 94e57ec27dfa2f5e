"""A full disk, for real: the output folder on a small tmpfs (CI runs as root). Mid-job, at submit and
during an export, the user gets a plain message, nothing partial is published, and the worker goes on."""

from __future__ import annotations

import shutil
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from library import Library, LibraryError, Shot, Storyboard
from library.clips import list_clips, write_clip
from library.layout import TMP_PREFIX
from pipelines import APP_NAME
from pipelines.errors import UserError
from pipelines.request import GenerationRequest, validate_request
from studio.jobs.queue import CANCELLED, DONE, FAILED, JobQueue, default_generate
from tests.tmpfs import remount, tmpfs

TINY = "test-tiny"


@pytest.fixture
def small_disk(tmp_path):
    """A 6 MB tmpfs; skipped where mounting is not allowed."""
    with tmpfs(tmp_path / "disk", "size=6m") as mount:
        yield mount


def fill(disk: Path, leave_mb: float) -> Path:
    """A filler file leaving about `leave_mb` free."""
    filler = disk / "filler.bin"
    free = shutil.disk_usage(disk).free
    with open(filler, "wb") as f:
        f.write(b"\0" * max(0, int(free - leave_mb * 2**20)))
    return filler


def request(**fields):
    fields.setdefault("prompt", "a red cat")
    fields.setdefault("model", TINY)
    return validate_request(GenerationRequest(**fields), default_model=TINY)


def wait_until(predicate, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def leftovers(folder: Path) -> list[Path]:
    """Temporary files, and videos published without their sidecar."""
    partial = [p for p in folder.rglob(f"{TMP_PREFIX}*")]
    orphans = [p for p in folder.glob("*.mp4") if not p.with_suffix(".json").exists()]
    return partial + orphans


@pytest.mark.parametrize("left_mb", [1.2, 0.2], ids=["while-publishing", "while-encoding"])
def test_a_full_disk_mid_job_fails_the_job_plainly_and_the_worker_goes_on(manager, small_disk, monkeypatch, left_mb):
    from library import clips

    library = Library.open(small_disk / "outputs")
    jobs = JobQueue(manager, library)
    # the check before the work passes, so the writing itself runs out of space (noise does not compress)
    monkeypatch.setattr(clips, "check_room", lambda *a: None)

    def fill_then_generate(manager_, request_, report, cancel):
        fill(small_disk, leave_mb=left_mb)  # the disk fills while the job runs
        return default_generate(manager_, request_, report, cancel)

    jobs.workers[0].generate_fn = fill_then_generate
    job = jobs.submit(request(seed=1, frames=33, width=256, height=256, steps=2))
    wait_until(lambda: jobs.get(job.id).finished)
    failed = jobs.get(job.id)
    assert failed.status == FAILED and failed.message.startswith("The output folder is full"), failed.message
    assert leftovers(library.root) == [] and list_clips(library.root) == []

    (small_disk / "filler.bin").unlink()
    monkeypatch.undo()
    jobs.workers[0].generate_fn = default_generate
    again = jobs.submit(request(seed=2))
    wait_until(lambda: jobs.get(again.id).finished)
    assert jobs.get(again.id).status == DONE and len(list_clips(library.root)) == 1


def test_a_clip_that_cannot_fit_is_refused_before_encoding(small_disk):
    out = small_disk / "outputs"
    out.mkdir()
    fill(small_disk, leave_mb=0.3)
    noise = np.random.default_rng(0).integers(0, 255, (33, 256, 256, 3), dtype=np.uint8)
    with pytest.raises(LibraryError, match=r"The output folder is full: \d+ MB free .* the clip needs about"):
        write_clip(noise, 8, out, "big", {"app": APP_NAME})
    assert list(out.iterdir()) == []


def test_a_submit_whose_record_cannot_be_written_leaves_no_phantom_job(manager, small_disk):
    library = Library.open(small_disk / "outputs")
    jobs = JobQueue(manager, library)
    fill(small_disk, leave_mb=0.0)
    with pytest.raises(LibraryError, match="The output folder is full"):
        jobs.submit(request(seed=3, image=np.full((64, 96, 3), 80, np.uint8)))
    assert jobs.jobs() == [] and not list(library.jobs_dir.iterdir())


def test_a_nearly_full_disk_during_an_export_publishes_nothing(small_disk):
    out = small_disk / "outputs"
    frames = np.random.default_rng(1).integers(0, 255, (16, 128, 128, 3), dtype=np.uint8)
    names = [write_clip(frames, 8, out, f"shot{i}", {"app": APP_NAME}).video.name for i in range(2)]
    library = Library.open(out)
    fill(small_disk, leave_mb=0.2)
    board = Storyboard(shots=[Shot(n) for n in names], fps=24)  # interpolation writes intermediates too
    with pytest.raises(LibraryError, match="full"):
        library.export_film(board)
    films = out / "films"
    assert not films.exists() or list(films.iterdir()) == []


def test_a_cancelled_export_leaves_no_film_and_the_film_worker_goes_on(manager, tmp_path):
    out = tmp_path / "outputs"
    frames = np.zeros((16, 64, 96, 3), np.uint8)
    name = write_clip(frames, 8, out, "shot", {"app": APP_NAME, "duration_s": 2.0}).video.name
    library = Library.open(out)
    jobs = JobQueue(manager, library)
    started = threading.Event()
    real_export = library.export_film

    def slow_export(board, on_progress=None, sign=True, cancel=None, mark=False):
        def progress(fraction, message):
            started.set()
            cancel.wait(10)  # hold the export until the test cancels it
            on_progress(fraction, message)

        return real_export(board, on_progress=progress, sign=sign, cancel=cancel, mark=mark)

    library.export_film = slow_export
    job = jobs.submit_film(Storyboard(shots=[Shot(name)] * 3, fps=24))
    assert started.wait(60)
    assert jobs.cancel(job.id)
    wait_until(lambda: jobs.get(job.id).finished)
    assert jobs.get(job.id).status == CANCELLED and "no film was written" in jobs.get(job.id).message
    films = out / "films"
    assert not films.exists() or list(films.iterdir()) == []
    library.export_film = real_export
    ok = jobs.submit_film(Storyboard(shots=[Shot(name)]))
    wait_until(lambda: jobs.get(ok.id).finished)
    assert jobs.get(ok.id).status == DONE and Path(jobs.get(ok.id).result).is_file()


@pytest.fixture
def studio_on_a_disk(tmp_path, monkeypatch):
    """An in-process studio whose output folder is on its own 20 MB tmpfs, which a test can turn read-only."""
    from studio.core import Studio
    from studio.settings import Settings

    monkeypatch.setenv("WAN_STUDIO_HOME", str(tmp_path / "home"))
    with tmpfs(tmp_path / "disk", "size=20m") as mount:
        yield Studio(Settings(model=TINY, output_dir=str(mount / "outputs")), offline=True), mount
        remount(mount, "rw")


def files_in(folder: Path) -> set[str]:
    return {str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file()}


def in_background(run) -> tuple[threading.Thread, list]:
    """`run()` in a thread, its result (or the exception it raised) put in the list it returns."""
    outcome: list = []

    def target():
        try:
            outcome.append(run())
        except Exception as err:  # noqa: BLE001 (the test looks at it)
            outcome.append(err)

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    return thread, outcome


def collect(stream) -> list:
    import asyncio

    async def run():
        return [update async for update in stream]

    return asyncio.run(run())


def test_an_output_folder_turned_read_only_under_a_generation_is_named_in_the_page(studio_on_a_disk, monkeypatch):
    from studio.page.handlers import generate
    from tests.test_jobs import paused_on_entry

    studio, disk = studio_on_a_disk
    root = studio.library.root
    held, writing, release = paused_on_entry(studio.library.save_clip)
    monkeypatch.setattr(studio.library, "save_clip", held)
    form = ("a cat", "", "96x64", 5, 2, 5, 7, "[]", False)
    page, updates = in_background(lambda: collect(generate.text_to_video_in_page(studio, *form)))
    assert writing.wait(60)  # denoised and decoded; the clip is about to be written
    before = files_in(root)
    remount(disk, "ro")  # the drive is remounted read-only under the running studio
    release.set()
    page.join(60)
    status = updates[0][-1][1]
    expected = f"The output folder '{root}' cannot be written: Read-only file system."
    assert status == f"**Failed** — {expected}", status
    assert files_in(root) == before and studio.library.clips() == []  # nothing partial, nothing published
    # a new generation is refused at once, with the same sentence
    refused = collect(generate.text_to_video_in_page(studio, *form))
    assert len(refused) == 1 and refused[0][1].startswith("**Not started** — The output folder"), refused
    assert "cannot be written: Read-only file system." in refused[0][1]

    remount(disk, "rw")
    monkeypatch.undo()
    again = collect(generate.text_to_video_in_page(studio, *form))
    assert again[-1][1].startswith("**Done**") and len(studio.library.clips()) == 1  # the studio goes on


def test_an_output_folder_turned_read_only_under_an_export_is_named_in_the_page(studio_on_a_disk, monkeypatch):
    from studio.page.handlers import storyboard
    from tests.test_jobs import paused_on_entry

    studio, disk = studio_on_a_disk
    root = studio.library.root
    frames = np.zeros((16, 64, 96, 3), np.uint8)
    name = write_clip(frames, 8, root, "shot", {"app": APP_NAME, "duration_s": 2.0}).video.name
    (root / "films").mkdir()  # as after an earlier export
    held, exporting, release = paused_on_entry(studio.library.export_film)
    monkeypatch.setattr(studio.library, "export_film", held)
    base = storyboard.reload(studio)[-1]
    values = storyboard.values_of(studio, Storyboard(shots=[Shot(name)], fps=24))
    page, outcome = in_background(lambda: collect(storyboard.export(studio, base, *values)))
    assert exporting.wait(60)  # the film job has started
    before = files_in(root)
    remount(disk, "ro")
    release.set()
    page.join(60)
    (failure,) = outcome
    expected = f"The output folder '{root / 'films'}' cannot be written: Read-only file system."
    assert isinstance(failure, UserError) and str(failure) == expected, failure
    assert files_in(root) == before and list((root / "films").iterdir()) == []
    film_job = next(job for job in studio.jobs.jobs() if job.label.startswith("Film:"))
    assert film_job.status == FAILED and film_job.message == expected
    # exporting again saves the storyboard first: refused with the folder's name, not an internal error
    base = storyboard.reload(studio)[-1]
    values = storyboard.values_of(studio, Storyboard(shots=[Shot(name)], title="Again"))
    with pytest.raises(LibraryError, match=rf"The output folder '{root}' cannot be written: Read-only file system"):
        collect(storyboard.export(studio, base, *values))
