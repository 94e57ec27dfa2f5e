"""`python app.py enhance --prompt TEXT [--image PATH]`: the prompt rewritten by the local prompt enhancer,
printed on stdout (the last line); progress on stderr. Exit codes as for `generate`: 0 done, 2 bad input
(the message names the field), 1 any other failure (a model that is not downloaded offline), 130 interrupted."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path


def _parser() -> argparse.ArgumentParser:
    from pipelines.enhance import DEFAULT_TEXT_ENHANCER, DEFAULT_VISION_ENHANCER, ENHANCERS

    p = argparse.ArgumentParser(prog="app.py enhance", description="Rewrite a prompt in the detailed style the Wan "
                                "models were trained on, with a local language model.")  # fmt: skip
    p.add_argument("--prompt", required=True)
    p.add_argument("--image", type=Path, default=None, help="the start picture: a vision enhancer looks at it")
    p.add_argument("--enhancer", default=None, choices=sorted(ENHANCERS),
                   help=f"default: {DEFAULT_TEXT_ENHANCER}, or {DEFAULT_VISION_ENHANCER} with --image")  # fmt: skip
    p.add_argument("--keep-language", action="store_true", help="answer in the prompt's language (default: English)")
    p.add_argument("--seed", type=int, default=0, help="the same seed gives the same rewrite (default: 0)")
    p.add_argument("--cpu", action="store_true", help="run on the CPU even with a GPU")
    p.add_argument("--offline", action="store_true", help="never contact the Hugging Face Hub")
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(sys.argv[2:] if argv is None else argv)
    if args.offline:
        os.environ["HF_HUB_OFFLINE"] = "1"
    from pipelines import quiet_libraries

    quiet_libraries()
    from PIL import Image, UnidentifiedImageError

    from library.post_models import post_device
    from pipelines.enhance import DEFAULT_TEXT_ENHANCER, DEFAULT_VISION_ENHANCER, EnhanceCancelled, EnhanceError
    from pipelines.errors import UserError
    from studio.cli import run_with_bars
    from studio.jobs.enhancing import MAX_ENHANCE_CHARS, EnhanceRequest, run_enhance

    try:
        if not args.prompt.strip():
            raise EnhanceError("--prompt: type a prompt to enhance.")
        if len(args.prompt) > MAX_ENHANCE_CHARS:
            raise EnhanceError(f"--prompt: at most {MAX_ENHANCE_CHARS} characters; it has {len(args.prompt)}.")
        image = None
        if args.image is not None:
            try:
                image = Image.open(args.image).convert("RGB")
            except (OSError, UnidentifiedImageError) as err:
                raise EnhanceError(f"--image: '{args.image}' cannot be read as a picture ({err}).") from None
        enhancer = args.enhancer or (DEFAULT_VISION_ENHANCER if image is not None else DEFAULT_TEXT_ENHANCER)
        request = EnhanceRequest(args.prompt.strip(), enhancer, args.keep_language, args.seed, args.cpu, image)
        if image is not None and request.spec.kind != "vision":
            raise EnhanceError(f"--image: {request.spec.name} reads text only; choose a vision enhancer with "
                               "--enhancer.")  # fmt: skip
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    device = "cpu" if args.cpu else post_device()
    code, text = run_with_bars(lambda bars, cancel: run_enhance(request, device, args.offline, cancel, bars.download),
                               (EnhanceCancelled,))  # fmt: skip
    if text is not None:
        print(text)
    return code
