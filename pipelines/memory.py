"""Memory profiles: where the model's weights live while it runs, picked from free VRAM and RAM.

Profiles go from fastest at full precision to leanest. `auto` takes the first whose estimate fits with a safety margin;
a request that fits no profile is refused before any work starts with a message that says what to
change. Estimates come from the catalogue's weight sizes; `bench/bench_generate.py` measures reality.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch

from pipelines.catalogue import ModelSpec
from pipelines.errors import UserError

AUTO = "auto"
SAFETY_MARGIN = 0.9  # use at most 90% of what is free


@dataclass(frozen=True)
class Profile:
    name: str
    label: str
    placement: str  # "gpu" | "gpu_text_cpu" | "model_offload" | "group_offload" | "cpu"
    fp8: bool  # transformer weights stored in float8, computed in bf16 (layerwise casting)
    vae_tiling: bool


PROFILES: dict[str, Profile] = {
    p.name: p
    for p in (
        # Full-precision weights first: offload costs some speed, fp8 costs some quality.
        Profile("gpu", "Everything on the GPU (fastest)", "gpu", fp8=False, vae_tiling=False),
        # Wan's own 24 GB recipe (--t5_cpu): the transformer stays on the GPU, so no step waits for 10 GB of
        # weights to cross the bus; the text encoder runs on the CPU (only the prompt's real tokens, cached).
        Profile(
            "gpu_text_cpu",
            "Transformer and VAE on the GPU, text encoder on the CPU",
            "gpu_text_cpu",
            fp8=False,
            vae_tiling=True,
        ),
        Profile("offload", "Model CPU offload", "model_offload", fp8=False, vae_tiling=True),
        Profile("gpu_fp8", "Everything on the GPU, fp8 weights", "gpu", fp8=True, vae_tiling=True),
        Profile("offload_fp8", "Model CPU offload, fp8 weights", "model_offload", fp8=True, vae_tiling=True),
        Profile(
            "group_offload",
            "Group offload with CUDA streams, fp8 (lowest VRAM)",
            "group_offload",
            fp8=True,
            vae_tiling=True,
        ),
        Profile("cpu", "CPU only (no GPU found; test models)", "cpu", fp8=False, vae_tiling=False),
    )
}
GPU_PROFILES = tuple(name for name, p in PROFILES.items() if p.placement != "cpu")


@dataclass(frozen=True)
class MemoryBudget:
    """Free memory in GB; vram_gb is 0 when there is no GPU."""

    vram_gb: float
    ram_gb: float
    device: str  # "cuda" or "cpu"


@dataclass(frozen=True)
class MemoryNeed:
    vram_gb: float
    ram_gb: float


class DoesNotFitError(UserError, RuntimeError):
    pass


def probe_memory(device: torch.device | str | None = None) -> MemoryBudget:
    """What this process could use on `device` (default: the current GPU) if it dropped its own model: free
    memory plus everything its own allocator holds. The profile chooser counts the chosen profile's resident
    weights in its need, so a model already loaded is neither counted twice nor credited by estimate."""
    ram = available_ram_gb()
    if torch.cuda.is_available() and (device is None or torch.device(device).type == "cuda"):
        device = torch.device(device or "cuda")
        free, _total = torch.cuda.mem_get_info(device)
        ours = torch.cuda.memory_reserved(device)  # allocated or cached by this process: all ours to reuse
        fraction_cap = _fraction_cap_gb()
        vram = (free + ours) / 2**30
        if fraction_cap is not None:
            vram = min(vram, fraction_cap)
        return MemoryBudget(vram_gb=vram, ram_gb=ram, device="cuda")
    return MemoryBudget(vram_gb=0.0, ram_gb=ram, device="cpu")


def _fraction_cap_gb() -> float | None:
    """WAN_STUDIO_VRAM_CAP_GB stands in for a smaller card; the benchmark sets it beside
    torch.cuda.set_per_process_memory_fraction, which torch does not let us read back."""
    cap = os.environ.get("WAN_STUDIO_VRAM_CAP_GB")
    return float(cap) if cap else None


def available_ram_gb() -> float:
    try:
        import psutil

        return psutil.virtual_memory().available / 2**30
    except ImportError:  # psutil comes with gradio; fall back for a bare engine install
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) / 2**20
    return 0.0


def resident_ram_gb(modules: dict) -> float:
    """RAM held by the CPU-side weights of a loaded pipeline's modules (shared tensors counted once). The OS
    does not report it as available, yet it is this process's to reuse or free before the next load."""
    seen, total = set(), 0
    for module in modules.values():
        if not isinstance(module, torch.nn.Module):
            continue
        for tensor in (*module.parameters(), *module.buffers()):
            if tensor.device.type == "cpu" and tensor.data_ptr() not in seen:
                seen.add(tensor.data_ptr())
                total += tensor.numel() * tensor.element_size()
    return total / 2**30


