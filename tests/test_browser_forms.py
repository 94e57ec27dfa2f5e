"""The forms' rough edges as a new user meets them, in a real browser (issue 19, item 1.6): a refused LoRA
upload, Frames typed beyond the model, unlabelled Library filters, two Storyboard blocks with one label, Fast
mode forgetting typed steps, a reused seed that silently stays. Each area is screenshotted under /tmp/shots."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from library.clips import list_clips
from tests import test_browser
from tests.test_browser import CHROMIUM, ensure_boat, ensure_storyboard, open_tab

# test_browser's fixtures: this module gets its own studio (online, under the network guard) and browser
outbound_log, running, page = test_browser.outbound_log, test_browser.running, test_browser.page

SHOTS = Path("/tmp/shots")

pytestmark = pytest.mark.skipif(not shutil.which(CHROMIUM), reason="Debian's chromium is not installed")


def shot(page, name: str, *selectors: str) -> None:
    """A screenshot of the area around `selectors` (the whole page without any) for a person to look at."""
    SHOTS.mkdir(parents=True, exist_ok=True)
    path = str(SHOTS / f"{name}.png")
    if not selectors:
        page.screenshot(path=path, full_page=True)
        return
    page.locator(selectors[0]).first.scroll_into_view_if_needed()
    boxes = [page.locator(selector).first.bounding_box() for selector in selectors]
    left, top = max(min(b["x"] for b in boxes) - 8, 0), max(min(b["y"] for b in boxes) - 8, 0)
    right, bottom = max(b["x"] + b["width"] for b in boxes) + 8, max(b["y"] + b["height"] for b in boxes) + 8
    page.screenshot(path=path, clip={"x": left, "y": top, "width": right - left, "height": bottom - top})


def fresh(page) -> None:
    page.set_viewport_size({"width": 1280, "height": 1000})
    page.reload()
    page.wait_for_selector("#t2v-prompt textarea", timeout=60_000)


def test_a_refused_lora_upload_says_why_and_leaves_the_upload_box_ready(page, tmp_path):
    bad = tmp_path / "notes.safetensors"
    bad.write_text("hello, not a LoRA")
    fresh(page)
    open_tab(page, "Settings")
    page.locator("#settings-loras").get_by_text("LoRAs", exact=True).click()
    box = page.locator("#settings-lora-upload")
    box.locator("input[type=file]").set_input_files(str(bad))
    page.wait_for_selector("#settings-lora-upload a, #settings-lora-upload .file-preview", timeout=20_000)
    page.click("#settings-lora-keep")
    page.wait_for_function(  # the answer: a sentence in the status line, or Gradio's red "Error" on the box
        """() => /Not added|Kept/.test(document.querySelector('#settings-lora-status')?.innerText)
                 || document.querySelector('#settings-lora-upload').innerText.includes('Error')""",
        timeout=20_000,
    )
    assert box.get_by_text("Error", exact=True).count() == 0, box.inner_text()
    status = page.inner_text("#settings-lora-status")
    assert "Not added" in status and "notes.safetensors" in status and "could not be read" in status, status
    # the box is empty and ready for the next file: its drop zone shows again
    page.wait_for_selector("#settings-lora-upload .file-preview", state="detached", timeout=20_000)
    assert box.get_by_text("Click to Upload").is_visible()
    assert page.locator(".toast-body").count() == 0  # one message, in the status line
    shot(page, "lora-upload-refused", "#settings-loras")


def test_frames_typed_beyond_the_model_say_what_they_became(page):
    fresh(page)
    frames = page.locator("#t2v-frames input[type=number]")
    frames.fill("9999")
    frames.blur()
    page.wait_for_function("() => document.querySelector('#t2v-frames input[type=number]').value === '33'")
    info = "() => document.querySelector('#t2v-frames').innerText"
    page.wait_for_function(f"() => ({info})().includes('9999')", timeout=20_000)
    said = page.evaluate(info)
    assert "set to 33, the most" in said, said
    shot(page, "frames-beyond-the-model", "#t2v-frames")
    frames.fill("17")  # a value the model makes: the note goes back to the range
    frames.blur()
    page.wait_for_function(f"() => !({info})().includes('9999')", timeout=20_000)
    assert "5 to 33 frames" in page.evaluate(info)


def test_the_library_search_and_filters_have_accessible_names(page):
    fresh(page)
    open_tab(page, "Library")
    search = page.get_by_role("textbox", name="Search the prompts", exact=True)
    model = page.get_by_label("Filter by model", exact=True)
    kind = page.get_by_label("Filter by kind", exact=True)
    for control, elem_id in ((search, "library-search"), (model, "library-model"), (kind, "library-task")):
        assert control.count() == 1 and control.is_visible(), elem_id
        assert control.evaluate("(el, id) => !!el.closest('#' + id)", elem_id), elem_id
    shot(page, "library-filters", "#library-search", "#library-task")


def test_the_storyboard_blocks_are_labelled_by_what_they_show(page, running, tmp_path):
    ensure_storyboard(running, tmp_path)
    fresh(page)
    open_tab(page, "Storyboard")
    page.wait_for_function("() => document.querySelector('#storyboard-summary').innerText.includes('shot')")
    page.click("#storyboard-preview")  # the quick preview's block appears beside the extension's
    page.wait_for_function(
        "() => { const v = document.querySelector('#storyboard-preview-video video'); return v && v.readyState >= 1; }",
        timeout=120_000,
    )
    labels = page.evaluate(
        """() => [...document.querySelectorAll('[data-testid=block-label]')]
                   .filter(l => l.offsetParent !== null).map(l => l.innerText.trim())"""
    )
    quick = page.inner_text("#storyboard-preview-video [data-testid=block-label]")
    assert "Preview" not in labels, labels
    assert len(labels) == len(set(labels)), labels
    assert "film" in quick.lower(), quick
    shot(page, "storyboard-preview-labels")


def test_unticking_fast_mode_gives_back_the_steps_typed(page):
    fresh(page)
    steps = page.locator("#t2v-steps input[type=number]")
    guidance = page.locator("#t2v-guidance input[type=number]")
    steps.fill("37")
    steps.press("Enter")
    guidance.fill("6.5")
    guidance.press("Enter")
    page.locator("#t2v-fast input").check()
    page.wait_for_function("() => document.querySelector('#t2v-steps input[type=number]').value === '3'")
    page.locator("#t2v-fast input").uncheck()
    page.wait_for_function("() => document.querySelector('#t2v-steps input[type=number]').value === '37'")
    assert guidance.input_value() == "6.5" and steps.is_enabled()
    shot(page, "fast-mode-unticked", "#t2v-steps", "#t2v-guidance", "#t2v-fast")


def test_a_reused_seed_is_shown_and_one_click_draws_a_new_one(page, running):
    boat = ensure_boat(running)
    seed = next(c.settings["seed"] for c in list_clips(running.output_dir) if c.name == boat)
    fresh(page)
    open_tab(page, "Library")
    page.wait_for_selector("#library-grid img", timeout=30_000)
    page.fill("#library-search textarea", "paper boat")
    page.wait_for_function("() => document.querySelector('#library-details')?.innerText.includes('paper boat')")
    page.get_by_role("button", name="Reuse settings").click()
    page.wait_for_function("() => document.querySelector('#t2v-prompt textarea').value.includes('paper boat')")
    seed_box = page.locator("#t2v-seed")
    assert seed_box.locator("input").input_value() == str(seed)
    page.wait_for_function("() => document.querySelector('#t2v-seed').innerText.includes('reused')")
    shot(page, "seed-reused", "#t2v-seed", "#t2v-new-seed")
    page.click("#t2v-new-seed")
    page.wait_for_function("() => document.querySelector('#t2v-seed input').value === '-1'")
    page.wait_for_function("() => !document.querySelector('#t2v-seed').innerText.includes('reused')")
    shot(page, "seed-new", "#t2v-seed", "#t2v-new-seed")
    assert json.dumps(seed) not in page.locator("#t2v-seed").inner_text()
