"""A real browser on the studio: Debian's Chromium driven by Playwright, as a creator would use it."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from library.clips import list_clips
from tests.server import Gate, studio

CHROMIUM = "/usr/bin/chromium"
SCREENSHOTS = Path(__file__).resolve().parents[1] / "artifacts" / "screenshots"

pytestmark = pytest.mark.skipif(not shutil.which(CHROMIUM), reason="Debian's chromium is not installed")


NETGUARD = Path(__file__).resolve().parent / "netguard"


@pytest.fixture(scope="module")
def outbound_log(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("netguard") / "outbound.log"


@pytest.fixture(scope="module")
def running(tmp_path_factory, outbound_log):
    """The studio as a user starts it (online, the default), with every attempt to reach beyond this machine
    logged and refused by tests/netguard; a gate lets a test hold a job at its first step."""
    guard = {"PYTHONPATH": str(NETGUARD), "WAN_STUDIO_NETLOG": str(outbound_log)}
    with Gate() as gate, studio(tmp_path_factory.mktemp("browser"), env=guard, offline=False, gate=gate) as running:
        yield running


# Counts the page's Gradio events still under way: a queue/join (or run) request starts one, its
# process_completed message on the queue's event stream (read from a copy of the stream) ends it; and which
# event functions have started (`started`, by fn_index), so a fresh page's load events are known to be in.
TRACK_EVENTS = r"""(() => {
    const fetched = window.fetch.bind(window);
    // open: event id -> fn_index
    const events = {joining: 0, open: new Map(), ended: new Set(), started: new Set(), seq: 0, orphaned: []};
    const change = () => { events.seq += 1; };
    const end = (id) => { events.ended.add(id); if (events.open.delete(id)) change(); };
    const read = async (body) => {
        const reader = body.pipeThrough(new TextDecoderStream()).getReader();
        let text = '';
        for (;;) {
            const {value, done} = await reader.read();
            if (done) return;
            const parts = (text + value).split('\n\n');
            text = parts.pop();
            for (const part of parts) {
                for (const line of part.split('\n').filter((l) => l.startsWith('data:'))) {
                    try {
                        const m = JSON.parse(line.slice(5));
                        if (m.msg === 'process_completed') end(m.event_id);
                        // the server closed the stream with events of ours still open: their end comes only
                        // on a later stream (a race of Gradio's; said when settling fails)
                        if (m.msg === 'close_stream' && events.open.size) events.orphaned.push(...events.open.values());
                    }
                    catch (e) {}
                }
            }
        }
    };
    window.fetch = async (input, init) => {
        const url = typeof input === 'string' ? input : input.url;
        const starts = /\/queue\/join|\/run\//.test(url);
        let fn = null;
        if (starts) {
            try { fn = JSON.parse(init.body).fn_index; } catch (e) {}
            events.started.add(fn);
            events.joining += 1;
            change();
        }
        try {
            const response = await fetched(input, init);
            if (starts) {
                const id = url.includes('/queue/join') && response.ok && (await response.clone().json()).event_id;
                if (id && !events.ended.has(id)) events.open.set(id, fn);
            } else if (url.includes('/queue/data') && response.body) {
                const [mine, theirs] = response.body.tee();
                read(mine);
                return new Response(theirs, {status: response.status, statusText: response.statusText,
                                             headers: response.headers});
            }
            return response;
        } finally {
            if (starts) { events.joining -= 1; change(); }
        }
    };
    window.__events = events;
})();"""

# True once the page's load events have all started, none is under way and none started or ended since the
# last look, a task queued after it having run (the page applies an event's result in a task of its own,
# and what it sets off joins then).
EVENTS_SETTLED = """() => {
    const e = window.__events;
    const loads = (window.gradio_config?.dependencies || [])
        .filter((d) => d.backend_fn && d.targets.some((t) => t[1] === 'load')).map((d) => d.id);
    if (!loads.every((id) => e.started.has(id))) return false;
    if (e.joining || e.open.size) { e.mark = null; return false; }
    if (!e.mark || e.mark.seq !== e.seq) {
        const mark = {seq: e.seq, ran: false};
        e.mark = mark;
        setTimeout(() => { mark.ran = true; }, 0);
        return false;
    }
    return e.mark.ran;
}"""


def settled(page) -> None:
    """Wait until every event the page has started has ended, and nothing it set off is still to come: the
    event to wait on before checking that something did NOT happen."""
    from playwright.sync_api import TimeoutError as PlaywrightTimeout

    try:
        page.wait_for_function(EVENTS_SETTLED, timeout=60_000)
    except PlaywrightTimeout:
        still = page.evaluate(
            """() => {
                const e = window.__events, deps = window.gradio_config?.dependencies || [];
                const loads = deps.filter((d) => d.backend_fn && d.targets.some((t) => t[1] === 'load'));
                return {open: [...e.open.values()].map((fn) => {
                            const dep = deps.find((d) => d.id === fn) || {};
                            return {fn_index: fn, targets: dep.targets, outputs: dep.outputs};
                        }),
                        joining: e.joining, orphaned: e.orphaned,
                        loads_not_started: loads.filter((d) => !e.started.has(d.id)).map((d) => d.id)};
            }"""
        )
        raise AssertionError(f"the page's events never settled; still under way: {still}") from None


def shown_clip(page, player: str) -> str | None:
    """The URL of the clip a player shows now, to tell the next clip from it."""
    return page.evaluate("(player) => document.querySelector(`${player} video`)?.src || null", player)


def wait_for_new_clip(page, player: str, before: str | None, named: str) -> None:
    """Wait until the player shows, loaded, a clip other than `before` whose file name holds `named` (its
    prompt's words): a reloaded form shows its last job's clip again, which must not pass for this one."""
    page.wait_for_function(
        """([player, before, named]) => {
            const v = document.querySelector(`${player} video`);
            return v && v.src && v.src !== before && v.src.includes(named) && v.readyState >= 1;
        }""",
        arg=[player, before, named],
        timeout=120_000,
    )


@pytest.fixture(scope="module")
def page(running):
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path=CHROMIUM,
            headless=True,
            args=["--no-sandbox", "--disable-background-networking", "--disable-component-update", "--disable-gpu"],
        )
        page = browser.new_page(viewport={"width": 1280, "height": 1000})
        page.add_init_script(TRACK_EVENTS)
        page.requested = []  # every URL the page asks for, for the privacy check at the end
        page.on("request", lambda request: page.requested.append(request.url))
        page.goto(running.url)
        page.wait_for_selector("#t2v-prompt textarea", timeout=60_000)
        yield page
        browser.close()


# ---- what a test needs in the library, made through the API when an earlier test did not: each test can
# run alone (`-k`), and in the whole file they reuse what the journey before them made
BOAT, DRIFT, TURN = "a paper boat drifts down a rainy street", "the boat drifts on", "the boat turns towards the camera"


def clip_named(running, prompt: str, make) -> str:
    """The file name of the library's clip with this prompt, made by `make(client)` when there is none."""
    from gradio_client import Client

    def find() -> str | None:
        return next((c.name for c in list_clips(running.output_dir) if c.settings["prompt"] == prompt), None)

    if find() is None:
        client = Client(running.url, verbose=False)
        try:
            assert "Done" in make(client)[1]
        finally:
            client.close()
    return find()


def continued(running, source: str, prompt: str, tmp: Path):
    """An image-to-video clip from `source`'s last frame, as "Continue from its last frame" makes."""
    from gradio_client import handle_file

    from library import Library

    picture = tmp / f"{source}.last.png"
    Library(running.output_dir).last_frame(source).save(picture)
    return lambda client: client.predict(image=handle_file(str(picture)), prompt=prompt, api_name="/image_to_video")


def ensure_boat(running) -> str:
    return clip_named(running, BOAT, lambda c: c.predict(prompt=BOAT, steps=40, api_name="/text_to_video"))


def ensure_storyboard(running, tmp: Path) -> None:
    """The storyboard the extend test leaves: the boat, then its extension (one frame in)."""
    from library import Library, Shot

    board = Library(running.output_dir).storyboard
    if len(board.load().shots) >= 2:
        return
    boat = ensure_boat(running)
    drift = clip_named(running, DRIFT, continued(running, boat, DRIFT, tmp))
    board.append(Shot(clip=boat))
    board.append(Shot(clip=drift, start_s=1 / 8))


def test_generate_in_the_browser_shows_changing_previews_and_a_playable_video(page, running):
    page.set_viewport_size({"width": 1280, "height": 1000})
    page.reload()  # a fresh page on the form's tab, whatever ran before
    page.wait_for_selector("#t2v-prompt textarea", timeout=60_000)
    open_tab(page, "Text to video")
    settled(page)  # the form's last job, shown again on load, is in before previews are counted
    before = shown_clip(page, "#t2v-video")
    # Record every preview image the page shows, from before the click on.
    page.evaluate(
        r"""() => {
            window.__previews = [];
            window.__steps = [];
            const seen = () => {
                const img = document.querySelector('#t2v-preview img');
                if (img && img.src && window.__previews.at(-1) !== img.src) window.__previews.push(img.src);
                const step = (document.querySelector('#t2v-status')?.innerText || '').match(/Step (\d+)\/40/);
                if (step && window.__steps.at(-1) !== +step[1]) window.__steps.push(+step[1]);
            };
            new MutationObserver(seen).observe(document.body, {subtree: true, childList: true, attributes: true});
        }"""
    )
    page.fill("#t2v-prompt textarea", BOAT)
    steps = page.locator("#t2v-steps input[type=number]")
    steps.fill("40")
    steps.press("Enter")
    # held at three steps until the page shows each, so no sampling (a loaded machine) can miss them
    with running.gate.holding(BOAT, steps=(1, 15, 30)) as held:
        page.click("#t2v-generate")
        for n, step in enumerate((1, 15, 30), start=1):
            held.wait(step=step)
            page.wait_for_function(
                "([step, n]) => window.__steps.includes(step) && new Set(window.__previews).size >= n",
                arg=[step, n], timeout=60_000,
            )  # fmt: skip
            held.go_on()

    wait_for_new_clip(page, "#t2v-video", before, "a-paper-boat-drifts")
    info = page.evaluate(
        """() => {
            const v = document.querySelector('#t2v-video video');
            return {w: v.videoWidth, h: v.videoHeight, d: v.duration, error: v.error && v.error.code};
        }"""
    )
    assert info["error"] is None
    assert (info["w"], info["h"]) == (96, 64)
    assert info["d"] == pytest.approx(9 / 8, abs=0.15)  # 9 frames at 8 fps
    # previews follow the steps: several distinct previews while the step count climbs, never more than
    # one per step (the page redraws on change, at most every 0.1 s, so fast test steps are sampled)
    previews, shown_steps = page.evaluate("() => window.__previews"), page.evaluate("() => window.__steps")
    assert len(shown_steps) >= 3 and shown_steps == sorted(shown_steps), shown_steps
    assert 3 <= len(set(previews)) <= 40 + 2, len(set(previews))  # + the empty start and the final frame
    assert "Done" in page.inner_text("#t2v-status")

    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SCREENSHOTS / "studio-text-to-video.png"), full_page=True)


