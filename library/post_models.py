"""Which post-production model runs: the Upscalers folder (like the LoRA folder), the pinned defaults fetched
from the Hub on first use, and the random-weight test models; the last one loaded of each kind is kept."""

from __future__ import annotations

import shutil
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from library.files import LibraryError, disk_error, publish, temporary
from library.layout import plain_name
from library.links import UPSCALER, ProgressCallback, download_link, read_source
from pipelines.interpolate import RIFE_WEIGHTS, Interpolator, ensure_test_rife, load_interpolator
from pipelines.paths import data_dir
from pipelines.upscale import DEFAULT_UPSCALER, Upscaler, UpscalerError, ensure_test_upscaler, load_upscaler
from pipelines.weights import DownloadCallback, fetch_file

DEFAULT = "default"  # the pinned model from the Hub
TEST = "test"  # the random-weight test model (tests, and a machine trying the studio without weights)
UPSCALER_SUFFIXES = (".safetensors", ".pth", ".pt", ".ckpt")
DEFAULT_UPSCALER_NAME = DEFAULT_UPSCALER.name  # what the page calls the default upscaler


def post_device() -> str:
    """Where post-production runs when no GPU worker lends its device (a film export): the first GPU, else
    the CPU."""
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def default_upscaler_dir() -> Path:
    return data_dir() / "upscalers"


class UpscalerFolder:
    """The upscalers a user keeps: weights files spandrel recognises. Named by file name only (never a path)."""

    def __init__(self, root: Path | str | None = None):
        self.root = Path(root).expanduser() if root else default_upscaler_dir()

    def names(self) -> list[str]:
        if not self.root.is_dir():
            return []
        return sorted(p.name for p in self.root.iterdir()
                      if p.suffix.lower() in UPSCALER_SUFFIXES and not p.name.startswith("."))  # fmt: skip

    def path_of(self, name: str) -> Path:
        plain = plain_name(name) if isinstance(name, str) else None
        if plain is None or not (self.root / plain).is_file():
            raise LibraryError(f"The upscaler '{str(name)[:60]}' is not in the Upscalers folder ({self.root}).")
        return self.root / plain

    def keep(self, upload: Path) -> str:
        """Check an uploaded upscaler (spandrel must recognise it, without running code) and copy it into the
        folder under a free name; the name it got."""
        upload = Path(upload)
        if upload.suffix.lower() not in UPSCALER_SUFFIXES:
            raise UpscalerError(f"'{upload.name}' is not an upscaler file (.safetensors, or .pth/.pt/.ckpt).")
        load_upscaler(upload)  # UpscalerError with the reason
        name = plain_name(upload.name) or f"upscaler{upload.suffix}"
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            tmp = temporary(self.root, upload.suffix)
            shutil.copyfile(upload, tmp)
            try:
                return publish(tmp, self.root, Path(name).stem, upload.suffix.lower()).name
            finally:
                tmp.unlink(missing_ok=True)
        except OSError as err:
            raise disk_error(err, self.root) from None

    def add_from_link(self, link, on_progress: ProgressCallback | None = None, cancel=None,
                      max_bytes: int | None = None, offline: bool = False) -> str:  # fmt: skip
        """Download an upscaler from a link (library/links.py), check it as an upload (spandrel must recognise it,
        without running code) and keep it with its source record; the name it got."""
        return download_link(link, UPSCALER, self.root, on_progress, cancel, max_bytes, offline).name

    def source_of(self, name: str) -> dict | None:
        """Where an upscaler came from (`link`, `sha256`, `size`, `added`); None for one not added from a link."""
        return read_source(self.root, name)


class PostModels:
    """Resolves a model choice to a file and keeps the last loaded upscaler and interpolator per device."""

    def __init__(self, upscalers: UpscalerFolder, offline: bool = False, default: str = DEFAULT,
                 allow_paths: bool = False):  # fmt: skip
        """`default`: the choice when none is given (a film's steps, a request without one); the studio makes
        it TEST when it runs the test video models, so a machine without weights tries every step.
        `allow_paths`: a model named by its path on this machine (the CLI's user owns the machine); the studio
        and its API take only "default", "test" and file names of the Upscalers folder."""
        self.upscalers, self.offline, self.default = upscalers, offline, default
        self.allow_paths = allow_paths
        self.film_device = post_device()  # where a film's learned steps run (the studio: the CPU on ZeroGPU)
        self._loaded: dict[str, tuple[tuple[str, str], Any]] = {}
        self._lock = threading.Lock()

    def upscaler_file(self, choice: str | None, on_progress: DownloadCallback | None = None) -> Path:
        """`choice`: "default", "test", a file name of the Upscalers folder, or a path (the CLI)."""
        choice = choice or self.default
        if choice == DEFAULT:
            return fetch_file(DEFAULT_UPSCALER, self.offline, on_progress)
        if choice == TEST:
            return ensure_test_upscaler()
        path = Path(choice).expanduser()
        if self.allow_paths and path.is_file() and (path.is_absolute() or path.parent != Path(".")):
            return path
        return self.upscalers.path_of(choice)  # a file name of the folder, never a path

    def interpolator_file(self, choice: str | None, on_progress: DownloadCallback | None = None) -> Path:
        choice = choice or self.default
        if choice == DEFAULT:
            return fetch_file(RIFE_WEIGHTS, self.offline, on_progress)
        if choice == TEST:
            return ensure_test_rife()
        if not self.allow_paths:
            raise LibraryError(f"The interpolation model is '{DEFAULT}' or '{TEST}'; got '{str(choice)[:80]}'.")
        path = Path(choice).expanduser()
        if not path.is_file():
            raise LibraryError(f"The interpolation model '{str(choice)[:80]}' is not a file.")
        return path

    def upscaler(self, path: Path, device: str) -> Upscaler:
        return self._load("upscaler", path, device, load_upscaler)

    def interpolator(self, path: Path, device: str) -> Interpolator:
        return self._load("interpolator", path, device, load_interpolator)

    def release(self) -> None:
        """Drop the loaded models (a film's, once it is done), so the GPU memory they held goes back."""
        with self._lock:
            self._loaded.clear()
        import gc

        import torch

        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()

    def _load(self, kind: str, path: Path, device: str, load: Callable[[Path, str], Any]) -> Any:
        key = (str(Path(path).resolve()), str(device))
        with self._lock:
            held = self._loaded.get(kind)
            if held is not None and held[0] == key:
                return held[1]
            self._loaded.pop(kind, None)  # one of each kind: the old one's memory is freed first
            model = load(Path(path), device)
            self._loaded[kind] = (key, model)
            return model
