"""Clip files: never overwritten, never half-written."""

from __future__ import annotations

import os
import time

import numpy as np
import pytest

from library import clips
from library.clips import read_sidecar, write_clip
from library.files import clean_temporaries
from library.layout import TMP_PREFIX
from library.media import encode_mp4, slugify
from tests.media import decode_video


def frames(n: int = 5, value: int = 100) -> np.ndarray:
    return np.full((n, 32, 48, 3), value, np.uint8)


def test_same_name_twice_gives_two_files_and_keeps_the_first(out_dir):
    # one stamp for both: the name's clock is fixed, so two writes straddling a second still share a stem
    first = write_clip(frames(value=50), 8, out_dir, "same", {"n": 1}, stamp="20261126-120000")
    second = write_clip(frames(value=200), 8, out_dir, "same", {"n": 2}, stamp="20261126-120000")
    assert first.video != second.video and second.video.name.endswith("-2.mp4")
    assert read_sidecar(first.video)["n"] == 1 and read_sidecar(second.video)["n"] == 2
    assert abs(decode_video(first.video)[0].mean() - 50) < 3
    assert abs(decode_video(second.video)[0].mean() - 200) < 3


def test_a_failed_encode_leaves_nothing_behind(out_dir, monkeypatch):
    def broken(*args, **kwargs):
        path = args[2]
        path.write_bytes(b"half an mp4")
        raise RuntimeError("ffmpeg could not encode the clip: disk full")

    monkeypatch.setattr(clips, "encode_mp4", broken)
    with pytest.raises(RuntimeError, match="disk full"):
        write_clip(frames(), 8, out_dir, "broken", {})
    assert list(out_dir.iterdir()) == []


def test_a_crash_after_encoding_never_publishes_a_clip_without_sidecar(out_dir, monkeypatch):
    def no_space(path, data):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(clips, "_write_text", no_space)
    with pytest.raises(Exception, match="The output folder is full"):
        write_clip(frames(), 8, out_dir, "crash", {})
    # the sidecar is published first, so its failure publishes nothing at all, and no temporary remains
    assert list(out_dir.iterdir()) == []


def test_a_process_killed_between_sidecar_and_video_leaves_nothing_after_the_next_start(out_dir, monkeypatch):
    from library import Library
    from library.clips import list_clips, save_clip
    from library.files import link_no_overwrite
    from tests.test_engine import valid

    class Killed(BaseException):  # like SIGKILL: no except clause runs, no clean-up happens
        pass

    def killed_before_the_video(tmp, final):
        if final.suffix == ".mp4":
            raise Killed()
        return link_no_overwrite(tmp, final)

    kept = save_clip(fake_result(valid(prompt="kept")), out_dir)  # a complete clip, untouched throughout
    monkeypatch.setattr(clips, "link_no_overwrite", killed_before_the_video)
    with pytest.raises(Killed):
        save_clip(fake_result(valid(prompt="half")), out_dir)
    monkeypatch.undo()
    half = [p for p in out_dir.glob("*half*")]
    assert [p.suffix for p in half] == [".json"]  # the sidecar was published, the video never was
    assert [c.video for c in list_clips(out_dir)] == [kept.video]  # the library never shows it
    old = time.time() - 7200
    os.utime(half[0], (old, old))
    Library.open(out_dir)  # the next start
    assert not list(out_dir.glob("*half*")) and kept.video.exists() and kept.sidecar.exists()


def fake_result(request):
    from pipelines.manager import GenerationResult

    return GenerationResult(request, frames(), {"total_s": 1.0}, "cpu", "cpu", "test")


def test_old_temporaries_are_cleaned_anywhere_in_the_folder(out_dir):
    (out_dir / "films").mkdir(parents=True)
    stale = out_dir / f"{TMP_PREFIX}123.mp4"
    stale_film = out_dir / "films" / f"{TMP_PREFIX}124-0.mp4"  # left by a killed export
    fresh = out_dir / f"{TMP_PREFIX}456.mp4"
    for path in (stale, stale_film, fresh):
        path.write_bytes(b"x")
    old = time.time() - 7200
    os.utime(stale, (old, old))
    os.utime(stale_film, (old, old))
    assert clean_temporaries(out_dir) == 2
    assert not stale.exists() and not stale_film.exists() and fresh.exists()


def test_a_recent_temporary_is_cleaned_once_the_process_writing_it_is_gone(out_dir):
    import subprocess
    import sys

    from library import files

    out_dir.mkdir(parents=True)
    exited = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    here = f"{TMP_PREFIX}{files.MACHINE_TAG}"
    gone = out_dir / f"{here}-{int(exited.stdout)}-1.mp4"  # its writer was killed, say, a minute ago
    earlier_run = out_dir / f"{here}-{os.getpid()}-2.mp4"  # this process id, but an earlier run's
    ours = files.temporary(out_dir, ".mp4")  # a write of this process, under way
    # another container or machine sharing the folder: its process ids mean nothing here, it may be writing
    elsewhere = (
        out_dir / f"{TMP_PREFIX}{'0' * 8 if files.MACHINE_TAG != '0' * 8 else '1' * 8}-{int(exited.stdout)}-3.mp4"
    )
    for path in (gone, earlier_run, ours, elsewhere):
        path.write_bytes(b"x")
    before = files._STARTED - 60
    os.utime(earlier_run, (before, before))
    os.utime(elsewhere, (before, before))
    assert clean_temporaries(out_dir) == 2
    assert not gone.exists() and not earlier_run.exists() and ours.exists() and elsewhere.exists()


def test_encoder_refuses_what_browsers_cannot_play(tmp_path):
    with pytest.raises(ValueError, match="even dimensions"):
        encode_mp4(np.zeros((3, 31, 48, 3), np.uint8), 8, tmp_path / "odd.mp4")
    with pytest.raises(ValueError, match="no frames"):
        encode_mp4(np.zeros((0, 32, 48, 3), np.uint8), 8, tmp_path / "empty.mp4")


def test_slugs_are_safe_file_names():
    assert slugify("A cat / on the ../roof: 日本 !") == "a-cat-on-the-roof"
    assert slugify("日本") == "clip"
