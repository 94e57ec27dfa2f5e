"""The LoRA folder: the .safetensors LoRAs a user keeps (default: loras/ in the user's data folder). Callers
name a LoRA by its file name only; a name is resolved inside the folder, never used as a path. An upload is
checked (a Wan LoRA in .safetensors) before it is kept; so is a LoRA (or an A14B high/low pair) added from a link
(library/links.py), whose source is recorded beside it."""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

from library.files import LibraryError, disk_error, publish, temporary
from library.layout import plain_name
from library.links import LORA, LoraPair, ProgressCallback, download_link, download_pair, pairs_in, read_source
from pipelines.loras import SUFFIX, LoraError, LoraFile, inspect_lora, made_for, sha256_of
from pipelines.paths import data_dir


def default_lora_dir() -> Path:
    return data_dir() / "loras"


@dataclass(frozen=True)
class LoraEntry:
    name: str
    path: Path
    info: LoraFile | None  # None when the file cannot be read as a LoRA
    problem: str | None = None

    @property
    def label(self) -> str:
        if self.info is None:
            return f"{self.name} (unreadable: {self.problem})"
        return f"{self.name} — for {made_for(self.info.width)}, rank {self.info.rank}"


class LoraFolder:
    def __init__(self, root: Path | str | None = None):
        self.root = Path(root).expanduser() if root else default_lora_dir()

    def entries(self) -> list[LoraEntry]:
        """Every .safetensors file in the folder, by name, with what its header says."""
        if not self.root.is_dir():
            return []
        found = []
        for path in sorted(self.root.glob(f"*{SUFFIX}")):
            if path.name.startswith("."):
                continue
            try:
                found.append(LoraEntry(path.name, path, inspect_lora(path)))
            except LoraError as err:
                found.append(LoraEntry(path.name, path, None, str(err)))
        return found

    def path_of(self, name: str) -> Path:
        """The file a LoRA name stands for; LibraryError for anything but a file of this folder."""
        plain = plain_name(name) if isinstance(name, str) else None
        if plain is None or not plain.endswith(SUFFIX):
            raise LibraryError(f"A LoRA is named by a .safetensors file of the LoRA folder; got {str(name)[:60]!r}.")
        path = self.root / plain
        if not path.is_file():
            raise LibraryError(f"The LoRA '{plain}' is not in the LoRA folder ({self.root}).")
        return path

    def check_unchanged(self, name: str, sha256: str) -> Path:
        """The file for `name`, if it is still the very file (same SHA-256); LibraryError otherwise."""
        path = self.path_of(name)
        if sha256_of(path) != sha256:
            raise LibraryError(f"The LoRA '{name}' changed since that clip was made (its SHA-256 differs); the same "
                               "settings would not make the same clip.")  # fmt: skip
        return path

    def keep(self, upload: Path) -> str:
        """Check an uploaded LoRA and copy it into the folder under a free name; the name it got."""
        upload = Path(upload)
        inspect_lora(upload)  # a Wan LoRA in .safetensors, or LoraError with the reason
        name = plain_name(upload.name) or f"lora{SUFFIX}"
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            existing = self.root / name
            if existing.is_file() and sha256_of(existing) == sha256_of(upload):
                return name  # the same file again
            tmp = temporary(self.root, SUFFIX)
            shutil.copyfile(upload, tmp)
            try:
                return publish(tmp, self.root, Path(name).stem, SUFFIX).name
            finally:
                tmp.unlink(missing_ok=True)
        except OSError as err:
            raise disk_error(err, self.root) from None

    def add_from_link(self, link, on_progress: ProgressCallback | None = None, cancel=None,
                      max_bytes: int | None = None, offline: bool = False) -> str:  # fmt: skip
        """Download a LoRA from a link (library/links.py `parse_link`), check it as an upload and keep it with its
        source record; the name it got (the file already there when its SHA-256 is the same)."""
        return download_link(link, LORA, self.root, on_progress, cancel, max_bytes, offline).name

    def add_pair(self, high_link, low_link, on_progress: ProgressCallback | None = None, cancel=None,
                 max_bytes: int | None = None, offline: bool = False) -> tuple[str, str]:  # fmt: skip
        """An A14B pair from two links (the high-noise expert's LoRA, then the low-noise one's): both checked,
        both kept or neither, the pairing recorded; (high name, low name)."""
        high, low = download_pair(high_link, low_link, self.root, on_progress, cancel, max_bytes, offline)
        return high.name, low.name

    def source_of(self, name: str) -> dict | None:
        """Where a LoRA came from (`link`, `sha256`, `size`, `added`, and `pair` for a pair's file); None for a
        file not added from a link."""
        return read_source(self.root, name)

    def pairs(self) -> list[LoraPair]:
        """The high/low pairs added together whose two files are both here, to offer each as one choice."""
        return pairs_in(self.root)
