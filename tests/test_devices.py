"""The engine on a second device, without a GPU: a tensor left on the CPU beside the GPU's fails every real run
and passes every CPU test, so the device-sensitive paths run here against a device other than the CPU.

The second device is PyTorch's "lazy" device type, chosen because a CPU-only build registers a device guard
for it (a "cuda" tensor makes the C++ guards of indexing, views and autograd refuse a CPU build). A tensor on
it (`OnDevice`) holds a real CPU tensor and reports "lazy:0"; every operator reaches `SecondDevice`, which
refuses tensors on two devices as a GPU's kernels do (a CPU scalar or CPU indices are allowed, as on CUDA),
runs the operator on the host tensors with the CPU's own kernels and puts the result on the device. So a run
on the second device makes exactly the CPU's frames, and every copy between the devices is recorded.
What it cannot show (CUDA-only branches, streams, kernels, memory) is in docs/ARCHITECTURE.md.
"""

from __future__ import annotations

import contextlib
import types
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves, tree_map

from pipelines.memory import GPU_PROFILES, PROFILES, MemoryBudget

DEVICE = torch.device("lazy", 0)
HOST = torch.device("cpu")
aten = torch.ops.aten
_COPIES = {aten.copy_.default, aten._to_copy.default}  # the operators that move values between devices
_INDEXING = {aten.index.Tensor, aten.index_put_.default, aten.index_put.default, aten._index_put_impl_.default}


class DeviceMismatchError(RuntimeError):
    pass


class OnDevice(torch.Tensor):
    """A host tensor that reports the second device: the values are real, the device is what code sees."""

    host: torch.Tensor
    __torch_function__ = torch._C._disabled_torch_function_impl

    @staticmethod
    def __new__(cls, host: torch.Tensor) -> OnDevice:
        wrapper = torch.Tensor._make_wrapper_subclass(
            cls, host.size(), strides=host.stride(), storage_offset=host.storage_offset(), dtype=host.dtype,
            layout=host.layout, device=DEVICE, requires_grad=host.requires_grad,
        )  # fmt: skip
        wrapper.host = host
        return wrapper

    def __repr__(self) -> str:
        return f"OnDevice({self.host!r})"

    @classmethod
    def __torch_dispatch__(cls, func, types, args=(), kwargs=None):
        return _run(func, args, kwargs or {}, None)


@dataclass(frozen=True)
class Crossing:
    """Values copied from one device to the other."""

    source: torch.device
    target: torch.device
    dtype: torch.dtype
    numel: int


def _normal(device) -> torch.device:
    device = torch.device(device)
    return DEVICE if device.type == DEVICE.type else device


def _host(value):
    return value.host if isinstance(value, OnDevice) else value


def _common_device(func, tensors: list[torch.Tensor]) -> torch.device:
    """Where an operator on these tensors runs; DeviceMismatchError where a GPU kernel would refuse them."""
    common = None
    for tensor in tensors:
        if tensor.device == HOST and tensor.dim() == 0:
            continue  # a CPU scalar goes into any device's kernel
        if common is None:
            common = tensor.device
        elif tensor.device != common:
            raise DeviceMismatchError(
                f"Expected all tensors to be on the same device, but found at least two devices, {common} and "
                f"{tensor.device}! ({func})"
            )
    return common or next((t.device for t in tensors), HOST)


def _target(func, args, kwargs) -> torch.device:
    device = kwargs.get("device")
    if func in _COPIES:
        return _normal(device) if device is not None else args[0].device
    if device is not None:
        return _normal(device)
    if func in _INDEXING:  # CPU index tensors are allowed on CUDA
        return _common_device(func, [args[0], *(a for a in tree_leaves(args[2:]) if isinstance(a, torch.Tensor))])
    return _common_device(func, [a for a in tree_leaves((args, kwargs)) if isinstance(a, torch.Tensor)])


