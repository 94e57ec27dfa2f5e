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


def generate(endpoint: str, cache: Path, offline: bool, *flags: str) -> dict:
    env = {k: v for k, v in os.environ.items() if k != "HF_HUB_OFFLINE"}
    env.update(HF_ENDPOINT=endpoint, HF_HUB_CACHE=str(cache), HF_HUB_DISABLE_TELEMETRY="1")
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