def test_the_library_lists_the_clip_after_a_reload(page, running):
    ensure_boat(running)
    page.reload()
    page.get_by_role("tab", name="Library").click()
    page.wait_for_selector("#library-video video", timeout=30_000)
    page.wait_for_selector("#library-grid img", timeout=30_000)  # a poster frame per clip
    page.fill("#library-search textarea", "paper boat")  # the clip, whatever else an earlier test made
    page.wait_for_function("() => document.querySelector('#library-details')?.innerText.includes('paper boat')")
    details = page.inner_text("#library-details")
    assert "paper boat" in details and "Seed:" in details and "Steps, guidance: 40" in details
    assert "Content Credentials: signed by this studio" in details and '"format"' not in details
    page.screenshot(path=str(SCREENSHOTS / "studio-library.png"), full_page=True)
    page.fill("#library-search textarea", "no such words")  # search by prompt: nothing matches
    page.wait_for_function("() => !document.querySelector('#library-grid img')", timeout=10_000)
    page.fill("#library-search textarea", "PAPER BOAT")
    page.wait_for_selector("#library-grid img", timeout=10_000)
    page.locator("#library-task input").click()
    page.get_by_role("option", name="Image to video").click()  # the paper boat is text to video
    page.wait_for_function("() => !document.querySelector('#library-grid img')", timeout=10_000)
    page.locator("#library-task input").click()
    page.get_by_role("option", name="Both kinds").click()
    page.fill("#library-search textarea", "")
    page.wait_for_selector("#library-grid img", timeout=10_000)
    page.fill("#library-search textarea", "paper boat")
    page.wait_for_selector("#library-grid img", timeout=10_000)
    page.locator("#library-grid img").first.click()
    page.wait_for_function("() => document.querySelector('#library-details')?.innerText.includes('paper boat')")

    page.get_by_role("tab", name="Text to video").click()
    page.locator("#t2v-fast input").check()  # Fast mode on in the form, then a clip made without it is reused
    page.wait_for_function("() => document.querySelector('#t2v-steps input[type=number]').value === '3'")
    page.get_by_role("tab", name="Library").click()
    page.get_by_role("button", name="Reuse settings").click()
    page.wait_for_function(
        "() => document.querySelector('#t2v-prompt textarea').value.includes('paper boat')", timeout=30_000
    )
    settled(page)  # a late event (say Fast mode's own, set off by Reuse) would have landed
    assert page.locator("#t2v-steps input[type=number]").input_value() == "40"
    assert not page.locator("#t2v-fast input").is_checked() and page.locator("#t2v-steps input").first.is_enabled()
    assert page.locator("#t2v-prompt textarea").is_visible()  # the form's tab is the one shown


