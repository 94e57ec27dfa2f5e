"""The output folder's own rules, without a server: publishing never overwrites, a crash between the
temporary file and its final name leaves nothing visible, and concurrent storyboard edits and appends lose
nothing."""

from __future__ import annotations

import json
import os
import threading
from pathlib import Path

import numpy as np
import pytest

from library import Library, LibraryError, Shot, Storyboard, StoryboardConflict, StoryboardError
from library.clips import write_clip
from library.files import publish, temporary, write_json
from library.layout import TMP_PREFIX
from pipelines import APP_NAME


def clip(library: Library, name: str) -> str:
    frames = np.full((9, 32, 48, 3), 100, np.uint8)
    return write_clip(frames, 8, library.root, name, {"app": APP_NAME, "duration_s": 1.125}).video.name


def test_publish_never_overwrites(tmp_path):
    names = []
    for content in (b"first", b"second", b"third"):
        tmp = temporary(tmp_path, ".mp4")
        tmp.write_bytes(content)
        names.append(publish(tmp, tmp_path, "film", ".mp4"))
        tmp.unlink()
    assert [p.name for p in names] == ["film.mp4", "film-2.mp4", "film-3.mp4"]
    assert [p.read_bytes() for p in names] == [b"first", b"second", b"third"]


def test_a_crash_between_the_temporary_file_and_its_name_leaves_nothing_visible(tmp_path, monkeypatch):
    library = Library.open(tmp_path / "out")
    import library.clips as clips

    def crash(src, dst):
        raise KeyboardInterrupt  # the process dies right here: before any final name exists

    monkeypatch.setattr(clips, "link_no_overwrite", crash)
    with pytest.raises(KeyboardInterrupt):
        write_clip(np.zeros((5, 32, 48, 3), np.uint8), 8, library.root, "crash", {"app": APP_NAME})
    visible = [p for p in library.root.iterdir() if not p.name.startswith(".")]
    assert visible == [] and library.clips() == []
    leftovers = list(library.root.glob(f"{TMP_PREFIX}*"))
    for path in leftovers:  # a real crash would leave these; the next start removes them
        os.utime(path, (1, 1))
    Library.open(library.root)
    assert list(library.root.glob(f"{TMP_PREFIX}*")) == []


