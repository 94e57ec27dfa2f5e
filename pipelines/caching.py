"""Step caching, opt-in: skip transformer work between steps whose outputs barely change.

Through diffusers' cache hooks: First Block Cache (skip the other blocks when the first block's residual
changes less than the threshold) and TaylorSeer (forecast the transformer's output from earlier steps on a fixed
schedule; the threshold does not apply to it). FasterCache is left
out: it assumes CFG batched into one call, and Wan calls the transformer twice. MagCache needs magnitude
ratios calibrated with the model's real weights: `python app.py calibrate-cache --model ID` records them in
the config folder, and until then the option is refused for that model.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import math
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch

from pipelines.errors import UserError
from pipelines.paths import config_dir

KINDS = ("off", "first-block", "taylorseer", "magcache")
DEFAULT_THRESHOLD = {"first-block": 0.05, "taylorseer": 0.0, "magcache": 0.06}


class CacheError(UserError, ValueError):
    """A cache choice this model cannot use; the message says why."""


@dataclass(frozen=True)
class CacheChoice:
    kind: str = "off"
    threshold: float = 0.0  # first-block: residual change under which blocks are skipped; magcache: error budget

    def record(self) -> dict:
        return {"kind": self.kind, "threshold": self.threshold}


def calibration_path(model_id: str) -> Path:
    name = "".join(c if c.isalnum() or c in "-._" else "_" for c in model_id)
    return config_dir() / "cache-calibration" / f"{name}.json"


def calibrated_ratios(model_id: str) -> list[float] | None:
    try:
        return [float(r) for r in json.loads(calibration_path(model_id).read_text())["mag_ratios"]]
    except (OSError, ValueError, KeyError, TypeError):
        return None


CALIBRATION = "magcache-calibration"  # a run that records MagCache's ratios: no block is skipped


def check(kind: str | None, threshold: float | None, model_id: str) -> CacheChoice:
    """The checked choice for `model_id`; CacheError with what to do."""
    from pipelines.catalogue import UnknownModelError, get_spec

    kind = kind or "off"
    if kind == CALIBRATION:
        return CacheChoice(CALIBRATION)
    if kind not in KINDS:
        raise CacheError(f"Unknown step cache '{kind}'. Use one of: {', '.join(KINDS)}.")
    if kind == "off":
        return CacheChoice()
    if threshold is None:
        threshold = DEFAULT_THRESHOLD[kind]
    if isinstance(threshold, bool) or not isinstance(threshold, (int, float)) or not math.isfinite(threshold):
        raise CacheError(f"The cache threshold must be a number; got {threshold!r}.")
    if not 0 <= threshold <= 1:
        raise CacheError(f"The cache threshold must be from 0 to 1; got {threshold:g}.")
    try:
        two_experts = get_spec(model_id).two_experts
    except UnknownModelError:
        two_experts = False
    if kind in ("magcache", "taylorseer") and two_experts:  # each expert counts only its own part of the steps,
        name = "MagCache" if kind == "magcache" else "TaylorSeer"  # so a schedule over all steps would not hold
        raise CacheError(f"{name} works on single-transformer models; on the A14B pair use First Block Cache.")
    if kind == "magcache" and calibrated_ratios(model_id) is None:
        raise CacheError(
            f"MagCache needs ratios calibrated for this model first: run `python app.py calibrate-cache --model "
            f"{model_id}` once (it makes one clip and records them)."
        )
    return CacheChoice(kind, float(threshold))


def config_for(choice: CacheChoice, steps: int, model_id: str):
    """The diffusers cache config for one run (MagCache's depends on the step count)."""
    from diffusers import FirstBlockCacheConfig, MagCacheConfig, TaylorSeerCacheConfig

    if choice.kind == CALIBRATION:
        return MagCacheConfig(calibrate=True, num_inference_steps=steps)
    if choice.kind == "first-block":
        return FirstBlockCacheConfig(threshold=choice.threshold)
    if choice.kind == "taylorseer":
        # Lite mode: on a forecast step the blocks are skipped and the output projection is extrapolated from
        # the last full steps. (Its default patterns, "^blocks.*attn", miss Wan's attn1/attn2 under fullmatch.)
        # Full steps: the first quarter (up to 3), every `interval`-th, and the last two, which shape detail.
        interval = min(5, max(2, steps // 10))
        return TaylorSeerCacheConfig(cache_interval=interval, disable_cache_before_step=min(3, max(1, steps // 4)),
                                     disable_cache_after_step=max(steps - 2, 1), use_lite_mode=True)  # fmt: skip
    return MagCacheConfig(threshold=choice.threshold, num_inference_steps=steps,
                          mag_ratios=torch.tensor(calibrated_ratios(model_id)))  # fmt: skip


def apply(transformers: list[torch.nn.Module], config) -> None:
    """Enable `config` (or nothing, for None) on every transformer, replacing what was there."""
    for transformer in transformers:
        if getattr(transformer, "is_cache_enabled", False):
            transformer.disable_cache()
        if config is not None:
            transformer.enable_cache(config)


class CalibrationRecorder(logging.Handler):
    """Catches the ratios diffusers' MagCache logs at the end of a calibration run: one list per transformer
    context (the conditional pass first, then the unconditional one when CFG runs)."""

    def __init__(self):
        super().__init__(level=logging.INFO)
        self.ratios: list[list[float]] = []

    def emit(self, record: logging.LogRecord) -> None:
        message = record.getMessage()
        if message.startswith("MagCache Calibration Results:"):
            self.ratios.append([float(v) for v in json.loads(message.split(":", 1)[1].strip())])

    @contextlib.contextmanager
    def listening(self) -> Iterator[CalibrationRecorder]:
        """Attach to diffusers' MagCache logger (at INFO, kept off the console) for the duration."""
        logger = logging.getLogger("diffusers.hooks.mag_cache")
        level, propagate = logger.level, logger.propagate
        logger.setLevel(logging.INFO)
        logger.propagate = False
        logger.addHandler(self)
        try:
            with contextlib.redirect_stdout(io.StringIO()):  # its "copy these values" printout
                yield self
        finally:
            logger.removeHandler(self)
            logger.setLevel(level)
            logger.propagate = propagate


def save_calibration(model_id: str, ratios: list[float], steps: int) -> Path:
    path = calibration_path(model_id)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"model": model_id, "steps": steps, "mag_ratios": ratios}, indent=2))
    return path