TABS = ["Text to video", "Image to video", "Library", "Storyboard", "Settings", "Verify"]


def open_tab(page, name: str) -> None:
    """A tab by its name, from the tab bar or, on a narrow screen, from its "More tabs" menu."""
    page.wait_for_function(  # the bar is drawn: the tab, or the menu holding it, is shown
        """(name) => [...document.querySelectorAll('[role=tab]')].some(t => t.innerText === name && t.checkVisibility())
                     || document.querySelector("button[aria-label='More tabs']")?.checkVisibility()""",
        arg=name,
    )
    tab = page.get_by_role("tab", name=name)
    if tab.count() and tab.is_visible():
        tab.click()
    else:
        page.click("button[aria-label='More tabs']")
        page.locator(".overflow-dropdown button", has_text=name).click()
    page.wait_for_function(
        "(name) => [...document.querySelectorAll('[role=tab][aria-selected=true]')].some(t => t.innerText === name)",
        arg=name,
    )


def test_every_tab_at_desktop_and_phone_width(page, running):
    ensure_boat(running)  # a job in the queue table and a clip in the library, as a user would have
    """Every tab reachable at 390 px (the bar's "More tabs" menu), nothing scrolling sideways, the queue
    readable (two columns) and the library grid two posters wide; a screenshot of each for review."""
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    for width, height, label in ((1280, 1000, "desktop"), (390, 844, "phone")):
        page.set_viewport_size({"width": width, "height": height})
        page.reload()
        page.wait_for_selector("#t2v-prompt textarea", timeout=60_000)
        for name in TABS:
            open_tab(page, name)
            settled(page)  # what the tab loads is in
            overflow = page.evaluate("() => document.documentElement.scrollWidth - window.innerWidth")
            assert overflow <= 1, f"{name} scrolls sideways by {overflow}px at {width}px"
            slug = name.lower().replace(" ", "-")
            page.screenshot(path=str(SCREENSHOTS / f"{label}-{slug}.png"), full_page=True)
        assert page.locator("#queue-table th").count() == 2  # what, status
    page.set_viewport_size({"width": 390, "height": 844})
    open_tab(page, "Library")
    page.wait_for_selector("#library-grid img", timeout=30_000)
    cell = page.locator("#library-grid img").first.bounding_box()
    assert cell["width"] > 120, cell  # two posters to a row, not five slivers
    page.set_viewport_size({"width": 1280, "height": 1000})
    open_tab(page, "Text to video")