def test_json_records_are_replaced_whole(tmp_path, monkeypatch):
    path = tmp_path / "record.json"
    write_json(path, {"n": 1})

    def full(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(json, "dump", full)
    with pytest.raises(LibraryError, match="full"):
        write_json(path, {"n": 2})
    assert json.loads(path.read_text()) == {"n": 1}  # the old content, whole
    assert [p.name for p in tmp_path.iterdir()] == ["record.json"]


def test_concurrent_edits_and_appends_lose_no_shot(tmp_path):
    library = Library.open(tmp_path / "out")
    names = [clip(library, f"shot{i}") for i in range(3)]
    store = library.storyboard
    page_base = store.save(Storyboard(shots=[Shot(names[0])]))  # what a page loaded

    appenders = [threading.Thread(target=store.append, args=(Shot(names[1]),)) for _ in range(20)]
    for t in appenders:
        t.start()
    for t in appenders:
        t.join()
    # the stale page now saves its edit (a title, the first shot trimmed) against what it loaded
    edited = Storyboard(shots=[Shot(names[0], end_s=1.0)], title="Edited")
    stored = store.save(edited, base=page_base)
    assert stored.title == "Edited" and stored.shots[0].end_s == 1.0
    assert [s.clip for s in stored.shots] == [names[0]] + [names[1]] * 20  # every appended shot kept
    assert store.load() == stored

    # a change made elsewhere that is not an append is never overwritten by a stale page
    other_page = store.save(Storyboard(shots=[Shot(names[2])]), base=stored)
    with pytest.raises(StoryboardConflict, match="changed in another page"):
        store.save(Storyboard(shots=[Shot(names[0])], title="stale"), base=stored)
    assert store.load() == other_page


def test_a_clip_the_storyboard_uses_cannot_go_to_the_trash(tmp_path):
    library = Library.open(tmp_path / "out")
    used, free = clip(library, "used"), clip(library, "free")
    library.storyboard.save(Storyboard(shots=[Shot(used)]))
    with pytest.raises(LibraryError, match="shot 1 of the storyboard"):
        library.trash(used)
    folder = library.trash(free)
    assert (folder / free).is_file() and [c.name for c in library.clips()] == [used]
    with pytest.raises(LibraryError, match="not a clip of the library"):
        library.trash("../settings.json")


def test_storyboard_limits_are_checked_whoever_builds_it():
    with pytest.raises(StoryboardError, match="at most 200 shots"):
        Storyboard(shots=[Shot("a.mp4")] * 201).validate()
    with pytest.raises(StoryboardError, match="title card holds at most 120"):
        Storyboard(title="x" * 121).validate()
    with pytest.raises(StoryboardError, match="must be a number"):
        Storyboard(audio_fade_s=float("nan")).validate()
    assert Storyboard.from_json(Storyboard(shots=[Shot("a.mp4")], size=(96, 64)).to_json()).size == (96, 64)


def test_a_poster_older_than_its_clip_is_made_again_from_the_new_clip(tmp_path):
    from PIL import Image

    from tests.media import decode_video

    library = Library.open(tmp_path / "out")
    red, blue = np.full((9, 32, 48, 3), (200, 30, 30), np.uint8), np.full((9, 32, 48, 3), (30, 30, 200), np.uint8)
    name = write_clip(red, 8, library.root, "poster", {"app": APP_NAME, "duration_s": 1.125}).video.name
    video = library.root / name

    def shows(poster) -> np.ndarray:
        return np.asarray(Image.open(poster).convert("RGB")).astype(int)

    def middle_of(path) -> np.ndarray:
        frames, _ = decode_video(path)
        return frames[len(frames) // 2].astype(int)

    poster = library.poster(library.clip(name))
    assert np.abs(shows(poster) - middle_of(video)).max() <= 2 and shows(poster)[16, 24, 0] > 150  # red
    # the clip is replaced by an edit of it (same name), so its poster is now older than the clip
    edited = write_clip(blue, 8, tmp_path / "elsewhere", "edit", {"app": APP_NAME}).video
    os.replace(edited, video)
    made = poster.stat().st_mtime
    os.utime(poster, (made - 60, made - 60))  # older whatever the clock's resolution, no waiting
    assert poster.stat().st_mtime < video.stat().st_mtime

    again = library.poster(library.clip(name))
    assert again == poster and np.abs(shows(again) - middle_of(video)).max() <= 2, "the old clip's poster"
    assert shows(again)[16, 24, 2] > 150  # blue: the new clip
    remade = again.stat().st_mtime_ns
    assert library.poster(library.clip(name)).stat().st_mtime_ns == remade  # a fresh poster is kept, not remade
    # a clip dated in the future (copied from a machine whose clock runs ahead): its poster is made once
    future = video.stat().st_mtime_ns + 3600 * 10**9
    os.utime(video, ns=(future, future))
    dated = library.poster(library.clip(name)).stat().st_mtime_ns
    assert (
        library.poster(library.clip(name)).stat().st_mtime_ns == dated
        and library.posters.request([library.clip(name)]) == []
    )  # ready: not made on every view


def test_posters_asked_for_again_while_one_is_being_made_share_its_work_and_never_hang(tmp_path):
    library = Library.open(tmp_path / "out")
    clips = [library.clip(clip(library, f"c{n}")) for n in range(3)]
    posters = library.posters
    inside, go_on = threading.Event(), threading.Event()
    make = posters.make

    def held(one):  # the background maker, held inside its first poster
        inside.set()
        assert go_on.wait(60)
        return make(one)

    posters.make = held
    first = posters.request(clips)
    assert inside.wait(60) and len(first) == 3
    assert posters.request(clips) == first  # the page asked for again meanwhile: the same work, no error
    go_on.set()
    made = [future.result(timeout=60) for future in first]
    assert made == [library.root / "posters" / f"{c.video.stem}.png" for c in clips] and all(p.is_file() for p in made)
    assert posters.request(clips) == []  # all there: nothing to make


def test_the_storyboards_audio_is_read_once_while_it_stays_the_same(tmp_path, monkeypatch):
    """The storyboard's summary keeps its audio on every edit: a 200 MB track must not be hashed each time."""
    from library import files, folder

    library = Library.open(tmp_path / "out")
    track = tmp_path / "music.wav"
    track.write_bytes(b"RIFF" + bytes(range(256)) * 64)
    hashed = []
    monkeypatch.setattr(folder, "sha256_file", lambda path: hashed.append(Path(path).name) or files.sha256_file(path))
    first = library.keep_audio(track)
    assert library.keep_audio(track) == first and sorted(hashed) == ["music.wav", "music.wav"]  # each file once
    hashed.clear()
    assert [library.keep_audio(track) for _ in range(5)] == [first] * 5 and hashed == []
    track.write_bytes(b"RIFF" + bytes(range(255, -1, -1)) * 64)  # edited, same size: read again, kept beside it
    assert library.keep_audio(track) == "music-2.wav" and "music.wav" in hashed


def test_a_clip_whose_decoder_fails_in_any_way_is_unreadable_until_it_changes(tmp_path, monkeypatch):
    """Whatever the decoder raises, the grid shows the clip as unreadable and stops asking (a poster asked for
    on every look would keep the page's poster timer running for ever)."""
    from library import posters as posters_module

    library = Library.open(tmp_path / "out")
    one = library.clip(clip(library, "odd"))

    def broken(video):
        raise KeyError("a decoder's own surprise")

    monkeypatch.setattr(posters_module, "middle_frame", broken)
    assert library.posters.make(one) is None and library.posters.unreadable(one)
    assert library.posters.request([one]) == []
