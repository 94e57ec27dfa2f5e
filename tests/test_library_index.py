"""The clip index: listing and finding stay correct when the folder changes outside the studio, a damaged
sidecar breaks nothing, and a look at one clip reads only that clip's sidecar."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from library import index as index_module
from library.index import ClipIndex
from pipelines import APP_NAME


def _clip(folder: Path, stem: str, prompt: str, created: str, app: str = APP_NAME) -> Path:
    video = folder / f"{stem}.mp4"
    video.write_bytes(b"not decoded by the index")
    video.with_suffix(".json").write_text(
        json.dumps({"app": app, "created_at": created, "settings": {"prompt": prompt}})
    )
    return video


@pytest.fixture
def reads(monkeypatch) -> list[str]:
    """The sidecars the index reads, by file name, in order."""
    seen: list[str] = []
    real = index_module.read_json

    def counting(path):
        seen.append(Path(path).name)
        return real(path)

    monkeypatch.setattr(index_module, "read_json", counting)
    return seen


def test_newest_first_and_only_changed_sidecars_are_read_again(tmp_path, reads):
    _clip(tmp_path, "a", "old", "2026-01-01T10:00:00")
    _clip(tmp_path, "b", "new", "2026-01-02T10:00:00")
    index = ClipIndex(tmp_path)
    assert [c.name for c in index.clips()] == ["b.mp4", "a.mp4"]
    assert sorted(reads) == ["a.json", "b.json"]
    reads.clear()
    assert [c.name for c in index.clips()] == ["b.mp4", "a.mp4"]
    assert reads == []  # nothing changed: nothing read

    # edited outside the studio: a new prompt, and a newer time stamp so the order changes too
    sidecar = tmp_path / "a.json"
    sidecar.write_text(json.dumps({"app": APP_NAME, "created_at": "2026-01-03T10:00:00", "settings": {"prompt": "x"}}))
    os.utime(sidecar, ns=(sidecar.stat().st_mtime_ns + 10**9,) * 2)
    clips = index.clips()
    assert [c.name for c in clips] == ["a.mp4", "b.mp4"] and clips[0].settings["prompt"] == "x"
    assert reads == ["a.json"]


def test_added_trashed_and_half_published_clips(tmp_path):
    index = ClipIndex(tmp_path)
    assert index.clips() == []
    _clip(tmp_path, "a", "one", "2026-01-01T10:00:00")
    assert [c.name for c in index.clips()] == ["a.mp4"]
    (tmp_path / "a.mp4").unlink()  # trashed, or a sidecar whose video is not published yet
    assert index.clips() == [] and index.find("a.mp4") is None
    _clip(tmp_path, "b", "two", "2026-01-01T10:00:00")
    (tmp_path / "b.json").unlink()  # a video without its sidecar is not a clip of the library
    assert index.find("b.mp4") is None and index.clips() == []


def test_a_damaged_or_foreign_sidecar_is_left_out_and_read_again_once_mended(tmp_path, reads):
    _clip(tmp_path, "good", "fine", "2026-01-01T10:00:00")
    _clip(tmp_path, "other", "theirs", "2026-01-01T10:00:00", app="SomeOtherApp")
    (tmp_path / "bad.mp4").write_bytes(b"x")
    (tmp_path / "bad.json").write_text("{ not json")
    index = ClipIndex(tmp_path)
    assert [c.name for c in index.clips()] == ["good.mp4"]
    assert index.find("bad.mp4") is None and index.find("other.mp4") is None
    reads.clear()
    index.clips()
    assert reads == []  # a damaged sidecar is not re-read until it changes
    (tmp_path / "bad.json").write_text(json.dumps({"app": APP_NAME, "created_at": "2026-02-01", "settings": {}}))
    assert [c.name for c in index.clips()] == ["bad.mp4", "good.mp4"]


def test_finding_one_clip_reads_only_its_own_sidecar(tmp_path, reads):
    for n in range(30):
        _clip(tmp_path, f"c{n:02d}", f"prompt {n}", f"2026-01-01T10:00:{n:02d}")
    index = ClipIndex(tmp_path)
    found = index.find("c07.mp4")
    assert found is not None and found.settings["prompt"] == "prompt 7"
    assert reads == ["c07.json"]
    reads.clear()
    assert index.find("c07.mp4").settings["prompt"] == "prompt 7" and reads == []
    for bad in ("../c07.mp4", "c07.json", "/etc/passwd", "", None, ".hidden.mp4"):
        assert index.find(bad) is None