def test_storyboard_extend_a_shot_then_export_a_film(page, running):
    from library import Library, Storyboard

    ensure_boat(running)
    Library(running.output_dir).storyboard.save(Storyboard())  # an empty storyboard, whatever ran before
    page.set_viewport_size({"width": 1280, "height": 1000})
    page.reload()
    settled(page)  # the page's load events have filled the clip pickers (their spinner covers the picker)
    page.get_by_role("tab", name="Storyboard").click()
    page.locator("#storyboard-pick input").click()
    page.get_by_role("option", name=re.compile("paper boat")).first.click()
    page.locator("#storyboard-add").click()
    page.wait_for_function(
        "() => document.querySelector('#storyboard-summary')?.innerText?.includes('1 shot,')", timeout=30_000
    )
    page.fill("#extend-prompt textarea", "the boat drifts on")
    page.locator("#extend-go").click()
    # the extension runs as a job and joins the storyboard when it is done
    page.wait_for_function(
        "() => document.querySelector('#storyboard-summary')?.innerText?.includes('2 shots')", timeout=120_000
    )
    page.locator("#storyboard-export").click()
    page.wait_for_function(
        "() => { const v = document.querySelector('#storyboard-film video'); return v && v.readyState >= 1; }",
        timeout=120_000,
    )
    duration = page.evaluate("() => document.querySelector('#storyboard-film video').duration")
    assert duration == pytest.approx(9 / 8 + 8 / 8, abs=0.2)  # 9 frames + 9 less the shared joint frame, 8 fps
    page.screenshot(path=str(SCREENSHOTS / "studio-storyboard.png"), full_page=True)


def test_a_reopened_storyboard_shows_its_strip_and_each_shot_is_edited_there(page, running, tmp_path):
    ensure_storyboard(running, tmp_path)
    page.reload()
    page.get_by_role("tab", name="Storyboard").click()
    page.wait_for_function(
        "() => document.querySelector('#storyboard-summary')?.innerText?.includes('2 shots')", timeout=30_000
    )
    strip = page.locator("#storyboard-strip")
    page.wait_for_function("() => document.querySelectorAll('#storyboard-strip img').length === 2")
    text = page.inner_text("#storyboard-strip")
    assert "1 · 0.0–end s" in text and "2 · 0.1–end s" in text  # an extension skips the frame it shares
    assert ".mp4" not in page.inner_text("body").split("Queue and activity")[0]  # no file names on the tab
    assert "CSV" not in page.inner_text("body")

    strip.locator("img").nth(1).click()  # the extension
    page.wait_for_function("() => document.querySelector('#storyboard-shot-title')?.innerText.includes('Shot 2 of 2')")
    assert "the boat drifts on" in page.inner_text("#storyboard-shot-title")
    page.wait_for_selector("#storyboard-in-frame img", timeout=30_000)
    page.wait_for_selector("#storyboard-out-frame img", timeout=30_000)
    page.click("#storyboard-left")
    page.wait_for_function("() => document.querySelector('#storyboard-shot-title')?.innerText.includes('Shot 1 of 2')")

    page.locator("#storyboard-transition input").click()
    page.get_by_role("option", name="Crossfade").click()
    page.wait_for_function("() => document.querySelector('#storyboard-strip')?.innerText?.includes('crossfade')")
    trim_in = page.locator("#storyboard-in input[type=number]")
    trim_in.fill("0.25")
    trim_in.blur()
    page.wait_for_function("() => document.querySelector('#storyboard-strip')?.innerText?.includes('1 · 0.2')")
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SCREENSHOTS / "studio-storyboard-editor.png"), full_page=True)

    page.click("#storyboard-preview")
    page.wait_for_function(
        "() => { const v = document.querySelector('#storyboard-preview-video video'); return v && v.readyState >= 1; }",
        timeout=120_000,
    )
    assert list((running.output_dir / "previews").glob("*.mp4"))
    page.click("#storyboard-save")
    page.wait_for_function("() => document.querySelector('#storyboard-summary')?.innerText?.includes('Saved')")
    import json

    saved = json.loads((running.output_dir / "storyboard.json").read_text())
    first = saved["shots"][0]
    assert "the-boat-drifts-on" in first["clip"] and first["start_s"] == 0.25 and first["transition"] == "crossfade"


