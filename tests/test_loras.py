"""LoRAs, Fast mode and step caching on the test models: what reaches the weights, the frames and the record."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from library.clips import save_clip
from library.lora_folder import LoraFolder
from pipelines.loras import LoraChoice, LoraSet, inspect_lora, resolve
from pipelines.request import GenerationRequest, RequestError, ValidRequest, validate_request
from pipelines.testmodels import ensure_test_model, lora_weights, save_lora

TINY, A14B = "test-tiny", "test-tiny-a14b"


def valid(**fields) -> ValidRequest:
    fields.setdefault("prompt", "a red cat walks in the rain")
    fields.setdefault("model", TINY)
    fields.setdefault("seed", 7)
    fields.setdefault("steps", 3)
    return validate_request(GenerationRequest(**fields), default_model=TINY)


def pipeline(model_id: str):
    """A fresh float32 pipeline of a test model, outside any manager."""
    from diffusers import WanPipeline

    return WanPipeline.from_pretrained(ensure_test_model(model_id), dtype=torch.float32)


def base_transformer(model_id: str = TINY, component: str = "transformer"):
    from diffusers import WanTransformer3DModel

    return WanTransformer3DModel.from_pretrained(ensure_test_model(model_id) / component)


@pytest.fixture(scope="module")
def loras(tmp_path_factory) -> dict[str, Path]:
    """LoRA files for the test models: zero up-matrices, a real one in each layout, one for the A14B width."""
    folder = tmp_path_factory.mktemp("loras")
    tiny = base_transformer()
    real = lora_weights(tiny, seed=5, scale=0.3)
    return {
        "zero": save_lora(lora_weights(tiny, zero_up=True), folder / "zero.safetensors"),
        "diffusers": save_lora(real, folder / "real-diffusers.safetensors", "diffusers"),
        "comfyui": save_lora(real, folder / "real-comfyui.safetensors", "comfyui"),
        "kohya": save_lora(real, folder / "real-kohya.safetensors", "kohya"),
        "comfyui-alpha2": save_lora(real, folder / "real-alpha2.safetensors", "comfyui", alpha=2.0),
        "a14b": save_lora(lora_weights(base_transformer(A14B), seed=3, scale=0.3), folder / "a14b.safetensors"),
    }


def lora_matrices(seed: int = 5, scale: float = 0.3) -> dict:
    return lora_weights(base_transformer(), seed=seed, scale=scale)


def fused_weights(pipe, path: Path, strength: float, spec_id: str = TINY, **experts) -> dict[str, torch.Tensor]:
    """Apply one LoRA the way the manager does, twice, so the second fuses it; the resulting block weights."""
    from pipelines.catalogue import get_spec

    chosen = resolve([LoraChoice(str(path), strength, **experts)], get_spec(spec_id))
    state = LoraSet()
    state.apply(pipe, chosen, may_fuse=True)
    assert not state.fused  # a new set runs unfused first
    state.apply(pipe, chosen, may_fuse=True)
    assert state.fused
    return {name: p.detach().clone() for name, p in pipe.transformer.named_parameters() if "base_layer.weight" in name}


# ---- the weights -----------------------------------------------------------------------------------------------


def test_a_fused_lora_changes_a_weight_by_strength_up_down_alpha_over_rank(loras):
    pipe = pipeline(TINY)
    before = {name: p.detach().clone() for name, p in pipe.transformer.named_parameters()}
    after = fused_weights(pipe, loras["comfyui-alpha2"], 0.7)
    down, up = lora_matrices()[1, "attn1.to_q"]
    expected = 0.7 * (up @ down) * (2.0 / down.shape[0])  # alpha 2, rank 4
    changed = after["blocks.1.attn1.to_q.base_layer.weight"] - before["blocks.1.attn1.to_q.weight"]
    assert torch.allclose(changed, expected, atol=1e-6), (changed - expected).abs().max()
    assert expected.abs().max() > 1e-2  # a change that could be missed would prove nothing


def test_the_three_formats_load_to_the_same_weights(loras):
    layouts = ("diffusers", "comfyui", "kohya")
    results = {layout: fused_weights(pipeline(TINY), loras[layout], 1.0) for layout in layouts}
    assert {inspect_lora(loras[layout]).layout for layout in results} == {"diffusers", "comfyui", "kohya"}
    reference = results["diffusers"]
    assert len(reference) == 2 * 10  # two blocks, ten targeted layers each: every layer reached
    for layout in ("comfyui", "kohya"):
        for name, weight in reference.items():
            assert torch.allclose(results[layout][name], weight, atol=1e-6), (layout, name)


def test_clearing_a_fused_lora_restores_the_weights_exactly(loras):
    pipe = pipeline(TINY)
    before = {name: p.detach().clone() for name, p in pipe.transformer.named_parameters()}
    state = LoraSet()
    chosen = resolve([LoraChoice(str(loras["diffusers"]), 1.0)], pipe_spec())
    state.apply(pipe, chosen, may_fuse=True)
    state.apply(pipe, chosen, may_fuse=True)
    state.apply(pipe, (), may_fuse=True)
    after = dict(pipe.transformer.named_parameters())
    assert set(after) == set(before)  # no LoRA layer left behind
    assert all(torch.equal(after[name], weight) for name, weight in before.items())


def pipe_spec():
    from pipelines.catalogue import get_spec

    return get_spec(TINY)


def test_on_the_a14b_pair_each_expert_gets_only_its_loras(loras):
    cases = ((dict(high=True, low=False), "transformer"), (dict(high=False, low=True), "transformer_2"))
    for experts, changes in cases:
        pipe = pipeline(A14B)
        before = {c: {n: p.detach().clone() for n, p in getattr(pipe, c).named_parameters()}
                  for c in ("transformer", "transformer_2")}  # fmt: skip
        from pipelines.catalogue import get_spec

        chosen = resolve([LoraChoice(str(loras["a14b"]), 1.0, **experts)], get_spec(A14B))
        state = LoraSet()
        state.apply(pipe, chosen, may_fuse=True)
        state.apply(pipe, chosen, may_fuse=True)
        for component in ("transformer", "transformer_2"):
            now = {n.replace(".base_layer", ""): p for n, p in getattr(pipe, component).named_parameters() if
                   "lora_" not in n}  # fmt: skip
            differs = any(not torch.equal(now[n], w) for n, w in before[component].items())
            assert differs == (component == changes), (experts, component)


# ---- the frames --------------------------------------------------------------------------------------------------


def test_zero_up_and_strength_zero_leave_the_frames_identical(manager, loras):
    base = manager.generate(valid()).frames
    zero = manager.generate(valid(loras=[LoraChoice(str(loras["zero"]))]))
    assert np.array_equal(zero.frames, base)
    assert zero.loras[0]["file"] == "zero.safetensors"
    assert np.array_equal(manager.generate(valid(loras=[LoraChoice(str(loras["comfyui"]), 0.0)])).frames, base)


def test_fused_and_unfused_runs_make_the_same_frames_and_the_base_model_comes_back(manager, loras):
    base = manager.generate(valid()).frames
    request = valid(loras=[LoraChoice(str(loras["comfyui"]), 1.0)])
    unfused = manager.generate(request).frames
    assert not manager._loaded.loras.fused
    fused = manager.generate(request).frames  # the same set again: fused into the weights
    assert manager._loaded.loras.fused
    assert np.abs(unfused.astype(int) - base).mean() > 1  # the LoRA does change the clip
    assert np.abs(fused.astype(int) - unfused).max() <= 2  # float rounding of W + BA vs W·x + B(A·x)
    assert np.array_equal(manager.generate(valid()).frames, base)  # unfused exactly, unloaded


# ---- refusals --------------------------------------------------------------------------------------------------


def test_a_lora_made_for_another_model_is_refused_naming_what_it_was_made_for(loras, tmp_path):
    with pytest.raises(RequestError) as err:
        valid(loras=[LoraChoice(str(loras["a14b"]))])
    assert "'a14b.safetensors' was made for the tiny A14B test layout" in str(err.value)
    assert "not for Tiny" in str(err.value)

    # a Wan2.1 14B LoRA (blocks 5120 wide) on TI2V-5B (3072): checked from the header, no weights loaded
    wide = {(0, "attn1.to_q"): (torch.zeros(4, 5120), torch.zeros(5120, 4))}
    path = save_lora(wide, tmp_path / "wan21-14b-style.safetensors", "comfyui")
    with pytest.raises(RequestError) as err:
        validate_request(GenerationRequest(prompt="a", model="Wan-AI/Wan2.2-TI2V-5B-Diffusers",
                                           loras=[LoraChoice(str(path))]), default_model=TINY)  # fmt: skip
    assert "was made for Wan2.2 A14B / Wan2.1 14B (blocks 5120 wide), not for Wan2.2 TI2V-5B" in str(err.value)


def test_pickles_and_files_that_are_not_wan_loras_are_refused(tmp_path):
    ckpt = tmp_path / "style.ckpt"
    ckpt.write_bytes(pickle.dumps({"w": 1}))
    disguised = tmp_path / "disguised.safetensors"
    disguised.write_bytes(pickle.dumps({"w": 1}))
    from safetensors.torch import save_file

    other = tmp_path / "sdxl.safetensors"
    save_file({"lora_te_text_model_encoder_layers_0.alpha": torch.tensor(1.0)}, str(other))
    for path, fragment in (
        (ckpt, "'style.ckpt' is not a .safetensors file: LoRAs are read from .safetensors only"),
        (disguised, "'disguised.safetensors' could not be read as a .safetensors file"),
        (other, "'sdxl.safetensors' is not a Wan LoRA"),
        (tmp_path / "gone.safetensors", "The LoRA 'gone.safetensors' is not there"),
    ):
        with pytest.raises(RequestError) as err:
            valid(loras=[LoraChoice(str(path))])
        assert fragment in err.value.problems["loras"]


def test_a_lora_whose_layers_do_not_fit_is_refused_by_name_and_the_model_still_works(loras, tmp_path):
    from pipelines.errors import UserError
    from pipelines.manager import PipelineManager

    weights = lora_matrices()
    down, up = weights[1, "ffn.net.2"]
    weights[1, "ffn.net.2"] = (torch.randn(4, down.shape[1] + 8), up)  # the header's probe layers still fit
    odd = save_lora(weights, tmp_path / "odd.safetensors", "comfyui")
    manager = PipelineManager(offline=True)
    base = manager.generate(valid()).frames
    with pytest.raises(UserError) as err:
        manager.generate(valid(loras=[LoraChoice(str(odd))]))
    assert "'odd.safetensors' does not fit this model's transformer" in str(err.value)
    assert np.array_equal(manager.generate(valid()).frames, base)  # nothing of it was left behind


def test_a_lora_changed_after_the_job_was_queued_is_not_applied(tmp_path):
    from pipelines.errors import UserError
    from pipelines.manager import PipelineManager

    path = save_lora(lora_matrices(), tmp_path / "late.safetensors")
    queued = valid(loras=[LoraChoice(str(path))])
    save_lora(lora_matrices(seed=9), path)  # replaced while the job waited
    with pytest.raises(UserError, match="'late.safetensors' is gone or changed since the job was queued"):
        PipelineManager(offline=True).generate(queued)


def test_loras_and_fast_mode_run_on_an_fp8_memory_profile():
    """fp8 profiles store the transformer in float8; PEFT gives new LoRA layers the base weight's dtype, which
    no matmul takes. The A14B pair needs fp8 on a 24 GB card, so this is where the Lightning LoRAs run."""
    from pipelines.manager import PipelineManager
    from pipelines.memory import Profile

    manager = PipelineManager(offline=True)
    manager.profile_for = lambda request: Profile("cpu_fp8", "fp8 on the CPU (test)", "cpu", fp8=True,
                                                  vae_tiling=False)  # fmt: skip
    result = manager.generate(valid(model=A14B, fast=True))
    assert result.frames.shape[0] > 0 and len(result.loras) == 2
    pipe = manager._loaded.pipe
    lora_dtypes = {p.dtype for t in (pipe.transformer, pipe.transformer_2) for n, p in t.named_parameters()
                   if "lora_" in n}  # fmt: skip
    assert lora_dtypes == {torch.float32}  # the CPU's compute dtype, not float8
    assert not manager._loaded.loras.fused  # fp8 weights are never fused into


def test_on_an_fp8_profile_a_loras_layers_hold_the_files_values(loras):
    """PEFT made the LoRA layers in float8 (the stored weights' dtype) and loaded the file into them, rounding
    every value (6 % off, small ones to zero) before they were cast up for the matmul."""
    from pipelines.manager import PipelineManager
    from pipelines.memory import Profile

    manager = PipelineManager(offline=True)
    manager.profile_for = lambda request: Profile("cpu_fp8", "fp8 on the CPU (test)", "cpu", fp8=True,
                                                  vae_tiling=False)  # fmt: skip
    manager.generate(valid(loras=[LoraChoice(str(loras["diffusers"]))]))
    blocks = manager._loaded.pipe.transformer.blocks
    compared = 0
    for (block, layer), (down, up) in lora_matrices().items():
        adapted = blocks[block].get_submodule(layer)
        assert adapted.get_base_layer().weight.dtype == torch.float8_e4m3fn  # the profile stores float8
        for matrix, expected in ((adapted.lora_A["lora0_transformer"].weight, down),
                                 (adapted.lora_B["lora0_transformer"].weight, up)):  # fmt: skip
            assert matrix.dtype == torch.float32  # the CPU's compute dtype
            torch.testing.assert_close(matrix, expected.to(torch.float32), rtol=1e-6, atol=1e-7)
            compared += 1
    assert compared >= 8


def test_strengths_and_experts_are_checked(loras):
    for choice, fragment in (
        (LoraChoice(str(loras["diffusers"]), 9.0), "must be from -4 to 4"),
        (LoraChoice(str(loras["diffusers"]), float("nan")), "must be a number"),
        (LoraChoice(str(loras["diffusers"]), 1.0, high=False, low=True), "has one transformer"),
    ):
        with pytest.raises(RequestError) as err:
            valid(loras=[choice])
        assert fragment in err.value.problems["loras"]
    with pytest.raises(RequestError) as err:
        valid(model=A14B, loras=[LoraChoice(str(loras["a14b"]), 1.0, high=False, low=False)])
    assert "goes to no expert" in err.value.problems["loras"]


def test_the_lora_folder_keeps_checked_uploads_and_names_files_only_inside_it(loras, tmp_path):
    folder = LoraFolder(tmp_path / "lora-folder")
    assert folder.entries() == []
    assert folder.keep(loras["diffusers"]) == "real-diffusers.safetensors"
    assert folder.keep(loras["diffusers"]) == "real-diffusers.safetensors"  # the same file again: kept once
    (tmp_path / "lora-folder" / "broken.safetensors").write_bytes(b"not a lora")
    labels = [entry.label for entry in folder.entries()]
    assert labels[0].startswith("broken.safetensors (unreadable:")
    made_for = "the tiny TI2V test layout or the tiny Wan2.1 test layout"
    assert labels[1] == f"real-diffusers.safetensors — for {made_for}, rank 4"
    from library import LibraryError
    from pipelines.loras import LoraError

    with pytest.raises(LoraError, match="not a .safetensors file"):
        folder.keep(tmp_path / "x.bin")
    for name in ("../real-diffusers.safetensors", "/etc/passwd", "real-diffusers.bin", "missing.safetensors"):
        with pytest.raises(LibraryError):
            folder.path_of(name)


# ---- Fast mode -------------------------------------------------------------------------------------------------


def count_calls(module: torch.nn.Module) -> list[int]:
    calls = [0]
    module.register_forward_hook(lambda *_: calls.__setitem__(0, calls[0] + 1))
    return calls


def transformer_calls(manager, request: ValidRequest) -> tuple[int, object]:
    manager.generate(request)  # load (and for fast runs swap in the distilled weights) first
    pipe = manager._loaded.pipe
    hooks = [count_calls(t) for t in (pipe.transformer, getattr(pipe, "transformer_2", None)) if t is not None]
    result = manager.generate(request)
    for t in (pipe.transformer, getattr(pipe, "transformer_2", None)):
        if t is not None:
            t._forward_hooks.clear()
    return sum(h[0] for h in hooks), result


@pytest.mark.parametrize("model", [TINY, A14B])
def test_fast_mode_makes_one_transformer_call_per_step_with_its_presets_settings(manager, model):
    from pipelines.catalogue import get_spec

    preset = get_spec(model).fast
    request = valid(model=model, fast=True, steps=30, guidance_scale=6.0)  # the preset's settings win
    assert (request.steps, request.guidance_scale) == (len(preset.sigmas), 1.0)
    calls, result = transformer_calls(manager, request)
    assert calls == request.steps
    assert result.fast == preset.label
    baseline_calls, _ = transformer_calls(manager, valid(model=model, steps=3))
    assert baseline_calls == 2 * 3  # classifier-free guidance: two calls a step
    if preset.loras:
        assert [lora["experts"] for lora in result.loras] == [lora.experts for lora in preset.loras]


def test_fast_mode_is_refused_for_a_model_without_a_preset(tmp_path):
    from pipelines.catalogue import get_spec

    local = get_spec(str(ensure_test_model(TINY)))  # a local folder: no published distilled weights fit it
    with pytest.raises(RequestError) as err:
        valid(model=local.id, fast=True)
    assert "has no fast mode" in err.value.problems["fast"]


# ---- step caching -----------------------------------------------------------------------------------------------


def block_passes(manager, request: ValidRequest) -> tuple[int, np.ndarray]:
    """Full passes through the last transformer block (its feed-forward runs only when the block computes)."""
    manager.generate(request)
    ffn = manager._loaded.pipe.transformer.blocks[-1].ffn
    calls = count_calls(ffn)
    frames = manager.generate(request).frames
    ffn._forward_hooks.clear()
    return calls[0], frames


# Documented in docs/PERFORMANCE.md: on the test model a cached run's frames stay within 2 levels (of 255) of
# the uncached run on average; real weights change less from step to step, and the GPU suite measures them.
CACHE_TOLERANCE = 2.0


@pytest.mark.parametrize("kind", ["first-block", "taylorseer"])
def test_a_cached_run_skips_block_passes_and_stays_within_tolerance(manager, kind):
    full, base = block_passes(manager, valid(steps=12))
    cached, frames = block_passes(manager, valid(steps=12, cache=kind))
    assert full == 2 * 12
    assert cached < full
    assert np.abs(frames.astype(float) - base).mean() <= CACHE_TOLERANCE
    off, again = block_passes(manager, valid(steps=12))  # turning it off brings the exact frames back
    assert off == full and np.array_equal(again, base)


def test_magcache_is_refused_until_calibrated_and_on_the_a14b_pair():
    with pytest.raises(RequestError) as err:
        valid(cache="magcache")
    assert "python app.py calibrate-cache --model test-tiny" in err.value.problems["cache"]
    for kind in ("magcache", "taylorseer"):  # each expert counts only its own steps: a schedule would not hold
        with pytest.raises(RequestError) as err:
            valid(model=A14B, cache=kind)
        assert "works on single-transformer models" in err.value.problems["cache"]
    assert valid(model=A14B, cache="first-block").cache.kind == "first-block"
    # Fast mode runs uncached: a cache would skip whole distilled steps (MagCache turned 3 steps into 1)
    assert valid(fast=True, cache="first-block").cache.kind == "off"
    for threshold, fragment in ((2.0, "from 0 to 1"), ("x", "must be a number")):
        with pytest.raises(RequestError) as err:
            valid(cache="first-block", cache_threshold=threshold)
        assert fragment in err.value.problems["cache"]


# ---- the record ------------------------------------------------------------------------------------------------


def test_the_sidecar_the_job_record_and_the_content_credentials_name_each_lora(manager, loras, tmp_path):
    from library.clips import ClipOptions, read_sidecar
    from library.provenance import verify_file

    request = valid(loras=[LoraChoice(str(loras["comfyui"]), 0.6)], cache="first-block", cache_threshold=0.1)
    record = json.loads(json.dumps(request.to_record()))
    assert ValidRequest.from_record(record).loras == request.loras  # a queued job survives a restart as it was
    assert ValidRequest.from_record(record).cache == request.cache
    result = manager.generate(request)
    files = save_clip(result, tmp_path, ClipOptions(sign=True))
    sidecar = read_sidecar(files.video)
    from pipelines.loras import sha256_of

    lora = {"file": "real-comfyui.safetensors", "sha256": sha256_of(loras["comfyui"]), "strength": 0.6,
            "experts": "high"}  # fmt: skip
    assert sidecar["settings"]["loras"] == [lora]
    assert sidecar["loras_applied"] == [lora]
    assert sidecar["settings"]["cache"] == {"kind": "first-block", "threshold": 0.1}
    assert verify_file(files.video).declared["loras"] == [lora]

    fast = save_clip(manager.generate(valid(model=A14B, fast=True)), tmp_path / "fast")
    shown = read_sidecar(fast.video)
    assert shown["fast_preset"] == "test Lightning-like LoRA pair (4 steps)"
    assert (shown["settings"]["steps"], shown["settings"]["guidance_scale"]) == (4, 1.0)
    assert [a["file"] for a in shown["loras_applied"]] == ["test-a14b-fast-high.safetensors",
                                                           "test-a14b-fast-low.safetensors"]  # fmt: skip
