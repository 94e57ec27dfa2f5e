"""ZeroGPU (a Hugging Face Space whose GPU is lent per call): the GPU worker for it.

On ZeroGPU a `spaces.GPU` function runs in a *forked* worker process: its arguments reach it through a
pickling queue and, for a generator, each yielded value comes back the same way; closing the generator on
the caller's side makes the package close it in the worker. So the GPU function here is a module-level
generator over plain data (`run_on_gpu`: the validated request as a record, pictures as PNG bytes). It
yields each progress report (with its small uint8 preview) and finally the clip's frames, which the main
process writes, signs and publishes as for every other clip. No manager, lock, event or closure crosses.

The pipeline manager lives in this module (`_MANAGER`) because a forked worker can only find it there:
the main process loads the Space's model onto "cuda" at start-up (`preload`), the package packs those
weights, and the worker inherits the loaded manager. A generation's GPU time then goes to denoising.

Off ZeroGPU (no `spaces` package, or the package without a ZeroGPU environment) nothing here is used:
`spaces.GPU` returns the function unchanged and the studio keeps its local workers.
"""

from __future__ import annotations

import io
import logging
import threading
from collections.abc import Callable, Iterator
from typing import Any

from PIL import Image

from pipelines.catalogue import get_spec
from pipelines.manager import GenerationCancelled, GenerationResult, PipelineManager, Progress
from pipelines.parallel import tokens
from pipelines.request import ValidRequest
from pipelines.speed import SpeedOptions
from studio.jobs.workers import LocalWorker, Report, run_as_messages, settle

log = logging.getLogger("wan_studio")
ZEROGPU_PROFILE = "gpu"  # a ZeroGPU slice (H200 MIG, about 70 GB) holds every model whole
MAX_DURATION_S = 600
REFERENCE_TOKENS = 31 * 22 * 40  # TI2V-5B at 1280×704×121: latent frames × rows × columns after patching

_MANAGER: PipelineManager | None = None  # the process's manager, inherited by ZeroGPU's forked worker


def on_zerogpu() -> bool:
    """True on a ZeroGPU Space (the `spaces` package and its environment), False everywhere else."""
    try:
        from spaces.config import Config
    except ImportError:
        return False
    return bool(Config.zero_gpu)


# ---- what crosses the process boundary: plain data --------------------------------------------
def request_to_data(request: ValidRequest) -> dict[str, Any]:
    return {"request": request.to_record(), "image": _png(request.image), "end_image": _png(request.end_image)}


def request_from_data(data: dict[str, Any]) -> ValidRequest:
    return ValidRequest.from_record(data["request"], image=_picture(data["image"]),
                                    end_image=_picture(data["end_image"]))  # fmt: skip


def _png(picture: Image.Image | None) -> bytes | None:
    if picture is None:
        return None
    buffer = io.BytesIO()
    picture.save(buffer, format="PNG")
    return buffer.getvalue()


def _picture(data: bytes | None) -> Image.Image | None:
    return None if data is None else Image.open(io.BytesIO(data)).convert("RGB")


def duration(data: dict[str, Any]) -> int:
    """Seconds of GPU to ask for (ZeroGPU schedules by it and stops the call there): a minute, plus the steps
    at about 6 s each for TI2V-5B at 1280×704×121, scaled by the clip's video tokens and the transformer's
    size. Tokens, not pixels: the A14B models' VAE compresses 4× less than TI2V-5B's, so at 832×480×81 they
    see more tokens than TI2V-5B at 720P (scaled by pixels, that call asked for 263 s and needs over 400)."""
    request = data["request"]
    spec = get_spec(request["model"])
    scale = tokens(spec, request["width"], request["height"], request["frames"]) / REFERENCE_TOKENS
    return int(min(MAX_DURATION_S, 60 + request["steps"] * 6 * scale * spec.weights.transformer_gb / 10))


# ---- inside the GPU worker ---------------------------------------------------------------------
def run_on_gpu(data: dict[str, Any]) -> Iterator[tuple[str, Any]]:
    """The GPU function. Yields ("progress", Progress) per report, then one ("done", result fields without
    the request) | ("cancelled", None) | ("failed", message). Closed early (the user cancelled), the run
    stops at the end of its step and the modules rest before the GPU goes back."""
    manager = _MANAGER
    if manager is None:
        yield "failed", "The studio's GPU worker has no model manager (it was not started by the studio)."
        return
    yield from run_as_messages(manager, request_from_data(data), threading.Event())


# ---- in the studio's process ---------------------------------------------------------------------
class ZeroGpuWorker(LocalWorker):
    """The studio's one worker on ZeroGPU: a local worker whose every job is one call of the GPU function."""

    def __init__(self, manager: PipelineManager, gpu: Callable | None = None, label: str = "ZeroGPU"):
        """`gpu`: the decorator that lends the GPU (`spaces.GPU`; tests pass one with the same contract)."""
        global _MANAGER
        _MANAGER = manager
        super().__init__(manager, label=label)
        if gpu is None:
            import spaces

            gpu = spaces.GPU
        self._on_gpu = gpu(duration=duration)(run_on_gpu)

    @property
    def device(self) -> str:
        """Post-production's device: the CPU, as the GPU is lent only inside the generation's GPU function."""
        return "cpu"

    def configure(self, profile: str, speed: SpeedOptions) -> None:
        self.manager.speed = speed  # the profile stays ZEROGPU_PROFILE: the slice holds every model whole

    def generate(self, request: ValidRequest, report: Report, cancel: Any) -> GenerationResult:
        # A first download takes minutes and needs no GPU: it happens before the GPU is taken.
        self.manager.download(request.spec, report)
        stream = self._on_gpu(request_to_data(request))
        try:
            for kind, payload in stream:
                if kind == "progress":
                    report(payload)
                    if cancel.is_set():
                        raise GenerationCancelled()
                    continue
                return settle(kind, payload, request, self.label)
            raise GenerationCancelled()  # the worker ended without a word: it was stopped
        finally:
            stream.close()  # on cancel: the package closes the generator in the worker


def preload(manager: PipelineManager, model: str, task: str, say: Callable[[str], None] = print) -> None:
    """Download the Space's model and put it on "cuda" in the main process, before the page opens."""
    spec = get_spec(model)
    last = [-1]

    def report(progress: Progress) -> None:
        percent = int(progress.fraction * 100) // 10 * 10
        if progress.stage == "download" and percent != last[0]:
            last[0] = percent
            say(f"ZeroGPU: {progress.message} ({percent}%)")

    say(f"ZeroGPU: loading {spec.label} onto the GPU before start-up")
    manager.preload(spec, task, ZEROGPU_PROFILE if manager.device.type == "cuda" else "cpu", report)
    say(f"ZeroGPU: {spec.label} is ready")
