"""Upscale and Smooth motion as a user meets them: the Library's details panel in a real browser (the job
runs, then its new clip is picked, plays and says what it was made from), an upscaler added in Settings, and
the same steps through the API (/upscale, /interpolate) and a film export (/assemble)."""

from __future__ import annotations

import json
import re
import shutil
import time
from pathlib import Path

import pytest

from library.clips import list_clips
from pipelines.upscale import TEST_UPSCALER_FILE, build_test_upscaler
from tests.media import decode_video
from tests.server import Gate, studio
from tests.test_browser import CHROMIUM, SCREENSHOTS, TRACK_EVENTS, open_tab, settled

pytestmark = pytest.mark.skipif(not shutil.which(CHROMIUM), reason="Debian's chromium is not installed")

LANTERN = "a paper lantern sways over the harbour"
TEST_UPSCALER = "Test upscaler ×2 (random weights)"  # the picker's label of "test"
TIMEOUT = 60_000  # ms: a post job of the test models on a small clip takes a few seconds on a CPU
DONE = re.compile(r"Done in [\d.]+ s: (\S+\.mp4)\.")  # the status line of a finished job names its clip


@pytest.fixture(scope="module")
def running(tmp_path_factory):
    """The studio on the test video model: its default post models are the random-weight test ones."""
    with Gate() as gate, studio(tmp_path_factory.mktemp("post"), gate=gate) as running:
        yield running


@pytest.fixture(scope="module")
def client(running):
    from gradio_client import Client

    c = Client(running.url, verbose=False)
    yield c
    c.close()


def generated(running, client, prompt: str, frames: int) -> Path:
    """A clip of the test model (96×64 at 8 fps), made through the API as a user's script would."""
    _, status, video, _, _ = client.predict(prompt=prompt, steps=2, frames=frames, seed=5, api_name="/text_to_video")
    assert "Done" in status, status
    return running.output_dir / Path(video).name


@pytest.fixture(scope="module")
def source(running, client) -> Path:
    """The library's clip every test post-produces: 9 frames."""
    return generated(running, client, LANTERN, 9)


@pytest.fixture(scope="module")
def page(running, source):
    """The Library tab, its "Upscale and smooth motion" accordion open."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        flags = ["--no-sandbox", "--disable-background-networking", "--disable-component-update", "--disable-gpu"]
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=flags)
        page = browser.new_page(viewport={"width": 1280, "height": 1000})
        page.add_init_script(TRACK_EVENTS)
        page.goto(running.url)
        page.wait_for_selector("#t2v-prompt textarea", timeout=60_000)
        open_tab(page, "Library")
        settled(page)  # the grid and the pickers are filled
        page.locator("#library-post").get_by_text("Upscale and smooth motion").click()
        page.wait_for_selector("#library-upscale", state="visible")
        yield page
        browser.close()


def made_from(running, source: Path) -> dict[str, dict]:
    """The library's clips made from `source`, by name: their sidecars."""
    return {c.name: c.sidecar for c in list_clips(running.output_dir) if c.sidecar.get("source") == source.name}


def pick_in_grid(page, clip: Path) -> None:
    """Click the clip's poster in the grid (posters are named by the clip); wait until the player shows it."""
    cell = page.locator(f'#library-grid img[src*="/{clip.stem}.png"]')
    cell.wait_for(timeout=TIMEOUT)
    cell.click()
    player_shows(page, clip.name)


def player_shows(page, name: str) -> None:
    """Wait until the Library's player has loaded the clip `name`, and the grid has it picked."""
    from playwright.sync_api import TimeoutError as PlaywrightTimeout

    try:
        page.wait_for_function(
            """(name) => {
                const v = document.querySelector('#library-video video');
                const picked = document.querySelector('#library-grid .thumbnail-item.selected img');
                return v && decodeURIComponent(v.src).endsWith('/' + name) && v.readyState >= 1 && !v.error
                    && picked && decodeURIComponent(picked.src).endsWith('/' + name.replace(/\\.mp4$/, '.png'));
            }""",
            arg=name,
            timeout=TIMEOUT,
        )
    except PlaywrightTimeout:
        shown = page.evaluate(
            """() => ({player: document.querySelector('#library-video video')?.src,
                       picked: document.querySelector('#library-grid .thumbnail-item.selected img')?.src})"""
        )
        raise AssertionError(f"the Library never showed {name} picked and playing; it shows {shown}") from None


