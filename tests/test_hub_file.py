"""A pinned hub file (pipelines.weights.fetch_file, for the post-production models' weights): the real
snapshot_download path against the stand-in hub (tests/fakehub.py) on 127.0.0.1, in a child process whose
huggingface_hub reads the fake endpoint at import. The file comes from the pinned commit, alone, with the
download progress; a checksum that differs is refused naming the model; offline, a cached file is used and a
missing one is refused with what to do."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from pipelines.upscale import ensure_test_upscaler
from tests.fakehub import COMMIT

ROOT = Path(__file__).resolve().parents[1]
REPO = "local-test/upscaler"
FILE = "upscaler.safetensors"

# The child serves the folder itself, so the requests each call makes are recorded beside its result.
CHILD = f"""
import json, os, sys
from pathlib import Path

served = Path(sys.argv[1])
actions = json.loads(sys.argv[2])
from tests.fakehub import fake_hub

seen = []
results = []
with fake_hub("{REPO}", served, chunk=4096, delay_s=0.002, requests=seen) as endpoint:
    os.environ["HF_ENDPOINT"] = endpoint  # before huggingface_hub is imported (it reads it once)
    from pipelines.catalogue import HubFile
    from pipelines.weights import ModelUnavailableError, fetch_file

    for action in actions:
        before = len(seen)
        events = []
        result = {{"events": events}}
        try:
            path = fetch_file(HubFile(**action["file"]), action["offline"], lambda f, m: events.append([f, m]))
            result["path"] = str(path)
            result["bytes"] = path.read_bytes().hex()
        except ModelUnavailableError as err:
            result["error"] = str(err)
        result["requests"] = [list(r) for r in seen[before:]]
        results.append(result)
print(json.dumps(results))
"""


def hub_file(**changes) -> dict:
    fields = dict(
        repo=REPO, revision=COMMIT, filename=FILE, sha256=hashlib.sha256(served_bytes()).hexdigest(),
        name="Test upscaler", licence="test only",
    )  # fmt: skip
    fields.update(changes)
    return fields


def served_bytes() -> bytes:
    return ensure_test_upscaler().read_bytes()


@pytest.fixture(scope="module")
def results(tmp_path_factory) -> list[dict]:
    """One child run of five calls in order: fetched online, the same offline, a wrong checksum, offline with
    nothing cached, and the first file offline again (after the wrong checksum removed it)."""
    served = tmp_path_factory.mktemp("served")
    (served / FILE).write_bytes(served_bytes())
    (served / "other-weights.bin").write_bytes(os.urandom(300_000))  # in the repository, never fetched
    (served / "README.md").write_text("a test repository")
    actions = [
        {"file": hub_file(), "offline": False},
        {"file": hub_file(), "offline": True},
        {"file": hub_file(sha256="0" * 64, name="Tampered upscaler"), "offline": False},
        {"file": hub_file(repo="local-test/never-downloaded", name="Absent upscaler"), "offline": True},
        {"file": hub_file(), "offline": True},  # the refused file was removed: not in the cache any more
    ]
    env = {k: v for k, v in os.environ.items() if k not in ("HF_HUB_OFFLINE", "HF_ENDPOINT")}
    env.update(HF_HUB_CACHE=str(tmp_path_factory.mktemp("hf-cache")), HF_HUB_DISABLE_TELEMETRY="1")
    run = subprocess.run(
        [sys.executable, "-c", CHILD, str(served), json.dumps(actions)],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr[-3000:]
    return json.loads(run.stdout.strip().splitlines()[-1])


def test_the_pinned_file_is_fetched_alone_from_the_pinned_commit_with_progress(results):
    first = results[0]
    assert "error" not in first, first.get("error")
    path = Path(first["path"])
    assert bytes.fromhex(first["bytes"]) == served_bytes()
    assert path.name == FILE and path.parent.name == COMMIT  # the snapshot of the pinned commit
    paths = [p for _, p, _ in first["requests"]]
    # every request naming a revision (repository info, file listing, file) names the pinned commit, never
    # "main" (a commit id needs no repository-info call to resolve it)
    asked = {p.split("/")[6] for p in paths if p.startswith(f"/api/models/{REPO}/")}
    asked |= {p.split("/")[4] for p in paths if p.startswith(f"/{REPO}/resolve/")}
    assert asked == {COMMIT}, paths
    fetched = {p for method, p, _ in first["requests"] if method == "GET" and "/resolve/" in p}
    assert fetched == {f"/{REPO}/resolve/{COMMIT}/{FILE}"}, paths  # nothing else in the repository
    fractions = [f for f, _ in first["events"]]
    assert fractions == sorted(fractions) and fractions[-1] == 1.0
    assert any(m.startswith(f"Downloading {REPO}") for _, m in first["events"])


def test_a_cached_file_is_used_offline_without_asking_the_hub(results):
    offline = results[1]
    assert offline.get("path") == results[0]["path"], offline.get("error")
    assert offline["requests"] == []


def test_a_file_whose_checksum_differs_is_refused_naming_the_model(results):
    tampered = results[2]
    assert "path" not in tampered
    assert tampered["error"].startswith("Tampered upscaler:")
    assert "does not match its published checksum" in tampered["error"]
    assert hashlib.sha256(served_bytes()).hexdigest()[:16] in tampered["error"]  # what was found, shown


def test_offline_with_nothing_cached_says_what_to_do(results):
    absent = results[3]
    assert "path" not in absent and absent["requests"] == []
    assert absent["error"].startswith("Absent upscaler is not downloaded yet and offline mode is on")
    assert "without --offline" in absent["error"]


def test_a_refused_file_is_removed_from_the_cache_so_the_next_try_downloads_it_afresh(results):
    tampered, again = results[2], results[4]
    assert "so it was removed" in tampered["error"]
    assert "path" not in again and "not downloaded yet and offline mode is on" in again["error"], again
