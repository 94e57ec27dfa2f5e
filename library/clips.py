"""Clips in the output folder: a finished generation written as an MP4 with its sidecar (every setting,
the seed, the model, timings, provenance) and, for image-to-video, its fitted input picture; and the
library read back from those sidecars, newest first.

The sidecars are the history: there is no separate database to drift out of step or be corrupted. A
clip is published sidecar first, then its picture, then the video: a crash part-way leaves at most a
sidecar without its video, which the library ignores, never a video without its settings.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from library import provenance
from library.files import (
    LibraryError,
    check_room,
    discard,
    disk_error,
    link_no_overwrite,
    read_json,
    temporary,
    write_error,
)
from library.layout import END_IMAGE_SUFFIX, INPUT_IMAGE_SUFFIX, SIDECAR_SUFFIX, TRASH_DIR, plain_name
from library.media import encode_mp4, estimate_mp4_mb, slugify
from pipelines import APP_NAME, __version__, engine_versions
from pipelines.catalogue import TASK_NAMES
from pipelines.manager import GenerationResult

SIDECAR_FORMAT = 1


@dataclass(frozen=True)
class ClipFiles:
    video: Path
    sidecar: Path
    input_image: Path | None = None
    end_image: Path | None = None


@dataclass(frozen=True)
class ClipOptions:
    """How a clip is labelled: signed Content Credentials (on by default), the prompt in them only when
    the user opts in, and the invisible watermark (on by default: it identifies the clip, bound to its manifest)."""

    sign: bool = True
    include_prompt: bool = False
    watermark: bool = True


@dataclass(frozen=True)
class Clip:
    """One clip of the library, as its sidecar describes it."""

    video: Path
    sidecar: dict[str, Any]

    @property
    def name(self) -> str:
        return self.video.name

    @property
    def settings(self) -> dict[str, Any]:
        return self.sidecar.get("settings", {})

    @property
    def title(self) -> str:
        s = self.settings
        prompt = s.get("prompt", "")
        short = prompt if len(prompt) <= 60 else prompt[:57] + "..."
        return f"{short} — seed {s.get('seed')}, {s.get('width')}x{s.get('height')}, {s.get('frames')} frames"

    @property
    def input_image(self) -> Path | None:
        name = self.sidecar.get("input_image")
        return self.video.parent / name if name else None

    @property
    def end_image(self) -> Path | None:
        name = self.sidecar.get("end_image")
        return self.video.parent / name if name else None

    @property
    def duration_s(self) -> float | None:
        value = self.sidecar.get("duration_s")
        return float(value) if isinstance(value, (int, float)) and value > 0 else None


def is_ours(sidecar: Any) -> bool:
    """Whether JSON read beside a video is a Wan Studio clip's sidecar (other apps' files may share the folder)."""
    return isinstance(sidecar, dict) and sidecar.get("app") == APP_NAME


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
        "settings": _with_links(request.settings(), request.loras),
        "duration_s": round(request.duration_s, 3),
        "memory_profile": result.profile,
        "device": result.device,
        "timings": {k: round(v, 4) for k, v in result.timings.items()},
        "loras_applied": result.loras,  # the request's and a fast preset's, as they ran
        "fast_preset": result.fast,
        "context_parallel": result.context_parallel,
        "versions": engine_versions(),
    }


def _with_links(settings: dict, loras: tuple) -> dict:
    """The settings with each LoRA's source link, where it was added from one (`library/links.py`): Reuse and a
    preset fetch it again when the file is gone."""
    from library.links import read_source

    for record, lora in zip(settings.get("loras") or [], loras, strict=False):
        source = read_source(Path(lora.path).parent, Path(lora.path).name)
        if source and source.get("link"):
            record["link"] = source["link"]
    return settings


def save_clip(result: GenerationResult, out_dir: Path, options: ClipOptions = ClipOptions()) -> ClipFiles:  # noqa: B008
    """Label (watermark, Content Credentials) and publish a generation as a clip in `out_dir`."""
    request = result.request
    hint = f"{slugify(request.prompt)}_{request.seed}"
    comment = f"AI-generated with {request.spec.label} ({APP_NAME} {__version__})"
    sidecar = sidecar_for(result)
    frames = result.frames
    claim = provenance.manifest(
        title=f"{hint}.mp4", model=request.spec.id, prompt=request.prompt if options.include_prompt else None,
        loras=result.loras,
    )  # fmt: skip
    payload, claim = marked(claim, options, sidecar)
    sign = signer(claim) if options.sign else None

    return write_clip(
        frames,
        request.fps,
        Path(out_dir),
        hint,
        sidecar,
        input_image=request.image,
        comment=comment,
        sign=sign,
        end_image=request.end_image,
        mark=payload,
    )


def marked(claim: dict, options: ClipOptions, sidecar: dict, payload: int | None = None) -> tuple[int | None, dict]:
    """With the watermark on: the clip's payload (derived from its manifest, unless given), the claim carrying it
    as a soft binding, and the sidecar's record of it (the library finds the clip by it); else (None, claim)."""
    if not options.watermark:
        return None, claim
    payload, claim = provenance.bind_mark(claim, payload)
    sidecar["provenance"] = {**sidecar.get("provenance", {}), "watermark": f"{payload:08x}"}
    return payload, claim


