"""`python app.py upscale CLIP ...` and `python app.py interpolate CLIP ...`: a library clip made bigger or
smoother by a learned model, without the studio. Progress on stderr, the new MP4's path last on stdout.

CLIP is a path to a Wan Studio clip (its sidecar beside it), or a file name in the library (--library).
Exit codes as for `generate`: 0 done, 2 bad input (the message names the field), 1 any other failure,
130 interrupted (nothing is written).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from studio.cli import DEFAULT_OUT_DIR, run_with_bars


def _parser(action: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=f"app.py {action}",
        description="Upscale a library clip with a learned upscaler (spandrel)." if action == "upscale"
        else "Smooth a library clip's motion with learned frame interpolation (RIFE).",
    )  # fmt: skip
    p.add_argument("clip", help="a clip's path, or its file name in the library")
    how = p.add_mutually_exclusive_group()
    if action == "upscale":
        how.add_argument("--scale", type=int, choices=(2, 4), help="×2 or ×4 (default: ×2)")
        how.add_argument("--height", type=int, help="a target height instead, 1080 or 2160")
        p.add_argument("--upscaler", default=None,
                       help="a weights file's path, a file name in the Upscalers folder, or 'test' (default: the "
                            "pinned default, downloaded on first use)")  # fmt: skip
    else:
        how.add_argument("--factor", type=int, choices=(2, 4), help="×2 or ×4 the frames (default: ×2)")
        how.add_argument("--fps", type=float, help="a target frame rate instead (same duration)")
        p.add_argument("--model", default=None, help="a RIFE weights file, or 'test' (default: the pinned RIFE)")
    p.add_argument("--library", type=Path, default=Path(DEFAULT_OUT_DIR),
                   help="the output folder a clip's file name is looked up in (default: %(default)s)")  # fmt: skip
    p.add_argument("--out-dir", type=Path, default=None, help="where the new clip goes (default: beside its source)")
    p.add_argument("--offline", action="store_true", help="never contact the Hugging Face Hub")
    p.add_argument("--gpu", default=None, help="the GPU to use, like 0 (default: the first GPU, else the CPU)")
    p.add_argument("--no-watermark", dest="watermark", action="store_false",
                   help="leave the invisible watermark out (it is on by default)")  # fmt: skip
    p.add_argument("--watermark", action="store_true", help=argparse.SUPPRESS)  # the default; kept for old scripts
    return p


def main(action: str, argv: list[str] | None = None) -> int:
    args = _parser(action).parse_args(sys.argv[2:] if argv is None else argv)
    if args.offline:
        os.environ["HF_HUB_OFFLINE"] = "1"
    from pipelines import quiet_libraries

    quiet_libraries()
    from library import ClipOptions, Library
    from library.post import INTERPOLATE, UPSCALE, PostCancelled
    from library.post_models import PostModels, UpscalerFolder, post_device
    from pipelines.errors import UserError

    try:
        source = Path(args.clip).expanduser()
        library = Library.open(source.parent if source.is_file() else args.library)
        models = PostModels(UpscalerFolder(), offline=args.offline, allow_paths=True)  # the user's own machine
        library.post_models = models
        if action == "upscale":  # x2 unless a height is given
            scale = args.scale or (2 if args.height is None else None)
            request = library.check_post(UPSCALE, source.name, args.upscaler, scale=scale, height=args.height)
        else:
            factor = args.factor or (2 if args.fps is None else None)
            request = library.check_post(INTERPOLATE, source.name, args.model, factor=factor, fps=args.fps)
        device = f"cuda:{args.gpu}" if args.gpu is not None else post_device()
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"{request.label} on {device}", file=sys.stderr)
    options = ClipOptions(sign=True, watermark=args.watermark)
    code, files = run_with_bars(
        lambda bars, cancel: library.post(request, device, options, cancel, bars, downloading=bars.download,
                                          out_dir=args.out_dir),
        (PostCancelled,), "interrupted: nothing was written",
    )  # fmt: skip
    if files is None:
        return code
    signing = Library.open(files.video.parent).clip(files.video.name).sidecar.get("provenance", {})
    if not signing.get("signed"):
        print(f"warning: the clip is not signed: {signing.get('signing_error')}", file=sys.stderr)
    print(files.video)
    return 0
