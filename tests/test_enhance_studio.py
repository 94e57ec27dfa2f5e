"""The prompt enhancer in the studio: a queued job that runs the test enhancer (the same text as the model
itself gives for that seed), the CPU worker that never waits for the GPU, the page's button handler, the
CLI and the API."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from library import Library
from pipelines.enhance import TEST_ENHANCER, TEST_ENHANCER_VL, ensure_test_enhancer, load_enhancer
from studio.core import Studio
from studio.jobs.enhancing import EnhanceRequest
from studio.jobs.queue import CANCELLED, DONE, RUNNING, JobQueue, default_generate
from studio.page.handlers import enhance as enh
from studio.settings import Settings

ROOT = Path(__file__).resolve().parents[1]
IDEA = "a red fox in the snow"


def wait_finished(jobs: JobQueue, job_id: str, timeout: float = 120):
    deadline = time.monotonic() + timeout
    while not jobs.get(job_id).finished:
        assert time.monotonic() < deadline, jobs.get(job_id).message
        time.sleep(0.02)
    return jobs.get(job_id)


def direct(kind: str, prompt: str, seed: int, image=None, keep_language: bool = False) -> str:
    with load_enhancer(ensure_test_enhancer(kind)) as enhancer:
        return enhancer.enhance(prompt, image=image, seed=seed, keep_language=keep_language)


def test_an_enhance_job_gives_the_test_enhancers_text_for_its_seed(manager, tmp_path):
    jobs = JobQueue(manager, Library.open(tmp_path / "out"))
    job = jobs.submit_enhance(EnhanceRequest(IDEA, TEST_ENHANCER.id, seed=5))
    done = wait_finished(jobs, job.id)
    assert done.status == DONE, done.message
    assert done.text == direct("text", IDEA, 5) and done.text.strip()
    assert done.message.startswith("Enhanced in")
    other = wait_finished(jobs, jobs.submit_enhance(EnhanceRequest(IDEA, TEST_ENHANCER.id, seed=6)).id)
    assert other.text == direct("text", IDEA, 6)


def test_an_enhancement_on_the_cpu_never_waits_for_a_busy_gpu_worker(manager, tmp_path):
    entered, release = threading.Event(), threading.Event()

    def held(manager_, request_, report, cancel):  # the GPU worker's clip job, held until the test is done
        entered.set()
        release.wait(120)
        return default_generate(manager_, request_, report, cancel)

    from pipelines.request import GenerationRequest, validate_request

    jobs = JobQueue(manager, Library.open(tmp_path / "out"), generate=held)
    try:
        clip = jobs.submit(validate_request(GenerationRequest(prompt="busy", model="test-tiny", steps=1),
                                            default_model="test-tiny"))  # fmt: skip
        assert entered.wait(60)
        on_cpu = jobs.submit_enhance(EnhanceRequest(IDEA, TEST_ENHANCER.id, seed=1, on_cpu=True))
        queued = jobs.submit_enhance(EnhanceRequest(IDEA, TEST_ENHANCER.id, seed=1))  # waits for the GPU
        assert wait_finished(jobs, on_cpu.id).status == DONE
        assert jobs.get(clip.id).status == RUNNING and jobs.get(queued.id).status == "queued"
        assert jobs.cancel(queued.id) and jobs.get(queued.id).status == CANCELLED
    finally:
        release.set()
    assert wait_finished(jobs, clip.id).status == DONE


@pytest.fixture
def studio(tmp_path) -> Studio:
    return Studio(Settings(model="test-tiny", output_dir=str(tmp_path / "outputs")), offline=True)


def page_updates(studio: Studio, prompt: str, image=None) -> list[tuple]:
    async def collect():
        return [update async for update in enh.enhance_in_page(studio, prompt, image)]

    return asyncio.run(collect())


def test_the_enhance_button_puts_the_rewrite_in_the_prompt_box_and_says_so(studio):
    updates = page_updates(studio, IDEA)
    text, status = updates[-1]
    assert isinstance(text, str) and text.strip() and text != IDEA
    assert status.startswith("**Enhanced**")
    # with a picture (image to video) the vision enhancer looks at it
    picture = Image.fromarray(np.full((64, 64, 3), (200, 40, 40), np.uint8))
    text, status = page_updates(studio, IDEA, picture)[-1]
    job = max(studio.jobs.jobs(), key=lambda j: j.created)
    assert job.enhance.enhancer == TEST_ENHANCER_VL.id and job.enhance.image is not None
    assert text == job.text and status.startswith("**Enhanced**")


def test_an_empty_prompt_is_refused_in_the_status_line_and_the_prompt_stays(studio):
    ((prompt, status),) = page_updates(studio, "   ")
    assert status == "**Not enhanced** — Type a prompt to enhance first."
    assert not isinstance(prompt, str)  # gr.skip(): the box keeps what the user typed


def test_the_settings_choose_the_language_instruction_and_refuse_a_wrong_enhancer(studio):
    from studio.page.handlers import settings as sett

    status, _ = sett.save(studio, "test-tiny", "auto", "auto", str(studio.output_dir), "", "", "",
                          enhancer="qwen2.5-vl-3b-instruct")  # fmt: skip
    assert status.startswith("**Not saved:**") and "'enhancer' must be one of qwen2.5-3b-instruct" in status
    status, _ = sett.save(studio, "test-tiny", "auto", "auto", str(studio.output_dir), "", "", "", keep_language=True)
    assert status.startswith("Saved") and studio.settings.enhance_keep_language
    job = studio.submit_enhance(IDEA, seed=3)
    assert job.enhance.keep_language
    done = wait_finished(studio.jobs, job.id)
    assert done.text == direct("text", IDEA, 3, keep_language=True)


def run_cli(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "app.py", "enhance", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=300, env={**os.environ, **(env or {})})  # fmt: skip


def test_the_cli_prints_the_rewrite_and_refuses_bad_input_by_field(tmp_path, capsys):
    done = run_cli("--prompt", IDEA, "--enhancer", TEST_ENHANCER.id, "--seed", "7", "--offline")
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip().splitlines()[-1] == direct("text", IDEA, 7).splitlines()[-1]
    from studio.enhance_cli import main  # the refusals in this process: they load nothing

    capsys.readouterr()
    assert main(["--prompt", " ", "--enhancer", TEST_ENHANCER.id]) == 2
    assert "--prompt: type a prompt to enhance" in capsys.readouterr().err
    picture = tmp_path / "start.png"
    Image.new("RGB", (32, 32), "red").save(picture)
    assert main(["--prompt", IDEA, "--image", str(picture), "--enhancer", TEST_ENHANCER.id]) == 2
    assert "--image: Test enhancer (random weights) reads text only" in capsys.readouterr().err
    missing = run_cli("--prompt", IDEA, "--offline", env={"HF_HUB_CACHE": str(tmp_path / "empty-cache")})
    assert missing.returncode == 1
    assert "Qwen2.5-3B-Instruct" in missing.stderr and "without --offline" in missing.stderr, missing.stderr[-2000:]


@pytest.fixture(scope="module")
def running(tmp_path_factory):
    from tests.server import studio as running_studio

    with running_studio(tmp_path_factory.mktemp("enhance-studio")) as running:
        yield running


def test_the_api_returns_the_rewrite(running, tmp_path):
    from gradio_client import Client, handle_file

    picture = tmp_path / "start.png"
    Image.new("RGB", (48, 32), "blue").save(picture)
    client = Client(running.url, verbose=False)
    try:
        text = client.predict(prompt=IDEA, seed=4, api_name="/enhance")
        assert text == direct("text", IDEA, 4)
        seen = client.predict(prompt=IDEA, image=handle_file(str(picture)), seed=4, api_name="/enhance")
        assert seen == direct("vision", IDEA, 4, image=Image.open(picture).convert("RGB"))
        with pytest.raises(Exception, match="Type a prompt to enhance first"):
            client.predict(prompt="", api_name="/enhance")
    finally:
        client.close()


@pytest.mark.skipif(not Path("/usr/bin/chromium").exists(), reason="Debian's chromium is not installed")
def test_in_the_browser_enhance_rewrites_the_prompt_box_and_says_so(running):
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path="/usr/bin/chromium", headless=True, args=["--no-sandbox"])
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 1000})
            page.goto(running.url)
            box = page.locator("#t2v-prompt textarea")
            box.fill(IDEA)
            page.click("#t2v-enhance")
            page.wait_for_function("() => document.querySelector('#t2v-status')?.innerText.includes('Enhanced')",
                                   timeout=120_000)  # fmt: skip
            rewritten = box.input_value()
            assert rewritten.strip() and rewritten != IDEA
            assert "edit it as you like" in page.inner_text("#t2v-status")
            box.fill("")
            page.click("#t2v-enhance")
            page.wait_for_function("() => document.querySelector('#t2v-status')?.innerText.includes('Not enhanced')",
                                   timeout=60_000)  # fmt: skip
            assert "Type a prompt to enhance first." in page.inner_text("#t2v-status")
            shots = ROOT / "artifacts" / "screenshots"
            shots.mkdir(parents=True, exist_ok=True)
            box.fill(rewritten)
            page.screenshot(path=str(shots / "enhance.png"))
        finally:
            browser.close()


@pytest.mark.parametrize("seed", [float("nan"), 2**40, "many"])
def test_a_seed_that_is_not_a_whole_number_in_range_is_refused_by_name(studio, seed):
    from pipelines.enhance import EnhanceError

    with pytest.raises(EnhanceError, match="seed must be a whole number"):
        studio.submit_enhance(IDEA, seed=seed)