def choose(page, dropdown: str, option: str) -> None:
    page.locator(f"#{dropdown} input").click()
    page.get_by_role("option", name=option, exact=True).click()
    page.wait_for_function(
        "([id, option]) => document.querySelector(`#${id} input`).value === option", arg=[dropdown, option]
    )


def run_post(page, button: str) -> str:
    """Click Upscale or Smooth motion and wait for this job's own end (the last job's "Done" stays on until
    the new one's first update); the new clip's file name, as the status line gives it."""
    before = DONE.search(page.inner_text("#library-post-status"))
    page.click(f"#{button}")
    page.wait_for_function(
        """([done, before]) => {
            const text = document.querySelector('#library-post-status').innerText;
            const clip = text.match(new RegExp(done));
            return (clip && clip[1] !== before) || /Failed|Cancelled|Error/.test(text);
        }""",
        arg=[DONE.pattern, before and before.group(1)],
        timeout=TIMEOUT,
    )
    status = page.inner_text("#library-post-status")
    done = DONE.search(status)
    assert done, f"the job did not end with a clip: {status!r}"
    assert "Not signed" not in status and "Traceback" not in status, status
    return done.group(1)


def test_upscale_x2_in_the_library_makes_a_new_clip_that_is_picked_and_plays(page, running, source):
    pick_in_grid(page, source)
    assert "Made from" not in page.inner_text("#library-details")  # the source: generated, not derived
    choose(page, "library-upscale-how", "×2")
    choose(page, "library-upscaler", TEST_UPSCALER)
    name = run_post(page, "library-upscale")

    assert "_x2" in name and name in made_from(running, source)
    player_shows(page, name)  # the new clip is picked in the grid and plays, not the source
    page.wait_for_function(
        "(source) => document.querySelector('#library-details').innerText.includes(source)", arg=source.name
    )
    details = page.inner_text("#library-details")
    assert "Made from" in details and f"Upscaled: scale 2 with {TEST_UPSCALER_FILE}" in details, details
    assert "192×128, 9 frames at 8.0 fps" in details, details  # its own size, not the source's
    assert page.locator("#library-post-preview img").get_attribute("src")  # the job's last frame
    # the queue panel follows the job to its end too (it redraws every second)
    page.wait_for_function(
        """() => [...document.querySelectorAll('#queue-table tr')]
                 .some(r => r.innerText.includes('Upscale ×2') && r.innerText.includes('Done'))""",
        timeout=TIMEOUT,
    )

    clip = running.output_dir / name
    frames, fps = decode_video(clip)
    original, source_fps = decode_video(source)
    assert frames.shape == (original.shape[0], original.shape[1] * 2, original.shape[2] * 2, 3)
    assert fps == source_fps
    sidecar = json.loads(clip.with_suffix(".json").read_text())
    assert sidecar["source"] == source.name
    assert [(s["action"], s["model"]["file"], s["settings"]) for s in sidecar["post"]] == [
        ("upscale", TEST_UPSCALER_FILE, {"scale": 2})
    ]

    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SCREENSHOTS / "library-upscale.png"), full_page=True)


def test_smooth_motion_x2_frames_doubles_the_frame_rate_and_keeps_the_duration(page, running, source):
    pick_in_grid(page, source)
    choose(page, "library-smooth-how", "×2 frames")
    name = run_post(page, "library-smooth")

    assert "smooth-x2" in name and made_from(running, source)[name]["post"][-1]["action"] == "interpolate"
    player_shows(page, name)
    assert "Smoothed: factor 2" in page.inner_text("#library-details")
    frames, fps = decode_video(running.output_dir / name)
    original, source_fps = decode_video(source)
    assert frames.shape == (2 * original.shape[0] - 1, *original.shape[1:])
    assert fps == 2 * source_fps


