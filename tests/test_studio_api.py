"""The studio as an API client sees it: the real app launched on 127.0.0.1 with the test model."""

from __future__ import annotations

import json
import re
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from gradio_client import Client, handle_file
from PIL import Image

from library.clips import list_clips
from tests.media import decode_video
from tests.server import Gate, studio


@pytest.fixture(scope="module")
def running(tmp_path_factory):
    """The studio with a gate: a test can hold a job at its first step (`running.gate.holding(prompt)`)."""
    with Gate() as gate, studio(tmp_path_factory.mktemp("api"), gate=gate) as s:
        yield s


@pytest.fixture
def client(running):
    c = Client(running.url, verbose=False)
    yield c
    c.close()


def first_step_update(job) -> tuple:
    """Read a job's stream up to its first denoising step: (preview, status, clip, job id, seed)."""
    update = next((u for u in job if "Step" in u[1]), None)
    assert update is not None, "the stream ended before any step"
    return update


def stream(job) -> list[tuple]:
    updates = []
    for update in job:
        updates.append(update)
    return updates


def test_previews_stream_before_the_clip_and_the_clip_decodes(client):
    # enough work that a watcher polling every 0.1 s sees steps go by (a tiny-model step takes ~15 ms)
    job = client.submit(
        prompt="a red cat walks", size="256x256", steps=30, frames=33, seed=77, api_name="/text_to_video"
    )
    updates = stream(job)
    final = job.result()
    preview, status, video, job_id, seed = final
    assert "Done" in status and seed == 77 and job_id
    with_preview = [i for i, u in enumerate(updates) if u[0]]
    with_video = [i for i, u in enumerate(updates) if u[2]]
    assert with_preview and with_video and with_preview[0] < with_video[0]
    # the stream shows the steps as they go (a watcher sees the latest state, so some may be coalesced)
    assert not any("**" in u[1] or "`" in u[1] for u in updates)  # plain text for API clients
    assert all(u[4] is None for u in updates[:-1])  # the seed comes with the finished clip
    steps_seen = [int(m.group(1)) for u in updates if (m := re.search(r"Step (\d+)/30", u[1]))]
    assert steps_seen and steps_seen == sorted(steps_seen)
    assert Image.open(preview).size[0] > 0
    frames, fps = decode_video(Path(video))
    assert frames.shape == (33, 256, 256, 3) and fps == 8


def test_image_to_video_endpoint(client, tmp_path):
    picture = tmp_path / "portrait.png"
    Image.fromarray(np.full((300, 180, 3), (30, 120, 200), np.uint8)).save(picture)
    result = client.predict(
        image=handle_file(str(picture)), prompt="the sea moves", steps=3, api_name="/image_to_video"
    )
    frames, _ = decode_video(Path(result[2]))
    assert frames.shape[1:3] == (96, 64)  # a portrait picture gets the portrait preset
    assert "Done" in result[1]
    # the random test VAE cannot redraw the picture, but frame 0 carries its colour: the colour match (on by
    # default) maps every frame onto the picture's statistics; text-to-video noise averages mid-grey
    mean = frames[0].reshape(-1, 3).mean(axis=0)
    assert np.abs(mean - (30, 120, 200)).max() < 8, mean


@pytest.mark.parametrize(
    "kwargs, fragment",
    [
        ({"prompt": "   "}, "Write a prompt"),
        ({"prompt": "a cat", "frames": 10}, "4n+1"),
        ({"prompt": "a cat", "seed": -5}, "seed"),
    ],
)
def test_bad_input_returns_its_message(client, kwargs, fragment):
    with pytest.raises(Exception) as info:
        client.predict(**kwargs, api_name="/text_to_video")
    assert fragment in str(info.value)