def _run(func, args, kwargs: dict, mode: SecondDevice | None):
    target = _target(func, args, kwargs)
    if mode is not None and func in _COPIES:
        source = args[1] if func is aten.copy_.default else args[0]
        if source.device != target:
            mode.crossings.append(Crossing(source.device, target, source.dtype, source.numel()))
    if kwargs.get("device") is not None and _normal(kwargs["device"]) == DEVICE:
        kwargs = {**kwargs, "device": HOST}
    given = {id(_host(a)): a for a in tree_leaves((args, kwargs)) if isinstance(a, torch.Tensor)}
    out = func(*tree_map(_host, args), **tree_map(_host, kwargs))

    def placed(value):
        if not isinstance(value, torch.Tensor):
            return value
        if id(value) in given:  # an in-place operator returns its own argument
            return given[id(value)]
        return OnDevice(value) if target == DEVICE else value

    return tree_map(placed, out)


class SecondDevice(TorchDispatchMode):
    """Every operator while it is on: factories and copies onto the second device, device checks, a record of
    what crossed between the devices."""

    def __init__(self):
        super().__init__()
        self.crossings: list[Crossing] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        return _run(func, args, kwargs or {}, self)

    def moved(self, source: torch.device, target: torch.device) -> list[Crossing]:
        return [c for c in self.crossings if c.source == source and c.target == target]

    @contextlib.contextmanager
    def on(self) -> Iterator[SecondDevice]:
        """Inference with the second device available (the engine trains nothing; autograd's C++ would ask a
        device guard for every operator)."""
        with torch.no_grad(), WholeCalls(), self:
            yield self


def _set_data(tensor: torch.Tensor, value: torch.Tensor) -> None:
    """`tensor.data = value` across the wrapper's type (offload hooks move weights so): the object becomes the
    value, as on a GPU, keeping its identity (hooks and optimisers key on it)."""
    replacement = value.detach()
    if isinstance(tensor, torch.nn.Parameter):
        replacement = torch.nn.Parameter(replacement, requires_grad=tensor.requires_grad)
    torch.utils.swap_tensors(tensor, replacement)


class WholeCalls(TorchFunctionMode):
    """Calls PyTorch splits by device type in C++ before any operator reaches `SecondDevice`: attention picks
    its kernel by device type (run whole on the host tensors, so the device uses the CPU's kernels and makes
    the CPU's values), `.data =` refuses two tensor types, and `.numpy()` is refused as CUDA refuses it."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is torch.nn.functional.scaled_dot_product_attention:
            target = _common_device(func, [a for a in tree_leaves((args, kwargs)) if isinstance(a, torch.Tensor)])
            with torch._C.DisableTorchFunction():
                out = func(*tree_map(_host, args), **tree_map(_host, kwargs))
            return OnDevice(out) if target == DEVICE else out
        if func == torch.Tensor.data.__set__ and any(isinstance(a, OnDevice) for a in args):
            return _set_data(*args)
        if func is torch.Tensor.tolist and isinstance(args[0], OnDevice):
            return args[0].cpu().tolist()  # a copy to the host, as on CUDA
        if func is torch.Tensor.numpy and isinstance(args[0], OnDevice):
            raise TypeError(f"can't convert {DEVICE} device type tensor to numpy: copy it to the host first")
        return func(*args, **kwargs)


class _Autocast(torch.autocast):
    """Autocast on the second device is the CPU's, where its kernels run."""

    def __init__(self, device_type: str, *args, **kwargs):
        super().__init__("cpu" if device_type == DEVICE.type else device_type, *args, **kwargs)


_shallow_copy_compatible = torch._has_compatible_shallow_copy_type


def _compatible(input: torch.Tensor, from_: torch.Tensor) -> bool:  # noqa: A002 (PyTorch's own names)
    """nn.Module.to replaces a parameter moved across the wrapper's type instead of assigning its `.data`."""
    wrapped = isinstance(input, OnDevice) or isinstance(from_, OnDevice)
    return not wrapped and _shallow_copy_compatible(input, from_)


@pytest.fixture
def second_device(monkeypatch) -> SecondDevice:
    """The second device, used inside `with second_device.on():`; outside it the CPU runs at its own speed
    (a reference run)."""
    return with_second_device(monkeypatch)


