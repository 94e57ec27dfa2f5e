"""One clip across several GPUs: diffusers' context parallelism (Ulysses) over torch.distributed.

Each rank (one process per GPU, started by torch's own launcher, `torch.distributed.run`) holds the whole
pipeline; inside every attention layer the sequence of video tokens is split over the ranks and the heads
exchanged with an all-to-all (Ulysses), so each GPU computes 1/N of the attention and MLP work of each
step. Every rank must run the very same request (seed included); all end with the same frames, and rank 0
publishes them. The text encoder and the VAE run whole on every rank.

The degree must divide the model's attention heads (TI2V-5B: 24, the A14B experts: 40) and the number of
video tokens at the chosen size; `check_degree` says so before any work.

On CPU (the tests: two ranks over gloo) diffusers needs one shim: it derives a device index from
`torch.accelerator.device_count()`, which is 0 on a CPU build (ZeroDivisionError); the index is not used
for context parallelism, so the count reads 1 while parallelism is applied.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta

import torch

from pipelines.errors import UserError


class ParallelError(UserError, ValueError):
    pass


@dataclass(frozen=True)
class Rank:
    """This process's place in the group (from the launcher's environment)."""

    rank: int
    world: int
    local_rank: int

    @property
    def leader(self) -> bool:
        return self.rank == 0


def launched_rank() -> Rank | None:
    """The rank torch.distributed.run gave this process, or None when it was not started by the launcher."""
    if "RANK" not in os.environ or "WORLD_SIZE" not in os.environ:
        return None
    return Rank(int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"]), int(os.environ.get("LOCAL_RANK", 0)))


def tokens(spec, width: int, height: int, frames: int) -> int:
    """Video tokens the transformer sees: latent frames × latent rows × latent columns, after patching."""
    latent_frames = (frames - 1) // spec.frame_step + 1
    return latent_frames * (height // spec.size_multiple) * (width // spec.size_multiple)


def check_degree(spec, degree: int, width: int, height: int, frames: int) -> None:
    """ParallelError naming what the degree must divide, before anything is loaded."""
    if degree < 2:
        return
    if spec.attention_heads and spec.attention_heads % degree:
        fits = [d for d in range(2, 9) if spec.attention_heads % d == 0]
        raise ParallelError(
            f"{spec.name} has {spec.attention_heads} attention heads, which do not split over {degree} GPUs; "
            f"use {', '.join(map(str, fits)) or 'one'} GPUs for one clip."
        )
    count = tokens(spec, width, height, frames)
    if count % degree:
        raise ParallelError(
            f"At {width}x{height} with {frames} frames the model sees {count} video tokens, which do not split "
            f"evenly over {degree} GPUs; pick another size or frame count."
        )


def check_request(request, degree: int) -> None:
    """`check_degree`, and what does not combine with a split clip yet (each changes the transformers after
    they were split: Fast mode's distilled weights and LoRAs swap or wrap layers, the step cache hooks blocks)."""
    if degree < 2:
        return
    check_degree(request.spec, degree, request.width, request.height, request.frames)
    extras = [name for name, used in (("Fast mode", request.fast), ("LoRAs", request.loras),
                                      ("a step cache", request.cache.kind != "off")) if used]  # fmt: skip
    if extras:
        raise ParallelError(f"One clip over several GPUs does not combine with {' or '.join(extras)} yet; "
                            "turn it off or use one GPU.")  # fmt: skip


@contextlib.contextmanager
def _cpu_device_count() -> Iterator[None]:
    if torch.accelerator.device_count() > 0:
        yield
        return
    count = torch.accelerator.device_count
    torch.accelerator.device_count = lambda *args, **kwargs: 1
    try:
        yield
    finally:
        torch.accelerator.device_count = count


def enable(pipe, degree: int) -> None:
    """Split each transformer's attention over `degree` ranks (Ulysses). The group must be initialised."""
    import warnings

    from diffusers import ContextParallelConfig

    # diffusers 0.42 gathers with a torch collective that torch 2.13 calls deprecated: noise on every rank
    warnings.filterwarnings("ignore", message=".*all_gather_tensor.* is deprecated", category=FutureWarning)

    for name in ("transformer", "transformer_2"):
        transformer = getattr(pipe, name, None)
        if transformer is None:
            continue
        # "native" (PyTorch SDPA) is the backend with a context-parallel path on every device
        transformer.set_attention_backend("native")
        with _cpu_device_count():
            transformer.enable_parallelism(config=ContextParallelConfig(ulysses_degree=degree))


def degree_of(pipe) -> int:
    """How many ranks the loaded transformer's attention is split over, as diffusers recorded it (1: none)."""
    model = getattr(pipe, "transformer", None) or getattr(pipe, "transformer_2", None)
    config = getattr(getattr(model, "_parallel_config", None), "context_parallel_config", None)
    if config is None:
        return 1
    return (config.ulysses_degree or 1) * (config.ring_degree or 1)


# Jobs, seeds and the cancel flag travel in a gloo group on the CPU, beside the default group (NCCL on GPUs)
# that carries the attention's tensors. An object broadcast over NCCL goes through whichever GPU the calling
# thread has selected (cuda:0 in a fresh thread, on every rank), and NCCL's watchdog ends a process that waits
# in a collective for over 10 minutes: the ranks 1.. of a studio worker wait for the next job that long.
_CONTROL = None
IDLE_TIMEOUT = timedelta(days=3650)


def init_group(device: torch.device) -> None:
    """Join the launcher's group (NCCL on CUDA, gloo on the CPU) and the CPU group for small messages."""
    import torch.distributed as dist

    global _CONTROL
    if device.type == "cuda":
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    if _CONTROL is None:
        _CONTROL = dist.new_group(backend="gloo", timeout=IDLE_TIMEOUT)


def same_everywhere(value):
    """Rank 0's value on every rank (a drawn seed, a request): the ranks must run identical work."""
    import torch.distributed as dist

    box = [value]
    dist.broadcast_object_list(box, src=0, group=_CONTROL)
    return box[0]


def close_group() -> None:
    import torch.distributed as dist

    global _CONTROL
    if dist.is_initialized():
        dist.destroy_process_group()
    _CONTROL = None
