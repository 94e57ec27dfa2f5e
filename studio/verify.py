"""`python app.py verify FILE` and the Verify tab: does a file carry valid Content Credentials, what do
they declare, was it changed after signing, and does it carry a Wan Studio watermark."""

from __future__ import annotations

import sys
from pathlib import Path

from library import provenance, watermark


def report(path: Path) -> tuple[str, dict]:
    """A plain-language report and the details behind it."""
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
        for problem in check.problems:
            lines.append(f"Problem: {problem}")
    mark = watermark.read_file(str(path))
    if mark is not None and mark.payload is not None:
        ours = " (this studio)" if mark.payload == provenance.studio_mark() else ""
        lines.append(f"Watermark: {mark.payload:08x}{ours}, {mark.bit_agreement:.0%} of readings agree.")
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
    }
    return "\n".join(lines), details


def main(argv: list[str]) -> int:
    """Exit 0: valid credentials; 1: changed, damaged or invalid; 2: no credentials or no such file."""
    if len(argv) != 1:
        print("usage: python app.py verify FILE", file=sys.stderr)
        return 2
    path = Path(argv[0])
    if not path.is_file():
        print(f"error: no file at {path}", file=sys.stderr)
        return 2
    text, details = report(path)
    print(text)
    if not details["has_manifest"]:
        return 2
    return 0 if details["valid"] else 1