def test_the_loras_argument_and_fast_mode(client, running):
    from diffusers import WanTransformer3DModel

    from pipelines.testmodels import ensure_test_model, lora_weights, save_lora

    model = WanTransformer3DModel.from_pretrained(ensure_test_model("test-tiny") / "transformer")
    save_lora(lora_weights(model, seed=6, scale=0.2), running.home / "data" / "loras" / "glow.safetensors")
    loras = json.dumps([{"file": "glow.safetensors", "strength": 0.75}])
    client.predict(prompt="glowing", steps=2, seed=3, loras=loras, api_name="/text_to_video")
    sidecar = json.loads(next(running.output_dir.glob("*glowing*.json")).read_text())
    assert [(lora["file"], lora["strength"]) for lora in sidecar["settings"]["loras"]] == [("glow.safetensors", 0.75)]

    *_, video, _, _ = client.predict(prompt="quick", fast=True, api_name="/text_to_video")
    assert decode_video(Path(video))[0].shape[0] > 0
    fast = json.loads(next(running.output_dir.glob("*quick*.json")).read_text())
    assert fast["fast_preset"].startswith("test distilled checkpoint") and fast["settings"]["steps"] == 3

    with pytest.raises(Exception, match="The LoRA 'absent.safetensors' is not in the LoRA folder"):
        client.predict(prompt="x", loras='[{"file": "absent.safetensors"}]', api_name="/text_to_video")


def test_image_to_video_without_a_picture_says_so(client):
    with pytest.raises(Exception, match="needs a picture"):
        client.predict(image=None, prompt="x", api_name="/image_to_video")


def test_cancel_stops_the_running_job(client, running):
    with running.gate.holding("cancel me") as held:  # the job waits at step 1 until the cancel is asked
        job = client.submit(prompt="cancel me", steps=100, frames=33, api_name="/text_to_video")
        held.wait()
        job_id = first_step_update(job)[3]
        assert job_id
        assert "Cancelling" in client.predict(job_id, api_name="/cancel")
    for _ in job:
        pass
    final = job.outputs()[-1]
    assert "Cancelled at step" in final[1] and final[2] is None
    assert "Cancelled at step 100/100" not in final[1]
    assert not [c for c in list_clips(running.output_dir) if c.settings["prompt"] == "cancel me"]


def test_a_client_that_disconnects_leaves_the_job_running(running):
    c = Client(running.url, verbose=False)
    with running.gate.holding("keep going without me") as held:  # running, at step 1, while the client leaves
        job = c.submit(prompt="keep going without me", steps=100, frames=33, api_name="/text_to_video")
        held.wait()
        last_step = first_step_update(job)[1]
        assert "Step 100/100" not in last_step
        job.cancel()  # what closing the tab does: the stream stops
        c.close()

    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:  # no event for a job nobody watches: its clip on disk is the sign
        clips = [clip for clip in list_clips(running.output_dir) if clip.settings["prompt"] == "keep going without me"]
        if clips:
            break
        time.sleep(0.5)
    assert clips, "the job stopped with its client"
    assert clips[0].settings["steps"] == 100
    frames, _ = decode_video(clips[0].video)
    assert frames.shape[0] == 33


def test_files_served_are_clips_films_pictures_and_assets_only(running, client):
    """Probed with files that exist (a missing file is refused anyway): the signing key, the settings, job
    records and their stored pictures, sidecars, the storyboard; through a symlinked folder with capitals
    (Gradio lower-cases paths before its blocked-folder check), another case, and percent-encoding."""
    from urllib.parse import quote

    from studio.settings import Settings, save_settings

    result = client.predict(prompt="served", steps=2, frames=5, api_name="/text_to_video")
    assert "Done" in result[1]
    clip = next(c for c in list_clips(running.output_dir) if c.settings["prompt"] == "served")
    out = running.output_dir

    def status(path: Path | str, encode: bool = False) -> int:
        spelled = quote(str(path), safe="") if encode else str(path)
        try:
            return urllib.request.urlopen(f"{running.url}gradio_api/file={spelled}", timeout=10).status
        except urllib.error.HTTPError as err:
            return err.code

    assert status(clip.video) == 200
    assert status(Path(__file__).resolve().parents[1] / "assets" / "example-landscape.png") == 200
    assert status(Path("/etc/passwd")) in (403, 404)

    import os

    os.environ["WAN_STUDIO_HOME"] = str(running.home)  # the studio's own config folder, for the files below
    try:
        save_settings(Settings(model="test-tiny", output_dir=str(out)))
    finally:
        os.environ.pop("WAN_STUDIO_HOME")
    keys = list((running.home / "keys").glob("*key*.pem"))
    job_record = next((out / ".jobs").glob("*.json"))
    stored_input = out / ".jobs" / "abcdef.input.png"
    Image.new("RGB", (32, 32)).save(stored_input)
    (out / "storyboard.json").write_text('{"shots": []}')
    (out / "Records").symlink_to(out / ".jobs")  # a folder name with capitals, pointing at the records
    linked = [out / "Records" / job_record.name, out / "Records" / stored_input.name]
    sidecar = clip.video.with_suffix(".json")
    secrets_ = [
        *keys,
        running.home / "settings.json",
        job_record,
        stored_input,
        sidecar,
        out / "storyboard.json",
        *linked,
    ]
    assert keys and all(path.exists() for path in secrets_)
    for path in secrets_:
        assert status(path) in (401, 403, 404), path
        assert status(path, encode=True) in (401, 403, 404), path
    assert status(str(out / ".JOBS" / job_record.name)) in (403, 404)
    assert status(clip.video, encode=True) == 200  # the same spelling works for what is served


