from __future__ import annotations

import shutil

import pytest
import torch

from pipelines.catalogue import CATALOGUE, DEFAULT_MODEL
from pipelines.memory import DoesNotFitError, MemoryBudget, choose_profile, estimate_need
from pipelines.preview import estimate_x0, fit_latent_to_rgb, load_or_fit
from pipelines.testmodels import FULL_SIZE_LAYOUTS, full_size_components


def test_x0_estimate_is_exact_for_an_euler_flow_step():
    x0, noise = torch.randn(4, 3, 5, 5), torch.randn(4, 3, 5, 5)
    at = lambda s: (1 - s) * x0 + s * noise  # noqa: E731
    estimate = estimate_x0(at(0.4), 0.4, at(0.7), 0.7)
    assert torch.allclose(estimate, x0, atol=1e-5)
    assert torch.equal(estimate_x0(at(0.0), 0.0, None, None), x0)  # the last step is the clean latent


def test_latent_to_rgb_map_is_fitted_from_the_vae_and_cached(tmp_path):
    from diffusers import AutoencoderKLWan

    from pipelines.testmodels import ensure_test_model

    vae = AutoencoderKLWan.from_pretrained(ensure_test_model("test-tiny") / "vae")
    mapping = fit_latent_to_rgb(vae)
    assert mapping.weight.shape == (48, 3)
    # even for random weights the fitted map explains colour far better than a flat mean colour
    assert mapping.fit_error < 0.75 * mapping.baseline_error
    cached = load_or_fit(vae, tmp_path, "test-tiny@x")
    again = load_or_fit(vae, tmp_path, "test-tiny@x")
    assert len(list(tmp_path.glob("latent-rgb-*.json"))) == 1
    assert torch.allclose(cached.weight, again.weight)


GB24 = MemoryBudget(vram_gb=23.5, ram_gb=60.0, device="cuda")


def test_profiles_for_a_24gb_card_follow_the_estimates():
    five_b = CATALOGUE[DEFAULT_MODEL]
    chosen = choose_profile(five_b, 1280, 704, 121, GB24)
    # Wan's own 4090 recipe: the transformer stays on the GPU, the text encoder (11.4 GB) runs on the CPU
    assert chosen.name == "gpu_text_cpu"
    need = estimate_need(five_b, chosen, 1280, 704, 121)
    assert need.vram_gb < 0.9 * GB24.vram_gb and need.ram_gb >= five_b.weights.text_encoder_gb
    a14b = CATALOGUE["Wan-AI/Wan2.2-T2V-A14B-Diffusers"]
    chosen = choose_profile(a14b, 832, 480, 81, GB24)
    assert chosen.fp8  # two 14B experts fit only with fp8 weights
    big = MemoryBudget(vram_gb=139.0, ram_gb=200.0, device="cuda")
    assert choose_profile(five_b, 1280, 704, 121, big).name == "gpu"


def test_ram_estimates_cover_the_load_not_only_the_resting_placement():
    """Modules load one after another in bf16 (transformers first, each cast to fp8 or sent to the GPU before
    the next loads): host RAM peaks at one module in bf16 beside what is already resident."""
    from pipelines.memory import PROFILES

    a14b = CATALOGUE["Wan-AI/Wan2.2-T2V-A14B-Diffusers"].weights
    for name in ("offload_fp8", "group_offload"):
        need = estimate_need(CATALOGUE["Wan-AI/Wan2.2-T2V-A14B-Diffusers"], PROFILES[name], 832, 480, 81)
        one_fp8_one_loading = a14b.transformer_gb / 2 + a14b.transformer_gb + a14b.vae_gb
        assert need.ram_gb >= one_fp8_one_loading, name
    five_b = CATALOGUE[DEFAULT_MODEL]
    for name in ("gpu", "gpu_fp8", "gpu_text_cpu"):  # the text encoder (11.4 GB) passes through RAM to its place
        assert estimate_need(five_b, PROFILES[name], 1280, 704, 121).ram_gb >= five_b.weights.text_encoder_gb, name


