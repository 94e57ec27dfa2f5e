"""A finished generation becomes a clip on disk: the MP4, its sidecar of settings, and the input picture."""

from __future__ import annotations

import platform
import time
from dataclasses import dataclass
from pathlib import Path

import diffusers
import torch

from pipelines import APP_NAME, __version__, provenance, watermark
from pipelines.catalogue import TASK_NAMES
from pipelines.manager import GenerationResult
from pipelines.video import ClipFiles, slugify, write_clip

SIDECAR_FORMAT = 1


def sidecar_for(result: GenerationResult) -> dict:
    """Everything needed to find, credit and reproduce the clip."""
    request = result.request
    spec = request.spec
    return {
        "format": SIDECAR_FORMAT,
        "app": APP_NAME,
        "app_version": __version__,
        "created_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "task": request.task,
        "task_name": TASK_NAMES[request.task],
        "model": spec.id,
        "model_name": spec.label,
        "model_repo": spec.repo,
        "model_revision": result.model_revision,
        "is_test_model": spec.is_test,
        "settings": request.settings(),
        "duration_s": round(request.duration_s, 3),
        "memory_profile": result.profile,
        "device": result.device,
        "timings": {k: round(v, 4) for k, v in result.timings.items()},
        "versions": {
            "torch": torch.__version__,
            "diffusers": diffusers.__version__,
            "python": platform.python_version(),
        },
    }


@dataclass(frozen=True)
class ClipOptions:
    """How a clip is labelled: signed Content Credentials (on by default), the prompt in them only when
    the user opts in, and the invisible watermark (off by default)."""

    sign: bool = True
    include_prompt: bool = False
    watermark: bool = False


def save_clip(result: GenerationResult, out_dir: Path, options: ClipOptions = ClipOptions()) -> ClipFiles:  # noqa: B008
    request = result.request
    hint = f"{slugify(request.prompt)}_{request.seed}"
    comment = f"AI-generated with {request.spec.label} ({APP_NAME} {__version__})"
    sidecar = sidecar_for(result)
    frames = result.frames
    if options.watermark:
        payload = provenance.studio_mark()
        frames = watermark.embed(frames, payload)
        sidecar["provenance"] = {"watermark": f"{payload:08x}"}
    sign = None
    if options.sign:
        claim = provenance.manifest(
            title=f"{hint}.mp4", model=request.spec.id, prompt=request.prompt if options.include_prompt else None
        )

        def sign(unsigned: Path, signed: Path) -> None:
            provenance.sign_file(unsigned, signed, claim)

    return write_clip(
        frames, request.fps, Path(out_dir), hint, sidecar, input_image=request.image, comment=comment, sign=sign
    )
