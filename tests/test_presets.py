"""Presets and LoRAs from links, end to end without a browser: an A14B pair added from two links is one choice in
the forms and two LoRAs in the request; a preset saved from a form travels to a fresh studio home, which fetches
its LoRAs again (checked by SHA-256); Reuse settings fetches a clip's LoRA again from the link it came from."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from library.lora_folder import LoraFolder
from library.presets import PresetError, load_preset, read_preset, save_preset
from pipelines.loras import sha256_of
from pipelines.request import GenerationRequest
from studio.core import Studio
from studio.jobs.queue import DONE
from studio.page.handlers import library as lib
from studio.page.handlers import links as lnk
from studio.page.handlers.generate import parse_loras, slots_to_loras
from studio.settings import Settings
from tests.test_links import running_site, wan_lora


@pytest.fixture
def site(tmp_path):
    made = tmp_path / "made"
    made.mkdir()
    with running_site() as s:
        s.serve("/high.safetensors", wan_lora(made / "high.safetensors", seed=1))
        s.serve("/low.safetensors", wan_lora(made / "low.safetensors", seed=2))
        s.serve("/tiny.safetensors", wan_lora(made / "tiny.safetensors", seed=3, width=24))  # the test models'
        yield s


def test_a_pair_from_links_is_one_choice_two_loras_and_a_preset_that_travels(site, tmp_path):
    here = LoraFolder(tmp_path / "home-1" / "loras")
    high, low = here.add_pair(f"{site.url}/high.safetensors", f"{site.url}/low.safetensors")
    studio = type("S", (), {"loras": here})()  # what lora_choices reads
    choices = lnk.lora_choices(studio, [high, low])
    pair = [value for label, value in choices if "(pair)" in label]
    assert len(pair) == 1  # offered as one choice beside its two files
    loras = json.loads(slots_to_loras(pair[0], 0.7, True, True))
    assert loras == [{"file": high, "strength": 0.7, "experts": "high"}, {"file": low, "strength": 0.7,
                                                                        "experts": "low"}]  # fmt: skip
    preset = save_preset("Ink pair", {"steps": 6, "seed": 42}, loras, here, into=tmp_path / "presets")
    data = read_preset(preset)
    assert [lora["link"] for lora in data["loras"]] == [f"{site.url}/high.safetensors", f"{site.url}/low.safetensors"]

    elsewhere = LoraFolder(tmp_path / "home-2" / "loras")  # a fresh studio home: no LoRA at all
    before = len(site.requests)
    loaded = load_preset(preset, elsewhere)
    assert len(site.requests) > before  # fetched again from their links
    assert [(lora["experts"], lora["strength"]) for lora in loaded["loras"]] == [("high", 0.7), ("low", 0.7)]
    for lora, recorded in zip(loaded["loras"], data["loras"], strict=True):
        assert sha256_of(elsewhere.path_of(lora["file"])) == recorded["sha256"]
    assert loaded["settings"]["steps"] == 6 and loaded["settings"]["seed"] == 42
    again = len(site.requests)
    load_preset(preset, elsewhere)  # the files are there now: nothing is fetched
    assert len(site.requests) == again


def test_a_preset_whose_link_now_serves_another_file_is_refused_and_keeps_nothing(site, tmp_path):
    here = LoraFolder(tmp_path / "home-1" / "loras")
    name = here.add_from_link(f"{site.url}/tiny.safetensors")
    preset = save_preset("Tiny", {}, [{"file": name, "strength": 1.0, "experts": "both"}], here,
                         into=tmp_path / "presets")  # fmt: skip
    site.serve("/tiny.safetensors", wan_lora(tmp_path / "other.safetensors", seed=9, width=24))  # changed upstream
    elsewhere = LoraFolder(tmp_path / "home-2" / "loras")
    with pytest.raises(PresetError, match="no longer the LoRA"):
        load_preset(preset, elsewhere)
    assert [p.name for p in elsewhere.root.iterdir() if not p.name.startswith(".")] == []


def test_reuse_fetches_a_gone_lora_again_from_the_link_in_the_clips_sidecar(site, tmp_path, monkeypatch):
    monkeypatch.setenv("WAN_STUDIO_HOME", str(tmp_path / "home"))
    # online (the default): the link is fetched
    studio = Studio(Settings(model="test-tiny", output_dir=str(tmp_path / "outputs"),
                             lora_dir=str(tmp_path / "loras")))  # fmt: skip
    name = studio.loras.add_from_link(f"{site.url}/tiny.safetensors")
    request = GenerationRequest(prompt="a fox", steps=2, frames=9,
                                loras=parse_loras(studio, json.dumps([{"file": name, "strength": 0.5}])))  # fmt: skip
    job = studio.submit(request)
    deadline = time.monotonic() + 120
    while not studio.jobs.get(job.id).finished:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    assert studio.jobs.get(job.id).status == DONE
    clip = Path(studio.jobs.get(job.id).result).name
    recorded = studio.library.clip(clip).settings["loras"][0]
    assert recorded["link"] == f"{site.url}/tiny.safetensors"  # where the LoRA came from, in the sidecar
    studio.loras.path_of(name).unlink()  # the LoRA is gone
    _, values, _ = lib.reuse(studio, clip)
    assert values["loras"][0]["strength"] == 0.5
    assert sha256_of(studio.loras.path_of(values["loras"][0]["file"])) == recorded["sha256"]  # fetched again


def test_a_presets_pairs_fill_one_slot_each_again(site, tmp_path):
    here = LoraFolder(tmp_path / "loras")
    high, low = here.add_pair(f"{site.url}/high.safetensors", f"{site.url}/low.safetensors")
    single = here.add_from_link(f"{site.url}/tiny.safetensors")
    studio = type("S", (), {"loras": here})()
    loras = [{"file": high, "strength": 0.7, "experts": "high"}, {"file": low, "strength": 0.7, "experts": "low"},
             {"file": single, "strength": 1.0, "experts": "both"}]  # fmt: skip
    slots = lnk.as_slots(studio, loras)
    assert [s["file"] for s in slots] == [f"pair:{high}|{low}", single]
    assert json.loads(slots_to_loras(slots[0]["file"], 0.7, True, True, single, 1.0, True, True)) == loras
