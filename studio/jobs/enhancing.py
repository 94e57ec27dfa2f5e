"""A prompt enhancement as a job: the enhancer model fetched (download progress), loaded on the job's device,
asked once, and unloaded in every case, so it never holds GPU memory a generation needs."""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass

from PIL import Image

from pipelines.enhance import EnhanceCancelled, EnhancerSpec, enhancer_spec, fetch_enhancer, load_enhancer

MAX_ENHANCE_CHARS = 2000


@dataclass(frozen=True)
class EnhanceRequest:
    """What to enhance: the user's idea, the start picture (image-to-video), and how."""

    prompt: str
    enhancer: str  # an EnhancerSpec id (pipelines.enhance.ENHANCERS)
    keep_language: bool = False
    seed: int = 0
    on_cpu: bool = False  # the user prefers the CPU: the job then waits for no GPU
    image: Image.Image | None = None

    @property
    def spec(self) -> EnhancerSpec:
        return enhancer_spec(self.enhancer)

    @property
    def label(self) -> str:
        idea = self.prompt if len(self.prompt) <= 40 else self.prompt[:37] + "..."
        return f"Enhance: {idea}"

    def record(self) -> dict:
        return {"prompt": self.prompt, "enhancer": self.enhancer, "keep_language": self.keep_language,
                "seed": self.seed, "on_cpu": self.on_cpu}  # fmt: skip


def run_enhance(
    request: EnhanceRequest, device: str, offline: bool, cancel: threading.Event,
    report: Callable[[float, str], None],
) -> str:  # fmt: skip
    """The enhanced prompt; the model is downloaded first (before any GPU memory is taken) and always unloaded."""
    spec = request.spec
    folder = fetch_enhancer(spec, offline, report)
    if cancel.is_set():  # asked during the download: the model is not loaded at all
        raise EnhanceCancelled()
    report(1.0, f"Loading {spec.name}")
    enhancer = load_enhancer(folder, "cpu" if request.on_cpu else device)
    try:
        report(1.0, f"Writing with {spec.name}")
        return enhancer.enhance(request.prompt, image=request.image, keep_language=request.keep_language,
                                seed=request.seed, cancel=cancel)  # fmt: skip
    finally:
        enhancer.close()
