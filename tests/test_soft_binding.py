"""Durable Content Credentials: a copy of a clip stripped of its manifest, shrunk, cropped and re-encoded outside
the studio is still named by `python app.py verify` through the watermark its pixels carry (the soft binding),
and a mark the library does not hold is reported as a Wan Studio clip's; films carry their own mark."""

from __future__ import annotations

import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from library import ClipOptions, Library, Shot, Storyboard, provenance, watermark
from library.media import ffmpeg_exe
from library.post_models import TEST
from pipelines.request import GenerationRequest, validate_request

ROOT = Path(__file__).resolve().parents[1]
TINY = "test-tiny"


@pytest.fixture(scope="module")
def clips(manager, tmp_path_factory) -> dict[str, Path]:
    """Two clips with the example picture panning in place of the test model's noise (33 frames of 640x352, a
    real generation's sidecar): one saved with the defaults (watermark on, signed), one with the watermark off."""
    out = tmp_path_factory.mktemp("soft-binding")
    valid = validate_request(GenerationRequest(prompt="a valley at dawn", model=TINY, seed=3, steps=2, frames=33),
                             default_model=TINY)  # fmt: skip
    result = manager.generate(valid)
    base = np.asarray(Image.open(ROOT / "assets" / "example-landscape.png").convert("RGB").resize((640, 352)))
    frames = np.stack([np.roll(base, 2 * t, axis=1) for t in range(33)])
    library = Library.open(out)
    return {"marked": library.save_clip(replace(result, frames=frames)).video,
            "plain": library.save_clip(replace(result, frames=frames[::-1].copy()),
                                       ClipOptions(watermark=False)).video}  # fmt: skip


@pytest.fixture(scope="module")
def made(clips) -> Path:
    return clips["marked"]


def ffmpeg(*args: str) -> None:
    subprocess.run([ffmpeg_exe(), "-hide_banner", "-loglevel", "error", "-y", *args], check=True)


def verify(path: Path, library: Path) -> subprocess.CompletedProcess:
    """`python app.py verify`, as a user runs it."""
    return subprocess.run([sys.executable, "app.py", "verify", str(path), "--output-dir", str(library)], cwd=ROOT,
                          capture_output=True, text=True, timeout=300)  # fmt: skip


def verify_here(path: Path, library: Path, capsys) -> tuple[int, str]:
    """The same command in this process (no interpreter start): (exit code, what it printed)."""
    from studio.verify import main

    capsys.readouterr()
    code = main([str(path), "--output-dir", str(library)])
    return code, capsys.readouterr().out


def test_a_stripped_shrunk_cropped_reencoded_copy_is_named_by_verify(made, tmp_path, capsys):
    copy = tmp_path / "reposted.mp4"
    # outside the studio: half size, 90 % of the frame kept, CRF 28, every piece of metadata dropped
    ffmpeg("-i", str(made), "-vf", "scale=iw/2:ih/2,crop=iw*0.9:ih*0.9", "-c:v", "libx264", "-crf", "28",
           "-map_metadata", "-1", str(copy))  # fmt: skip
    assert not provenance.verify_file(copy).has_manifest  # the Content Credentials are gone
    done = verify(copy, made.parent)
    assert done.returncode == 0, done.stdout + done.stderr
    sidecar = Library.open(made.parent).clip(made.name).sidecar
    assert f"This looks like clip {made.name} made by this studio on {sidecar['created_at'][:10]}" in done.stdout
    assert f"seed {sidecar['settings']['seed']}" in done.stdout and sidecar["model_name"] in done.stdout
    # the same copy checked against another library: only that a Wan Studio clip carried it
    elsewhere = tmp_path / "other-library"
    elsewhere.mkdir()
    code, said = verify_here(copy, elsewhere, capsys)
    assert code == 2 and "Watermark of a Wan Studio clip, payload " + sidecar["provenance"]["watermark"] in said


def test_an_unmarked_file_names_nothing(tmp_path, capsys):
    plain = tmp_path / "plain.mp4"
    ffmpeg("-f", "lavfi", "-i", "testsrc=size=320x240:rate=24:duration=2", "-c:v", "libx264", "-pix_fmt",
           "yuv420p", str(plain))  # fmt: skip
    code, said = verify_here(plain, tmp_path, capsys)
    assert code == 2 and "Watermark: none found." in said and "looks like" not in said