def test_image_to_video_from_a_library_clips_last_frame(page, running):
    ensure_boat(running)
    page.set_viewport_size({"width": 1280, "height": 1000})
    page.reload()
    page.get_by_role("tab", name="Library").click()
    page.wait_for_selector("#library-video video", timeout=30_000)
    page.fill("#library-search textarea", "paper boat")  # its clip, whatever an earlier test made since
    page.wait_for_function("() => document.querySelector('#library-details')?.innerText.includes('paper boat')")
    page.get_by_role("button", name="Continue from its last frame").click()
    # the Image to video tab is shown, its example picture replaced by the clip's last frame
    page.wait_for_function(
        """() => { const i = document.querySelector('#i2v-image img');
                   return i && i.src && !i.src.includes('example-landscape'); }""",
        timeout=30_000,
    )
    assert page.locator("#i2v-prompt textarea").is_visible()
    page.fill("#i2v-prompt textarea", "the boat turns towards the camera")
    # the form's last job, shown again since the reload, or none: the new clip is told apart by its name too
    before = shown_clip(page, "#i2v-video")
    page.click("#i2v-generate")
    wait_for_new_clip(page, "#i2v-video", before, "the-boat-turns-towards")
    size = page.evaluate(
        "() => { const v = document.querySelector('#i2v-video video'); return [v.videoWidth, v.videoHeight]; }"
    )
    assert size == [96, 64]  # "auto" size matches the 96x64 frame it started from
    assert "Done" in page.inner_text("#i2v-status")
    page.screenshot(path=str(SCREENSHOTS / "studio-image-to-video.png"), full_page=True)


def test_a_clip_moved_to_trash_leaves_the_library_and_stays_on_disk(page, running, tmp_path):
    ensure_storyboard(running, tmp_path)  # the extension "the boat drifts on" is a shot of it
    clip_named(running, TURN, continued(running, ensure_boat(running), TURN, tmp_path))  # the newest clip
    page.reload()
    running_output = running.output_dir
    page.get_by_role("tab", name="Library").click()
    details = "() => document.querySelector('#library-details').innerText"
    page.wait_for_selector("#library-grid img", timeout=30_000)
    page.locator("#library-grid img").first.click()  # the newest clip
    page.wait_for_function(f"() => ({details})().includes('the boat turns towards the camera')", timeout=30_000)
    page.locator("#library-delete").click()  # the newest: the image-to-video clip, in no storyboard shot
    page.wait_for_function(f"() => !({details})().includes('the boat turns towards the camera')", timeout=30_000)
    page.wait_for_function("() => document.querySelector('#library-status')?.innerText.includes('Move the files back')")
    trashed = list((running_output / "trash").glob("*/*.mp4"))
    assert len(trashed) == 1 and trashed[0].with_suffix(".json").is_file()
    assert not (running_output / trashed[0].name).exists()
    # a clip the storyboard uses is refused, with the reason
    page.wait_for_function(f"() => ({details})().includes('the boat drifts on')", timeout=30_000)  # the newest
    assert "the boat turns towards" not in page.inner_text("#library-grid")
    page.locator("#library-delete").click()
    page.wait_for_function("() => document.body.innerText.includes('of the storyboard: remove it there first')")
    assert "the boat drifts on" in page.evaluate(details)
    assert len(list((running_output / "trash").glob("*/*.mp4"))) == 1


def test_a_page_that_did_not_start_a_job_can_cancel_it_from_the_queue(page, running):
    """After a reload the forms no longer know their jobs; the queue panel stops any job."""
    from gradio_client import Client

    page.reload()
    page.wait_for_selector("#queue-table", timeout=30_000)
    assert not page.locator("#queue-pick").is_visible()  # no job running or queued: no empty picker
    client = Client(running.url, verbose=False)
    try:
        # a job held running on the worker, and a job queued behind it, both started elsewhere
        with running.gate.holding("keeps the worker busy") as held:
            busy = client.submit(prompt="keeps the worker busy", steps=3, api_name="/text_to_video")
            held.wait()
            page.wait_for_function(
                "() => document.querySelector('#queue-table')?.innerText?.includes('keeps the worker busy')",
                timeout=30_000,
            )
            queued = client.submit(prompt="queued, to be cancelled", steps=3, api_name="/text_to_video")
            page.wait_for_function(
                "() => document.querySelector('#queue-table')?.innerText?.includes('queued, to be cancelled')",
                timeout=30_000,
            )
            page.locator("#queue-pick input").click()
            page.get_by_role("option", name=re.compile("queued, to be cancelled")).click(timeout=30_000)
            page.locator("#queue-cancel").click()
            page.wait_for_function(
                "() => document.querySelector('#queue-note')?.innerText?.includes('Cancelling')", timeout=30_000
            )
            assert queued.result(timeout=120)[1].startswith("Cancelled")  # its stream ends with the reason
        assert busy.result(timeout=120)[1].startswith("Done in")  # let go: it runs to its clip
    finally:
        client.close()
    prompts = [c.settings["prompt"] for c in list_clips(running.output_dir)]
    assert "keeps the worker busy" in prompts and "queued, to be cancelled" not in prompts


