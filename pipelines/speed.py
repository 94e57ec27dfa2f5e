"""Speed options a user can set (Settings, CLI): attention kernel, regional compilation, VAE decode precision.

They change how the loaded modules run, never which weights are loaded, so changing one never reloads a
model: the manager applies the difference before the next run.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from pipelines import attention
from pipelines.decode import VAE_PRECISIONS

__all__ = ["VAE_PRECISIONS", "SpeedOptions", "compile_blocks", "uncompile_blocks"]


@dataclass(frozen=True)
class SpeedOptions:
    attention: str = attention.AUTO  # see pipelines.attention.CHOICES
    # Regional compilation of the transformer blocks: faster steps after a warm-up of about a minute on the
    # first run (and once per new size).
    compile: bool = False
    vae_precision: str = "float32"  # "bfloat16": about half the decode time; output within a measured tolerance

    def check(self, device: torch.device | str) -> SpeedOptions:
        """Raise AttentionUnavailableError (or ValueError for a bad precision) before any model loads."""
        attention.resolve(self.attention, torch.device(device))
        if self.vae_precision not in VAE_PRECISIONS:
            raise ValueError(f"VAE precision must be one of {', '.join(VAE_PRECISIONS)}; got '{self.vae_precision}'.")
        return self


def compile_blocks(transformer: torch.nn.Module, fullgraph: bool) -> None:
    """Compile each repeated transformer block (one compiled graph, reused by all 30-40 blocks).

    fullgraph=False where hooks run inside the blocks (fp8 layerwise casting, group offload, a step cache)."""
    transformer.compile_repeated_blocks(fullgraph=fullgraph)


def uncompile_blocks(transformer: torch.nn.Module) -> None:
    """Back to eager blocks (nn.Module.compile only wraps the call; the weights are untouched)."""
    for module in transformer.modules():
        if type(module).__name__ in (getattr(transformer, "_repeated_blocks", None) or ()):
            module._compiled_call_impl = None
