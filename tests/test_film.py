"""Films from clips: decoded back and measured."""

from __future__ import annotations

import math
import os
import struct
import subprocess
import threading
import wave
from pathlib import Path

import numpy as np
import pytest

from library import Library
from library.clips import write_clip
from library.film import export_film, film_duration
from library.storyboard import Shot, Storyboard, StoryboardError
from pipelines import APP_NAME
from tests.media import decode_video, probe

RED, BLUE = (220, 30, 30), (30, 30, 220)


def make_clip(out_dir: Path, name: str, colour, size=(96, 64), frames=16, fps=8) -> str:
    pixels = np.zeros((frames, size[1], size[0], 3), np.uint8)
    pixels[:] = colour
    files = write_clip(pixels, fps, out_dir, name, {"app": APP_NAME, "settings": {"prompt": name}})
    return files.video.name


def sine_wav(path: Path, seconds: float = 1.0, rate: int = 44100, hz: float = 440) -> Path:
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        samples = (int(12000 * math.sin(2 * math.pi * hz * i / rate)) for i in range(int(seconds * rate)))
        w.writeframes(b"".join(struct.pack("<h", s) for s in samples))
    return path


def kept(out_dir: Path, path: Path) -> str:
    """An audio file as the page keeps an upload: copied into the library, named by its file name."""
    return Library(out_dir).keep_audio(path)


@pytest.fixture
def two_clips(out_dir):
    return make_clip(out_dir, "red", RED), make_clip(out_dir, "blue-portrait", BLUE, size=(64, 96))


def test_crossfade_letterbox_and_audio(out_dir, two_clips, tmp_path):
    red, blue = two_clips
    board = Storyboard(
        shots=[Shot(red, transition="crossfade", crossfade_s=0.5), Shot(blue)],
        audio=kept(out_dir, sine_wav(tmp_path / "tone.wav")),
    )
    assert film_duration(board, out_dir) == pytest.approx(3.5)
    progress = []
    film = export_film(board, out_dir, on_progress=lambda f, m: progress.append(f))
    frames, fps = decode_video(film)
    assert fps == 8 and frames.shape[1:3] == (64, 96)
    assert abs(frames.shape[0] - 28) <= 1  # 2 s + 2 s - 0.5 s at 8 fps
    centre = frames[:, 32, 48].astype(int)
    assert np.abs(centre[2] - RED).max() < 25  # the red shot
    assert np.abs(centre[-2] - BLUE).max() < 25  # the blue shot
    middle = centre[14]  # t = 1.75 s, the crossfade's midpoint
    assert 60 < middle[0] < 190 and 60 < middle[2] < 190, middle
    # the portrait shot is letterboxed: black bars left and right, never stretched
    last = frames[-2].astype(int)
    assert last[32, 2].max() < 20 and last[32, 93].max() < 20
    streams = {s["codec_type"]: s for s in probe(film)["streams"]}
    assert streams["video"]["codec_name"] == "h264" and streams["video"]["pix_fmt"] == "yuv420p"
    assert streams["audio"]["codec_name"] == "aac"
    assert float(streams["audio"]["duration"]) == pytest.approx(3.5, abs=0.1)  # looped 1 s tone
    assert progress and progress[-1] == pytest.approx(1.0, abs=0.05)


def test_webm_export_has_vp9_and_opus(out_dir, two_clips, tmp_path):
    board = Storyboard(shots=[Shot(two_clips[0])], audio=kept(out_dir, sine_wav(tmp_path / "tone.wav")), format="webm")
    film = export_film(board, out_dir)
    assert film.suffix == ".webm"
    codecs = {s["codec_type"]: s["codec_name"] for s in probe(film)["streams"]}
    assert codecs == {"video": "vp9", "audio": "opus"}
    assert decode_video(film)[0].shape[0] == 16
    # the film and its record, no temporary audio or video left
    assert sorted(p.name for p in (out_dir / "films").iterdir()) == [film.name, film.name + ".json"]


def test_trim_and_title_card(out_dir, two_clips):
    red, blue = two_clips
    board = Storyboard(shots=[Shot(red, start_s=0.5, end_s=1.5), Shot(blue, end_s=1.0)], title="The End", title_s=1.0)
    film = export_film(board, out_dir)
    frames, _ = decode_video(film)
    assert frames.shape[0] == 24  # 1 s title + 1 s + 1 s at 8 fps
    assert frames[3].mean() < 80  # the dark title card
    assert np.abs(frames[12, 32, 48].astype(int) - RED).max() < 25