def test_settings_save_untouched_then_refuse_a_backend_this_machine_lacks_then_keep_a_speed_choice(page, running):
    import json

    saved = running.home / "settings.json"
    page.reload()
    page.get_by_role("tab", name="Settings").click()
    page.locator("#settings-save").click()
    page.wait_for_function("() => document.querySelector('#settings-status')?.innerText?.includes('Saved')")
    stored = json.loads(saved.read_text())
    assert stored["steps"] is None and stored["guidance_scale"] is None  # untouched: the model's own, not 0

    page.locator("#settings-attention input").click()
    page.get_by_role("option", name=re.compile("^flash: FlashAttention 2")).click()
    page.locator("#settings-save").click()
    page.wait_for_function("() => document.querySelector('#settings-status')?.innerText?.includes('Not saved')")
    status = page.locator("#settings-status").inner_text()
    assert "The 'flash' attention backend needs a CUDA GPU" in status and "Traceback" not in status
    assert json.loads(saved.read_text())["attention"] == "auto"

    page.locator("#settings-attention input").click()
    page.get_by_role("option", name=re.compile(r"^auto \(here: sdpa\)")).click()
    page.get_by_label("bfloat16 (faster decode)").check()
    page.fill("#settings-steps textarea", "3")
    page.locator("#settings-save").click()
    page.wait_for_function("() => document.querySelector('#settings-status')?.innerText?.includes('Saved')")
    stored = json.loads(saved.read_text())
    assert (stored["vae_precision"], stored["steps"], stored["attention"]) == ("bfloat16", 3, "auto")
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SCREENSHOTS / "settings.png"), full_page=True)
    # put the defaults back for the tests after this one
    page.get_by_label("float32 (exact)").check()
    page.fill("#settings-steps textarea", "")
    page.locator("#settings-save").click()
    page.wait_for_function(
        "() => !document.querySelector('#settings-status')?.innerText?.includes('Not saved')"
        " && document.querySelector('#settings-status')?.innerText?.includes('Saved')"
    )
    page.get_by_role("tab", name="Text to video").click()


def test_add_a_lora_in_settings_use_it_with_fast_mode_and_reuse_both(page, running, tmp_path):
    import json

    from diffusers import WanTransformer3DModel

    from pipelines.testmodels import ensure_test_model, lora_weights, save_lora

    model = WanTransformer3DModel.from_pretrained(ensure_test_model("test-tiny") / "transformer")
    upload = save_lora(lora_weights(model, seed=6, scale=0.2), tmp_path / "watercolour.safetensors", "comfyui")
    page.reload()
    page.get_by_role("tab", name="Settings").click()
    page.locator("#settings-loras").get_by_text("LoRAs", exact=True).click()
    page.locator("#settings-lora-upload input[type=file]").set_input_files(str(upload))
    page.wait_for_selector("#settings-lora-upload a, #settings-lora-upload .file-preview", timeout=20_000)
    page.click("#settings-lora-keep")
    page.wait_for_function(
        "() => document.querySelector('#settings-lora-list')?.innerText?.includes('watercolour.safetensors')",
        timeout=20_000,
    )
    assert "for the tiny TI2V test layout" in page.locator("#settings-lora-list").inner_text()

    page.get_by_role("tab", name="Text to video").click()
    page.fill("#t2v-prompt textarea", "a watercolour heron")
    page.get_by_text("LoRAs (styles and fine-tunes)").first.click()
    page.locator("#t2v-lora-0 input").click()
    page.get_by_role("option", name="watercolour.safetensors").click()
    page.locator("#t2v-fast input").check()
    steps = page.locator("#t2v-steps input[type=number]")
    page.wait_for_function("() => document.querySelector('#t2v-steps input[type=number]').value === '3'")
    assert steps.is_disabled()  # Fast mode's steps are its authors', not editable
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SCREENSHOTS / "t2v-lora-fast.png"), full_page=True)
    page.click("#t2v-generate")
    # the form showed the last job's "Done" since the reload: wait for this clip itself in the player
    page.wait_for_function(
        "() => document.querySelector('#t2v-video video')?.src.includes('watercolour-heron')", timeout=120_000
    )
    page.wait_for_function("() => document.querySelector('#t2v-status')?.innerText?.includes('Done')", timeout=120_000)
    sidecar = json.loads(next(running.output_dir.glob("*watercolour-heron*.json")).read_text())
    assert [(lora["file"], lora["strength"]) for lora in sidecar["settings"]["loras"]] == [
        ("watercolour.safetensors", 1.0)
    ]
    assert sidecar["fast_preset"].startswith("test distilled checkpoint") and sidecar["settings"]["steps"] == 3

    page.reload()
    page.wait_for_selector("#t2v-prompt textarea", timeout=60_000)
    page.get_by_role("tab", name="Library").click()
    page.wait_for_selector("#library-video video", timeout=30_000)
    page.get_by_role("button", name="Reuse settings").click()
    page.wait_for_function(
        "() => document.querySelector('#t2v-prompt textarea').value.includes('heron')", timeout=30_000
    )
    page.wait_for_function("() => document.querySelector('#t2v-fast input').checked")
    page.get_by_text("LoRAs (styles and fine-tunes)").first.click()
    assert page.locator("#t2v-lora-0 input").input_value() == "watercolour.safetensors"