def with_second_device(monkeypatch: pytest.MonkeyPatch) -> SecondDevice:
    """Torch's runtime module for the device, its autocast and its module moves, patched until `monkeypatch`
    undoes them."""
    runtime = types.SimpleNamespace(
        empty_cache=lambda: None, synchronize=lambda device=None: None, is_available=lambda: True,
        device_count=lambda: 1, current_device=lambda: 0,
    )  # fmt: skip
    monkeypatch.setattr(torch, DEVICE.type, runtime, raising=False)  # torch.get_device_module (diffusers' hooks)
    monkeypatch.setattr(torch, "autocast", _Autocast)
    monkeypatch.setattr(torch, "_has_compatible_shallow_copy_type", _compatible)
    return SecondDevice()


def on_device(value: torch.Tensor | np.ndarray) -> OnDevice:
    tensor = torch.from_numpy(np.array(value)) if isinstance(value, np.ndarray) else value
    return OnDevice(tensor.clone())


# ---- the harness itself ----------------------------------------------------------------------------------------


def test_the_second_device_refuses_what_a_gpu_refuses_and_allows_what_it_allows(second_device):
    with second_device.on():
        x = torch.arange(6.0, device="lazy").view(2, 3)
        assert x.device == DEVICE and torch.equal(x.cpu(), torch.arange(6.0).view(2, 3))
        with pytest.raises(DeviceMismatchError, match="lazy:0 and cpu"):
            x + torch.ones(2, 3)
        with pytest.raises(DeviceMismatchError):
            torch.nn.Linear(3, 2).to(DEVICE)(torch.ones(3))
        with pytest.raises(TypeError):
            x.numpy()  # as a CUDA tensor, it must come to the host first
        assert torch.equal((x * torch.tensor(2.0)).cpu(), torch.arange(0.0, 12, 2).view(2, 3))  # a CPU scalar
        assert torch.equal(x[:, torch.tensor([0, 2])].cpu(), torch.tensor([[0.0, 2], [3, 5]]))  # CPU indices
        second_device.crossings.clear()
        x[0].copy_(torch.full((3,), 9.0))  # a copy between devices is fine, and recorded
        assert second_device.crossings == [Crossing(HOST, DEVICE, torch.float32, 3)]
        assert x[0].tolist() == [9.0, 9.0, 9.0] and x.sum().item() == 39.0


# ---- colour matching and end frames ----------------------------------------------------------------------------


def test_colour_matching_runs_where_the_frames_are_and_makes_the_cpus_frames(second_device):
    from pipelines.colour import match_colours
    from tests.test_colour import drifting_clip, scene

    start = scene()
    end = np.ascontiguousarray(start[::-1, ::-1])
    clip = drifting_clip(start, 9)
    for ending in (None, end):
        expected = match_colours(torch.from_numpy(clip), start, ending)
        with second_device.on():
            matched = match_colours(on_device(clip), start, ending)
        assert matched.device == DEVICE and matched.dtype == torch.uint8
        assert torch.equal(matched.cpu(), expected)


# ---- the engine: each memory profile's placement, end frames ---------------------------------------------------

GPU_MEMORY = MemoryBudget(vram_gb=80.0, ram_gb=64.0, device="cuda")  # every profile fits the test models
_cpu_frames: dict[tuple, np.ndarray] = {}


def manager_on(device: torch.device, profile: str):
    from pipelines.manager import PipelineManager

    return PipelineManager(profile=profile, device=str(device), memory_probe=lambda _: GPU_MEMORY, offline=True)


def i2v_request(model: str = "test-tiny", **fields):
    from pipelines.request import GenerationRequest, validate_request
    from tests.test_colour import scene

    fields = {"prompt": "the disc rolls", "width": 64, "height": 64, "frames": 5, "steps": 2, "seed": 11,
              "image": scene(), **fields}  # fmt: skip
    asked = GenerationRequest(model=model, **fields)
    return validate_request(asked, default_model=model)


def cpu_frames(request, profile: str) -> np.ndarray:
    """The clip the CPU makes with the same profile's weights (bf16 or fp8 storage), once per module."""
    key = (request.spec.id, PROFILES[profile].fp8, request.end_image is not None)
    if key not in _cpu_frames:
        _cpu_frames[key] = manager_on(HOST, profile).generate(request).frames
    return _cpu_frames[key]