def test_exports_never_overwrite_and_the_storyboard_persists(out_dir, two_clips):
    red, _ = two_clips
    board = Storyboard(shots=[Shot(red)], title="same")
    first, second = export_film(board, out_dir), export_film(board, out_dir)
    assert first != second and first.exists() and second.exists()
    store = Library(out_dir).storyboard
    stored = store.save(board)
    assert Library(out_dir).storyboard.load() == stored and stored.shots == board.shots and stored.revision == 1


@pytest.mark.parametrize(
    "make_board, fragment",
    [
        (lambda red, p: Storyboard(), "empty"),
        (lambda red, p: Storyboard(shots=[Shot("missing.mp4")]), "not in the library"),
        (lambda red, p: Storyboard(shots=[Shot(red, start_s=1.0, end_s=1.0)]), "must come after the start"),
        (lambda red, p: Storyboard(shots=[Shot(red, start_s=1.0, end_s=9.0)]), "trim"),
        (lambda red, p: Storyboard(shots=[Shot(red)], audio=p), "could not be read"),
        (lambda red, p: Storyboard(shots=[Shot(red)], audio="elsewhere.wav"), "not among the storyboard's audio"),
    ],
)
def test_bad_storyboards_say_why_and_write_nothing(out_dir, two_clips, tmp_path, make_board, fragment):
    broken_audio = tmp_path / "broken.mp3"
    broken_audio.write_bytes(b"this is not audio")
    with pytest.raises(StoryboardError, match=fragment):
        export_film(make_board(two_clips[0], kept(out_dir, broken_audio)), out_dir)
    films = out_dir / "films"
    assert not films.exists() or not any(films.iterdir())


def moving_clip(out_dir: Path, name: str, frames: int = 16, fps: int = 16) -> str:
    """A white square sliding right one step per frame, for motion interpolation."""
    pixels = np.zeros((frames, 64, 96, 3), np.uint8)
    for i in range(frames):
        pixels[i, 24:40, 4 + i * 4 : 20 + i * 4] = 255
    return write_clip(pixels, fps, out_dir, name, {"app": APP_NAME, "settings": {"prompt": name}}).video.name


def square_x(frame: np.ndarray) -> float:
    cols = np.where(frame[32].max(axis=1) > 128)[0]
    return float(cols.mean()) if len(cols) else float("nan")


def test_frame_rate_conversion_interpolates_motion(out_dir):
    clip = moving_clip(out_dir, "slide")
    film = export_film(Storyboard(shots=[Shot(clip)], fps=24), out_dir)
    frames, fps = decode_video(film)
    assert fps == 24 and abs(frames.shape[0] - 24) <= 1  # 1 s at 24 fps from 16 source frames
    # an in-between frame shows the square between two source positions, not a repeated frame
    positions = [square_x(f) for f in frames[:12]]
    steps = np.diff(positions)
    assert np.nanmax(steps) < 7.0 and np.nanmin(steps) > 0.5  # smooth: no jumps, no freezes


def test_slow_motion_doubles_the_length(out_dir):
    clip = moving_clip(out_dir, "slide")
    film = export_film(Storyboard(shots=[Shot(clip)], fps=16, slow_motion=True), out_dir)
    frames, fps = decode_video(film)
    assert fps == 16 and abs(frames.shape[0] - 32) <= 1  # 2 s at 16 fps
    assert film_duration(Storyboard(shots=[Shot(clip)], slow_motion=True), out_dir) == pytest.approx(2.0)


def test_gif_export(out_dir):
    from PIL import Image

    film = export_film(Storyboard(shots=[Shot(moving_clip(out_dir, "slide"))], format="gif"), out_dir)
    with Image.open(film) as gif:
        assert gif.format == "GIF" and gif.n_frames == 16 and gif.size == (96, 64)


def film_pcm(film: Path, rate: int = 8000) -> np.ndarray:
    """The film's sound, decoded by ffmpeg: mono 16-bit samples at `rate`."""
    from library.media import ffmpeg_exe

    raw = subprocess.run(
        [ffmpeg_exe(), "-v", "error", "-i", str(film), "-f", "s16le", "-ac", "1", "-ar", str(rate), "-"],
        capture_output=True, check=True,
    ).stdout  # fmt: skip
    return np.frombuffer(raw, np.int16).astype(float)


def pitch(pcm: np.ndarray, rate: int = 8000) -> float:
    """The loudest frequency of the sound, in Hz."""
    spectrum = np.abs(np.fft.rfft(pcm * np.hanning(len(pcm))))
    return float(np.fft.rfftfreq(len(pcm), 1 / rate)[spectrum.argmax()])