def test_after_a_reload_the_form_shows_its_own_queued_job_and_follows_it_to_the_clip(page, running):
    from gradio_client import Client

    client = Client(running.url, verbose=False)
    try:
        with running.gate.holding("someone else's long job") as held:  # running until the reloaded page looked
            busy = client.submit(prompt="someone else's long job", steps=3, api_name="/text_to_video")
            held.wait()
            page.reload()
            page.wait_for_selector("#t2v-prompt textarea", timeout=60_000)
            page.wait_for_function(
                "() => document.querySelector('#queue-table')?.innerText?.includes('long job')", timeout=30_000
            )
            page.fill("#t2v-prompt textarea", "my own queued shot")
            stored = page.evaluate("() => localStorage.getItem('wan-studio-t2v-job')")  # encrypted by Gradio
            page.click("#t2v-generate")
            page.wait_for_function(
                "() => document.querySelector('#t2v-status')?.innerText?.includes('Queued')", timeout=30_000
            )
            page.wait_for_function(  # the browser has stored the new job (written just after the update)
                "(before) => localStorage.getItem('wan-studio-t2v-job') !== before", arg=stored, timeout=30_000
            )
            page.reload()  # the page forgets everything but what the browser stored
            page.wait_for_selector("#t2v-prompt textarea", timeout=60_000)
            page.wait_for_function(  # its own job, still queued behind the held one
                "() => /Queued/.test(document.querySelector('#t2v-status')?.innerText ?? '')", timeout=30_000
            )
        page.wait_for_function(
            "() => document.querySelector('#t2v-status')?.innerText?.includes('Done')", timeout=120_000
        )
        page.wait_for_selector("#t2v-video video", timeout=30_000)
        assert "my own queued shot" not in page.locator("#t2v-prompt textarea").input_value()  # a fresh form
        busy.result(timeout=120)
    finally:
        client.close()


def test_a_bad_request_shows_one_message_in_the_status_line_and_nothing_else(page):
    page.reload()
    page.wait_for_selector("#t2v-prompt textarea", timeout=60_000)
    settled(page)  # the form's last job, shown again on load, lands before the refusal, not over it
    page.fill("#t2v-prompt textarea", "a lighthouse in a storm")
    page.locator("#t2v-size input").fill("1000x10")
    page.locator("#t2v-size input").press("Enter")
    page.click("#t2v-generate")
    page.wait_for_function(
        "() => document.querySelector('#t2v-status')?.innerText?.includes('Not started')", timeout=30_000
    )
    status = page.inner_text("#t2v-status")
    assert "Not started" in status and "The height must be between 32 and 256 px" in status, status
    settled(page)  # a toast or badge from the refusal would be shown by now
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SCREENSHOTS / "t2v-refused.png"), full_page=False)
    # one message: no toast, no "Error" badge over the preview, the clip or the seed
    assert page.locator(".toast-body, .toast-wrap .toast-title").count() == 0
    assert page.get_by_text("Error", exact=True).count() == 0
    assert page.locator("#t2v-seed-used input").input_value() in ("", "0")


def test_a_first_run_without_a_gpu_says_so_and_one_click_gives_the_test_model(page, tmp_path):
    """`python app.py` as a new user starts it on a machine without a CUDA GPU: the default (real) model."""
    from pipelines.catalogue import DEFAULT_MODEL

    with studio(tmp_path, "--model", DEFAULT_MODEL) as fresh:
        first = page  # the module's browser, another tab
        page = first.context.browser.new_page(viewport={"width": 1280, "height": 900})
        page.goto(fresh.url)
        page.wait_for_selector("#gpu-notice", timeout=60_000)
        assert "No CUDA GPU was found on this machine" in page.inner_text("#gpu-notice")
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(SCREENSHOTS / "first-run-no-gpu.png"), full_page=False)
        # Wan's default negative prompt is Chinese: labelled as the model's own, with what it says in English
        negative = page.locator("#t2v-negative")
        assert "The model's own default, in Chinese" in negative.inner_text()
        assert "It says: garish colours, overexposed" in negative.inner_text()
        wan_default = negative.locator("textarea").input_value()
        negative.locator("textarea").fill("my own words")
        page.click("#t2v-negative-reset")
        page.wait_for_function("(v) => document.querySelector('#t2v-negative textarea').value === v", arg=wan_default)
        page.click("#use-test-model")
        page.wait_for_function(
            "() => document.querySelector('#gpu-notice')?.innerText?.includes('you are using the test model')"
        )
        assert "TEST MODEL" in page.inner_text("#model-note") and not page.locator("#use-test-model").is_visible()
        page.wait_for_function("() => document.querySelector('#t2v-negative textarea').value === 'blurry, static'")
        page.fill("#t2v-prompt textarea", "a first try")
        page.click("#t2v-generate")
        page.wait_for_function(
            "() => document.querySelector('#t2v-status')?.innerText?.includes('Done')", timeout=120_000
        )
        page.wait_for_selector("#t2v-video video", timeout=30_000)
        page.close()


