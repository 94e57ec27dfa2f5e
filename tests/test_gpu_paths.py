"""The engine's GPU code paths, reproduced on the CPU: offload hooks, every exit path's resting placement,
out-of-memory recovery, where frames are converted, and what the step timings count.

On a CUDA machine the offload hooks move modules between the CPU and the GPU; here they run with the CPU as
their execution device, and what they did is read from the hooks themselves (which module is on its
execution device), or, for the preview fit, from a hook that keeps the weights on the meta device until it
runs, as the CPU keeps them from the GPU.
"""

from __future__ import annotations

import threading
import time
import weakref
from dataclasses import replace

import numpy as np
import pytest
import torch
from accelerate.hooks import CpuOffload, ModelHook, add_hook_to_module

from pipelines import memory
from pipelines.manager import GenerationCancelled, OutOfMemoryError, PipelineManager
from pipelines.memory import MemoryBudget
from pipelines.preview import fit_latent_to_rgb
from pipelines.request import GenerationRequest, validate_request

TINY = "test-tiny"


def valid(**fields):
    fields.setdefault("prompt", "a red cat walks in the rain")
    fields.setdefault("model", TINY)
    fields.setdefault("seed", 1234)
    return validate_request(GenerationRequest(**fields), default_model=TINY)


class WeightsElsewhere(ModelHook):
    """Like accelerate's CpuOffload: the weights wait off the execution device (here on meta, as on a GPU
    machine they wait on the CPU) and move to it when the module runs; the inputs do not move."""

    def __init__(self, execution_device: str):
        self.execution_device = execution_device

    def init_hook(self, module):
        self.weights = {k: v.clone() for k, v in module.state_dict().items()}
        return module.to("meta")

    def pre_forward(self, module, *args, **kwargs):
        if next(module.parameters()).device.type == "meta":
            module.to_empty(device=self.execution_device)
            module.load_state_dict(self.weights)
        return args, kwargs


def test_preview_fit_builds_its_inputs_on_the_vaes_execution_device():
    from diffusers import AutoencoderKLWan

    from pipelines.testmodels import ensure_test_model

    folder = ensure_test_model(TINY) / "vae"
    expected = fit_latent_to_rgb(AutoencoderKLWan.from_pretrained(folder))
    offloaded = AutoencoderKLWan.from_pretrained(folder)
    add_hook_to_module(offloaded, WeightsElsewhere("cpu"))
    assert next(offloaded.parameters()).device.type == "meta"  # where it sits until its hook runs
    mapping = fit_latent_to_rgb(offloaded)
    assert torch.allclose(mapping.weight, expected.weight, atol=1e-5)


@pytest.fixture
def offload_on_cpu(monkeypatch):
    """The model-offload profile with the CPU as execution device, and a record of what is on it."""
    monkeypatch.setitem(memory.PROFILES, "cpu", replace(memory.PROFILES["offload"], name="cpu"))
    onloaded: dict[int, str] = {}
    most = [0]
    pre_forward, init_hook = CpuOffload.pre_forward, CpuOffload.init_hook

    def on(self, module, *args, **kwargs):
        result = pre_forward(self, module, *args, **kwargs)
        if self.prev_module_hook is not None:  # on a GPU the previous model goes back (it is not on the CPU there)
            onloaded.pop(id(self.prev_module_hook.model), None)
        onloaded[id(module)] = type(module).__name__
        most[0] = max(most[0], len(onloaded))
        return result

    def off(self, module):
        onloaded.pop(id(module), None)
        return init_hook(self, module)

    monkeypatch.setattr(CpuOffload, "pre_forward", on)
    monkeypatch.setattr(CpuOffload, "init_hook", off)
    return onloaded, most


def _fail_at_step(pipe, step: int, error: Exception):
    """The transformer raises `error` in its call for `step` (1-based, two calls a step with guidance), once.
    The error comes from inside (its first block), below the offload hook that wraps the transformer's forward."""
    block = pipe.transformer.blocks[0]
    forward = block.forward
    calls = [0]

    def failing(*args, **kwargs):
        calls[0] += 1
        if calls[0] == 2 * step - 1:
            raise error
        return forward(*args, **kwargs)

    block.forward = failing
    return lambda: block.__dict__.pop("forward", None)