def signer(claim: dict, ingredients: list[Path] = (), relationship: str = "componentOf") -> Callable[..., None]:
    """`sign(unsigned, signed)` for `publish_clip`: Content Credentials with this claim."""

    def sign(unsigned: Path, signed: Path) -> None:
        provenance.sign_file(unsigned, signed, claim, ingredients=list(ingredients), relationship=relationship)

    return sign


def write_clip(
    frames: np.ndarray, fps: float, out_dir: Path, stem_hint: str, sidecar: dict[str, Any],
    input_image: Any | None = None, comment: str | None = None, sign: Any | None = None,
    stamp: str | None = None, end_image: Any | None = None, mark: int | None = None,
) -> ClipFiles:  # fmt: skip
    """Encode `frames` (each marked with the watermark payload `mark` as it is written) and publish them as a clip
    (see `publish_clip`)."""
    return publish_clip(
        lambda path: encode_mp4(frames, fps, path, comment=comment, mark=mark), estimate_mp4_mb(*frames.shape[:3]),
        out_dir, stem_hint, sidecar, input_image=input_image, sign=sign, stamp=stamp, end_image=end_image,
    )  # fmt: skip


def publish_clip(
    encode: Callable[[Path], Any], size_mb: float, out_dir: Path, stem_hint: str, sidecar: dict[str, Any],
    input_image: Any | None = None, sign: Any | None = None, stamp: str | None = None, end_image: Any | None = None,
) -> ClipFiles:  # fmt: skip
    """Encode a clip with `encode(path)` into a temporary file, then publish it under a fresh name
    `<stamp>_<hint>[-n].mp4` with its sidecar (`encode` may stream frames: the post-production steps do).

    `sign(unsigned, signed)` adds Content Credentials; if it fails the unsigned clip is published and the
    sidecar says why, so a signing problem never loses a clip. `stamp` (default: now, taken before
    encoding) makes names deterministic where a caller needs it. Whatever `encode` raises (a cancel) leaves
    nothing behind."""
    out_dir = Path(out_dir)
    stamp = stamp or time.strftime("%Y%m%d-%H%M%S")
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise disk_error(err, out_dir) from None
    check_room(out_dir, size_mb, "the clip")
    tmp_video, tmp_signed = temporary(out_dir, ".mp4"), temporary(out_dir, ".signed.mp4")
    tmp_sidecar, tmp_image = temporary(out_dir, ".json"), temporary(out_dir, ".png")
    tmp_end = temporary(out_dir, ".png")
    provenance_record: dict[str, Any] = {"signed": False}
    published: list[Path] = []
    try:
        try:
            encode(tmp_video)
        except RuntimeError as err:  # ffmpeg reports a full disk in its own words
            if "No space left" in str(err):
                raise OSError(28, "No space left on device") from None
            raise
        if sign is not None:
            try:
                sign(tmp_video, tmp_signed)
                os.replace(tmp_signed, tmp_video)
                provenance_record = {"signed": True}
            except Exception as err:  # any signing failure: keep the clip, say why
                provenance_record = {"signed": False, "signing_error": str(err)}
        if input_image is not None:
            input_image.save(tmp_image, format="PNG")
        if end_image is not None:
            end_image.save(tmp_end, format="PNG")
        for n in range(1, 10_000):
            stem = f"{stamp}_{stem_hint}" + (f"-{n}" if n > 1 else "")
            video, meta = out_dir / f"{stem}.mp4", out_dir / f"{stem}{SIDECAR_SUFFIX}"
            image = out_dir / f"{stem}{INPUT_IMAGE_SUFFIX}" if input_image is not None else None
            end = out_dir / f"{stem}{END_IMAGE_SUFFIX}" if end_image is not None else None
            if video.exists() or any(p is not None and p.exists() for p in (image, end)):
                continue
            data = dict(sidecar, file=video.name, input_image=image.name if image is not None else None)
            if end is not None:
                data["end_image"] = end.name
            data["provenance"] = {**data.get("provenance", {}), **provenance_record}
            _write_text(tmp_sidecar, data)
            try:
                link_no_overwrite(tmp_sidecar, meta)  # reserves the stem
            except FileExistsError:
                continue
            published.append(meta)
            try:
                for tmp, picture in ((tmp_image, image), (tmp_end, end)):
                    if picture is not None:
                        link_no_overwrite(tmp, picture)
                        published.append(picture)
                link_no_overwrite(tmp_video, video)
            except FileExistsError:  # a foreign file took the name meanwhile: release the stem, go on
                for path in published:
                    discard(path)
                published.clear()
                continue
            published.clear()
            return ClipFiles(video, meta, image, end)
        raise LibraryError(f"No free file name for '{stem_hint}' in {out_dir}.")
    except (OSError, RuntimeError) as err:  # RuntimeError: ffmpeg's own words, e.g. on a read-only disk
        for path in published:  # never a sidecar without its video
            discard(path)
        plain = write_error(err, out_dir)
        if plain is err:
            raise
        raise plain from None
    finally:
        for tmp in (tmp_video, tmp_sidecar, tmp_image, tmp_end, tmp_signed):
            discard(tmp)