def test_audio_fades_in_and_out(out_dir, two_clips, tmp_path):
    board = Storyboard(
        shots=[Shot(two_clips[0])], audio=kept(out_dir, sine_wav(tmp_path / "t.wav", 3.0)), audio_fade_s=0.5
    )
    film = export_film(board, out_dir)
    pcm = np.abs(film_pcm(film))
    loudness = lambda a, b: pcm[int(a * 8000) : int(b * 8000)].mean()  # noqa: E731
    assert loudness(0.0, 0.05) < 0.2 * loudness(0.9, 1.1)
    assert loudness(1.95, 2.0) < 0.2 * loudness(0.9, 1.1)
    assert len(pcm) / 8000 == pytest.approx(2.0, abs=0.1)  # trimmed to the film


def _fail_interpolation(monkeypatch, film_module):
    def broken(*args, **kwargs):
        raise RuntimeError("Frame interpolation failed: disk full")

    monkeypatch.setattr(film_module, "_interpolate", broken)


def _fail_final_encode(monkeypatch, film_module):
    from moviepy.video.VideoClip import VideoClip

    def half_written(self, filename, *args, **kwargs):
        Path(filename).write_bytes(b"\0\0\0\x18ftypmp42 half a film")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(VideoClip, "write_videofile", half_written)


def _fail_signing(monkeypatch, film_module):
    def no_room(*args, **kwargs):
        raise OSError(28, "No space left on device")  # not a signing refusal: the disk filled while signing

    monkeypatch.setattr(film_module.provenance, "sign_file", no_room)


def _fail_record_link(monkeypatch, film_module):
    link = film_module.link_no_overwrite

    def no_record(tmp, final):
        if str(final).endswith(".json"):
            raise OSError(28, "No space left on device")
        return link(tmp, final)

    monkeypatch.setattr(film_module, "link_no_overwrite", no_record)


@pytest.mark.parametrize(
    "fail, fps",
    [(_fail_interpolation, 24), (_fail_final_encode, 16), (_fail_signing, 16), (_fail_record_link, 16)],
    ids=["interpolation", "final-encode", "signing", "record-link"],
)
def test_a_failed_export_leaves_no_file(out_dir, monkeypatch, fail, fps):
    from library import film as film_module

    clip = moving_clip(out_dir, "slide")
    fail(monkeypatch, film_module)
    with pytest.raises(Exception) as info:
        export_film(Storyboard(shots=[Shot(clip)], fps=fps), out_dir)
    assert "disk full" in str(info.value) or "full" in str(info.value).lower(), info.value
    assert list((out_dir / "films").iterdir()) == []  # no film, no record, no temporary


def ffmpeg_children() -> int:
    """ffmpeg processes this test process started that are still running (Linux /proc)."""
    count = 0
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            text = stat.read_text()
        except OSError:
            continue
        name = text.split("(", 1)[1].rsplit(")", 1)[0]
        state, ppid = text.rsplit(")", 1)[1].split()[:2]
        count += "ffmpeg" in name and int(ppid) == os.getpid() and state != "Z"
    return count


def test_a_long_film_runs_a_bounded_number_of_decoders(out_dir):
    from library.film import MAX_OPEN_READERS

    colours = [(40 * i, 200 - 30 * i, 120) for i in range(7)]
    names = [make_clip(out_dir, f"shot{i}", colour, frames=16) for i, colour in enumerate(colours)]
    # trimmed to 0.5 s: each decoder would sit blocked on the 1.5 s left unread
    shots = [
        Shot(n, end_s=0.5, transition="crossfade" if i == 2 else "cut", crossfade_s=0.25) for i, n in enumerate(names)
    ]
    running = []
    film = export_film(Storyboard(shots=shots), out_dir, on_progress=lambda f, m: running.append(ffmpeg_children()))
    assert running and max(running) <= MAX_OPEN_READERS + 1  # the decoders and the encoder
    frames, _ = decode_video(film)
    assert frames.shape[0] == 7 * 4 - 2  # 0.5 s shots at 8 fps, one 0.25 s crossfade
    firsts = [0, 4, 8, 10, 14, 18, 22]  # each shot's first frame (the crossfade pulls shots 4… back by 2)
    for start, colour in zip(firsts, colours, strict=True):
        if start != 8:  # shot 3 starts inside the crossfade
            assert np.abs(frames[start + 1, 32, 48].astype(int) - colour).max() < 25, start


def test_a_gif_is_at_most_480_pixels_wide(out_dir):
    from PIL import Image

    wide = np.zeros((8, 352, 640, 3), np.uint8)
    wide[:, :, 320:] = 200
    name = write_clip(wide, 8, out_dir, "wide", {"app": APP_NAME, "settings": {"prompt": "wide"}}).video.name
    film = export_film(Storyboard(shots=[Shot(name)], format="gif"), out_dir)
    with Image.open(film) as gif:
        assert gif.size == (480, 264)  # 640×352 scaled to the cap, aspect kept


