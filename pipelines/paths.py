"""Where Wan Studio keeps its own files on this machine (never served to browsers)."""

from __future__ import annotations

import os
from pathlib import Path


def config_dir() -> Path:
    """WAN_STUDIO_HOME, else ~/.config/wan-studio: settings, and the signing key in keys/."""
    return Path(os.environ.get("WAN_STUDIO_HOME") or Path.home() / ".config" / "wan-studio")
