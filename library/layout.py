"""The output folder's layout, named once. Everything the studio keeps lives under one output folder:

    <output>/<stamp>_<prompt>_<seed>.mp4        a clip            (served)
    <output>/<same stem>.json                   its sidecar       (settings, seed, model, timings, provenance)
    <output>/<same stem>.input.png              its fitted input picture, image-to-video only (served)
    <output>/<same stem>.end.png                its fitted end frame, when it was given one (served)
    <output>/posters/<clip stem>.png            a clip's poster frame for the library grid, made when it is saved
                                                (served; made again if missing or older than its clip)
    <output>/films/<stamp>_<title>.<fmt>        a film, with <film>.json beside it (served)
    <output>/previews/<stamp>_<title>.mp4       the latest quick preview of the storyboard (served; replaced)
    <output>/audio/<name>                       audio kept for the storyboard
    <output>/storyboard.json                    the storyboard
    <output>/trash/<clip stem>/                 clips moved out of the library (restorable)
    <output>/.jobs/<id>.json, <id>.input.png    job records and their inputs (never served)
    .partial-*  anywhere                        a write in progress; a crash leaves only these

Names that callers send (API, page) are only ever names of library items, resolved here inside the folder.
"""

from __future__ import annotations

from pathlib import Path

JOBS_DIR = ".jobs"
FILMS_DIR = "films"
AUDIO_DIR = "audio"
TRASH_DIR = "trash"
POSTERS_DIR = "posters"
PREVIEWS_DIR = "previews"  # the latest quick film preview of the storyboard (low resolution, unsigned)
POSTER_WIDTH = 320  # px: a grid cell on a desktop
STORYBOARD_FILE = "storyboard.json"
TMP_PREFIX = ".partial-"
SIDECAR_SUFFIX = ".json"
INPUT_IMAGE_SUFFIX = ".input.png"
END_IMAGE_SUFFIX = ".end.png"  # the end frame it was asked to reach (image-to-video, where the model takes one)
CORRUPT_SUFFIX = ".corrupt"  # a damaged saved file, set aside with this suffix and a time stamp
SERVED_SUFFIXES = (".mp4", ".webm", ".gif", ".png")  # what the web server may hand out from the folder


def plain_name(name: str) -> str | None:
    """`name` if it is a bare file name (no folder part, no parent reference, no hidden file), else None."""
    if not isinstance(name, str) or not name or len(name) > 255:
        return None
    if name != Path(name).name or name in (".", "..") or name.startswith(".") or "\\" in name or "\0" in name:
        return None
    return name
