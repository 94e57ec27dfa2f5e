"""Presets: a form's settings and LoRAs saved under a name, as a small JSON file that travels.

A preset names each LoRA by file name, SHA-256 and the link it was added from (`library/links.py` records it
beside the file), so loading it on another machine fetches what is missing from the same link and checks it is
the very file. Presets live in `<data>/presets/<name>.json` (`pipelines.paths.data_dir`); a preset file from
elsewhere is read the same way.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from library.files import LibraryError, write_json
from library.links import LORA, download_link, source_path
from library.lora_folder import LoraFolder
from pipelines.loras import sha256_of
from pipelines.paths import data_dir

PRESET_FORMAT = 1
MAX_PRESET_BYTES = 64_000
# what a form holds besides its prompt and LoRAs
SETTINGS = ("negative_prompt", "size", "frames", "steps", "guidance_scale", "seed", "fast", "window_prompts",
            "take_seconds", "take_overlap")  # fmt: skip


class PresetError(LibraryError):
    """A preset that cannot be saved, read or loaded; the message says why."""


def presets_dir() -> Path:
    return data_dir() / "presets"


def preset_names(folder: Path | None = None) -> list[str]:
    folder = folder or presets_dir()
    return sorted(p.stem for p in folder.glob("*.json")) if folder.is_dir() else []


def save_preset(name: str, settings: dict[str, Any], loras: list[dict], folder: LoraFolder,
                into: Path | None = None) -> Path:  # fmt: skip
    """Save `settings` (the form's, by SETTINGS names) and `loras` ([{file, strength, experts}]) as preset `name`;
    each LoRA is recorded with its SHA-256 and, when it was added from a link, the link."""
    clean = re.sub(r"[^A-Za-z0-9 ._-]+", "", str(name or "")).strip(" .")[:60]
    if not clean:
        raise PresetError("Name the preset (letters, digits, spaces, dots, dashes).")
    recorded = []
    for lora in loras:
        path = folder.path_of(lora["file"])  # LibraryError when it is not in the LoRA folder
        source = folder.source_of(path.name) or {}
        recorded.append({"file": path.name, "sha256": sha256_of(path), "link": source.get("link"),
                         "strength": lora.get("strength", 1.0), "experts": lora.get("experts", "both")})  # fmt: skip
    data = {"format": PRESET_FORMAT, "name": clean, "settings": {k: settings.get(k) for k in SETTINGS},
            "loras": recorded}  # fmt: skip
    target = (into or presets_dir()) / f"{clean}.json"
    target.parent.mkdir(parents=True, exist_ok=True)
    write_json(target, data)
    return target


def read_preset(path: Path) -> dict[str, Any]:
    """A preset file's data, checked; PresetError says what is wrong with it."""
    path = Path(path)
    try:
        if path.stat().st_size > MAX_PRESET_BYTES:
            raise PresetError(f"{path.name} is too big to be a preset.")
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError, UnicodeDecodeError):
        raise PresetError(f"{path.name} is not a Wan Studio preset (it cannot be read as one).") from None
    if not isinstance(data, dict) or data.get("format") != PRESET_FORMAT or not isinstance(data.get("loras"), list):
        raise PresetError(f"{path.name} is not a Wan Studio preset of this version.")
    for lora in data["loras"]:
        if not isinstance(lora, dict) or not all(isinstance(lora.get(k), str) for k in ("file", "sha256")):
            raise PresetError(f"{path.name} lists a LoRA without its file name and SHA-256.")
    return data


def load_preset(path: Path, folder: LoraFolder, on_progress=None, offline: bool = False) -> dict[str, Any]:
    """The preset's settings and LoRAs, each LoRA in the LoRA folder: the file already there (same SHA-256), else
    fetched again from its link and checked to be the very file. PresetError names a LoRA that cannot be had."""
    data = read_preset(path)
    loras = []
    for lora in data["loras"]:
        name = ensure_lora(folder, lora["file"], lora["sha256"], lora.get("link"), on_progress, offline)
        loras.append({"file": name, "strength": lora.get("strength", 1.0), "experts": lora.get("experts", "both")})
    return {"settings": data.get("settings") or {}, "loras": loras, "name": data.get("name")}


def ensure_lora(folder: LoraFolder, name: str, sha256: str, link: str | None, on_progress=None,
                offline: bool = False) -> str:  # fmt: skip
    """The name of the LoRA with this SHA-256 in the folder: `name` when it is that file, else one fetched from
    `link` (a file with another SHA-256 under the link is refused and not kept). PresetError otherwise."""
    changed = False
    try:
        path = folder.path_of(name)
        if sha256_of(path) == sha256:
            return path.name
        changed = True
    except LibraryError:
        pass
    for entry in folder.entries():  # the same file under another name
        if sha256_of(entry.path) == sha256:
            return entry.name
    if not link:
        if changed:
            raise PresetError(f"The LoRA '{name}' changed since that clip was made (its SHA-256 differs); the same "
                              "settings would not make the same clip, and no link says where the first one came "
                              "from.")  # fmt: skip
        raise PresetError(f"The LoRA '{name}' is not in the LoRA folder, and no link says where it came from: add "
                          "it in Settings › LoRAs.")  # fmt: skip
    added = download_link(link, LORA, folder.root, on_progress, offline=offline)
    if added.sha256 != sha256:
        if not added.reused:  # a file the user already had stays
            added.path.unlink(missing_ok=True)
            source_path(folder.root, added.name).unlink(missing_ok=True)
        raise PresetError(f"The file at {link} is no longer the LoRA '{name}' (its SHA-256 differs); it was not kept.")
    return added.name
