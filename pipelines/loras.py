"""LoRAs: style and character fine-tunes, and step-distilled weights, from the community.

A LoRA is read from a `.safetensors` file only (a pickle can run code), in any layout diffusers'
WanLoraLoaderMixin reads: diffusers/PEFT keys (`transformer.blocks.N.attn1.to_q.lora_A`), the
lightx2v/ComfyUI layout (`diffusion_model.blocks.N.self_attn.q.lora_down`, `.alpha`) and Kohya/musubi
(`lora_unet_blocks_N_self_attn_q.lora_down`). Before it loads, its blocks' width is read from the file's
header (no tensor is loaded) and compared with the model's: a LoRA made for another model is refused with
what it was made for. On the A14B pair each LoRA says which expert(s) it goes to.

`LoraSet` keeps the loaded adapters on the transformers. A set used again unchanged is fused into the weights
(no per-step cost); the weights it replaced are kept on the CPU, so unfusing restores them exactly.
"""

from __future__ import annotations

import logging
import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from pipelines.digests import sha256_of
from pipelines.errors import UserError

logger = logging.getLogger(__name__)

SUFFIX = ".safetensors"
MAX_LORAS = 8
MAX_STRENGTH = 4.0
EXPERTS = {"both": (True, True), "high": (True, False), "low": (False, True)}
_BLOCK = re.compile(r"blocks[._](\d+)[._]")


class LoraError(UserError, ValueError):
    """A LoRA that cannot be used with this model; the message says why."""


@dataclass(frozen=True)
class LoraChoice:
    """What a caller asks for: a file, a strength, and the expert(s) of an A14B pair it goes to."""

    file: str  # a path to a .safetensors file
    strength: float = 1.0
    high: bool = True  # the high-noise expert (`transformer`), the only one of single-expert models
    low: bool = True  # the low-noise expert (`transformer_2`)

    @property
    def experts(self) -> str:
        return next(name for name, pair in EXPERTS.items() if pair == (self.high, self.low))


@dataclass(frozen=True)
class LoraFile:
    """What a LoRA file's header says."""

    layout: str  # "diffusers", "comfyui" or "kohya"
    width: int  # the hidden size of the blocks it was made for
    blocks: int
    rank: int


@dataclass(frozen=True)
class ResolvedLora:
    path: str
    name: str
    sha256: str
    strength: float
    high: bool
    low: bool
    layout: str

    @property
    def experts(self) -> str:
        return LoraChoice(self.path, self.strength, self.high, self.low).experts

    def record(self) -> dict[str, Any]:
        """What a sidecar and a job record keep: enough to find the same file again and check it is unchanged."""
        return {"file": self.name, "sha256": self.sha256, "strength": self.strength, "experts": self.experts}


def inspect_lora(path: Path) -> LoraFile:
    """Read a LoRA's layout, width, depth and rank from its header; LoraError if it is not a Wan LoRA file."""
    path = Path(path)
    if path.suffix.lower() != SUFFIX:
        raise LoraError(f"'{path.name}' is not a .safetensors file: LoRAs are read from .safetensors only "
                        "(other formats can run code when loaded).")  # fmt: skip
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            shapes = {key: tuple(f.get_slice(key).get_shape()) for key in f.keys()}
    except Exception:
        raise LoraError(f"'{path.name}' could not be read as a .safetensors file: it is damaged or not one.") from None
    keys = list(shapes)
    if any(k.startswith("diffusion_model.") for k in keys):
        layout, down = "comfyui", re.compile(r"blocks\.\d+\.(self_attn\.q|ffn\.0)\.(lora_down|lora_A)\.weight$")
    elif any(k.startswith("lora_unet_") for k in keys):
        layout, down = "kohya", re.compile(r"blocks_\d+_(self_attn_q|ffn_0)\.lora_down\.weight$")
    elif any(re.match(r"(transformer\.)?blocks\.\d+\.", k) for k in keys):
        layout, down = "diffusers", re.compile(r"blocks\.\d+\.(attn1\.to_q|ffn\.net\.0\.proj)\.lora_A\.weight$")
    else:
        first = keys[0] if keys else "nothing"
        raise LoraError(f"'{path.name}' is not a Wan LoRA: its keys look like '{first}'.")
    probes = [shape for key, shape in shapes.items() if down.search(key) and len(shape) == 2]
    if not probes:
        raise LoraError(f"'{path.name}' holds no LoRA layers of the transformer blocks that Wan Studio can check.")
    rank, width = probes[0]
    blocks = 1 + max(int(m.group(1)) for key in keys if (m := _BLOCK.search(key)))
    return LoraFile(layout, width, blocks, rank)


def made_for(width: int) -> str:
    """The models whose blocks have this width, in words."""
    from pipelines.catalogue import CATALOGUE

    names = sorted({spec.family for spec in CATALOGUE.values() if spec.transformer_width == width and spec.family})
    return " or ".join(names) if names else f"a model whose blocks are {width} wide"


