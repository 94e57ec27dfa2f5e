"""Long takes and "bring your own" in a real browser, as a creator meets them: window prompts in the Text to video
form, the status line naming the window that runs, the finished take in the player (decoded from its file), "Stop,
keep the finished windows"; a LoRA and an upscaler added from links in Settings, the LoRA picked in a form and the
form saved as a preset. One studio and one browser for all (the module's). Screenshots under /tmp/shots."""

from __future__ import annotations

import json
import re
import shutil

import pytest

from library import Library
from library.presets import read_preset
from pipelines.upscale import ensure_test_upscaler
from tests import test_browser
from tests.media import decode_video
from tests.test_browser import CHROMIUM, open_tab, settled
from tests.test_browser_forms import fresh, shot
from tests.test_links import running_site, wan_lora

# test_browser's fixtures: this module gets its own studio (online, under the network guard) and browser
outbound_log, running, page = test_browser.outbound_log, test_browser.running, test_browser.page

pytestmark = pytest.mark.skipif(not shutil.which(CHROMIUM), reason="Debian's chromium is not installed")

STATUS = "() => document.querySelector('#t2v-status').innerText"


def fill_take(page, prompts: list[str], steps: int = 6) -> None:
    fresh(page)
    settled(page)
    page.locator("#t2v-take").get_by_text("Long take (one clip of several windows)").click()
    page.fill("#t2v-take-prompts textarea", "\n".join(prompts))
    steps_box = page.locator("#t2v-steps input[type=number]")
    steps_box.fill(str(steps))
    steps_box.blur()
    page.wait_for_selector("#t2v-keep", state="visible", timeout=20_000)  # offered once the form makes a take


def take_named(running, prompt: str):
    """The library clip whose take began with `prompt` (read from the folder, not through the page)."""
    clips = [c for c in Library(running.output_dir).clips() if (c.sidecar.get("windows") or [{}])[0].get("prompt")
             == prompt]  # fmt: skip
    assert len(clips) == 1, [c.name for c in clips]
    return clips[0]


def test_a_take_of_three_window_prompts_shows_its_windows_and_plays_as_one_clip(page, running):
    prompts = ["a kite rises over the dunes", "the kite loops in the wind", "the kite lands in the sand"]
    fill_take(page, prompts)
    with running.gate.holding(prompts[1]) as hold:
        page.click("#t2v-generate")
        hold.wait()  # window 2 is at its first step: the page says so
        page.wait_for_function(f"() => ({STATUS})().includes('Window 2/3 · step 1/6')", timeout=30_000)
        status = page.evaluate(STATUS)
        assert "Window 2/3 · step 1/6" in status, status
        shot(page, "take-running", "#t2v-take", "#t2v-status", "#t2v-preview")
    page.wait_for_function(f"() => ({STATUS})().includes('take of 3 windows')", timeout=120_000)
    page.wait_for_function("() => document.querySelector('#t2v-video video')?.src", timeout=30_000)
    clip = take_named(running, prompts[0])
    assert clip.name in page.evaluate("() => document.querySelector('#t2v-video video').src")
    frames, _ = decode_video(clip.video)
    assert frames.shape[0] == 3 * 9 - 2 * 1  # three windows of the test model's 9 frames sharing 1 frame each
    assert [w["prompt"] for w in clip.sidecar["windows"]] == prompts
    shot(page, "take-done", "#t2v-take", "#t2v-status", "#t2v-video")


def test_stop_keep_the_finished_windows_publishes_the_first_window(page, running):
    prompts = ["a heron wades in a pond", "the heron spears a fish", "the heron flies off"]
    fill_take(page, prompts)
    with running.gate.holding(prompts[1]) as hold:
        page.click("#t2v-generate")
        hold.wait()
        # the page knows the job (its id comes with the stream's updates) once it shows window 2: keep then
        page.wait_for_function(f"() => ({STATUS})().includes('Window 2/3')", timeout=60_000)
        page.click("#t2v-keep")
        # "Stopping…" shows until the job's next update replaces it: either one says the keep was taken
        page.wait_for_function(f"() => ['finished windows will be kept', 'were kept as'].some("
                               f"t => ({STATUS})().includes(t))", timeout=60_000)  # fmt: skip
    page.wait_for_function(f"() => ({STATUS})().includes('were kept as')", timeout=60_000)
    status = page.evaluate(STATUS)
    assert "1 of 3 windows" in status, status
    page.wait_for_function("() => document.querySelector('#t2v-video video')?.src", timeout=30_000)
    clip = take_named(running, prompts[0])
    frames, _ = decode_video(clip.video)
    assert frames.shape[0] == 9 and clip.sidecar["take"]["stopped"] == "cancelled"
    shot(page, "take-kept", "#t2v-status", "#t2v-video")


@pytest.fixture
def site(tmp_path):
    with running_site() as s:
        s.serve("/tiny-ink.safetensors", wan_lora(tmp_path / "tiny-ink.safetensors", seed=5, width=24))
        s.serve("/api/download/models/77", ensure_test_upscaler().read_bytes(), disposition="2x-test.safetensors")
        yield s


def test_a_lora_and_an_upscaler_from_links_then_a_preset_of_the_form(page, running, site):
    fresh(page)
    settled(page)
    open_tab(page, "Settings")
    page.locator("#settings-loras").get_by_text("LoRAs", exact=True).click()
    page.fill("#settings-lora-link input, #settings-lora-link textarea", f"{site.url}/tiny-ink.safetensors")
    page.click("#settings-lora-fetch")
    # the last line: "Kept 'name' …" or "Not added: …" (a progress line says "Kept name" without quotes)
    page.wait_for_function("() => /Kept '|Not added/.test(document.querySelector('#settings-lora-status').innerText)",
                           timeout=60_000)  # fmt: skip
    status = page.inner_text("#settings-lora-status")
    assert "Kept 'tiny-ink.safetensors'" in status, status
    shot(page, "lora-from-link", "#settings-loras")

    page.locator("#settings-upscalers").get_by_text("Upscalers", exact=True).click()
    page.fill("#settings-upscaler-link input, #settings-upscaler-link textarea", f"{site.url}/api/download/models/77")
    page.click("#settings-upscaler-fetch")
    page.wait_for_function(
        "() => /Kept '|Not added/.test(document.querySelector('#settings-upscaler-status').innerText)", timeout=60_000
    )
    assert "Kept '2x-test.safetensors'" in page.inner_text("#settings-upscaler-status")

    open_tab(page, "Text to video")
    page.get_by_text("LoRAs (styles and fine-tunes)").first.click()
    page.locator("#t2v-lora-0 input").click()
    page.get_by_role("option", name=re.compile("tiny-ink")).first.click()
    page.get_by_text("Presets (settings and LoRAs, to reuse or share)").first.click()
    page.fill("#t2v-preset-name input, #t2v-preset-name textarea", "Tiny ink")
    page.click("#t2v-preset-save")
    page.wait_for_function("() => document.querySelector('#t2v-preset-status').innerText.includes('Saved')",
                           timeout=30_000)  # fmt: skip
    shot(page, "preset-saved", "#t2v-presets")
    saved = running.home / "presets" / "Tiny ink.json"
    if not saved.is_file():  # the data folder may sit elsewhere under the home
        saved = next(running.home.rglob("Tiny ink.json"))
    data = read_preset(saved)
    assert [(lora["file"], lora["link"]) for lora in data["loras"]] == [
        ("tiny-ink.safetensors", f"{site.url}/tiny-ink.safetensors")
    ]
    assert json.loads(saved.read_text())["settings"]["steps"] is not None
