"""Clip files: never overwritten, never half-written."""

from __future__ import annotations

import os
import time

import numpy as np
import pytest

from pipelines import video
from pipelines.video import TMP_PREFIX, clean_temporaries, encode_mp4, read_sidecar, slugify, write_clip
from tests.media import decode_video


def frames(n: int = 5, value: int = 100) -> np.ndarray:
    return np.full((n, 32, 48, 3), value, np.uint8)


def test_same_name_twice_gives_two_files_and_keeps_the_first(out_dir):
    first = write_clip(frames(value=50), 8, out_dir, "same", {"n": 1})
    second = write_clip(frames(value=200), 8, out_dir, "same", {"n": 2})
    assert first.video != second.video and second.video.name.endswith("-2.mp4")
    assert read_sidecar(first.video)["n"] == 1 and read_sidecar(second.video)["n"] == 2
    assert abs(decode_video(first.video)[0].mean() - 50) < 3
    assert abs(decode_video(second.video)[0].mean() - 200) < 3


def test_a_failed_encode_leaves_nothing_behind(out_dir, monkeypatch):
    def broken(*args, **kwargs):
        path = args[2]
        path.write_bytes(b"half an mp4")
        raise RuntimeError("ffmpeg could not encode the clip: disk full")

    monkeypatch.setattr(video, "encode_mp4", broken)
    with pytest.raises(RuntimeError, match="disk full"):
        write_clip(frames(), 8, out_dir, "broken", {})
    assert list(out_dir.iterdir()) == []


def test_a_crash_after_encoding_never_publishes_a_clip_without_sidecar(out_dir, monkeypatch):
    monkeypatch.setattr(video.json, "dumps", lambda *a, **k: (_ for _ in ()).throw(OSError("no space left")))
    with pytest.raises(OSError):
        write_clip(frames(), 8, out_dir, "crash", {})
    # the MP4 was linked, the sidecar was not: history ignores clips without sidecars, and no temp remains
    assert not [p for p in out_dir.iterdir() if p.name.startswith(TMP_PREFIX)]
    assert not list(out_dir.glob("*.json"))


def test_old_temporaries_are_cleaned(out_dir):
    out_dir.mkdir(parents=True)
    stale = out_dir / f"{TMP_PREFIX}123.mp4"
    fresh = out_dir / f"{TMP_PREFIX}456.mp4"
    stale.write_bytes(b"x")
    fresh.write_bytes(b"x")
    old = time.time() - 7200
    os.utime(stale, (old, old))
    assert clean_temporaries(out_dir) == 1
    assert not stale.exists() and fresh.exists()


def test_encoder_refuses_what_browsers_cannot_play(tmp_path):
    with pytest.raises(ValueError, match="even dimensions"):
        encode_mp4(np.zeros((3, 31, 48, 3), np.uint8), 8, tmp_path / "odd.mp4")
    with pytest.raises(ValueError, match="no frames"):
        encode_mp4(np.zeros((0, 32, 48, 3), np.uint8), 8, tmp_path / "empty.mp4")


def test_slugs_are_safe_file_names():
    assert slugify("A cat / on the ../roof: 日本 !") == "a-cat-on-the-roof"
    assert slugify("日本") == "clip"
