"""The output folder: clips with their sidecars, the storyboard, films, audio, job records, and the labels
media carry (Content Credentials, the invisible watermark). `Library` is the one way in.

Layers import downward only: studio/ (UI, jobs, CLI) -> library/ -> pipelines/ (generation).
"""

from library.clips import Clip, ClipFiles, ClipOptions
from library.files import LibraryError
from library.folder import Library
from library.storyboard import Shot, Storyboard, StoryboardConflict, StoryboardError

__all__ = [
    "Clip", "ClipFiles", "ClipOptions", "Library", "LibraryError", "Shot", "Storyboard", "StoryboardConflict",
    "StoryboardError",
]  # fmt: skip
