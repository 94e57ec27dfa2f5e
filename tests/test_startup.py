"""Start-up never stops on damaged saved state: it is set aside with a warning and the studio starts; an
output folder it cannot write is refused with a sentence, not a traceback."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest
from gradio_client import Client

from tests.server import ROOT, studio
from tests.tmpfs import tmpfs

DAMAGED_STORYBOARDS = ['["a list, not a storyboard"]', '{"shots": [], "fps": "fast"}', "{not json", '{"shots": 7}']


@pytest.mark.parametrize("storyboard", DAMAGED_STORYBOARDS, ids=["list", "fps-fast", "not-json", "shots-7"])
def test_each_kind_of_damaged_storyboard_is_set_aside_and_kept(tmp_path, storyboard):
    from library import Library

    out = tmp_path / "outputs"
    out.mkdir()
    (out / "storyboard.json").write_text(storyboard)
    library = Library.open(out)
    assert any("The saved storyboard could not be used" in w and "set aside" in w for w in library.warnings)
    assert library.storyboard.load().shots == []
    kept = list(out.glob("storyboard.json.corrupt-*"))
    assert len(kept) == 1 and kept[0].read_text() == storyboard


@pytest.mark.parametrize("storyboard", DAMAGED_STORYBOARDS[1:2], ids=["fps-fast"])  # each kind: the test above
def test_damaged_saved_state_is_set_aside_and_the_studio_starts(tmp_path, storyboard):
    out, home = tmp_path / "outputs", tmp_path / "home"
    (out / ".jobs").mkdir(parents=True)
    home.mkdir()
    (out / "storyboard.json").write_text(storyboard)
    (out / ".jobs" / "broken.json").write_text('{"format": 2, "kind": "clip"}')
    (home / "settings.json").write_text('["not", "settings"]')
    with studio(tmp_path, home=home) as s:
        log = s.log.read_text()
        assert "warning: The saved storyboard could not be used" in log and "set aside" in log
        assert "warning: A job record could not be read" in log
        assert "The settings file" in log and "defaults are in effect" in log
        assert "Traceback" not in log
        c = Client(s.url, verbose=False)
        assert "Done" in c.predict(prompt="after a rough start", steps=2, frames=5, api_name="/text_to_video")[1]
        c.close()
    assert not (out / "storyboard.json").exists()  # moved aside whole; nothing is saved in its place unasked
    kept = list(out.glob("storyboard.json.corrupt-*"))
    assert len(kept) == 1 and kept[0].read_text() == storyboard  # kept for the user, not deleted


def test_an_output_folder_that_cannot_be_written_stops_the_start_with_a_sentence(tmp_path):
    with tmpfs(tmp_path / "readonly", "ro,size=1m") as folder:
        env = dict(os.environ, WAN_STUDIO_HOME=str(tmp_path / "home"), HF_HUB_OFFLINE="1")
        done = subprocess.run(
            [sys.executable, "app.py", "--model", "test-tiny", "--output-dir", str(folder), "--port", "0"],
            cwd=ROOT, env=env, capture_output=True, text=True, timeout=120,
        )  # fmt: skip
    assert done.returncode == 2, done.stdout + done.stderr
    assert f"error: The output folder '{folder}' cannot be written" in done.stderr and "Traceback" not in done.stderr


def test_leftovers_of_a_killed_export_are_cleaned_at_start(tmp_path):
    films = tmp_path / "outputs" / "films"
    films.mkdir(parents=True)
    stale = films / ".partial-999-1-0.mp4"
    stale.write_bytes(b"half a film")
    os.utime(stale, (1, 1))
    with studio(tmp_path):
        pass
    assert not stale.exists()


def test_a_restart_resumes_the_queued_job_and_marks_the_running_one_interrupted(tmp_path):
    import time

    from library.clips import list_clips
    from library.files import read_json
    from tests.server import Gate

    out = tmp_path / "outputs"

    def records() -> dict[str, str]:
        found = {}
        for path in (out / ".jobs").glob("*.json"):
            try:
                data = read_json(path)
                found[data["request"]["prompt"]] = data["status"]
            except (ValueError, KeyError, TypeError):
                continue
        return found

    def wait_for(predicate, timeout: float = 90) -> None:
        """Only for the restarted studio's job, which nobody watches: its record on disk is the one sign."""
        deadline = time.monotonic() + timeout
        while not predicate():
            assert time.monotonic() < deadline, records()
            time.sleep(0.2)

    # the long one is held at its first step until after the studio is stopped (the contexts close in reverse)
    with Gate() as gate, gate.holding("the long one") as long_one, studio(tmp_path, gate=gate) as first:
        c = Client(first.url, verbose=False)
        c.submit(prompt="the long one", steps=100, frames=33, size="256x256", api_name="/text_to_video")
        long_one.wait()  # running: claimed (its record says so) and at step 1
        assert records() == {"the long one": "running"}
        waiting = c.submit(prompt="waits its turn", steps=2, frames=5, api_name="/text_to_video")
        assert "Queued" in next(waiting)[1]  # the first update comes once the job and its record are queued
        assert records() == {"the long one": "running", "waits its turn": "queued"}
    # the studio was stopped mid-job; the next start picks up where it left off
    with studio(tmp_path) as second:
        wait_for(lambda: records().get("waits its turn") == "done")
        assert records()["the long one"] == "interrupted"
        assert [clip.settings["prompt"] for clip in list_clips(out)] == ["waits its turn"]
        assert "Traceback" not in without_loop_finaliser_noise(second.log.read_text())


