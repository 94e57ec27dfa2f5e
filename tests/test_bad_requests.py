"""Bad requests from outside, table-driven: every one is answered with a message that says what to change
(never a raw Python or Gradio message), nothing is queued or written for it, and a good request works
afterwards. Sent with gradio_client, and over plain HTTP where a client library would refuse to send them."""

from __future__ import annotations

import json
import struct
import urllib.request
import zlib
from pathlib import Path

import numpy as np
import pytest
from gradio_client import Client, handle_file
from PIL import Image

from library.clips import list_clips
from tests.server import studio

RAW_PYTHON = (
    "Traceback", "object has no attribute", "Could not preprocess", "validation error", "NoneType", "Errno",
    "unexpected keyword", "KeyError", "TypeError", "maximum recursion", "is not subscriptable",
)  # fmt: skip


@pytest.fixture(scope="module")
def running(tmp_path_factory):
    with studio(tmp_path_factory.mktemp("bad")) as s:
        yield s


@pytest.fixture(scope="module")
def client(running):
    c = Client(running.url, verbose=False)
    yield c
    c.close()


@pytest.fixture(scope="module")
def a_clip(client) -> str:
    result = client.predict(prompt="the one good clip", steps=2, frames=9, api_name="/text_to_video")
    return Path(result[2]).name


def refused(call) -> str:
    with pytest.raises(Exception) as info:
        call()
    message = str(info.value)
    assert not any(raw in message for raw in RAW_PYTHON), message
    return message


TEXT_TO_VIDEO = [
    ({"prompt": "   "}, "Write a prompt"),
    ({"prompt": None}, "The prompt must be text"),
    ({"prompt": "a" * 3000}, "keep it under 2000"),
    ({"prompt": "a", "negative_prompt": "n" * 5000}, "keep it under 2000"),
    ({"prompt": "a", "size": 5}, "Size must look like 1280x704"),
    ({"prompt": "a", "size": "wide"}, "Size must look like 1280x704"),
    ({"prompt": "a", "size": "96 by 64"}, "Size must look like 1280x704"),
    ({"prompt": "a", "size": "100x64"}, "multiples of 32"),
    ({"prompt": "a", "size": "99999x99999"}, "between 32 and 256 px"),
    ({"prompt": "a", "size": "0x0"}, "between 32 and 256 px"),
    ({"prompt": "a", "size": ["96", "64"]}, "Size must look like 1280x704"),
    ({"prompt": "a", "frames": 10}, "4n+1"),
    ({"prompt": "a", "frames": "many"}, "Frames must be a number"),
    ({"prompt": "a", "frames": 1e30}, "Frames: Value 1e+30 is greater than maximum value"),
    ({"prompt": "a", "frames": [1]}, "Frames must be a number"),
    ({"prompt": "a", "frames": 9.5}, "The frame count must be a whole number"),
    ({"prompt": "a", "steps": -3}, "Steps: Value -3 is less than minimum value 1"),
    ({"prompt": "a", "steps": "x"}, "Steps must be a number"),
    ({"prompt": "a", "steps": True}, "Steps must be a number"),
    ({"prompt": "a", "steps": 2.5}, "Steps must be a whole number"),
    ({"prompt": "a", "guidance_scale": "high"}, "Guidance must be a number"),
    ({"prompt": "a", "guidance_scale": 99}, "Guidance: Value 99 is greater than maximum value"),
    ({"prompt": "a", "seed": 1.5}, "Seed must be a whole number"),
    ({"prompt": "a", "seed": "s"}, "Seed must be a number"),
    ({"prompt": "a", "seed": 2**40}, "The seed must be a whole number from 0 to"),
    ({"prompt": "a", "seed": -5}, "The seed must be a whole number from 0 to"),
    ({"prompt": "a", "seed": {"x": 1}}, "Seed must be a number"),
]


@pytest.mark.parametrize("kwargs, fragment", TEXT_TO_VIDEO, ids=[str(k)[:40] for k, _ in TEXT_TO_VIDEO])
def test_text_to_video_refusals(client, kwargs, fragment):
    assert fragment in refused(lambda: client.predict(**kwargs, api_name="/text_to_video"))


