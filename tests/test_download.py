"""First use of a hub model: the real snapshot_download path against a stand-in hub on 127.0.0.1 (tests never
touch the real one). The download lands in the standard Hugging Face cache, its progress reaches the caller in
bytes, and the cached model then works offline."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

from pipelines.testmodels import ensure_test_model
from tests.fakehub import COMMIT, fake_hub
from tests.tmpfs import tmpfs

ROOT = Path(__file__).resolve().parents[1]
REPO = "local-test/tiny-wan22"

# The child registers the served repository as a hub model (not a test model) and generates one clip.
CHILD = f"""
import dataclasses, json, sys
from pipelines.catalogue import CATALOGUE
from pipelines.manager import PipelineManager
from pipelines.request import GenerationRequest, validate_request

CATALOGUE["{REPO}"] = dataclasses.replace(
    CATALOGUE["test-tiny"], id="{REPO}", repo="{REPO}", is_test=False, name="Tiny Wan served by a local hub"
)
offline = sys.argv[1] == "offline"
if "no-precheck" in sys.argv:  # the download starts whatever the free space: the disk fills on the way
    import pipelines.weights
    pipelines.weights._check_disk_space = lambda what, missing: None
if "full-disk" in sys.argv:  # a disk with 100 kB free
    import shutil
    shutil.disk_usage = lambda path: shutil._ntuple_diskusage(10**12, 10**12 - 10**5, 10**5)
request = validate_request(
    GenerationRequest(prompt="a red cat", model="{REPO}", width=96, height=64, frames=5, steps=2, seed=7),
    default_model="{REPO}",
)
events = []
try:
    result = PipelineManager(offline=offline).generate(
        request, on_progress=lambda p: events.append([p.stage, p.fraction, p.message])
    )
except Exception as err:
    print(json.dumps({{"events": events, "error": f"{{type(err).__name__}}: {{err}}"}}))
    sys.exit(0)