def test_group_offloads_pinned_copies_are_counted_as_pytorch_makes_them(monkeypatch):
    """Each pinned allocation is rounded up to a power of two where PyTorch cannot be told otherwise (2.11):
    an A14B pair's fp8 blocks then pin 1.53x their size (43 GB), which the estimate left out."""
    import torch

    from pipelines.memory import PROFILES

    a14b = CATALOGUE["Wan-AI/Wan2.2-T2V-A14B-Diffusers"]
    w = a14b.weights
    monkeypatch.setattr(torch, "__version__", "2.11.0+cu130")
    rounded = estimate_need(a14b, PROFILES["group_offload"], 832, 480, 81).ram_gb
    assert rounded >= 2 * (w.transformer_gb / 2) * 1.53 + w.text_encoder_gb + w.vae_gb
    monkeypatch.setattr(torch, "__version__", "2.13.0+cu130")  # pins large allocations at their size
    exact = estimate_need(a14b, PROFILES["group_offload"], 832, 480, 81).ram_gb
    assert w.transformer_gb + w.text_encoder_gb + w.vae_gb <= exact < rounded


def test_a_request_too_big_for_the_card_says_what_to_change():
    a14b = CATALOGUE["Wan-AI/Wan2.2-T2V-A14B-Diffusers"]
    with pytest.raises(DoesNotFitError) as info:
        choose_profile(a14b, 1280, 720, 81, MemoryBudget(vram_gb=8.0, ram_gb=16.0, device="cuda"))
    message = str(info.value)
    assert "1280x720, 81 frames does not fit" in message and "GPU memory (8.0 GB free)" in message
    assert "Wan2.1 T2V-1.3B (light, 480P) would" in message  # the only change that would fit
    five_b = CATALOGUE[DEFAULT_MODEL]
    ten = MemoryBudget(vram_gb=10.0, ram_gb=64.0, device="cuda")
    with pytest.raises(DoesNotFitError) as info:
        choose_profile(five_b, 1280, 704, 121, ten)
    suggestion = str(info.value).split("It would fit with ")[1]  # each suggestion checked against the estimates
    frames = int(suggestion.split(" frames at this size")[0])
    width, height = (int(v) for v in suggestion.split(" or ")[1].split(" with")[0].split("x"))
    assert choose_profile(five_b, 1280, 704, frames, ten) and choose_profile(five_b, width, height, 121, ten)
    with pytest.raises(DoesNotFitError):
        choose_profile(five_b, 1280, 704, frames + 4, ten)  # and the most frames that fit
    with pytest.raises(DoesNotFitError) as info:  # no GPU at all: said so, not "try fewer frames"
        choose_profile(five_b, 640, 352, 5, MemoryBudget(0.0, 22.0, "cpu"))
    assert str(info.value).startswith("No CUDA GPU was found on this machine.") and "test model" in str(info.value)
    with pytest.raises(DoesNotFitError, match="needs a CUDA GPU"):
        choose_profile(a14b, 832, 480, 81, MemoryBudget(0.0, 64.0, "cpu"), requested="offload")


def test_need_grows_with_size_and_shrinks_with_leaner_profiles():
    from pipelines.memory import PROFILES

    spec = CATALOGUE[DEFAULT_MODEL]
    small = estimate_need(spec, PROFILES["offload"], 832, 480, 49)
    large = estimate_need(spec, PROFILES["offload"], 1280, 704, 121)
    assert small.vram_gb < large.vram_gb
    vram = [
        estimate_need(spec, PROFILES[n], 1280, 704, 121).vram_gb
        for n in ("gpu", "gpu_text_cpu", "offload", "group_offload")
    ]
    assert vram == sorted(vram, reverse=True)