@pytest.mark.parametrize("exit_path", ["done", "cancel", "error", "out_of_memory"])
def test_every_exit_path_leaves_model_offload_at_rest(offload_on_cpu, exit_path):
    onloaded, most = offload_on_cpu
    budget = MemoryBudget(vram_gb=8.0, ram_gb=16.0, device="cpu")  # the test model fits any profile
    manager = PipelineManager(offline=True, device="cpu", memory_probe=lambda device: budget)
    manager.generate(valid(steps=2))
    assert manager.loaded[2] == "cpu" and manager.pipeline._all_hooks  # the offload hooks are in place
    assert not onloaded

    cancel = threading.Event()
    restore = lambda: None  # noqa: E731
    if exit_path == "cancel":
        watch = lambda p: p.step == 2 and cancel.set()  # noqa: E731
    else:
        watch = None
    if exit_path == "error":
        restore = _fail_at_step(manager.pipeline, 2, RuntimeError("a kernel failed"))
    if exit_path == "out_of_memory":
        restore = _fail_at_step(manager.pipeline, 2, torch.OutOfMemoryError("CUDA out of memory"))
    expected = {"done": None, "cancel": GenerationCancelled, "error": RuntimeError, "out_of_memory": OutOfMemoryError}
    if expected[exit_path] is None:
        manager.generate(valid(steps=3), on_progress=watch, cancel=cancel)
    else:
        with pytest.raises(expected[exit_path]):
            manager.generate(valid(steps=3), on_progress=watch, cancel=cancel)
    restore()
    assert not onloaded, f"still on the execution device after '{exit_path}': {sorted(onloaded.values())}"

    # and the next run never holds two models at once (the text encoder beside a resident transformer)
    most[0] = 0
    manager.generate(valid(steps=2, prompt="a new prompt, so the text encoder runs"))
    assert most[0] == 1 and not onloaded


def test_out_of_memory_frees_the_failed_runs_tensors_before_the_next_request():
    manager = PipelineManager(offline=True)
    manager.generate(valid())
    held = []
    forward = manager.pipeline.transformer.forward

    def runs_out(*args, **kwargs):
        if held:  # fails once; the next request runs normally, nothing restored by hand
            return forward(*args, **kwargs)
        activations = torch.ones(32, 1024, 1024)  # 128 MB standing for the activations that filled the GPU
        held.append(weakref.ref(activations))
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")

    manager.pipeline.transformer.forward = runs_out
    with pytest.raises(OutOfMemoryError) as info:
        manager.generate(valid())
    assert "Out of GPU memory at 96x64, 9 frames" in str(info.value) and "Memory was freed" in str(info.value)
    assert held[0]() is None, "the failed run's tensors are still referenced (by the exception's traceback)"
    seen_at_start = []
    manager.generate(valid(), on_progress=lambda p: seen_at_start.append(held[0]() is None))
    assert seen_at_start[0] is True


def test_frames_cross_to_the_host_as_uint8_only(manager, monkeypatch):
    request = valid(frames=13)
    manager.generate(request)  # loaded, previews fitted
    video_values = request.frames * request.height * request.width * 3
    crossings = []
    for name in ("cpu", "numpy"):
        original = getattr(torch.Tensor, name)

        def spy(self, *args, _original=original, _name=name, **kwargs):
            if self.numel() >= video_values:
                crossings.append((_name, self.dtype))
            return _original(self, *args, **kwargs)

        monkeypatch.setattr(torch.Tensor, name, spy)
    result = manager.generate(request)
    monkeypatch.undo()
    assert result.frames.dtype == np.uint8 and result.frames.shape == (13, 64, 96, 3)
    assert crossings and all(dtype == torch.uint8 for _, dtype in crossings), crossings


class FakeClock:
    """perf_counter that moves only when the test says a piece of work took time."""

    def __init__(self):
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def spend(self, seconds: float, fn):
        def timed(*args, **kwargs):
            self.now += seconds
            return fn(*args, **kwargs)

        return timed