print(json.dumps({{"events": events, "revision": result.model_revision, "frames": result.frames.tolist()}}))
"""


def generate(endpoint: str, cache: Path, offline: bool, *flags: str, env: dict[str, str] | None = None) -> dict:
    extra = env or {}
    env = {k: v for k, v in os.environ.items() if k != "HF_HUB_OFFLINE"}
    env.update(HF_ENDPOINT=endpoint, HF_HUB_CACHE=str(cache), HF_HUB_DISABLE_TELEMETRY="1", **extra)
    if offline:
        env["HF_HUB_OFFLINE"] = "1"
    run = subprocess.run(
        [sys.executable, "-c", CHILD, "offline" if offline else "online", *flags],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr[-3000:]
    return json.loads(run.stdout.strip().splitlines()[-1])


def test_first_use_downloads_into_the_hf_cache_with_byte_progress_then_works_offline(tmp_path):
    cache = tmp_path / "hf-cache"
    with fake_hub(REPO, ensure_test_model("test-tiny")) as endpoint:
        first = generate(endpoint, cache, offline=False)

    stages = [stage for stage, _, _ in first["events"]]
    assert stages.index("download") < stages.index("load") < stages.index("denoise")
    downloads = [(f, m) for stage, f, m in first["events"] if stage == "download" and m.startswith("Downloading")]
    fractions = [f for f, _ in downloads]
    assert fractions == sorted(fractions), "the download bar went backwards"
    assert fractions[0] < 0.5 and fractions[-1] == 1.0 and len(set(fractions)) >= 3
    size = sum(p.stat().st_size for p in ensure_test_model("test-tiny").rglob("*") if p.is_file()) / 1e6
    assert all(re.search(rf"[\d.]+ MB of {size:.1f} MB", m) for _, m in downloads), downloads[-1]
    assert "11/11 files" in downloads[-1][1]
    snapshot = cache / f"models--{REPO.replace('/', '--')}" / "snapshots" / COMMIT
    assert (snapshot / "model_index.json").is_file() and first["revision"] == COMMIT

    # The hub is gone: the cached copy loads, nothing is fetched, and the same seed gives the same clip, both
    # in offline mode and when the network is simply down.
    for offline in (True, False):
        again = generate("http://127.0.0.1:9", cache, offline=offline)
        assert not any(m.startswith("Downloading") for _, _, m in again["events"])
        assert again["frames"] == first["frames"] and again["revision"] == COMMIT


def test_a_download_that_cannot_fit_on_the_disk_is_refused_before_it_starts(tmp_path):
    cache = tmp_path / "hf-cache"
    with fake_hub(REPO, ensure_test_model("test-tiny")) as endpoint:
        run = generate(endpoint, cache, False, "full-disk")
    assert run["error"].startswith("ModelUnavailableError: Tiny Wan served by a local hub needs 1.1 MB more")
    assert "0.1 MB free" in run["error"] and "HF_HUB_CACHE" in run["error"]
    assert not any(m.startswith("Downloading") for _, _, m in run["events"])
    assert not list(cache.rglob("*.safetensors"))  # nothing was fetched


def snapshot_of(cache: Path) -> Path:
    return cache / f"models--{REPO.replace('/', '--')}" / "snapshots" / COMMIT


def largest_file(folder: Path) -> Path:
    return max((p for p in folder.rglob("*") if p.is_file()), key=lambda p: p.stat().st_size)


def test_a_dropped_connection_resumes_and_a_server_error_mid_file_resumes_on_the_next_try(tmp_path):
    """Plain HTTP (the stand-in sends no Xet headers, so huggingface_hub never takes its Xet path). The repo
    gets a 24 MB file: huggingface_hub writes in 10 MB chunks, so only a larger file is cut with bytes kept."""
    import shutil

    source = tmp_path / "repo"
    shutil.copytree(ensure_test_model("test-tiny"), source)
    (source / "extra").mkdir()
    (source / "extra" / "weights.bin").write_bytes(os.urandom(24 * 2**20))
    big = largest_file(source).relative_to(source).as_posix()
    assert big == "extra/weights.bin"
    cache, seen = tmp_path / "hf-cache", []
    with fake_hub(REPO, source, chunk=2**20, delay_s=0, faults=("drop", "error"), requests=seen) as endpoint:
        failed = generate(endpoint, cache, False)  # dropped halfway, resumed with a Range, then a 503
    busy = "ModelUnavailableError: The Hugging Face Hub is busy or failing right now (HTTP 503)"
    assert failed["error"].startswith(busy) and "files already downloaded are kept" in failed["error"]
    ranges = [r for method, path, r in seen if method == "GET" and path.endswith(big) and r]
    assert ranges and int(ranges[0].split("=")[1].split("-")[0]) > 0  # hf resumed after the drop, not from 0

    seen.clear()
    with fake_hub(REPO, source, chunk=2**20, delay_s=0, requests=seen) as endpoint:
        done = generate(endpoint, cache, False)
    assert "error" not in done, done.get("error")
    fetched = {path.rsplit("/", 1)[-1] for method, path, _ in seen if method == "GET" and "/resolve/" in path}
    assert "weights.bin" in fetched and "model_index.json" not in fetched  # finished files were not fetched again
    # huggingface_hub 2.4 starts a file that failed with an HTTP error over (it resumes only within one try)
    assert (snapshot_of(cache) / big).read_bytes() == (source / big).read_bytes()  # whole and exact


def test_a_hub_that_never_answers_times_out_with_a_clear_message(tmp_path):
    import time

    started = time.monotonic()
    with fake_hub(REPO, ensure_test_model("test-tiny"), faults=("hang",)) as endpoint:
        quick = {"HF_HUB_ETAG_TIMEOUT": "2", "HF_HUB_DOWNLOAD_TIMEOUT": "2", "WAN_STUDIO_HUB_TIMEOUT_S": "3"}
        run = generate(endpoint, tmp_path / "hf-cache", False, env=quick)
    assert run["error"].startswith("ModelUnavailableError: "), run["error"]
    assert "could not be downloaded from the Hugging Face Hub" in run["error"] and "Traceback" not in run["error"]
    assert time.monotonic() - started < 60  # it hung forever before the studio bounded hub calls


def test_a_disk_that_fills_during_the_download_says_so(tmp_path):
    """A real ENOSPC: the cache on a 512 kB tmpfs, the free-space check before the download bypassed."""
    with tmpfs(tmp_path / "small", "size=512k") as cache, fake_hub(REPO, ensure_test_model("test-tiny")) as endpoint:
        run = generate(endpoint, cache, False, "no-precheck")
    assert run["error"].startswith("ModelUnavailableError: The disk holding the Hugging Face cache"), run
    assert "filled up" in run["error"] and "HF_HUB_CACHE" in run["error"]
