"""Settings › LoRAs and Upscalers › *Add from a link*, and the forms' presets: downloads followed on the status
line (a bar, the size, the time left), and presets saved from or loaded into a form."""

from __future__ import annotations

import asyncio
import json
import queue
import shutil
import tempfile
import threading
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from library.presets import SETTINGS, load_preset, preset_names, presets_dir, save_preset
from studio.page.handlers.generate import PAIR, parse_loras
from studio.page.watch import text_bar

if TYPE_CHECKING:
    from studio.core import Studio


async def follow(work: Callable[[Callable[[float, str], None]], str]) -> AsyncIterator[str]:
    """Run `work(progress)` in a thread and yield a status line at each report, then its result's sentence; a
    refusal is the last line, in words (never an error painted over the page)."""
    from studio.errors import message_for

    reports: queue.Queue = queue.Queue()
    outcome: dict[str, Any] = {}

    def run() -> None:
        try:
            outcome["said"] = work(lambda fraction, message: reports.put((fraction, message)))
        except Exception as err:  # noqa: BLE001 (the sentence goes to the status line)
            outcome["error"] = message_for(err)
        reports.put(None)

    threading.Thread(target=run, daemon=True).start()
    while True:
        try:
            report = reports.get_nowait()
        except queue.Empty:
            await asyncio.sleep(0.1)
            continue
        if report is None:
            break
        yield f"{text_bar(report[0])} {report[1]}"
    yield outcome["said"] if "said" in outcome else f"**Not added:** {outcome['error']}"


async def add_lora_link(studio: Studio, link: Any, low_link: Any = "") -> AsyncIterator[str]:
    """Download a LoRA (or, with a second link, an A14B high/low pair) into the LoRA folder."""
    link, low = str(link or "").strip(), str(low_link or "").strip()
    if not link:
        yield "Paste a link first: a Hugging Face file (owner/repo/file.safetensors), its URL, or an https link."
        return

    def work(progress):
        if low:
            high_name, low_name = studio.loras.add_pair(link, low, progress, offline=studio.jobs.offline)
            return f"Kept the pair '{high_name}' (high-noise) and '{low_name}' (low-noise): pick it as one LoRA."
        name = studio.loras.add_from_link(link, progress, offline=studio.jobs.offline)
        return f"Kept '{name}' in the LoRA folder: pick it in the LoRAs section of either form."

    async for line in follow(work):
        yield line


async def add_upscaler_link(studio: Studio, link: Any) -> AsyncIterator[str]:
    link = str(link or "").strip()
    if not link:
        yield "Paste a link first: a Hugging Face file, its URL, or an https link to a .safetensors or .pth."
        return

    def work(progress):
        name = studio.upscalers.add_from_link(link, progress, offline=studio.jobs.offline)
        return f"Kept '{name}' in the Upscalers folder: pick it in a clip's *Upscale*."

    async for line in follow(work):
        yield line


def lora_choices(studio: Studio, names: list[str]) -> list[tuple[str, str]]:
    """The forms' LoRA pickers: each file, then each high/low pair both of whose files are offered, as one choice."""
    choices = [(name, name) for name in names]
    for pair in studio.loras.pairs():
        if pair.high in names and pair.low in names:
            choices.append((f"{pair.label} (pair)", f"{PAIR}{pair.high}|{pair.low}"))
    return choices


def presets(studio: Studio) -> list[str]:
    return preset_names()


def save(studio: Studio, name: Any, loras_json: Any, *values: Any) -> tuple[str, Any]:
    """Save the form (its settings by SETTINGS order, and its LoRAs) as preset `name`: (status, the preset file to
    download and share)."""
    parse_loras(studio, loras_json)  # every LoRA named is in the folder, or the refusal names it
    settings = dict(zip(SETTINGS, values, strict=True))
    path = save_preset(str(name or ""), settings, json.loads(loras_json or "[]"), studio.loras)
    shared = _shared_folder() / path.name  # the data folder itself is never served: a copy is
    shutil.copyfile(path, shared)
    return f"Saved the preset '{path.stem}' (download it below to share it).", str(shared)


_SHARED: list[Path] = []


def _shared_folder() -> Path:
    """One temporary folder per studio run for the presets offered to download (each save replaces its file)."""
    if not _SHARED:
        _SHARED.append(Path(tempfile.mkdtemp(prefix="wan-presets-")))
    return _SHARED[0]


def as_slots(studio: Studio, loras: list[dict]) -> list[dict]:
    """A preset's LoRAs as the form's pickers hold them: a pair added together (its high entry, then its low
    one) as one choice again, so six LoRAs of three pairs fit three slots."""
    pairs = {(p.high, p.low) for p in studio.loras.pairs()}
    slots, n = [], 0
    while n < len(loras):
        this, after = loras[n], loras[n + 1] if n + 1 < len(loras) else None
        if after and this.get("experts") == "high" and after.get("experts") == "low" \
                and (this["file"], after["file"]) in pairs:  # fmt: skip
            slots.append({"file": f"{PAIR}{this['file']}|{after['file']}", "strength": this.get("strength", 1.0),
                          "experts": "both"})  # fmt: skip
            n += 2
        else:
            slots.append(this)
            n += 1
    return slots


def load(studio: Studio, name: Any = None, upload: Any = None, progress=None) -> dict[str, Any]:
    """A preset by name (or an uploaded preset file), its missing LoRAs fetched from their links."""
    from library.presets import PresetError

    if upload:
        path = Path(upload if isinstance(upload, (str, Path)) else getattr(upload, "name", ""))
    elif name:
        if name not in preset_names():
            raise PresetError(f"There is no preset '{name}'.")
        path = presets_dir() / f"{name}.json"
    else:
        raise PresetError("Pick a preset, or drop a preset file.")
    return load_preset(path, studio.loras, progress, offline=studio.jobs.offline)
