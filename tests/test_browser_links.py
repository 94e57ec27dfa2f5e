"""Bring your own, in a real browser: a LoRA and an upscaler added from links in Settings (a site on this
machine), the LoRA picked in a form, and the form saved as a preset to share. Screenshots under /tmp/shots."""

from __future__ import annotations

import json
import re
import shutil

import pytest

from library.presets import read_preset
from pipelines.upscale import ensure_test_upscaler
from tests import test_browser
from tests.test_browser import CHROMIUM, open_tab, settled
from tests.test_browser_forms import fresh, shot
from tests.test_links import running_site, wan_lora

outbound_log, running, page = test_browser.outbound_log, test_browser.running, test_browser.page

pytestmark = pytest.mark.skipif(not shutil.which(CHROMIUM), reason="Debian's chromium is not installed")


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
    page.wait_for_function("() => /Kept|Not added/.test(document.querySelector('#settings-lora-status').innerText)",
                           timeout=60_000)  # fmt: skip
    status = page.inner_text("#settings-lora-status")
    assert "Kept 'tiny-ink.safetensors'" in status, status
    shot(page, "lora-from-link", "#settings-loras")

    page.locator("#settings-upscalers").get_by_text("Upscalers", exact=True).click()
    page.fill("#settings-upscaler-link input, #settings-upscaler-link textarea", f"{site.url}/api/download/models/77")
    page.click("#settings-upscaler-fetch")
    page.wait_for_function(
        "() => /Kept|Not added/.test(document.querySelector('#settings-upscaler-status').innerText)", timeout=60_000
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