def test_anonymous_callers_see_the_login_page_and_nothing_else(tmp_path):
    with studio(tmp_path, "--auth", "alice:correct-horse") as s:
        ok = Client(s.url, verbose=False, auth=("alice", "correct-horse"))
        clip = ok.predict(prompt="behind a login", steps=2, frames=5, api_name="/text_to_video")[2]
        ok.close()

        def get(path: str, data: bytes | None = None) -> tuple[int, str]:
            request = urllib.request.Request(f"{s.url}{path}", data, {"Content-Type": "application/json"})
            try:
                with urllib.request.urlopen(request, timeout=10) as response:
                    return response.status, response.read().decode(errors="replace")
            except urllib.error.HTTPError as err:
                return err.code, ""

        code, page = get("")
        assert code == 200 and "window.gradio_api_info = {};" in page
        assert "text_to_video" not in page and str(s.output_dir) not in page  # no API description, no paths
        for path in ("gradio_api/info", "config", "gradio_api/openapi.json", f"gradio_api/file={clip}",
                     "gradio_api/queue/status"):  # fmt: skip
            assert get(path)[0] == 401, path
        assert get("gradio_api/call/text_to_video", b'{"data": ["x"]}')[0] == 401


def test_saved_settings_become_the_apis_defaults_and_saving_is_no_api(tmp_path):
    home = tmp_path / "home"
    home.mkdir()
    (home / "settings.json").write_text(
        json.dumps({"model": "test-tiny", "steps": 7, "negative_prompt": "grainy, dull", "precision": "fp8"})
    )
    with studio(tmp_path / "b", home=home) as second:
        c = Client(second.url, verbose=False)
        api = c.view_api(print_info=False, return_format="dict")
        params = {p["parameter_name"]: p for p in api["named_endpoints"]["/text_to_video"]["parameters"]}
        assert params["steps"]["parameter_default"] == 7
        assert params["negative_prompt"]["parameter_default"] == "grainy, dull"
        # everything but the prompt has a default, so keyword calls need only the prompt
        assert [name for name, p in params.items() if not p["parameter_has_default"]] == ["prompt"]
        i2v = api["named_endpoints"]["/image_to_video"]["parameters"]
        assert sorted(p["parameter_name"] for p in i2v if not p["parameter_has_default"]) == ["prompt"]
        # settings (the output folder among them) are a page action, never an API anyone can call
        assert "/save_settings" not in api["named_endpoints"]
        with pytest.raises(ValueError, match="Cannot find a function"):
            c.predict("test-tiny", api_name="/save_settings")
        c.close()


def test_a_wrong_password_is_refused_when_auth_is_on(tmp_path):
    with studio(tmp_path, "--auth", "alice:correct-horse") as s:
        with pytest.raises(ValueError, match="Could not login"):
            Client(s.url, verbose=False, auth=("alice", "wrong"))
        with pytest.raises(ValueError, match="credentials were not provided"):
            Client(s.url, verbose=False)
        ok = Client(s.url, verbose=False, auth=("alice", "correct-horse"))
        result = ok.predict(prompt="behind a login", steps=2, frames=5, api_name="/text_to_video")
        assert "Done" in result[1]
        ok.close()