def test_step_timings_count_each_stage_once(monkeypatch):
    manager = PipelineManager(offline=True)
    manager.generate(valid())
    pipe = manager.pipeline
    clock = FakeClock()
    monkeypatch.setattr(time, "perf_counter", clock)
    monkeypatch.setattr(pipe.text_encoder, "forward", clock.spend(100.0, pipe.text_encoder.forward))
    monkeypatch.setattr(pipe.transformer, "forward", clock.spend(1.0, pipe.transformer.forward))
    monkeypatch.setattr(pipe.vae, "decode", clock.spend(50.0, pipe.vae.decode))
    monkeypatch.setattr(type(pipe), "maybe_free_model_hooks", clock.spend(7.0, type(pipe).maybe_free_model_hooks))

    timings = manager.generate(valid(prompt="a blue dog on the sea", steps=4)).timings
    assert timings["encode_s"] == 100.0  # the new prompt; the negative prompt's embeddings were kept
    assert timings["first_step_s"] == 2.0  # guidance: two transformer calls a step, and nothing else
    assert timings["step_s_mean"] == 2.0  # steps 2..4
    assert timings["decode_s"] == 50.0  # the VAE alone: hook clean-up and the host copy are not in it

    again = manager.generate(valid(prompt="a blue dog on the sea", steps=4, seed=5)).timings
    assert again["encode_s"] == 0.0  # the same prompts again (another seed): the text encoder does not run


def picture() -> np.ndarray:
    y, x = np.mgrid[0:64, 0:96]
    return np.stack([x * 2, y * 3, np.full_like(x, 128)], axis=-1).astype(np.uint8)


def test_image_to_video_under_model_offload_holds_one_model_at_a_time(offload_on_cpu):
    """The picture's VAE encode comes before denoising: the VAE must leave before the transformer runs."""
    onloaded, most = offload_on_cpu
    budget = MemoryBudget(vram_gb=8.0, ram_gb=16.0, device="cpu")
    manager = PipelineManager(offline=True, device="cpu", memory_probe=lambda device: budget)
    manager.generate(valid(steps=2))
    most[0] = 0
    manager.generate(valid(steps=2, image=picture(), prompt="image to video, a new prompt"))
    assert most[0] == 1 and not onloaded


def test_a_resident_model_is_counted_as_what_it_holds_not_by_its_estimate(monkeypatch):
    """A 16 GB card holding TI2V-5B in gpu_text_cpu (12.8 GB of weights): the next 720P request must be
    planned as on an empty 16 GB card (offload), not with the resident profile's estimate added back."""
    from pipelines import memory
    from pipelines.catalogue import CATALOGUE, DEFAULT_MODEL

    gib = 2**30
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (int(3.2 * gib), 16 * gib))
    monkeypatch.setattr(torch.cuda, "memory_reserved", lambda device=None: int(12.8 * gib))
    monkeypatch.setattr(torch.cuda, "memory_allocated", lambda device=None: int(12.8 * gib))
    monkeypatch.setattr(memory, "available_ram_gb", lambda: 64.0)
    budget = memory.probe_memory("cuda")
    assert budget.vram_gb == pytest.approx(16.0)
    manager = PipelineManager(offline=True, device="cpu", memory_probe=lambda device: budget)
    five_b = CATALOGUE[DEFAULT_MODEL]
    request = validate_request(GenerationRequest(prompt="x", model=five_b.id, seed=1), default_model=five_b.id)
    empty_card = memory.choose_profile(five_b, 1280, 704, 121, memory.MemoryBudget(16.0, 64.0, "cuda"))
    assert manager.profile_for(request) == empty_card and empty_card.name == "offload"


def test_out_of_memory_while_placing_the_model_is_a_clear_message_and_frees_it(monkeypatch):
    from pipelines import manager as manager_module

    manager = PipelineManager(offline=True)
    real_place = manager_module._place
    monkeypatch.setattr(
        manager_module, "_place", lambda *a, **k: (_ for _ in ()).throw(torch.OutOfMemoryError("CUDA out of memory"))
    )
    with pytest.raises(OutOfMemoryError, match="Out of GPU memory while loading .* Memory was freed"):
        manager.generate(valid())
    assert manager.loaded is None and not manager.busy
    monkeypatch.setattr(manager_module, "_place", real_place)
    assert manager.generate(valid()).frames.shape == (9, 64, 96, 3)