def resolve(choices: list[LoraChoice], spec) -> tuple[ResolvedLora, ...]:
    """Every choice checked against the model (`ModelSpec`): file, format, width, strength, experts."""
    if len(choices) > MAX_LORAS:
        raise LoraError(f"At most {MAX_LORAS} LoRAs at once; {len(choices)} were asked for.")
    two_experts = spec.two_experts
    resolved = []
    for choice in choices:
        path = Path(os.path.expanduser(str(choice.file)))
        name = path.name
        if not path.is_file():
            raise LoraError(f"The LoRA '{name}' is not there (looked for {path}).")
        info = inspect_lora(path)
        if spec.transformer_width and info.width != spec.transformer_width:
            raise LoraError(
                f"'{name}' was made for {made_for(info.width)} (blocks {info.width} wide), not for {spec.name} "
                f"({spec.transformer_width} wide)."
            )
        strength = choice.strength
        if isinstance(strength, bool) or not isinstance(strength, (int, float)) or not math.isfinite(strength):
            raise LoraError(f"The strength of '{name}' must be a number; got {strength!r}.")
        if not -MAX_STRENGTH <= strength <= MAX_STRENGTH:
            raise LoraError(f"The strength of '{name}' must be from -{MAX_STRENGTH:g} to {MAX_STRENGTH:g}.")
        high, low = bool(choice.high), bool(choice.low)
        if not two_experts:
            if not high:
                raise LoraError(f"{spec.name} has one transformer: '{name}' can only go to it (high-noise on).")
            low = False
        elif not (high or low):
            raise LoraError(f"'{name}' goes to no expert: choose high-noise, low-noise or both.")
        resolved.append(ResolvedLora(str(path), name, sha256_of(path), float(strength), high, low, info.layout))
    return tuple(resolved)


@dataclass
class LoraSet:
    """The LoRAs on a loaded pipeline's transformers, and whether they are fused into the weights."""

    key: tuple = ()
    adapters: dict[str, list[tuple[str, float]]] = field(default_factory=dict)  # component -> [(name, strength)]
    fused: bool = False
    originals: dict[str, dict[str, torch.Tensor]] = field(default_factory=dict)  # component -> {param: weight}

    def apply(self, pipe, loras: tuple[ResolvedLora, ...], may_fuse: bool) -> None:
        """Make `loras` the active set: load, re-weight, fuse or clear only what differs from now."""
        key = tuple((lora.sha256, lora.strength, lora.high, lora.low) for lora in loras)
        if key == self.key:
            if loras and may_fuse and not self.fused:
                self._fuse(pipe)
            return
        self.clear(pipe)
        for lora in loras:  # the file that was checked is the file that loads (a queued job may wait for hours)
            if not Path(lora.path).is_file() or sha256_of(Path(lora.path)) != lora.sha256:
                raise LoraError(f"The LoRA '{lora.name}' is gone or changed since the job was queued.")
        for i, lora in enumerate(loras):
            for component, wanted in (("transformer", lora.high), ("transformer_2", lora.low)):
                if not wanted:
                    continue
                name = f"lora{i}_{component}"
                _adapters_in_compute_dtype(getattr(pipe, component))
                try:
                    pipe.load_lora_weights(lora.path, adapter_name=name,
                                           load_into_transformer_2=component != "transformer")  # fmt: skip
                except (RuntimeError, ValueError, KeyError) as err:
                    logger.warning("LoRA %s did not load into %s: %s", lora.name, component, err)
                    self.adapters.setdefault(component, []).append((name, lora.strength))
                    self.clear(pipe)
                    raise LoraError(
                        f"'{lora.name}' does not fit this model's {component}: some of its layers have other shapes "
                        "or names (it was probably made for another model or a modified one)."
                    ) from None
                self.adapters.setdefault(component, []).append((name, lora.strength))
        for component, adapters in self.adapters.items():
            getattr(pipe, component).set_adapters([n for n, _ in adapters], [s for _, s in adapters])
        self.key = key

    def clear(self, pipe) -> None:
        """No LoRA on any transformer: unfused (the original weights put back exactly) and unloaded."""
        if self.fused:
            for component, weights in self.originals.items():
                module = getattr(pipe, component)
                module.unfuse_lora()
                params = dict(module.named_parameters())
                with torch.no_grad():
                    for name, original in weights.items():
                        params[name].copy_(original)  # unfusing subtracts in the weights' precision: not exact
        if self.adapters:
            pipe.unload_lora_weights()
        self.key, self.adapters, self.fused, self.originals = (), {}, False, {}

    def _fuse(self, pipe) -> None:
        """Fuse, keeping a host copy of every weight it changes (unfusing in bf16 is not exact). A set whose
        copy would leave under a quarter of the free RAM stays unfused: slower steps, never a host OOM."""
        from pipelines.memory import available_ram_gb

        changed = {
            component: [(name, p) for name, p in getattr(pipe, component).named_parameters() if ".base_layer." in name]
            for component in self.adapters
        }  # fmt: skip
        backup_gb = sum(p.numel() * p.element_size() for params in changed.values() for _, p in params) / 2**30
        if backup_gb > 0.75 * available_ram_gb():
            return
        for component, adapters in self.adapters.items():
            self.originals[component] = {name: p.detach().to("cpu", copy=True) for name, p in changed[component]}
            getattr(pipe, component).fuse_lora(adapter_names=[n for n, _ in adapters])
        self.fused = True


_FLOAT8 = {torch.float8_e4m3fn, torch.float8_e5m2}


def _adapters_in_compute_dtype(module: torch.nn.Module) -> None:
    """Under fp8 layerwise casting a layer stores float8 and computes in `module.dtype` (the casting hook's).
    PEFT makes a new LoRA layer in its base layer's `compute_dtype` where one is set (peft >= 0.19; its
    quantised layers set it), else in the weight's dtype: float8, which rounds the LoRA's values as they load
    (about 6 % off, small ones to zero) and which no matmul takes. Marking the float8 layers avoids both."""
    compute = module.dtype
    for layer in module.modules():
        weight = getattr(layer, "weight", None)
        if isinstance(weight, torch.Tensor) and weight.dtype in _FLOAT8:
            layer.compute_dtype = compute