def without_loop_finaliser_noise(log: str) -> str:
    """The log less CPython's report of an event loop that a dependency left unclosed and the garbage
    collector finalised after its own self-pipe socket ("Exception ignored in: <function
    BaseEventLoop.__del__ …> … Invalid file descriptor: -1"): collection order, not an error of the studio's."""
    return re.sub(r"Exception ignored in: <function BaseEventLoop\.__del__.*?ValueError: Invalid file descriptor: -1\n",
                  "", log, flags=re.S)  # fmt: skip


def test_the_spaces_login_secret_wan_studio_auth_turns_the_login_on(tmp_path):
    """README, Space step 5: the secret `WAN_STUDIO_AUTH=user:password` is the login, as `--auth` would be."""
    import urllib.error
    import urllib.request

    with studio(tmp_path, env={"WAN_STUDIO_AUTH": "space:a-long-secret"}) as s:
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(f"{s.url}config", timeout=10)
        assert refused.value.code == 401
        with pytest.raises(ValueError, match="credentials were not provided"):
            Client(s.url, verbose=False)
        with pytest.raises(ValueError, match="Could not login"):
            Client(s.url, verbose=False, auth=("space", "a-wrong-secret"))
        signed_in = Client(s.url, verbose=False, auth=("space", "a-long-secret"))
        assert "Done" in signed_in.predict(prompt="behind the Space's login", steps=2, frames=5,
                                           api_name="/text_to_video")[1]  # fmt: skip
        signed_in.close()


def test_the_studio_listens_where_gradio_server_name_and_port_say(tmp_path):
    """README: a Space sets GRADIO_SERVER_NAME and GRADIO_SERVER_PORT, which the studio follows (started here
    without --host and --port, on a loopback address that is not the default one)."""
    import urllib.error
    import urllib.request

    from tests.server import free_port

    port = free_port()
    with studio(tmp_path, env={"GRADIO_SERVER_NAME": "127.0.0.2", "GRADIO_SERVER_PORT": str(port)}) as s:
        assert s.url == f"http://127.0.0.2:{port}/"
        with urllib.request.urlopen(f"{s.url}config", timeout=10) as answer:
            assert answer.status == 200 and "text_to_video" in answer.read().decode()
        with pytest.raises(urllib.error.URLError):  # not on the default address
            urllib.request.urlopen(f"http://127.0.0.1:{port}/config", timeout=10)
        assert f"Wan Studio on http://127.0.0.2:{port}" in s.log.read_text()


def model_choices(argv: list[str], monkeypatch, gpu: bool) -> list[str]:
    """The model ids the page's model dropdown offers after `python app.py ARGV` (launch itself not run), on a
    machine with one CUDA GPU (`gpu`) or none."""
    import gradio as gr
    import torch

    from studio.server import main

    if gpu:  # what the studio asks of a GPU before its page is built
        monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
        monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (8, 9))
    launched = []
    monkeypatch.setattr(gr.Blocks, "launch", lambda demo, **kwargs: launched.append(demo))
    assert main(["--offline", *argv]) == 0
    dropdowns = [c["props"] for c in launched[0].get_config_file()["components"]
                 if c.get("props", {}).get("label") == "Model" and c["props"].get("choices")]  # fmt: skip
    assert len(dropdowns) == 1, dropdowns
    return [value for _, value in dropdowns[0]["choices"]]


def test_the_test_models_are_offered_with_show_test_models_or_without_a_gpu(tmp_path, monkeypatch):
    """README: `--show-test-models` lists the tiny random-weight models; without it a machine with a GPU
    offers the real models only, and one without a GPU offers the test model too (one click gives it)."""
    from pipelines.catalogue import DEFAULT_MODEL

    monkeypatch.setenv("WAN_STUDIO_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # restored after the test (main sets it for --offline)
    tests = {"test-tiny", "test-tiny-wan21", "test-tiny-a14b", "test-tiny-i2v-a14b"}
    out = ["--output-dir", str(tmp_path / "outputs")]
    plain = model_choices(out, monkeypatch, gpu=True)
    assert DEFAULT_MODEL in plain and not tests & set(plain), plain
    assert tests <= set(model_choices([*out, "--show-test-models"], monkeypatch, gpu=True))
    monkeypatch.undo()
    monkeypatch.setenv("WAN_STUDIO_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert tests <= set(model_choices(out, monkeypatch, gpu=False))