def test_group_offload_streams_the_transformer_and_keeps_the_text_encoder_off_the_gpu(monkeypatch):
    from diffusers.hooks import HookRegistry

    monkeypatch.setitem(memory.PROFILES, "cpu", replace(memory.PROFILES["group_offload"], name="cpu"))
    settings = []  # the pinned copies are made at their size, not rounded up to a power of two (1.5x)
    monkeypatch.setattr(torch._C, "_accelerator_getAllocatorSettings", lambda: "max_split_size_mb:256")  # the user's
    monkeypatch.setattr(torch._C, "_accelerator_setAllocatorSettings", settings.append)
    monkeypatch.setattr(torch, "__version__", "2.13.0+cu130")
    budget = MemoryBudget(vram_gb=8.0, ram_gb=16.0, device="cpu")
    manager = PipelineManager(offline=True, device="cpu", memory_probe=lambda device: budget)
    assert manager.generate(valid(steps=2)).frames.shape == (9, 64, 96, 3)
    assert settings == ["max_split_size_mb:256,pinned_max_round_threshold_mb:1"]  # added to the user's settings
    pipe = manager.pipeline

    def hooks(module) -> set[str]:
        registry = getattr(module, "_diffusers_hook", None)
        return set(registry.hooks) if isinstance(registry, HookRegistry) else set()

    assert any("group_offloading" in name for m in pipe.transformer.modules() for name in hooks(m))
    # no offload hooks on the text encoder (it computes on the CPU) or the VAE: another model can reuse them
    assert not any(hooks(m) for m in pipe.text_encoder.modules()) and not any(hooks(m) for m in pipe.vae.modules())
    assert manager.generate(valid(steps=2, prompt="a new prompt")).frames.shape == (9, 64, 96, 3)


def test_on_fp8_profiles_each_transformer_is_fp8_before_the_next_module_loads(monkeypatch):
    """Every module used to load in bf16 before any was cast to fp8: host RAM peaked at the whole A14B pair
    in bf16 (57 GB) plus the text encoder, far over the fp8 profiles' estimate, on 64 GB machines."""
    from diffusers import WanTransformer3DModel
    from transformers import UMT5EncoderModel

    from pipelines.memory import Profile

    loaded: list[torch.nn.Module] = []
    seen: list[tuple[str, list[bool]]] = []  # each load: its class, and whether each earlier one is fp8
    for cls in (WanTransformer3DModel, UMT5EncoderModel):
        original = cls.from_pretrained.__func__

        def spy(klass, *args, _original=original, **kwargs):
            seen.append((klass.__name__, [any(p.dtype == torch.float8_e4m3fn for p in m.parameters())
                                          for m in loaded]))  # fmt: skip
            module = _original(klass, *args, **kwargs)
            loaded.append(module)
            return module

        monkeypatch.setattr(cls, "from_pretrained", classmethod(spy))
    manager = PipelineManager(offline=True, device="cpu")
    manager.profile_for = lambda request: Profile("cpu_fp8", "fp8 on the CPU (test)", "cpu", fp8=True,
                                                  vae_tiling=False)  # fmt: skip
    manager.generate(valid(model="test-tiny-a14b", steps=2))
    assert seen == [
        ("WanTransformer3DModel", []),
        ("WanTransformer3DModel", [True]),  # the first expert is fp8 before the second loads
        ("UMT5EncoderModel", [True, True]),
    ]


def test_a_pytorch_without_the_pinned_rounding_setting_is_left_as_it_is(monkeypatch):
    """CUDA builds of PyTorch 2.11 refuse the key with a ValueError: group offload must load there all the
    same, with its copies rounded (which the estimate then counts)."""
    from pipelines import manager as manager_module

    def refuse(settings):
        raise ValueError("Unrecognized key 'pinned_max_round_threshold_mb' in CUDA allocator config.")

    monkeypatch.setattr(torch._C, "_accelerator_setAllocatorSettings", refuse)
    monkeypatch.setattr(torch, "__version__", "2.11.0+cu130")
    manager_module._pin_at_size()  # no call, no error
    assert memory.pinned_copy_factor() > 1.5