def record_compute(pipe) -> tuple[dict[str, set[torch.device]], list]:
    """Where each component's layers computed (their outputs' device), from hooks on every layer with weights."""
    seen: dict[str, set[torch.device]] = {}
    handles = []
    for name, component in pipe.components.items():
        if not isinstance(component, torch.nn.Module):
            continue
        for layer in component.modules():
            if next(layer.parameters(recurse=False), None) is None:
                continue

            def hook(_layer, _inputs, output, name=name):
                first = next(t for t in tree_leaves(output) if isinstance(t, torch.Tensor))
                seen.setdefault(name, set()).add(first.device)

            handles.append(layer.register_forward_hook(hook))
    return seen, handles


def computes_on(placement: str, component: str) -> torch.device:
    """Where the profile runs a component: the text encoder stays on the CPU for these two, all else computes on
    the GPU (offloaded weights are brought to it)."""
    if component == "text_encoder" and placement in ("gpu_text_cpu", "group_offload"):
        return HOST
    return DEVICE


def rests_on(placement: str, component: str) -> torch.device:
    """Where the profile keeps a component's weights between runs."""
    if placement == "gpu":
        return DEVICE
    if placement == "model_offload":
        return HOST
    if placement == "gpu_text_cpu":
        return HOST if component == "text_encoder" else DEVICE
    return DEVICE if component == "vae" else HOST  # group offload: the transformers stream from the host


def weights_on(module: torch.nn.Module) -> set[torch.device]:
    return {t.device for t in (*module.parameters(), *module.buffers())}


@pytest.mark.parametrize("profile", GPU_PROFILES)
def test_each_memory_profile_runs_image_to_video_on_the_gpu_and_makes_the_cpus_clip(second_device, profile):
    """Image to video with colour matching (the default) and a preview at every step, placed by each profile."""
    from pipelines.catalogue import IMAGE_TO_VIDEO

    request = i2v_request()
    assert request.match_colour
    expected = cpu_frames(request, profile)
    manager = manager_on(DEVICE, profile)
    previews = []
    with second_device.on():
        manager.preload(request.spec, IMAGE_TO_VIDEO, profile)
        computed, handles = record_compute(manager.pipeline)
        result = manager.generate(request, on_progress=lambda p: p.preview is not None and previews.append(p))
    for handle in handles:
        handle.remove()
    placement = PROFILES[profile].placement
    components = {name: m for name, m in manager.pipeline.components.items() if isinstance(m, torch.nn.Module)}
    assert {name: computed.get(name) for name in components} == {
        name: {computes_on(placement, name)} for name in components
    }
    assert {name: weights_on(m) for name, m in components.items()} == {
        name: {rests_on(placement, name)} for name in components
    }
    assert [p.step for p in previews] == [1, 2] and previews[-1].preview.dtype == np.uint8
    assert np.array_equal(result.frames, expected)


def test_an_end_frame_clip_on_the_gpu_is_the_cpus_clip(second_device):
    """The A14B pair's start and end frames, colour matched from the one picture's colours to the other's."""
    from tests.test_colour import scene

    request = i2v_request("test-tiny-i2v-a14b", end_image=np.ascontiguousarray(scene()[::-1, ::-1]))
    assert request.match_colour and request.end_image is not None
    expected = cpu_frames(request, "gpu")
    manager = manager_on(DEVICE, "gpu")
    with second_device.on():
        result = manager.generate(request)
    assert result.frames.shape == (5, 64, 64, 3) and np.array_equal(result.frames, expected)


