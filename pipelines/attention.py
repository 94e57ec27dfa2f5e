"""Which attention kernel the transformer uses, through diffusers' attention dispatcher.

Attention is about half of a Wan step at 720P (27k tokens), so the kernel matters. `auto` picks per device:
an installed SageAttention 2 (8-bit, what the community uses for speed) or FlashAttention 3 on Hopper,
PyTorch's cuDNN kernel on Hopper, flash-attn 2 when installed, else PyTorch's own SDPA chooser (its flash
kernel on Ampere and Ada). A choice the machine cannot run is refused with what to install, before any
model loads. `bench/gpu_suite.py` times every backend the machine has.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from pipelines.errors import UserError

AUTO = "auto"


class AttentionUnavailableError(UserError, ValueError):
    """The chosen attention backend cannot run here; the message says why and what to do."""


@dataclass(frozen=True)
class Backend:
    name: str  # what users type: Settings, --attention
    dispatcher: str  # diffusers' AttentionBackendName value
    label: str
    needs_cuda: bool
    package: str | None = None  # pip name, when it needs one beyond torch


BACKENDS: dict[str, Backend] = {
    b.name: b
    for b in (
        Backend("sdpa", "native", "PyTorch scaled-dot-product attention (chooses its own kernel)", needs_cuda=False),
        Backend("cudnn", "_native_cudnn", "PyTorch's cuDNN attention kernel (Ampere or newer)", needs_cuda=True),
        Backend("flash", "flash", "FlashAttention 2 (pip install flash-attn)", needs_cuda=True, package="flash-attn"),
        Backend(
            "flash3",
            "_flash_3",
            "FlashAttention 3, Hopper (built from source)",
            needs_cuda=True,
            package="flash-attn 3",
        ),
        Backend(
            "sage",
            "sage",
            "SageAttention 2, 8-bit (pip install sageattention): fastest, output changes a little",
            needs_cuda=True,
            package="sageattention",
        ),
    )  # fmt: skip
}
CHOICES = (AUTO, *BACKENDS)


def installed(name: str) -> bool:
    """Whether the package a backend needs is usable: diffusers' own verdict, reached when it tried the import
    (a flash-attn or SageAttention wheel built for another PyTorch is installed, yet does not load)."""
    from diffusers.models import attention_dispatch as dispatch

    usable = {
        "flash": dispatch._CAN_USE_FLASH_ATTN,
        "flash3": dispatch._CAN_USE_FLASH_ATTN_3,
        "sage": dispatch._CAN_USE_SAGE_ATTN,
    }
    return usable.get(name, True)


def _capability(device: torch.device) -> tuple[int, int]:
    return torch.cuda.get_device_capability(device) if device.type == "cuda" else (0, 0)


def available(device: torch.device) -> list[str]:
    """Every backend that can run on this device, best first (the order `auto` follows)."""
    return [name for name in _preference(device) if _problem(name, device) is None]


def _preference(device: torch.device) -> list[str]:
    hopper = _capability(device)[0] == 9
    order = ["sage", "flash3", "cudnn", "flash", "sdpa"] if hopper else ["sage", "flash", "sdpa", "cudnn"]
    return order


def _problem(name: str, device: torch.device) -> str | None:
    backend = BACKENDS[name]
    if backend.needs_cuda and device.type != "cuda":
        return f"The '{name}' attention backend needs a CUDA GPU, and this run is on the {device.type.upper()}."
    if name == "flash3" and _capability(device)[0] != 9:
        return "The 'flash3' attention backend runs on Hopper GPUs (H100, H200) only."
    if name == "cudnn" and _capability(device) < (8, 0):
        return "The 'cudnn' attention backend needs an Ampere or newer GPU (RTX 30xx or later)."
    if backend.package and not installed(name):
        return (
            f"The '{name}' attention backend needs the {backend.package} package, which is not installed "
            f"(or does not load with this PyTorch, {torch.__version__})."
        )
    return None


def resolve(choice: str, device: torch.device | str) -> Backend:
    """The backend to use for `choice` on `device`; AttentionUnavailableError with what to do otherwise."""
    device = torch.device(device)
    if choice == AUTO:
        return BACKENDS[available(device)[0]]
    if choice not in BACKENDS:
        raise AttentionUnavailableError(f"Unknown attention backend '{choice}'. Use one of: {', '.join(CHOICES)}.")
    problem = _problem(choice, device)
    if problem:
        can = ", ".join(available(device))
        raise AttentionUnavailableError(f"{problem} Choose auto, or one this machine has: {can}.")
    return BACKENDS[choice]


def apply(transformers: list[torch.nn.Module], backend: Backend) -> None:
    """Route every attention layer of the transformer(s) through `backend`."""
    import logging

    # set_attention_backend warns on every call that the API is experimental; the choice is ours to check.
    log = logging.getLogger("diffusers.models.modeling_utils")
    level = log.level
    log.setLevel(logging.ERROR)
    try:
        for transformer in transformers:
            transformer.set_attention_backend(backend.dispatcher)
    finally:
        log.setLevel(level)