def test_a_film_of_marked_shots_binds_their_marks_and_a_copy_names_the_shot(clips, made, tmp_path, capsys):
    library = Library.open(made.parent)
    # the marked clip among another (unmarked) shot, with a crossfade between them
    board = Storyboard(shots=[Shot(clips["plain"].name, transition="crossfade"), Shot(made.name)], title="Dawn")
    film = library.export_film(board, mark=True)
    mark = library.clip(made.name).sidecar["provenance"]["watermark"]
    assert provenance.verify_file(film).declared["watermarks"] == [mark]  # bound, not covered by a second mark
    copy = tmp_path / "film-copy.mp4"
    ffmpeg("-i", str(film), "-c:v", "libx264", "-crf", "23", "-map_metadata", "-1", str(copy))
    _, said = verify_here(copy, made.parent, capsys)
    assert f"This looks like clip {made.name}" in said, said


def test_a_film_of_unmarked_shots_carries_its_own_mark_and_names_itself(clips, tmp_path, capsys):
    library = Library.open(clips["plain"].parent)
    film = library.export_film(Storyboard(shots=[Shot(clips["plain"].name)]), mark=True)
    record = (film.parent / f"{film.name}.json").read_text()
    payload = provenance.verify_file(film).declared["watermark"]
    assert payload in record  # the record and the soft binding name the same mark
    copy = tmp_path / "film-copy.mp4"
    ffmpeg("-i", str(film), "-c:v", "libx264", "-crf", "23", "-map_metadata", "-1", str(copy))
    _, said = verify_here(copy, clips["plain"].parent, capsys)
    assert f"This looks like the film {film.name}" in said, said


@pytest.fixture(scope="module")
def small(manager, tmp_path_factory) -> Library:
    """A library of two small clips (256x144, 9 frames of the example picture panning; the mark still reads at
    this size), one marked and one not, and the test interpolator as its default: post-production is quick."""
    library = Library.open(tmp_path_factory.mktemp("small"))
    library.post_models.default = TEST
    valid = validate_request(GenerationRequest(prompt="a valley", model=TINY, seed=5, steps=2, frames=9),
                             default_model=TINY)  # fmt: skip
    result = manager.generate(valid)
    base = np.asarray(Image.open(ROOT / "assets" / "example-landscape.png").convert("RGB").resize((256, 144)))
    frames = np.stack([np.roll(base, 2 * t, axis=1) for t in range(9)])
    library.save_clip(replace(result, frames=frames))
    library.save_clip(replace(result, frames=frames[::-1].copy()), ClipOptions(watermark=False))
    return library


def clip_of(library: Library, marked: bool) -> str:
    return next(c.name for c in library.clips() if ("watermark" in c.sidecar.get("provenance", {})) == marked)


def test_a_smoothed_copy_of_an_unmarked_clip_carries_its_own_mark_in_its_pixels(small):
    files = small.post(small.check_post("interpolate", clip_of(small, marked=False), TEST, factor=2), "cpu")
    payload = provenance.verify_file(files.video).declared["watermark"]
    assert small.clip(files.video.name).sidecar["provenance"]["watermark"] == payload
    reading = watermark.read_file(str(files.video))  # written frame by frame: each one marked on its way
    assert reading is not None and f"{reading.payload:08x}" == payload


def test_a_smoothed_copy_of_a_marked_clip_carries_its_mark_and_verify_names_the_source(small, capsys):
    source = clip_of(small, marked=True)
    files = small.post(small.check_post("interpolate", source, TEST, factor=2), "cpu")
    mark = small.clip(source).sidecar["provenance"]["watermark"]
    record = small.clip(files.video.name).sidecar["provenance"]
    assert record["watermark"] == mark and record["watermark_of"] == source
    assert provenance.verify_file(files.video).declared["watermark"] == mark  # bound in the copy's manifest too
    _, said = verify_here(files.video, small.root, capsys)  # the copy's pixels lead to the source, not the copy
    assert f"This looks like clip {source}" in said, said
