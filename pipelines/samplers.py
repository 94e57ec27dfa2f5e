"""Which sampler runs the denoising steps: the model's own (UniPC with its flow shift), or a fast preset's
fixed list of noise levels, stepped the way its authors sample them (Euler, or DMD's predict-and-renoise)."""

from __future__ import annotations

from types import SimpleNamespace

import torch

from pipelines.catalogue import FastPreset, ModelSpec


class StepListScheduler:
    """A diffusers-compatible scheduler over a fixed list of noise levels, for step-distilled weights.

    Euler (`stochastic=False`, the Lightning LoRAs): x_next = x + (sigma_next - sigma) * v. DMD
    (`stochastic=True`, FastWan): the clean video x0 = x - sigma * v is predicted, then noised afresh to
    sigma_next; the last step returns x0. The model sees timestep 1000 x sigma.
    """

    order = 1

    def __init__(self, sigmas: tuple[float, ...], stochastic: bool, seed: int = 0):
        self.config = SimpleNamespace(num_train_timesteps=1000, sigmas=tuple(sigmas), stochastic=stochastic)
        self.stochastic = stochastic
        self.generator = torch.Generator("cpu").manual_seed(seed + 1)  # the re-noising draws, reproducible
        self.set_timesteps(len(sigmas))

    def set_timesteps(self, num_inference_steps: int | None = None, device: torch.device | str | None = None):
        self.sigmas = torch.tensor([*self.config.sigmas, 0.0], dtype=torch.float32)
        self.timesteps = (self.sigmas[:-1] * 1000).to(device or "cpu")
        self._step_index = 0

    def set_begin_index(self, begin_index: int = 0) -> None:
        self._step_index = begin_index

    @property
    def step_index(self) -> int:
        return self._step_index

    def step(self, model_output: torch.Tensor, timestep, sample: torch.Tensor, return_dict: bool = False, **_):
        i = self._step_index
        sigma, sigma_next = float(self.sigmas[i]), float(self.sigmas[i + 1])
        velocity = model_output.float()
        if self.stochastic:
            clean = sample.float() - sigma * velocity
            if sigma_next > 0:
                noise = torch.randn(clean.shape, generator=self.generator, dtype=torch.float32).to(clean.device)
                result = (1 - sigma_next) * clean + sigma_next * noise
            else:
                result = clean
        else:
            result = sample.float() + (sigma_next - sigma) * velocity
        self._step_index += 1
        return (result.to(sample.dtype),)


def scheduler_for(spec: ModelSpec, base, fast: FastPreset | None, seed: int):
    """The scheduler of one run: the fast preset's, or the model's own UniPC with its flow shift (`base` is the
    pipeline's loaded scheduler, whose config is reused)."""
    if fast is not None:
        return StepListScheduler(fast.sigmas, fast.stochastic, seed)
    from diffusers import UniPCMultistepScheduler

    if isinstance(base, UniPCMultistepScheduler) and base.config.flow_shift == spec.flow_shift:
        return base
    config = base.config if hasattr(base, "config") and "flow_shift" in dict(base.config) else None
    if config is None:
        return UniPCMultistepScheduler(prediction_type="flow_prediction", use_flow_sigmas=True,
                                       flow_shift=spec.flow_shift)  # fmt: skip
    return UniPCMultistepScheduler.from_config(config, flow_shift=spec.flow_shift)
