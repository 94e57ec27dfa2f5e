"""`python app.py verify FILE` and the Verify tab: does a file carry valid Content Credentials, what do
they declare, was it changed after signing, and does it carry a Wan Studio watermark."""

from __future__ import annotations

import sys
from pathlib import Path

from library import Library, LibraryError, provenance, watermark
from studio.settings import load_settings


def report(path: Path, library: Library | None = None) -> tuple[str, dict]:
    """A plain-language report and the details behind it; a watermark is looked up in `library` (the studio's
    output folder), so a copy stripped of its Content Credentials still names its clip."""
    check = provenance.verify_file(path)
    lines = [check.summary()]
    if not check.has_manifest and not provenance.can_sign(path):
        suffix = Path(path).suffix
        lines.append(f"{suffix} files cannot carry Content Credentials (the C2PA SDK does not support them).")
    declared = check.declared
    if check.has_manifest:
        source = (declared.get("digital_source_type") or "").rsplit("/", 1)[-1]
        if source:
            lines.append(f"Declared source: {source} (AI-generated).")
        if declared.get("model"):
            lines.append(f"Model: {declared['model']}.")
        if declared.get("generator"):
            app = declared["generator"][0]
            lines.append(f"Made with: {app.get('name')} {app.get('version')}.")
        if declared.get("prompt"):
            lines.append(f"Prompt: {declared['prompt']}")
        if declared.get("ingredients"):
            lines.append(f"Made from {len(declared['ingredients'])} clips: {', '.join(declared['ingredients'])}.")
        if declared.get("watermarks"):
            lines.append(f"Soft binding: the manifest names watermark {', '.join(declared['watermarks'])}.")
        for problem in check.problems:
            lines.append(f"Problem: {problem}")
    mark = watermark.read_file(str(path))
    found = None
    if mark is not None and mark.payload is not None:
        found = library.find_mark(mark.payload) if library is not None else None
        lines.append(identified(mark.payload, found))
        bound = declared.get("watermarks") or []
        if bound and f"{mark.payload:08x}" not in bound:
            lines.append(f"Problem: the pixels carry watermark {mark.payload:08x}, the manifest names "
                         f"{', '.join(bound)}.")  # fmt: skip
    elif mark is not None:
        lines.append("Watermark: none found.")
    details = {
        "has_manifest": check.has_manifest,
        "valid": check.valid,
        "tampered": check.tampered,
        "signed_here": check.local_key,
        "damaged": check.damaged,
        "signer": check.signer,
        "declared": declared,
        "problems": check.problems,
        "watermark": None if mark is None or mark.payload is None else f"{mark.payload:08x}",
        "identified": found[0] if found else None,
    }
    return "\n".join(lines), details


def identified(payload: int, found: tuple[str, dict] | None) -> str:
    """What a watermark says: the clip or film of this library it names (when, by which model, with which
    settings), or only that a Wan Studio clip carried it."""
    if found is None:
        return (f"Watermark of a Wan Studio clip, payload {payload:08x}: this library does not hold it (it was made "
                "elsewhere, or moved out of this output folder).")  # fmt: skip
    name, data = found
    made = str(data.get("created_at", "")).replace("T", " ")[:16]
    if "storyboard" in data:  # a film's record
        return f"This looks like the film {name} made by this studio (watermark {payload:08x})."
    s = data.get("settings", {})
    video = data.get("video") or s
    how = (f"{data.get('model_name') or data.get('model')}, seed {s.get('seed')}, {video.get('width')}x"
           f"{video.get('height')}, {video.get('frames')} frames, {s.get('steps')} steps")  # fmt: skip
    return f"This looks like clip {name} made by this studio on {made} ({how}; watermark {payload:08x})."


def main(argv: list[str]) -> int:
    """Exit 0: valid credentials; 1: changed, damaged or invalid; 2: no credentials (unless a watermark named a
    clip of the library) or no such file."""
    import argparse

    p = argparse.ArgumentParser(prog="app.py verify", description="Check a file's Content Credentials and "
                                "watermark, and name the clip a watermark belongs to.")  # fmt: skip
    p.add_argument("file", type=Path)
    p.add_argument("--output-dir", type=Path, default=None,
                   help="the library to look a watermark up in (default: the studio's output folder)")  # fmt: skip
    args = p.parse_args(argv)
    if not args.file.is_file():
        print(f"error: no file at {args.file}", file=sys.stderr)
        return 2
    library = None
    folder = args.output_dir or Path(load_settings()[0].output_dir).expanduser()
    if folder.is_dir():
        try:
            library = Library.open(folder)
        except LibraryError as err:
            print(f"warning: the library at {folder} cannot be read ({err}); the watermark is not looked up",
                  file=sys.stderr)  # fmt: skip
    text, details = report(args.file, library)
    print(text)
    if not details["has_manifest"]:
        return 0 if details["identified"] else 2
    return 0 if details["valid"] else 1