def _png_header(width: int, height: int) -> bytes:
    """A PNG that claims to be width x height but holds no pixels (a decompression bomb's header)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b"")


def _pictures(folder: Path) -> list[tuple[Path | str | None, str]]:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "empty.png").write_bytes(b"")
    (folder / "notes.txt").write_text("not a picture at all")
    (folder / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0" + b"\x00" * 100)
    (folder / "huge.png").write_bytes(_png_header(20000, 20000))
    big = folder / "big.bmp"
    Image.new("RGB", (16, 16)).save(big)
    with open(big, "ab") as f:
        f.write(b"\0" * (55 * 2**20))  # 55 MB: over the 50 MB limit
    tiny = folder / "tiny.png"
    Image.new("RGB", (8, 8)).save(tiny)
    return [
        (folder / "empty.png", "The image file is empty"),
        (folder / "notes.txt", "could not be read"),
        (folder / "broken.jpg", "could not be read"),
        (folder / "huge.png", "megapixels"),
        (big, "the limit is 50 MB"),
        (tiny, "at least 16"),
        ("not a file", "The picture must be an uploaded file"),
        (None, "needs a picture"),
    ]


def test_image_to_video_refusals(client, tmp_path):
    for picture, fragment in _pictures(tmp_path / "pictures"):
        image = handle_file(str(picture)) if isinstance(picture, Path) else picture
        message = refused(lambda image=image: client.predict(image=image, prompt="x", api_name="/image_to_video"))
        assert fragment in message, (picture, message)


ASSEMBLE = [
    ("{", "not valid JSON"),
    ("[]", "JSON object with a 'shots' list"),
    ("null", "JSON object with a 'shots' list"),
    ("42", "JSON object with a 'shots' list"),
    ("{}", "storyboard is empty"),
    ('{"shots": 5}', "'shots' must be a list"),
    ('{"shots": ["a.mp4"]}', "Shot 1 must be an object"),
    ('{"shots": [{}]}', "Shot 1 needs a 'clip'"),
    ('{"shots": [{"clip": "CLIP", "zoom": 2}]}', "Shot 1 has fields Wan Studio does not know: zoom"),
    ('{"shots": [{"clip": "CLIP"}], "colour": "red"}', "fields Wan Studio does not know: colour"),
    ('{"shots": [{"clip": "../x.mp4"}]}', "'clip' must be the file name of a library clip"),
    ('{"shots": [{"clip": "/etc/passwd"}]}', "'clip' must be the file name of a library clip"),
    ('{"shots": [{"clip": ".jobs"}]}', "'clip' must be the file name of a library clip"),
    ('{"shots": [{"clip": 7}]}', "'clip' must be the file name of a library clip"),
    ('{"shots": [{"clip": "missing.mp4"}]}', "is not in the library"),
    ('{"shots": [{"clip": "CLIP", "start_s": NaN}]}', "the start (start_s) must be a number"),
    ('{"shots": [{"clip": "CLIP", "start_s": -1}]}', "the start (start_s) must be from 0"),
    ('{"shots": [{"clip": "CLIP", "start_s": "soon"}]}', "the start (start_s) must be a number"),
    ('{"shots": [{"clip": "CLIP", "start_s": 0.5, "end_s": 0.2}]}', "must come after the start"),
    ('{"shots": [{"clip": "CLIP", "end_s": 99}]}', "outside the clip"),
    ('{"shots": [{"clip": "CLIP", "transition": "wipe"}]}', "must be 'cut' or 'crossfade'"),
    ('{"shots": [{"clip": "CLIP", "crossfade_s": Infinity}]}', "the crossfade (crossfade_s) must be a number"),
    ('{"shots": [{"clip": "CLIP", "crossfade_s": 1000}]}', "the crossfade (crossfade_s) must be from 0"),
    ('{"shots": [{"clip": "CLIP"}], "fps": 0}', "The frame rate (fps) must be from 1 to 60"),
    ('{"shots": [{"clip": "CLIP"}], "fps": 1000}', "The frame rate (fps) must be from 1 to 60"),
    ('{"shots": [{"clip": "CLIP"}], "fps": "fast"}', "The frame rate (fps) must be a number"),
    ('{"shots": [{"clip": "CLIP"}], "title": "TTTT"}', "at most 120 characters"),
    ('{"shots": [{"clip": "CLIP"}], "title": ["x"]}', "The title must be text"),
    ('{"shots": [{"clip": "CLIP"}], "title": "T", "title_s": 1e7}', "title card's length (title_s) must be from"),
    ('{"shots": [{"clip": "CLIP"}], "title": "T", "title_s": -2}', "title card's length (title_s) must be from"),
    ('{"shots": [{"clip": "CLIP"}], "title_colour": "red"}', "The title colour must look like #101828"),
    ('{"shots": [{"clip": "CLIP"}], "audio": "/etc/passwd"}', "named by an audio file of the library"),
    ('{"shots": [{"clip": "CLIP"}], "audio": "../settings.json"}', "named by an audio file of the library"),
    ('{"shots": [{"clip": "CLIP"}], "audio": "song.mp3"}', "not among the storyboard's audio files"),
    ('{"shots": [{"clip": "CLIP"}], "audio_fade_s": NaN}', "The audio fade (audio_fade_s) must be a number"),
    ('{"shots": [{"clip": "CLIP"}], "size": [6000, 6000]}', "The film size must be two whole numbers from"),
    ('{"shots": [{"clip": "CLIP"}], "size": [95, 64]}', "must have even sides"),
    ('{"shots": [{"clip": "CLIP"}], "size": [96, 64, 3]}', "The film size must be two whole numbers"),
    ('{"shots": [{"clip": "CLIP"}], "size": "big"}', "The film size must be two whole numbers"),
    ('{"shots": [{"clip": "CLIP"}], "slow_motion": "yes"}', "slow_motion must be true or false"),
    ('{"shots": [{"clip": "CLIP"}], "format": "avi"}', "The format must be one of mp4, webm, gif"),
    ("SHOTS201", "at most 200 shots"),
    ("[" * 5000 + "]" * 5000, "nested too deeply"),
    ("BIG", "JSON is over 256 kB"),
]


def _storyboard_text(template: str, clip: str) -> str:
    if template == "SHOTS201":
        return json.dumps({"shots": [{"clip": clip}] * 201})
    if template == "BIG":
        return json.dumps({"shots": [{"clip": clip}], "title": "x" * 300_000})
    return template.replace("CLIP", clip).replace("TTTT", "T" * 500)


@pytest.mark.parametrize("template, fragment", ASSEMBLE, ids=[t[:40] for t, _ in ASSEMBLE])
def test_assemble_refusals(client, a_clip, running, template, fragment):
    text = _storyboard_text(template, a_clip)
    assert fragment in refused(lambda: client.predict(text, api_name="/assemble"))
    films = running.output_dir / "films"
    assert not films.exists() or not list(films.glob("*.mp4"))


def raw_call(url: str, api: str, data: list) -> tuple[str, str]:
    """Gradio's HTTP API without a client library: ('complete' | 'error', last data line)."""
    body = json.dumps({"data": data}).encode()  # NaN and Infinity written as JSON lets them
    post = urllib.request.Request(f"{url}gradio_api/call/{api}", body, {"Content-Type": "application/json"})
    event_id = json.loads(urllib.request.urlopen(post, timeout=30).read())["event_id"]
    stream = urllib.request.urlopen(f"{url}gradio_api/call/{api}/{event_id}", timeout=120).read().decode()
    events = [line[7:] for line in stream.splitlines() if line.startswith("event: ")]
    datas = [line[6:] for line in stream.splitlines() if line.startswith("data: ")]
    return events[-1], datas[-1]