def test_switching_task_and_fast_mode_under_model_offload_keeps_each_clip_the_cpus(second_device):
    """A task switch wraps the same modules in another pipeline (its offload hooks set again), Fast mode swaps
    the transformer: each run still computes on the GPU and makes the CPU's clip."""
    runs = [i2v_request(image=None), i2v_request(prompt="the disc stops"), i2v_request(fast=True)]
    cpu = manager_on(HOST, "offload")
    expected = [cpu.generate(r).frames for r in runs]
    manager = manager_on(DEVICE, "offload")
    with second_device.on():
        clips = [manager.generate(runs[0]).frames]
        computed, handles = record_compute(manager.pipeline)  # on the modules the task switch keeps
        clips += [manager.generate(r).frames for r in runs[1:]]
    for handle in handles:
        handle.remove()
    assert [r.task for r in runs] == ["t2v", "i2v", "i2v"]
    assert computed == {"text_encoder": {DEVICE}, "transformer": {DEVICE}, "vae": {DEVICE}}
    assert [np.array_equal(c, e) for c, e in zip(clips, expected, strict=True)] == [True] * 3
    assert manager._loaded.variant == "fast" and weights_on(manager.pipeline.transformer) == {HOST}


# ---- previews, the decode and uint8, the host RAM a model holds ------------------------------------------------


def tiny_vae():
    from diffusers import AutoencoderKLWan

    from pipelines.testmodels import ensure_test_model

    return AutoencoderKLWan.from_pretrained(ensure_test_model("test-tiny") / "vae")


def test_previews_are_fitted_and_drawn_on_the_gpu_and_are_the_cpus_pictures(second_device):
    from pipelines.preview import StepPreviewer, fit_latent_to_rgb

    vae = tiny_vae()
    latents = [torch.randn(1, 48, 3, 4, 4, generator=torch.Generator().manual_seed(i)) for i in range(2)]
    expected_map = fit_latent_to_rgb(vae)
    previewer = StepPreviewer(expected_map)
    expected = [previewer(x, sigma) for x, sigma in zip(latents, (0.9, 0.6), strict=True)]
    with second_device.on():
        vae.to(DEVICE)
        mapping = fit_latent_to_rgb(vae)  # the VAE's encodes run where it is
        previewer = StepPreviewer(mapping)
        drawn = [previewer(x.to(DEVICE), sigma) for x, sigma in zip(latents, (0.9, 0.6), strict=True)]
    assert mapping.weight.device == HOST and torch.equal(mapping.weight, expected_map.weight)
    assert all(np.array_equal(d, e) for d, e in zip(drawn, expected, strict=True)) and drawn[0].shape[0] == 3


def test_the_decode_and_uint8_run_on_the_gpu_and_only_uint8_frames_reach_the_host(second_device):
    from pipelines.decode import decode_latents, to_host, video_to_uint8

    vae = tiny_vae()
    latents = torch.randn(1, 48, 2, 2, 2, generator=torch.Generator().manual_seed(3))
    expected = to_host(video_to_uint8(decode_latents(vae, latents)))
    with second_device.on():
        vae.to(DEVICE)
        second_device.crossings.clear()
        video = decode_latents(vae, latents)  # latents from the host go to the VAE's device
        frames = video_to_uint8(video)
        assert video.device == DEVICE and frames.device == DEVICE and frames.dtype == torch.uint8
        host = to_host(frames)
    assert np.array_equal(host, expected) and host.shape == (5, 32, 32, 3)
    assert second_device.moved(DEVICE, HOST) == [Crossing(DEVICE, HOST, torch.uint8, host.size)]


def test_only_weights_on_the_host_count_as_the_ram_a_loaded_model_holds(second_device):
    from pipelines.catalogue import TEXT_TO_VIDEO, get_spec
    from pipelines.memory import resident_ram_gb

    manager = manager_on(DEVICE, "gpu_text_cpu")
    with second_device.on():
        manager.preload(get_spec("test-tiny"), TEXT_TO_VIDEO, "gpu_text_cpu")
        held = resident_ram_gb(manager.pipeline.components)
    text_encoder = manager.pipeline.text_encoder
    assert weights_on(text_encoder) == {HOST} and weights_on(manager.pipeline.transformer) == {DEVICE}
    assert held == pytest.approx(resident_ram_gb({"text_encoder": text_encoder}))
    assert held > 0


# ---- LoRAs fused on the GPU ------------------------------------------------------------------------------------


