"""`python app.py add-lora LINK [LINK_LOW]` and `python app.py add-upscaler LINK`: a LoRA (or a Wan2.2 A14B
high/low pair) or an upscaler downloaded from a link, checked as an upload is, and kept in its folder with its
source recorded beside it. Progress on stderr, the kept file's name last on stdout (a pair: the high-noise
file's name, then the low-noise one's).

Exit codes: 0 kept, 2 a bad link (the message says what is wrong with it), 1 a failed download or check,
130 interrupted (nothing is kept).
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from pathlib import Path

from studio.cli import run_with_bars

ADD_LORA, ADD_UPSCALER = "add-lora", "add-upscaler"
LINK_FORMS = ("a Hugging Face file (owner/repo/file.safetensors, owner/repo@REVISION/path, or its "
              "https://huggingface.co/.../resolve/... or /blob/... address) or any https:// download link (CivitAI's "
              "https://civitai.com/api/download/models/ID included)")  # fmt: skip


@dataclass(frozen=True)
class _Progress:
    """What studio.cli.Bars draws (the engine's Progress, without importing the engine for it)."""

    stage: str
    fraction: float
    message: str
    step: int | None = None
    total_steps: int | None = None


def _parser(action: str) -> argparse.ArgumentParser:
    if action == ADD_LORA:
        p = argparse.ArgumentParser(
            prog=f"app.py {action}",
            description="Add a LoRA to the LoRA folder from a link, checked as an upload is. Two links add a "
            "Wan2.2 A14B pair: the high-noise expert's LoRA first, then the low-noise one's; both are checked, "
            "both kept or neither, and the pair is offered as one choice.",
            epilog=f"A link is {LINK_FORMS}. Tokens come from the environment: HF_TOKEN for the Hub, "
            "CIVITAI_API_TOKEN for civitai.com.",
        )  # fmt: skip
        p.add_argument("link", metavar="LINK", help="the LoRA's link (of a pair: the high-noise LoRA's)")
        p.add_argument("link_low", nargs="?", default=None, metavar="LINK_LOW",
                       help="the low-noise LoRA's link: adds the two as a high/low pair")  # fmt: skip
        p.add_argument("--lora-dir", type=Path, default=None,
                       help="the LoRA folder (default: the studio's setting, else the default one)")  # fmt: skip
    else:
        p = argparse.ArgumentParser(
            prog=f"app.py {action}",
            description="Add an upscaler to the Upscalers folder from a link (.safetensors, or .pth/.pt/.ckpt "
            "read without running code), checked as an upload is.",
            epilog=f"A link is {LINK_FORMS}. Tokens come from the environment: HF_TOKEN for the Hub, "
            "CIVITAI_API_TOKEN for civitai.com.",
        )  # fmt: skip
        p.add_argument("link", metavar="LINK", help="the upscaler's link")
        p.add_argument("--upscaler-dir", type=Path, default=None,
                       help="the Upscalers folder (default: upscalers/ in the studio's data folder)")  # fmt: skip
    p.add_argument("--offline", action="store_true", help="never contact the network (then nothing can be added)")
    return p


def main(action: str, argv: list[str] | None = None) -> int:
    args = _parser(action).parse_args(sys.argv[2:] if argv is None else argv)
    from library.links import LORA, UPSCALER, LinkCancelled, parse_link
    from pipelines.errors import UserError

    kind = LORA if action == ADD_LORA else UPSCALER
    texts = [args.link] + ([args.link_low] if getattr(args, "link_low", None) else [])
    try:
        links = [parse_link(text, kind) for text in texts]
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if args.offline:
        print("error: adding from a link needs the network, and --offline is on.", file=sys.stderr)
        return 2
    if kind == LORA:
        from library.lora_folder import LoraFolder
        from studio.cli import lora_folder

        folder = LoraFolder(args.lora_dir or lora_folder())
    else:
        from library.post_models import UpscalerFolder

        folder = UpscalerFolder(args.upscaler_dir)
    what = "a high/low LoRA pair" if len(links) == 2 else "a LoRA" if kind == LORA else "an upscaler"
    print(f"Adding {what} to {folder.root} from {' and '.join(link.canonical for link in links)}", file=sys.stderr)

    def work(bars, cancel) -> list[str]:
        def report(fraction: float, message: str) -> None:
            bars(_Progress("download", fraction, message))

        if len(links) == 2:
            return list(folder.add_pair(links[0], links[1], on_progress=report, cancel=cancel))
        return [folder.add_from_link(links[0], on_progress=report, cancel=cancel)]

    code, names = run_with_bars(work, (LinkCancelled,), "interrupted: nothing was kept")
    if names is None:
        return code
    for name in names:
        print(name)
    return 0
