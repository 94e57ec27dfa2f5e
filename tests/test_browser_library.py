"""A big library in a real browser: a folder of 300 clips from elsewhere (no posters yet) shows its newest
page at once, never more than one page of posters, its posters as they are made, and the next page on
request."""

from __future__ import annotations

import json
import os
import shutil

import numpy as np
import pytest

from library.clips import write_clip
from pipelines import APP_NAME
from tests.server import studio
from tests.test_browser import CHROMIUM, open_tab

pytestmark = pytest.mark.skipif(not shutil.which(CHROMIUM), reason="Debian's chromium is not installed")

CLIPS = 300
PAGE = 24  # studio.page.handlers.library.PAGE_SIZE, restated: the test says what a user sees


@pytest.fixture(scope="module")
def big(tmp_path_factory):
    """The studio on an output folder of CLIPS copies of one small clip, as a restored backup would be."""
    tmp = tmp_path_factory.mktemp("big-library")
    out = tmp / "outputs"
    frames = np.full((9, 32, 48, 3), 90, np.uint8)
    source = write_clip(frames, 8, out, "source", {"app": APP_NAME, "settings": {"prompt": "source"}})
    sidecar = json.loads(source.sidecar.read_text())
    for n in range(CLIPS):
        stem = f"20990101-{n:06d}_copy"
        os.link(source.video, out / f"{stem}.mp4")
        data = dict(sidecar, created_at=f"2099-01-01T{n // 3600:02d}:{n // 60 % 60:02d}:{n % 60:02d}",
                    settings={"prompt": f"take {n:03d} of the harbour", "seed": n})  # fmt: skip
        (out / f"{stem}.json").write_text(json.dumps(data))
    source.video.unlink()
    source.sidecar.unlink()
    with studio(tmp) as running:
        yield running


@pytest.fixture(scope="module")
def page(big):
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        flags = ["--no-sandbox", "--disable-background-networking", "--disable-gpu"]
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=flags)
        page = browser.new_page(viewport={"width": 1280, "height": 1000})
        page.goto(big.url)
        page.wait_for_selector("#t2v-prompt textarea", timeout=60_000)
        yield page
        browser.close()


CAPTIONS = "() => [...document.querySelectorAll('#library-grid .caption-label')].map(c => c.innerText)"
IMAGES = "() => [...document.querySelectorAll('#library-grid img')].map(i => i.getAttribute('src') || '')"


def test_a_library_of_hundreds_shows_a_page_at_once_then_the_next_on_request(page, big):
    open_tab(page, "Library")
    page.wait_for_function(f"() => ({CAPTIONS})().length === {PAGE}", timeout=30_000)
    assert page.evaluate(CAPTIONS) == [f"take {n:03d} of the harbour" for n in range(CLIPS - 1, CLIPS - 1 - PAGE, -1)]
    assert len(page.evaluate(IMAGES)) == PAGE  # one page of pictures, not 300
    assert f"{CLIPS} clips · page 1 of {-(-CLIPS // PAGE)}" in page.locator("#library-summary").inner_text()
    # the placeholders give way to the posters, made in the background for this page only
    page.wait_for_function(f"() => ({IMAGES})().every(src => src.includes('20990101-'))", timeout=120_000)
    page.wait_for_function("() => [...document.querySelectorAll('#library-grid img')].every(i => i.complete)")
    posters = big.output_dir / "posters"
    made = sorted(p.name for p in posters.glob("20990101-*.png"))
    assert made == sorted(f"20990101-{n:06d}_copy.png" for n in range(CLIPS - PAGE, CLIPS))
    page.screenshot(path="/tmp/shots/library-page-1.png")

    page.click("#library-older")
    page.wait_for_function(f"() => ({CAPTIONS})()[0] === 'take {CLIPS - 1 - PAGE:03d} of the harbour'", timeout=30_000)
    assert len(page.evaluate(IMAGES)) == PAGE
    assert "page 2 of" in page.locator("#library-summary").inner_text()
    page.click("#library-newer")
    page.wait_for_function(f"() => ({CAPTIONS})()[0] === 'take {CLIPS - 1:03d} of the harbour'", timeout=30_000)

    page.fill("#library-search textarea, #library-search input", "take 007")
    page.wait_for_function(f"() => JSON.stringify(({CAPTIONS})()) === '[\"take 007 of the harbour\"]'", timeout=30_000)
    assert page.locator("#library-summary").inner_text().strip() == "1 clip"