def test_uploaded_audio_is_copied_into_the_output_folder(out_dir, tmp_path):
    (tmp_path / "uploads").mkdir()
    upload = sine_wav(tmp_path / "uploads" / "theme.wav", 1.0)
    name = kept(out_dir, upload)
    copy = out_dir / "audio" / name
    assert copy.is_file() and copy.read_bytes() == upload.read_bytes()
    upload.unlink()  # Gradio's upload cache is cleared: the storyboard's audio stays
    assert copy.is_file() and kept(out_dir, copy) == name  # keeping a kept file again changes nothing


def test_an_edited_track_of_the_same_name_and_size_is_the_one_the_film_plays(out_dir, two_clips, tmp_path):
    first, edited = tmp_path / "first", tmp_path / "edited"
    first.mkdir(), edited.mkdir()
    original = sine_wav(first / "music.wav", 2.0, hz=440)
    changed = sine_wav(edited / "music.wav", 2.0, hz=880)  # the same track, edited: same length, same size
    assert original.stat().st_size == changed.stat().st_size
    old_name = kept(out_dir, original)
    new_name = kept(out_dir, changed)
    assert new_name != old_name and kept(out_dir, original) == old_name  # the same file again: its first copy
    assert (out_dir / "audio" / new_name).read_bytes() == changed.read_bytes()
    assert (out_dir / "audio" / old_name).read_bytes() == original.read_bytes()  # both kept
    played = {}
    for name in (old_name, new_name):
        film = export_film(Storyboard(shots=[Shot(two_clips[0])], audio=name), out_dir)
        played[name] = pitch(film_pcm(film))
    assert played[old_name] == pytest.approx(440, abs=10) and played[new_name] == pytest.approx(880, abs=10), played


class HeldInterpolation:
    """Holds film exports' ffmpeg interpolation mid-run, by back-pressure rather than timing.

    Its progress pipe is handed to ffmpeg already full, so ffmpeg blocks at its first report (a write of a
    whole report waits for room) and cannot end on its own. `started` fires once it runs; after `release`
    the export's reading loop gets the filler lines one at a time (each frees too little room to unblock
    ffmpeg), then everything else. `procs` are the interpolation processes."""

    FILLER = b"filler\n"

    def __init__(self, monkeypatch):
        self.started, self.release, self.procs = threading.Event(), threading.Event(), []
        self._popen = subprocess.Popen
        monkeypatch.setattr(subprocess, "Popen", self._spawn)

    def _spawn(self, args, **kwargs):
        if not any("minterpolate" in str(arg) for arg in args):  # moviepy's readers and writers
            return self._popen(args, **kwargs)
        read, write = os.pipe()
        os.set_blocking(write, False)
        try:
            while True:
                os.write(write, self.FILLER)
        except BlockingIOError:
            os.set_blocking(write, True)
        proc = self._popen(args, stdout=write, stderr=kwargs.get("stderr"), text=kwargs.get("text"))
        os.close(write)
        proc.stdout = self._lines(read)
        self.procs.append(proc)
        return proc

    def _lines(self, fd: int):
        self.started.set()
        self.release.wait(60)
        try:
            line = b""
            while byte := os.read(fd, 1):
                line += byte
                if byte == b"\n":
                    yield line.decode()
                    line = b""
        finally:
            os.close(fd)


@pytest.mark.parametrize("change", [dict(fps=24), dict(fps=16, slow_motion=True)], ids=["frame-rate", "slow-motion"])
def test_cancel_while_ffmpeg_interpolates_kills_it_and_writes_nothing(manager, out_dir, monkeypatch, change):
    import signal

    from studio.jobs.queue import CANCELLED, JobQueue
    from tests.test_jobs import wait_until

    clip = moving_clip(out_dir, "slide")
    jobs = JobQueue(manager, Library.open(out_dir))
    held = HeldInterpolation(monkeypatch)
    job = jobs.submit_film(Storyboard(shots=[Shot(clip)], **change))
    assert held.started.wait(60)  # composed; ffmpeg is interpolating
    (ffmpeg,) = held.procs
    assert ffmpeg.poll() is None
    assert jobs.cancel(job.id)
    held.release.set()
    wait_until(lambda: jobs.get(job.id).finished)
    ended = jobs.get(job.id)
    assert ended.status == CANCELLED and ended.message == "Export cancelled; no film was written"
    assert ffmpeg.returncode == -signal.SIGKILL  # killed mid-run, not left to finish
    assert ffmpeg_children() == 0  # no ffmpeg of the export left running
    assert list((out_dir / "films").iterdir()) == []  # no film, no record, no temporary