def pinned_copy_factor() -> float:
    """Group offload's pinned copies of the weights over their size. PyTorch rounds each pinned allocation up
    to a power of two (1.53x an A14B expert's blocks, 1.64x TI2V-5B's, counted on the real layouts) unless
    told otherwise: the manager sets pinned_max_round_threshold_mb, which PyTorch 2.13 reads and 2.11 lacks."""
    major, minor = (int(part) for part in torch.__version__.split("+")[0].split(".")[:2])
    return 1.0 if (major, minor) >= (2, 13) else 1.65


def estimate_need(spec: ModelSpec, profile: Profile, width: int, height: int, frames: int) -> MemoryNeed:
    """A deliberately simple model: resident weights plus activations scaled by the latent volume."""
    w = spec.weights
    scale = (width * height * frames) / (spec.default_size[0] * spec.default_size[1] * spec.frames)
    act = w.activations_gb * scale
    transformer = w.transformer_gb * (0.5 if profile.fp8 else 1.0)
    all_transformers = transformer * w.experts
    # Tiling decodes a few latent tiles at a time: about a quarter of the untiled working set here.
    decode_work = w.vae_decode_gb * scale * (0.25 if profile.vae_tiling else 1.0)
    host = all_transformers + w.text_encoder_gb + w.vae_gb
    # Loading: the transformers first, each in bf16 until it is cast to fp8 or sent to the GPU; then the rest
    # (the manager's load order). GPU profiles hold one module in RAM at a time: the largest sets the peak.
    in_transit = max(w.transformer_gb, w.text_encoder_gb)
    host_peak = max(host, transformer * (w.experts - 1) + w.transformer_gb + w.vae_gb)
    if profile.placement == "cpu":
        return MemoryNeed(0.0, host_peak + act + decode_work)
    if profile.placement == "gpu":
        return MemoryNeed(all_transformers + w.text_encoder_gb + w.vae_gb + max(act, decode_work), in_transit + 2.0)
    if profile.placement == "gpu_text_cpu":
        return MemoryNeed(all_transformers + w.vae_gb + max(act, decode_work), in_transit + 2.0)
    if profile.placement == "model_offload":
        return MemoryNeed(max(w.text_encoder_gb, transformer + act, w.vae_gb + decode_work), host_peak + 2.0)
    # group offload: a few blocks of one model at a time, streamed from pinned copies of all of them
    pinned = all_transformers * pinned_copy_factor() + w.text_encoder_gb + w.vae_gb
    return MemoryNeed(1.5 + act + w.vae_gb + decode_work, max(host_peak, pinned) + 2.0)


