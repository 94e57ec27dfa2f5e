"""Speed options: the attention backend (chosen per device, refused clearly when unavailable) and regional
compilation (same frames as eager, no recompile for a change that does not need one)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pipelines import attention
from pipelines.attention import AttentionUnavailableError
from pipelines.manager import PipelineManager
from pipelines.request import GenerationRequest, validate_request
from pipelines.speed import SpeedOptions

TINY = "test-tiny"


def valid(**fields):
    fields.setdefault("prompt", "a red cat walks in the rain")
    fields.setdefault("model", TINY)
    fields.setdefault("seed", 11)
    return validate_request(GenerationRequest(**fields), default_model=TINY)


def test_auto_picks_pytorch_sdpa_on_the_cpu_and_the_transformer_uses_it(manager):
    assert attention.resolve("auto", "cpu").name == "sdpa"
    assert attention.available(torch.device("cpu")) == ["sdpa"]
    manager.generate(valid())
    processor = manager.pipeline.transformer.blocks[0].attn1.processor
    assert processor._attention_backend.value == "native"


@pytest.mark.parametrize("choice", ["cudnn", "flash", "flash3", "sage"])
def test_a_backend_this_machine_cannot_run_is_refused_before_loading(choice):
    manager = PipelineManager(offline=True, speed=SpeedOptions(attention=choice))
    with pytest.raises(AttentionUnavailableError) as info:
        manager.generate(valid())
    message = str(info.value)
    assert f"The '{choice}' attention backend needs a CUDA GPU" in message and "Choose auto" in message
    assert "sdpa" in message  # what this machine can run instead
    assert manager.loads == 0


def test_an_unknown_backend_names_the_choices():
    with pytest.raises(AttentionUnavailableError, match="Unknown attention backend 'fast'. Use one of: auto, sdpa"):
        SpeedOptions(attention="fast").check("cpu")


def test_missing_packages_are_named_on_a_gpu(monkeypatch):
    """On a CUDA device the refusal names the package to install (the check runs without a GPU here)."""
    monkeypatch.setattr(attention, "_capability", lambda device: (9, 0))
    monkeypatch.setattr(attention, "installed", lambda name: name not in ("flash", "sage", "flash3"))
    cuda = torch.device("cuda")
    with pytest.raises(AttentionUnavailableError, match="needs the flash-attn package, which is not installed"):
        attention.resolve("flash", cuda)
    assert attention.resolve("auto", cuda).name == "cudnn"  # Hopper without extra packages
    monkeypatch.setattr(attention, "installed", lambda name: True)
    assert attention.resolve("auto", cuda).name == "sage"  # installed by the user: preferred
    monkeypatch.setattr(attention, "_capability", lambda device: (7, 5))
    with pytest.raises(AttentionUnavailableError, match="needs an Ampere or newer GPU"):
        attention.resolve("cudnn", cuda)


def test_a_package_that_is_installed_but_does_not_load_is_not_chosen(monkeypatch):
    """A flash-attn or SageAttention wheel built for another PyTorch is installed (its metadata says so) yet
    fails to import; diffusers then marks the backend unusable. `auto` picked it anyway, and every job
    failed in set_attention_backend."""
    import diffusers.utils
    from diffusers.models import attention_dispatch as dispatch

    for check in ("is_sageattention_available", "is_sageattention_version", "is_flash_attn_available",
                  "is_flash_attn_version", "is_flash_attn_3_available"):  # fmt: skip
        monkeypatch.setattr(diffusers.utils, check, lambda *args: True)  # installed, as far as metadata goes
    for flag in ("_CAN_USE_SAGE_ATTN", "_CAN_USE_FLASH_ATTN", "_CAN_USE_FLASH_ATTN_3"):
        monkeypatch.setattr(dispatch, flag, False)  # what diffusers sets when the import fails
    monkeypatch.setattr(attention, "_capability", lambda device: (9, 0))
    cuda = torch.device("cuda")
    assert attention.resolve("auto", cuda).name == "cudnn"
    with pytest.raises(AttentionUnavailableError, match="not installed .or does not load with this PyTorch"):
        attention.resolve("sage", cuda)
    monkeypatch.setattr(dispatch, "_CAN_USE_SAGE_ATTN", True)  # it loads: preferred again
    assert attention.resolve("auto", cuda).name == "sage"


def test_compiled_blocks_give_eagers_frames_and_do_not_recompile_for_prompt_seed_steps_or_guidance():
    request = valid(frames=13)
    manager = PipelineManager(offline=True)
    eager = manager.generate(request).frames
    manager.speed = SpeedOptions(compile=True)
    compiled = manager.generate(request).frames  # compiles (tens of seconds on a CPU)
    assert manager.loads == 1
    difference = np.abs(eager.astype(int) - compiled.astype(int))
    assert difference.mean() < 0.5 and difference.max() <= 4  # measured: mean 0.13, max 2 levels of 255
    with torch.compiler.set_stance("fail_on_recompile"):
        manager.generate(valid(frames=13, prompt="another prompt entirely", seed=99, steps=3, guidance_scale=2.5))
        manager.generate(valid(frames=13, image=np.full((64, 96, 3), 90, np.uint8)))  # image-to-video: same blocks
    # a step cache's hooks run inside the blocks, which one graph per block cannot hold: the blocks are
    # compiled again around them (every job failed with "Unsupported: hasattr call" before)
    cached = valid(frames=13, cache="first-block")
    compiled_cached = manager.generate(cached).frames
    manager.speed = SpeedOptions()
    assert np.array_equal(manager.generate(request).frames, eager)  # back to eager blocks exactly
    difference = np.abs(manager.generate(cached).frames.astype(int) - compiled_cached.astype(int))
    assert difference.mean() < 0.5 and difference.max() <= 4