RAW = [  # (prompt, negative, size, frames, steps, guidance, seed, loras, fast)
    ("text_to_video", ["a", "", "96x64", float("nan"), 2, 5, 1, "[]", False], "Frames must be a number"),
    ("text_to_video", ["a", "", "96x64", 9, 2, float("inf"), 1, "[]", False], "Guidance must be a number"),
    ("text_to_video", ["a", "", "96x64", 9, float("-inf"), 5, 1, "[]", False], "Steps must be a number"),
    ("text_to_video", ["a", "", "96x64", 9, 2, 5, float("nan"), "[]", False], "Seed must be a number"),
    ("text_to_video", ["a", "", "96x64", 9, 2, 5, 1, "[]", "yes"], "fast must be true or false"),
    ("text_to_video", ["a", "", "96x64", 9, 2, 5, 1, 7, False], "loras must be a JSON list"),
]


@pytest.mark.parametrize("api, data, fragment", RAW, ids=[str(d[3:]) for _, d, _ in RAW])
def test_values_no_client_library_would_send(running, api, data, fragment):
    event, message = raw_call(running.url, api, data)
    assert event == "error" and fragment in message, message
    assert not any(raw in message for raw in RAW_PYTHON)


def test_cancel_and_verify_never_fail_raw(client, tmp_path):
    for job_id in (5, None, ["x"], "no-such-job", {"id": 1}):
        assert client.predict(job_id, api_name="/cancel") == "Nothing to cancel."
    assert "The file must be an uploaded file" in refused(lambda: client.predict("/etc/passwd", api_name="/verify"))
    assert "Choose a file to check" in refused(lambda: client.predict(None, api_name="/verify"))
    text = tmp_path / "notes.txt"
    text.write_text("hello")
    report, details = client.predict(handle_file(str(text)), api_name="/verify")
    assert report.startswith("No Content Credentials") and details["has_manifest"] is False


def test_after_all_of_it_a_good_request_works_and_nothing_bad_was_kept(client, running, a_clip):
    result = client.predict(prompt="still working", steps=2, frames=9, api_name="/text_to_video")
    assert "Done" in result[1]
    prompts = sorted(c.settings["prompt"] for c in list_clips(running.output_dir))
    assert prompts == ["still working", "the one good clip"]
    preview = np.asarray(Image.open(result[0]).convert("RGB"))  # the last update: the strip, its bar full and green
    assert preview.shape[0] > 8 and (preview[-8:] == (74, 190, 120)).all() and preview[:-8].std() > 0