def test_a_lora_fused_on_the_gpu_keeps_its_originals_on_the_host_and_comes_off_exactly(second_device, tmp_path):
    """Unfused, fused (the same set again), then none: each run the CPU's clip, and the base weights back."""
    from diffusers import WanTransformer3DModel

    from pipelines.loras import LoraChoice
    from pipelines.request import GenerationRequest, validate_request
    from pipelines.testmodels import ensure_test_model, lora_weights, save_lora

    base = WanTransformer3DModel.from_pretrained(ensure_test_model("test-tiny") / "transformer")
    path = save_lora(lora_weights(base, seed=5, scale=0.3), tmp_path / "style.safetensors")

    def request(*loras: LoraChoice):
        asked = GenerationRequest(prompt="a red cat walks in the rain", model="test-tiny", width=64, height=64,
                                  frames=5, steps=2, seed=7, loras=list(loras))  # fmt: skip
        return validate_request(asked, default_model="test-tiny")

    runs = [request(LoraChoice(str(path))), request(LoraChoice(str(path))), request()]
    cpu = manager_on(HOST, "gpu")
    expected = [cpu.generate(r).frames for r in runs]
    manager = manager_on(DEVICE, "gpu")
    with second_device.on():
        unfused = manager.generate(runs[0]).frames
        fused = manager.generate(runs[1]).frames
        loras = manager._loaded.loras
        assert loras.fused and loras.originals["transformer"]
        kept = loras.originals["transformer"]
        fused_weights = {name: p for name, p in manager.pipeline.transformer.named_parameters() if name in kept}
        assert {t.device for t in kept.values()} == {HOST} and {p.device for p in fused_weights.values()} == {DEVICE}
        base_again = manager.generate(runs[2]).frames
        restored = dict(manager.pipeline.transformer.named_parameters())
        unloaded = {name.replace(".base_layer", ""): original for name, original in kept.items()}
        assert all(torch.equal(restored[name].cpu(), original) for name, original in unloaded.items())
    assert weights_on(manager.pipeline.transformer) == {DEVICE}
    assert [np.array_equal(a, b) for a, b in zip((unfused, fused, base_again), expected, strict=True)] == [True] * 3
    assert not np.array_equal(unfused, base_again)  # the LoRA changed the clip


# ---- one clip split over two ranks (context parallelism) -------------------------------------------------------


def split_runs(saved: Path) -> None:
    """One rank of `test_a_clip_split_over_two_ranks_on_the_gpu_is_the_cpus_split_clip`, started by
    torch.distributed.run: the same split run on the CPU and on the second device; rank 0 saves both."""
    from pipelines import parallel
    from pipelines.manager import PipelineManager
    from pipelines.request import GenerationRequest, validate_request
    from tests.cp_rank import REQUEST

    rank = parallel.launched_rank()
    parallel.init_group(HOST)  # gloo: the ranks' collectives run on the host tensors
    request = validate_request(GenerationRequest(**REQUEST), "test-tiny")
    try:
        with pytest.MonkeyPatch.context() as monkeypatch:
            second_device = with_second_device(monkeypatch)
            frames = {}
            for device in (HOST, DEVICE):
                manager = PipelineManager(profile="gpu", device=str(device), memory_probe=lambda _: GPU_MEMORY,
                                          offline=True, context_parallel=rank.world)  # fmt: skip
                with second_device.on() if device == DEVICE else contextlib.nullcontext():
                    result = manager.generate(request)
                assert result.context_parallel == rank.world and weights_on(manager.pipeline.transformer) == {device}
                frames[device.type] = result.frames
        if rank.leader:
            np.savez(saved, **frames)
    finally:
        parallel.close_group()


def test_a_clip_split_over_two_ranks_on_the_gpu_is_the_cpus_split_clip(tmp_path):
    import os
    import subprocess
    import sys

    from tests.test_cli import ROOT

    saved = tmp_path / "frames.npz"
    env = dict(os.environ, OMP_NUM_THREADS="1")
    done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2",
                           "-m", "tests.test_devices", str(saved)], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=300)  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    frames = np.load(saved)
    assert frames["lazy"].shape == (9, 64, 96, 3) and np.array_equal(frames["lazy"], frames["cpu"])


if __name__ == "__main__":
    import sys

    split_runs(Path(sys.argv[1]))
