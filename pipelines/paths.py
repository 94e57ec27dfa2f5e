"""Where Wan Studio keeps its own files on this machine (never served to browsers)."""

from __future__ import annotations

import os
from pathlib import Path


def config_dir() -> Path:
    """WAN_STUDIO_HOME, else ~/.config/wan-studio: settings, and the signing key in keys/."""
    return Path(os.environ.get("WAN_STUDIO_HOME") or Path.home() / ".config" / "wan-studio")


def data_dir() -> Path:
    """WAN_STUDIO_DATA; else data/ in WAN_STUDIO_HOME when that is set; else XDG_DATA_HOME (~/.local/share)
    /wan-studio: the LoRA folder's default home."""
    if os.environ.get("WAN_STUDIO_DATA"):
        return Path(os.environ["WAN_STUDIO_DATA"])
    if os.environ.get("WAN_STUDIO_HOME"):
        return Path(os.environ["WAN_STUDIO_HOME"]) / "data"
    return Path(os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share") / "wan-studio"