def test_an_upscaler_added_in_settings_is_offered_in_the_library_and_is_the_one_used(page, running, source, tmp_path):
    upload = build_test_upscaler(tmp_path, seed=3, name="harbour-x2.safetensors")  # another ×2, not "test"
    open_tab(page, "Settings")
    page.locator("#settings-upscalers").get_by_text("Upscalers", exact=True).click()
    page.locator("#settings-upscaler-upload input[type=file]").set_input_files(str(upload))
    page.wait_for_selector("#settings-upscaler-upload a, #settings-upscaler-upload .file-preview", timeout=20_000)
    page.click("#settings-upscaler-keep")
    page.wait_for_function(
        "() => document.querySelector('#settings-upscaler-status').innerText.includes('harbour-x2.safetensors')",
        timeout=20_000,
    )
    assert "Added" in page.inner_text("#settings-upscaler-status")

    open_tab(page, "Library")
    pick_in_grid(page, source)
    choose(page, "library-upscale-how", "×2")
    choose(page, "library-upscaler", "harbour-x2.safetensors")
    name = run_post(page, "library-upscale")
    player_shows(page, name)
    assert [s["model"]["file"] for s in made_from(running, source)[name]["post"]] == ["harbour-x2.safetensors"]
    assert "with harbour-x2.safetensors" in page.inner_text("#library-details")


def test_the_api_streams_frame_progress_and_refuses_bad_requests_by_name(client, running, source):
    longer = generated(running, client, "a lantern drifts out to sea", 33)
    with running.gate.holding(f"upscale {longer.name}", steps=(2,)) as hold:  # held at frame 2 until streamed
        job = client.submit(clip=longer.name, scale=2, height=0, upscaler="test", api_name="/upscale")
        hold.wait()
        deadline = time.monotonic() + 60
        while not any("frame 2/33" in update[1] for update in job.outputs()):
            assert time.monotonic() < deadline, job.outputs()
            time.sleep(0.05)
    statuses = [update[1] for update in job]
    preview, status, path, job_id, _ = job.result()
    assert status.startswith("Done") and job_id and "**" not in status, status  # plain text for the API
    assert any("frame" in s for s in statuses[:-1]), statuses
    frames, _ = decode_video(Path(path))
    original, _ = decode_video(longer)
    assert frames.shape == (original.shape[0], original.shape[1] * 2, original.shape[2] * 2, 3)

    with pytest.raises(Exception) as bad:  # fps left out (null): the factor alone is judged
        client.predict(clip=source.name, factor=3, fps=None, model="", api_name="/interpolate")
    said = str(bad.value)
    assert "factor must be 2 or 4" in said and "Traceback" not in said and "PostError" not in said, said
    with pytest.raises(Exception, match="'no-such-clip.mp4' is not a clip in the library"):
        client.predict(clip="no-such-clip.mp4", scale=2, height=0, upscaler="test", api_name="/upscale")


def test_the_api_takes_fps_0_as_no_frame_rate_as_it_takes_height_0(client, source):
    with pytest.raises(Exception, match="factor must be 2 or 4"):
        client.predict(clip=source.name, factor=3, fps=0, model="", api_name="/interpolate")


def test_the_readmes_upscale_call_works(client, source):
    _, status, _, _, _ = client.predict(clip=source.name, scale=2, api_name="/upscale")
    assert status.startswith("Done")


def test_a_film_at_twice_the_frame_rate_upscaled_to_1080p_runs_the_learned_models(client, running, source):
    _, source_fps = decode_video(source)
    board = {"shots": [{"clip": source.name}], "fps": 2 * source_fps, "upscale": "1080p"}
    film = Path(client.predict(json.dumps(board), api_name="/assemble"))
    frames, fps = decode_video(film)
    assert frames.shape[1] == 1080 and fps == 2 * source_fps
    record = json.loads((running.output_dir / "films" / f"{film.name}.json").read_text())
    assert record["interpolation"].startswith("learned ("), record
    assert record["size"][1] == 1080