def test_a_model_missing_offline_says_how_to_get_it(tmp_path, monkeypatch):
    from huggingface_hub import constants

    from pipelines.catalogue import CATALOGUE
    from pipelines.weights import ModelUnavailableError, resolve_weights

    spec = CATALOGUE["Wan-AI/Wan2.1-T2V-1.3B-Diffusers"]
    # huggingface_hub reads HF_HUB_CACHE once, at import: the constant itself is what must point at our cache
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "cache"))
    # positive control: a cached copy in this cache is found, so the cache really is the one searched
    repo = tmp_path / "cache" / f"models--{spec.repo.replace('/', '--')}"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text("c" * 40)
    (repo / "snapshots" / ("c" * 40)).mkdir(parents=True)
    (repo / "snapshots" / ("c" * 40) / "model_index.json").write_text("{}")
    assert resolve_weights(spec, offline=True).path == repo / "snapshots" / ("c" * 40)
    shutil.rmtree(repo)
    with pytest.raises(ModelUnavailableError) as info:
        resolve_weights(spec, offline=True)
    assert "not downloaded yet and offline mode is on" in str(info.value)


@pytest.mark.parametrize("model_id", list(FULL_SIZE_LAYOUTS))
def test_catalogue_weight_sizes_match_the_real_architectures(model_id):
    """The sizes the profile chooser trusts, against the real layouts built on the meta device (no memory)."""

    def gb(module) -> float:
        return sum(p.numel() * p.element_size() for p in module.parameters()) / 1e9

    sizes = CATALOGUE[model_id].weights
    parts = full_size_components(model_id, device="meta")  # transformers and text encoder bf16, VAE float32
    assert gb(parts["transformer"]) == pytest.approx(sizes.transformer_gb, rel=0.03)
    assert (parts["transformer_2"] is not None) == (sizes.experts == 2)
    assert gb(parts["text_encoder"]) == pytest.approx(sizes.text_encoder_gb, rel=0.03)
    assert gb(parts["vae"]) == pytest.approx(sizes.vae_gb, rel=0.05)
    # fp8 profiles count half the transformer: layerwise casting stores all but norms and embeddings in fp8
    parts["transformer"].enable_layerwise_casting(storage_dtype=torch.float8_e4m3fn, compute_dtype=torch.bfloat16)
    assert gb(parts["transformer"]) == pytest.approx(sizes.transformer_gb / 2, rel=0.03)


MEASURE_PEAK = """
import json
from pathlib import Path
from pipelines.manager import PipelineManager
from pipelines.memory import PROFILES, estimate_need
from pipelines.request import GenerationRequest, validate_request

def status_gb(field):
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith(field)) / 2**20

def request(width, height, frames):
    return validate_request(GenerationRequest(prompt="x", model="test-tiny", width=width, height=height,
                                              frames=frames, steps=2, seed=1), "test-tiny")

base = status_gb("VmRSS")  # Python, torch and diffusers imported; nothing loaded
Path("/proc/self/clear_refs").write_text("5")  # the peak (VmHWM) starts again from here: import spikes do not count
manager = PipelineManager(offline=True, profile="cpu")
manager.generate(request(256, 256, 33))
need = estimate_need(request(256, 256, 33).spec, PROFILES["cpu"], 256, 256, 33).ram_gb
print(json.dumps({"measured": status_gb("VmHWM") - base, "estimated": need}))
"""


def test_the_cpu_estimate_covers_the_measured_peak_without_refusing_what_fits():
    """The estimator against a measurement, not against itself: the RAM a generation adds at the test model's
    largest size (peak RSS over the process's start) is covered by the 'cpu' estimate, and the estimate is
    not so pessimistic that it would refuse runs that fit (within 4×). GPU peaks come from bench/gpu_suite.py."""
    import json
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    done = subprocess.run([sys.executable, "-c", MEASURE_PEAK], cwd=root, capture_output=True, text=True,
                          timeout=300)  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    figures = json.loads(done.stdout.strip().splitlines()[-1])
    assert 0 < figures["measured"] <= figures["estimated"] <= 4 * figures["measured"], figures
