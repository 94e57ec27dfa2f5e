"""The handlers behind the forms' rough edges (issue 19, item 1.6), on an in-process studio: LoRA uploads, the
Library's LoRA lines, Frames out of range, Fast mode and typed steps, a reused seed."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from pipelines.catalogue import get_spec
from pipelines.request import GenerationRequest
from studio.core import Studio
from studio.jobs.queue import DONE
from studio.page.handlers import generate, library, settings
from studio.settings import Settings

TINY, A14B = "test-tiny", "test-tiny-a14b"


@pytest.fixture
def studio(tmp_path, monkeypatch) -> Studio:
    monkeypatch.setenv("WAN_STUDIO_HOME", str(tmp_path / "home"))
    return Studio(Settings(model=TINY, output_dir=str(tmp_path / "outputs")), offline=True)


def lora_for(model: str, folder: Path, name: str) -> Path:
    from diffusers import WanTransformer3DModel

    from pipelines.testmodels import ensure_test_model, lora_weights, save_lora

    transformer = WanTransformer3DModel.from_pretrained(ensure_test_model(model) / "transformer")
    return save_lora(lora_weights(transformer, seed=3, scale=0.2), folder / name, "comfyui")


def clip_details(studio: Studio, model: str, loras: str) -> str:
    """The Library's details of a clip made on `model` with the form's LoRA slots (`slots_to_loras` JSON)."""
    request = generate.with_extras(studio, GenerationRequest(prompt="a heron", model=model, steps=2), loras, False)
    job = studio.submit(request)
    deadline = time.monotonic() + 120
    while not studio.jobs.get(job.id).finished:
        assert time.monotonic() < deadline, "the clip never finished"
        time.sleep(0.05)
    assert studio.jobs.get(job.id).status == DONE, studio.jobs.get(job.id).error
    _, details, _ = library.show_clip(studio, Path(studio.jobs.get(job.id).result).name)
    return details


def test_the_library_names_a_loras_expert_only_on_models_with_two(studio, tmp_path):
    assert "Kept" in settings.add_lora(studio, str(lora_for(TINY, tmp_path, "ink.safetensors")))
    details = clip_details(studio, TINY, generate.slots_to_loras("ink.safetensors", 0.5, True, True))
    line = next(line for line in details.splitlines() if line.startswith("- LoRA:"))
    assert line == "- LoRA: ink.safetensors × 0.5", line  # one transformer: no (high), no (low)

    assert "Kept" in settings.add_lora(studio, str(lora_for(A14B, tmp_path, "late.safetensors")))
    details = clip_details(studio, A14B, generate.slots_to_loras("late.safetensors", 1.0, False, True))
    line = next(line for line in details.splitlines() if line.startswith("- LoRA:"))
    assert line == "- LoRA: late.safetensors × 1.0 (low)", line  # the A14B pair: the expert it went to


def test_a_refused_lora_upload_is_a_sentence_for_the_status_line(studio, tmp_path):
    bad = tmp_path / "notes.safetensors"
    bad.write_text("hello, not a LoRA")
    said = settings.add_lora(studio, str(bad))
    assert said.startswith("**Not added:**") and "could not be read as a .safetensors file" in said, said
    assert settings.lora_choices(studio) == [] and "notes" not in settings.lora_table(studio)  # nothing kept
    assert settings.add_lora(studio, None).startswith("Choose a `.safetensors` LoRA file")
    good = lora_for(TINY, tmp_path, "ink.safetensors")
    assert settings.add_lora(studio, good).startswith("Kept 'ink.safetensors'")  # a Path, not only its name
    assert settings.lora_choices(studio) == ["ink.safetensors"]


def test_frames_out_of_the_models_range_say_what_they_became(studio):
    spec = get_spec(TINY)
    assert (spec.min_frames, spec.max_frames) == (5, 33)
    span = "This model makes 5 to 33 frames (4n+1)."
    assert generate.frames_info(studio, 9999) == f"9999 is more than this model makes: set to 33, the most. {span}"
    assert generate.frames_info(studio, 1) == f"1 is fewer than this model makes: set to 5, the fewest. {span}"
    for within in (17, 5, 33, None, "", True, float("nan")):
        assert generate.frames_info(studio, within) == span, within
    studio.apply_settings(Settings(model="Wan-AI/Wan2.2-TI2V-5B-Diffusers", output_dir=studio.settings.output_dir))
    assert generate.frames_info(studio, 9999).startswith("9999 is more than this model makes: set to 121, the most.")


def test_unticking_fast_mode_gives_back_the_steps_and_guidance_typed(studio):
    steps, guidance, kept = generate.toggle_fast(studio, True, 37, 6.5, None)
    assert (steps["value"], steps["interactive"], guidance["value"], guidance["interactive"]) == (3, False, 1.0, False)
    steps, guidance, kept = generate.toggle_fast(studio, False, steps["value"], guidance["value"], kept)
    assert (steps["value"], steps["interactive"], guidance["value"], guidance["interactive"]) == (37, True, 6.5, True)
    assert kept is None
    # nothing kept (Reuse or a model switch reset it): the model's own values
    spec = get_spec(TINY)
    steps, guidance, _ = generate.toggle_fast(studio, False, 3, 1.0, None)
    assert (steps["value"], guidance["value"]) == (spec.steps, spec.guidance_scale)


def test_a_reused_seed_is_named_in_the_seed_field(studio):
    assert generate.seed_info(None) == generate.seed_info(-1) == generate.SEED_INFO
    said = generate.seed_info(1234)
    assert "1234" in said and "reused" in said and "New seed" in said