def remove_half_published(output_dir: Path, older_than_s: float = 3600) -> list[str]:
    """A clip is published sidecar first, then its pictures, then the video (`write_clip`), so a process
    killed in between leaves a sidecar without its video. Such leftovers (old enough not to be a write in
    progress) are removed with the pictures they name, so a clip and its sidecar exist together or not at
    all. The names removed."""
    removed = []
    now = time.time()
    for sidecar in Path(output_dir).glob(f"*{SIDECAR_SUFFIX}"):
        try:
            if sidecar.with_suffix(".mp4").exists() or now - sidecar.stat().st_mtime <= older_than_s:
                continue
            data = read_json(sidecar)
        except (OSError, ValueError):
            continue
        if not is_ours(data):
            continue  # not ours: left alone
        for key in ("input_image", "end_image"):
            name = data.get(key)
            if isinstance(name, str) and plain_name(name) == name:
                (sidecar.parent / name).unlink(missing_ok=True)
        sidecar.unlink(missing_ok=True)
        removed.append(sidecar.name)
    return removed


def _write_text(path: Path, data: dict) -> None:
    import json

    path.write_text(json.dumps(data, indent=2, ensure_ascii=False))


def read_sidecar(video: Path) -> dict[str, Any]:
    return read_json(Path(video).with_suffix(SIDECAR_SUFFIX))


def list_clips(output_dir: Path) -> list[Clip]:
    """Every clip in the folder that has a Wan Studio sidecar, newest first."""
    clips = []
    for sidecar in Path(output_dir).glob(f"*{SIDECAR_SUFFIX}"):
        video = sidecar.with_suffix(".mp4")
        if not video.is_file():
            continue
        try:
            data = read_json(sidecar)
        except ValueError:
            continue
        if is_ours(data):
            try:
                written = sidecar.stat().st_mtime_ns  # orders clips made within the same second
            except OSError:
                continue
            clips.append((str(data.get("created_at", "")), written, Clip(video, data)))
    return [clip for *_, clip in sorted(clips, key=lambda entry: entry[:2], reverse=True)]


def find_clip(output_dir: Path, name: str) -> Clip | None:
    """A clip by file name, reading only its own sidecar; names from callers are never used as paths."""
    name = plain_name(name) if isinstance(name, str) else None
    if name is None or not name.endswith(".mp4"):
        return None
    video = Path(output_dir) / name
    try:
        data = read_sidecar(video) if video.is_file() else None
    except ValueError:
        return None
    return Clip(video, data) if is_ours(data) else None


def move_to_trash(output_dir: Path, name: str) -> Path:
    """Take a clip out of the library without destroying it: its video, sidecar and input picture move to
    `<output>/trash/<clip>/`, and moving them back restores it. The video goes first, so a crash half-way
    leaves at most a sidecar without its video, which the library ignores."""
    clip = find_clip(output_dir, name)
    if clip is None:
        raise LibraryError(f"'{name}' is not in the library.")
    folder = Path(output_dir) / TRASH_DIR / clip.video.stem
    n = 1
    while folder.exists():
        n += 1
        folder = folder.with_name(f"{clip.video.stem}-{n}")
    try:
        folder.mkdir(parents=True)
        for path in (clip.video, clip.video.with_suffix(SIDECAR_SUFFIX), clip.input_image, clip.end_image):
            if path is not None and path.is_file():
                os.replace(path, folder / path.name)
    except OSError as err:
        raise disk_error(err, Path(output_dir)) from None
    return folder
