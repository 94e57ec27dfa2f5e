"""The Verify tab: the report for one uploaded file."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from library import LibraryError
from studio.verify import report

if TYPE_CHECKING:
    from studio.core import Studio


def verify(studio: Studio, path: str | None) -> tuple[str, dict]:
    if not path or not isinstance(path, str) or not Path(path).is_file():
        raise LibraryError("Choose a file to check.")
    text, details = report(Path(path), studio.library)
    return "\n\n".join(text.splitlines()), details