def pick_model(page, label: str) -> None:
    page.get_by_role("tab", name="Settings").click()
    page.locator("#settings-model input").click()
    page.get_by_role("option", name=label).click()
    page.locator("#settings-save").click()
    page.wait_for_function("() => document.querySelector('#settings-status')?.innerText?.includes('Saved')")


def test_image_to_video_with_an_end_frame_where_the_model_takes_one(page, running, tmp_path):
    import json

    from PIL import Image

    page.reload()
    page.wait_for_selector("#t2v-prompt textarea", timeout=60_000)
    page.get_by_role("tab", name="Image to video").click()
    assert not page.locator("#i2v-end-frame").is_visible()  # TI2V layout: diffusers would ignore an end frame
    pick_model(page, "Tiny Wan2.2 I2V-A14B layout (two experts, end frame) [TEST MODEL, random weights]")
    try:
        page.get_by_role("tab", name="Image to video").click()
        page.locator("#i2v-end-frame").get_by_text("End frame (optional)").click()
        end = tmp_path / "sunset.png"
        Image.new("RGB", (64, 48), (230, 120, 40)).save(end)
        page.locator("#i2v-end-image input[type=file]").set_input_files(str(end))
        page.wait_for_selector("#i2v-end-image img", timeout=20_000)
        page.fill("#i2v-prompt textarea", "the light turns to sunset")
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(SCREENSHOTS / "i2v-end-frame.png"), full_page=True)
        page.click("#i2v-generate")
        page.wait_for_function(  # the clip in the player, or the form's refusal or failure
            """() => document.querySelector('#i2v-video video')?.src.includes('turns-to-sunset')
                     || /Not started|Failed/.test(document.querySelector('#i2v-status').innerText)""",
            timeout=120_000,
        )
        assert list(running.output_dir.glob("*turns-to-sunset*.json")), page.inner_text("#i2v-status")
        sidecar = json.loads(next(running.output_dir.glob("*turns-to-sunset*.json")).read_text())
        assert sidecar["settings"]["end_frame"] is True and (running.output_dir / sidecar["end_image"]).is_file()
    finally:
        pick_model(page, "Tiny Wan2.2 TI2V layout [TEST MODEL, random weights]")


def test_nothing_left_the_machine(page, running, outbound_log):
    """With the server online, neither it nor the page reached beyond this machine: through this test's own
    journey (a clip made in the page and played, every tab opened), so it proves something when run alone,
    and in the whole file through every flow above too."""
    seen = len(page.requested)
    page.reload()
    page.wait_for_selector("#t2v-prompt textarea", timeout=60_000)
    open_tab(page, "Text to video")
    page.fill("#t2v-prompt textarea", "a kite over the dunes")
    steps = page.locator("#t2v-steps input[type=number]")
    steps.fill("4")
    steps.press("Enter")
    page.click("#t2v-generate")
    page.wait_for_function(  # this test's own clip, playing (a reload may first show an earlier one)
        """() => { const v = document.querySelector('#t2v-video video');
                   return v && v.currentSrc.includes('kite-over-the-dunes') && v.readyState >= 1; }""",
        timeout=120_000,
    )
    for name in TABS:
        open_tab(page, name)
        settled(page)
    own = page.requested[seen:]
    assert any("/gradio_api/queue/join" in u for u in own), own[:20]  # the page asked for the clip
    assert any("kite-over-the-dunes" in u and u.endswith(".mp4") for u in own), own[:20]  # and fetched it
    assert not outbound_log.exists(), outbound_log.read_text()
    # positive controls: the guard was loaded into the studio's process, and it does refuse and log
    loaded = outbound_log.with_name(outbound_log.name + ".loaded").read_text().split()
    assert str(running.pid) in loaded, (running.pid, loaded)
    control_log = outbound_log.with_name("control.log")
    probe = "import socket; socket.create_connection(('example.com', 80), timeout=5)"
    guarded = dict(os.environ, PYTHONPATH=str(NETGUARD), WAN_STUDIO_NETLOG=str(control_log))
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60, env=guarded)
    assert "blocked by the test's network guard" in done.stderr and "example.com" in control_log.read_text()
    origin = running.url.rstrip("/")
    outside = [u for u in page.requested if not u.startswith((origin, "data:", "blob:"))]
    assert page.requested and not outside, outside[:5]
    # and the page's recorder sees a request to another origin when one is made (in a page of its own)
    control = page.context.browser.new_page()
    asked: list[str] = []
    control.on("request", lambda request: asked.append(request.url))
    control.evaluate("() => fetch('http://example.com/control').catch(() => null)")
    control.close()
    assert "http://example.com/control" in asked, asked
