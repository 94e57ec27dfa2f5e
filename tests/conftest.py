from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest

# Tests never touch the hub: offline flags on, test models built into a cache shared by the whole run.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("WAN_STUDIO_CACHE", os.path.join(tempfile.gettempdir(), "wan-studio-test-cache"))
# Settings and the signing key of the test run stay out of the user's config folder.
os.environ.setdefault("WAN_STUDIO_HOME", tempfile.mkdtemp(prefix="wan-studio-home-"))


@pytest.fixture(scope="session")
def manager():
    """One manager for the engine tests, like the one the studio keeps: models stay loaded between tests."""
    from pipelines.manager import PipelineManager

    return PipelineManager(offline=True)


@pytest.fixture
def out_dir(tmp_path: Path) -> Path:
    return tmp_path / "outputs"


def pytest_collection_modifyitems(config, items) -> None:
    """WAN_STUDIO_TEST_ORDER=reverse runs every test in the opposite order (files and the tests in each): a
    test that passes only after another has set something up fails then."""
    if os.environ.get("WAN_STUDIO_TEST_ORDER") == "reverse":
        items.reverse()