def choose_profile(
    spec: ModelSpec, width: int, height: int, frames: int, budget: MemoryBudget, requested: str = AUTO
) -> Profile:
    """The requested profile if it fits, else (for auto) the fastest that fits; DoesNotFitError otherwise."""
    automatic = requested.partition(":")[0] == AUTO  # "auto", or "auto:fp8" / "auto:bf16" to fix the precision
    if budget.device == "cpu":
        if not automatic and requested != "cpu":
            raise DoesNotFitError(f"The '{requested}' memory profile needs a CUDA GPU, and none was found.")
        candidates = [PROFILES["cpu"]]
    elif automatic:
        precision = requested.partition(":")[2]
        candidates = [
            PROFILES[name] for name in GPU_PROFILES if not precision or PROFILES[name].fp8 == (precision == "fp8")
        ]
    elif requested in GPU_PROFILES:
        candidates = [PROFILES[requested]]
    else:
        raise DoesNotFitError(f"Unknown memory profile '{requested}'. Use auto or one of: {', '.join(PROFILES)}.")

    for profile in candidates:
        if _fits(estimate_need(spec, profile, width, height, frames), budget):
            return profile
    raise DoesNotFitError(_why_not(spec, width, height, frames, budget, candidates))


def _fits(need: MemoryNeed, budget: MemoryBudget) -> bool:
    return need.vram_gb <= budget.vram_gb * SAFETY_MARGIN and need.ram_gb <= budget.ram_gb * SAFETY_MARGIN


def _why_not(
    spec: ModelSpec, width: int, height: int, frames: int, budget: MemoryBudget, candidates: list[Profile]
) -> str:
    """The real cause (no GPU, or which memory is short by how much) and only changes that would fit,
    computed from the same estimates: fewer frames, a smaller size preset, another model."""
    leanest = candidates[-1]
    need = estimate_need(spec, leanest, width, height, frames)
    what = f"{spec.name} at {width}x{height}, {frames} frames"
    if budget.device == "cpu" and not spec.is_test:
        gpu_need = estimate_need(spec, PROFILES["group_offload"], width, height, frames).vram_gb
        return (
            f"No CUDA GPU was found on this machine. {what} needs an NVIDIA GPU (about {gpu_need:.0f} GB of GPU "
            f"memory with the leanest profile); on the CPU it would need about {need.ram_gb:.0f} GB of RAM "
            f"({budget.ram_gb:.0f} GB free) and hours per clip. To try the studio here, use the built-in test "
            "model (the button at the top of the page, or --model test-tiny)."
        )
    short = []
    if need.vram_gb > budget.vram_gb * SAFETY_MARGIN:
        short.append(f"about {need.vram_gb:.1f} GB of GPU memory ({budget.vram_gb:.1f} GB free)")
    if need.ram_gb > budget.ram_gb * SAFETY_MARGIN:
        short.append(f"about {need.ram_gb:.1f} GB of RAM ({budget.ram_gb:.1f} GB free)")
    cause = f"{what} does not fit: even with the '{leanest.name}' profile it needs {' and '.join(short)}."

    def fits(s: ModelSpec, w: int, h: int, f: int) -> bool:
        return any(_fits(estimate_need(s, p, w, h, f), budget) for p in candidates)

    options = []
    fewer = next((f for f in range(frames - spec.frame_step, spec.min_frames - 1, -spec.frame_step)
                  if fits(spec, width, height, f)), None)  # fmt: skip
    if fewer:
        options.append(f"{fewer} frames at this size")
    smaller = [(w, h) for w, h in spec.sizes if w * h < width * height and fits(spec, w, h, frames)]
    if smaller:
        w, h = max(smaller, key=lambda size: size[0] * size[1])
        options.append(f"{w}x{h} with {frames} frames")
    if options:
        return f"{cause} It would fit with {' or '.join(options)}."
    from pipelines.catalogue import CATALOGUE

    lighter = [s for s in CATALOGUE.values() if not s.is_test and s.id != spec.id and spec.task_overlap(s)
               and fits(s, *s.default_size, s.frames)]  # fmt: skip
    if lighter:
        return f"{cause} Even the smallest size and frame count would not fit; {lighter[0].name} would."
    return f"{cause} Nothing would fit: close other programs using the GPU, or use a machine with more memory."