def test_a_model_that_cannot_load_gives_a_message_and_the_server_keeps_serving(tmp_path):
    with studio(tmp_path, "--model", "Wan-AI/Wan2.1-T2V-1.3B-Diffusers") as s:
        c = Client(s.url, verbose=False)
        with pytest.raises(Exception) as info:
            c.predict(prompt="a cat", size="832x480", frames=5, steps=2, api_name="/text_to_video")
        assert "not downloaded yet and offline mode is on" in str(info.value)
        plain = tmp_path / "plain.png"
        Image.new("RGB", (64, 64)).save(plain)
        text, _ = c.predict(handle_file(str(plain)), api_name="/verify")  # still serving
        assert text.startswith("No Content Credentials")
        c.close()


def test_assemble_endpoint_makes_a_film_from_a_storyboard(client, running):
    first = client.predict(prompt="film shot one", steps=2, frames=9, api_name="/text_to_video")
    second = client.predict(prompt="film shot two", steps=2, frames=9, api_name="/text_to_video")
    names = [Path(r[2]).name for r in (first, second)]
    board = {"shots": [{"clip": names[0], "transition": "crossfade", "crossfade_s": 0.25}, {"clip": names[1]}]}
    film = client.predict(json.dumps(board), api_name="/assemble")
    frames, fps = decode_video(Path(film))
    assert fps == 8 and frames.shape[1:3] == (64, 96)
    assert abs(frames.shape[0] - 16) <= 1  # 9 + 9 frames less a 0.25 s crossfade at 8 fps
    with pytest.raises(Exception, match="not in the library"):
        client.predict(json.dumps({"shots": [{"clip": "nope.mp4"}]}), api_name="/assemble")
    with pytest.raises(Exception, match="storyboard is empty"):
        client.predict("{}", api_name="/assemble")


def test_verify_endpoint_and_watermark_setting(tmp_path):
    home = tmp_path / "home"
    home.mkdir()
    (home / "settings.json").write_text(json.dumps({"model": "test-tiny", "watermark": True, "include_prompt": True}))
    with studio(tmp_path, home=home) as s:
        c = Client(s.url, verbose=False)
        result = c.predict(prompt="a lighthouse at dusk", steps=2, frames=9, api_name="/text_to_video")
        assert "Done" in result[1] and "Not signed" not in result[1]
        text, details = c.predict(handle_file(result[2]), api_name="/verify")
        assert "Valid Content Credentials, signed by this studio's own key" in text
        assert details["declared"]["prompt"] == "a lighthouse at dusk"
        # the mark in the pixels names the very clip, looked up in the studio's library
        assert details["watermark"] is not None and details["identified"] == Path(result[2]).name
        assert f"This looks like clip {Path(result[2]).name} made by this studio" in text
        plain = tmp_path / "plain.png"
        Image.new("RGB", (64, 64)).save(plain)
        text, details = c.predict(handle_file(str(plain)), api_name="/verify")
        assert text.startswith("No Content Credentials") and details["has_manifest"] is False
        c.close()


def test_a_long_take_from_a_list_of_window_prompts_streams_its_windows(client):
    frames, overlap = 17, 5
    job = client.submit(prompt="", frames=frames, steps=2, seed=8, window_prompts='["a fox runs", "a fox jumps"]',
                        overlap=overlap, api_name="/long_take")  # fmt: skip
    updates = list(job)
    _, status, video, _, seed = job.result()
    assert "take of 2 windows" in status and seed == 8
    assert any("Window 2/2" in u[1] for u in updates)  # the stream says which window runs
    decoded, _ = decode_video(Path(video))
    assert decoded.shape[0] == 2 * frames - overlap
    with pytest.raises(Exception, match="overlap"):
        client.predict(prompt="x", frames=frames, window_prompts="a\nb", overlap=2, api_name="/long_take")
