"""Long takes in the output folder: a take's frames go to disk window by window as they are made, and are
published as one clip.

A take has its own folder while it runs (`<output>/.jobs/<job>.take/`). Each batch of frames the engine hands on
(`pipelines.long_take.run_take`'s `on_window`) is watermarked when asked and encoded at once as a numbered MP4
segment; `take.json` lists the segments and the records of the windows they hold. So memory holds one window
at most whatever the take's length, and a cancel or a crash leaves whole finished windows on disk.

`publish` joins the segments without re-encoding (they share every encoder setting) and publishes the clip with
its sidecar like any other clip, plus `take` (the plan, what was kept, why it stopped) and `windows` (prompt,
seed, frames, overlap and conditioning of each window). `recover_take` does the same for a take a crash
interrupted, when the studio starts again.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from library import provenance
from library.clips import ClipFiles, ClipOptions, marked, publish_clip, sidecar_for, signer
from library.files import LibraryError, discard, read_json, temporary, write_error, write_json
from library.media import encode_mp4, estimate_mp4_mb, join_mp4, read_frames, slugify
from pipelines import APP_NAME, __version__
from pipelines.long_take import WindowRecord

TAKE_FILE = "take.json"
HELD_FILE = "held-{}.mp4"  # window n's last K frames, waiting for the next window's blend
TAKE_FORMAT = 1
CANCELLED, INTERRUPTED, FAILED = "cancelled", "interrupted", "failed"  # why a take kept fewer windows than planned


class TakeWriter:
    """A take being made: its segments and window records in `folder`, written as they come."""

    def __init__(self, folder: Path, state: dict[str, Any]):
        self.folder = Path(folder)
        self.state = state

    @classmethod
    def start(cls, folder: Path, plan: dict, asked: dict, size: tuple[int, int], options: ClipOptions) -> TakeWriter:
        """A new take's folder (any leftover of an earlier run of the same job is replaced). `plan` is
        `TakePlan.record()`, `asked` what the user gave (prompts, seconds, overlap), `size` (width, height)."""
        folder = Path(folder)
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir(parents=True)
        claim = provenance.manifest(title=f"{slugify(plan['prompts'][0])}_take.mp4", model=plan["model"])
        payload, _ = marked(claim, options, {})  # known now: each segment is marked as it is written
        state = {"format": TAKE_FORMAT, "plan": plan, "asked": asked, "size": list(size), "options": asdict(options),
                 "watermark": payload, "segments": [], "windows": [], "sidecar": None}  # fmt: skip
        writer = cls(folder, state)
        writer._save()
        return writer

    @classmethod
    def open(cls, folder: Path) -> TakeWriter | None:
        """The take left in `folder` (by a run that stopped), or None when there is none or it cannot be read."""
        try:
            state = read_json(Path(folder) / TAKE_FILE)
        except (OSError, ValueError):
            return None
        return cls(folder, state) if isinstance(state, dict) and state.get("format") == TAKE_FORMAT else None

    @property
    def kept(self) -> list[dict]:
        """The segments of finished windows (a crash between a window's frames and its record leaves a segment
        of a window that has no record: it is not kept)."""
        return [segment for segment in self.state["segments"] if segment["window"] < self.windows]

    @property
    def frames(self) -> int:
        """Frames of finished windows on disk so far."""
        return sum(segment["frames"] for segment in self.kept)

    @property
    def windows(self) -> int:
        """Windows finished so far (their frames on disk, but the last K waiting for the next window's blend)."""
        return len(self.state["windows"])

    def add(self, frames: np.ndarray, index: int) -> None:
        """Encode one batch of the take's frames as the next segment (`on_window` of `run_take`)."""
        if not len(frames):
            return
        name = f"{len(self.state['segments']):04d}.mp4"
        self._encode(frames, name)
        self.state["segments"].append({"file": name, "frames": int(len(frames)), "window": index})
        self._save()
        if index < self.windows:  # a finished window's held frames, handed on when the take stopped
            discard(self.folder / HELD_FILE.format(index))

    def held(self, frames: np.ndarray, index: int) -> None:
        """The K frames window `index` holds back for the blend with the next (`on_held` of `run_take`), kept
        apart so that a take a crash stops keeps its last finished window whole."""
        self._encode(frames, HELD_FILE.format(index))

    def finished(self, record: WindowRecord) -> None:
        """A window is done (`on_record` of `run_take`): its record, and after the first the clip's sidecar base."""
        if self.state["sidecar"] is None and record.result is not None:
            self.state["sidecar"] = sidecar_for(record.result)
        self.state["windows"].append(record.record())
        self._save()
        discard(self.folder / HELD_FILE.format(record.index - 1))  # blended into this window's frames

    def publish(self, out_dir: Path, input_image: Image.Image | None = None, stopped: str | None = None) -> ClipFiles:
        """The segments joined into one clip in `out_dir`, signed and with its sidecar. `stopped` says why a
        take ends before its plan (CANCELLED, INTERRUPTED, FAILED). LibraryError when no window finished."""
        base, segments = self.state["sidecar"], [self.folder / s["file"] for s in self.kept]
        if base is None or not segments:
            raise LibraryError("No window of the take was finished, so there is nothing to keep.")
        plan, frames = self.state["plan"], self.frames
        fps, (width, height) = plan["fps"], self.state["size"]
        prompts = [w["prompt"] for w in self.state["windows"]]
        sidecar = dict(base)
        sidecar["settings"] = dict(base["settings"], take=self.state["asked"])
        sidecar["duration_s"] = round(frames / fps, 3)
        sidecar["video"] = {"width": width, "height": height, "frames": frames, "fps": fps}
        sidecar["timings"] = {"total_s": round(sum(w.get("timings", {}).get("total_s", 0.0)
                                                   for w in self.state["windows"]), 4)}  # fmt: skip
        sidecar["take"] = dict(plan, kept_windows=self.windows, kept_frames=frames, stopped=stopped)
        sidecar["windows"] = self.state["windows"]
        options = ClipOptions(**self.state["options"])
        hint = f"{slugify(prompts[0])}_{base['settings']['seed']}_take"
        claim = provenance.manifest(title=f"{hint}.mp4", model=base["model"],
                                    prompt=" / ".join(dict.fromkeys(prompts)) if options.include_prompt else None,
                                    loras=base.get("loras_applied"))  # fmt: skip
        _, claim = marked(claim, options, sidecar, self.state["watermark"])
        sign = signer(claim) if options.sign else None

        comment = f"AI-generated with {base['model_name']} ({APP_NAME} {__version__})"
        return publish_clip(lambda path: join_mp4(segments, path, comment), estimate_mp4_mb(frames, width, height),
                            Path(out_dir), hint, sidecar, input_image=input_image, sign=sign)  # fmt: skip

    def remove(self) -> None:
        """The take's folder, gone (after it was published, or when nothing is to be kept)."""
        shutil.rmtree(self.folder, ignore_errors=True)

    def _encode(self, frames: np.ndarray, name: str) -> None:
        tmp = temporary(self.folder, ".mp4")
        try:
            encode_mp4(frames, self.state["plan"]["fps"], tmp, joinable=True, mark=self.state["watermark"])
            os.replace(tmp, self.folder / name)
        except (OSError, RuntimeError) as err:  # a full disk, in ffmpeg's words or the OS's
            raise write_error(err, self.folder) from None
        finally:
            discard(tmp)

    def _save(self) -> None:
        try:
            write_json(self.folder / TAKE_FILE, self.state)
        except OSError as err:
            raise write_error(err, self.folder) from None


def recover_take(folder: Path, out_dir: Path, input_image: Image.Image | None = None) -> ClipFiles | None:
    """The finished windows of a take a crash interrupted, published as a clip (its folder then removed); None
    when it had finished none (the folder is removed too). If publishing fails (a full disk) the folder stays, so
    the next start tries again."""
    writer = TakeWriter.open(folder)
    if writer is None:
        shutil.rmtree(folder, ignore_errors=True)
        return None
    if writer.state["sidecar"] is None or not writer.kept:
        writer.remove()
        return None
    last = writer.windows - 1
    held = Path(folder) / HELD_FILE.format(last)
    if held.is_file():  # the last finished window's held frames: that window is whole again
        frames = sum(1 for _ in read_frames(held))
        writer.state["segments"] = [*writer.kept, {"file": held.name, "frames": frames, "window": last}]
    files = writer.publish(out_dir, input_image, stopped=INTERRUPTED)
    writer.remove()
    return files
