"""`python app.py`: the launcher. Reads the flags (they beat saved settings; saved settings beat defaults), makes
the `Studio` (studio/core.py), builds the page from it and serves it behind the guard."""

from __future__ import annotations

import argparse
import os
import secrets
import sys
from dataclasses import replace

from pipelines.catalogue import TEXT_TO_VIDEO
from pipelines.errors import UserError
from studio.core import Studio
from studio.jobs.workers import parse_devices
from studio.jobs.zerogpu import on_zerogpu, preload
from studio.settings import config_dir, load_settings

AUTH_ENV = "WAN_STUDIO_AUTH"
MAX_UPLOAD = "250mb"  # pictures are checked against 50 MB by the engine, audio against 200 MB by the library


def parse_auth(value: str | None) -> tuple[str, str] | None:
    if not value:
        return None
    user, sep, password = value.partition(":")
    if not sep or not user or not password:
        raise SystemExit("--auth must look like USER:PASSWORD")
    return user, password


def resolve_auth(share: bool, auth_value: str | None) -> tuple[tuple[str, str] | None, str | None]:
    """A public link never opens without a login: with --share and no --auth, a strong password is made
    and shown once (it is not stored anywhere)."""
    auth = parse_auth(auth_value)
    if share and auth is None:
        auth = ("wan", secrets.token_urlsafe(16))
        return auth, f"Sharing is on, so the studio needs a login: user '{auth[0]}', password '{auth[1]}'"
    return auth, None


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="app.py", description="Wan Studio: a local studio for the Wan2.2 video models.")
    # Hugging Face Spaces set GRADIO_SERVER_NAME/PORT; locally the studio listens on loopback only.
    p.add_argument("--host", default=os.environ.get("GRADIO_SERVER_NAME", "127.0.0.1"))
    p.add_argument("--port", type=int, default=int(os.environ.get("GRADIO_SERVER_PORT", "7860")))
    p.add_argument("--model", default=None, help="default model (catalogue id or local folder)")
    p.add_argument("--output-dir", default=os.environ.get("WAN_STUDIO_OUTPUT_DIR"),
                   help="where clips and the history live (default: outputs; /data/outputs on a Space with "
                   "persistent storage)")  # fmt: skip
    p.add_argument("--share", action="store_true", help="a Gradio public link; turns authentication on")
    p.add_argument("--auth", default=os.environ.get(AUTH_ENV), help=f"USER:PASSWORD (or set {AUTH_ENV})")
    p.add_argument("--offline", action="store_true", help="never contact the Hugging Face Hub")
    p.add_argument("--mcp", action="store_true", default=os.environ.get("WAN_STUDIO_MCP") == "1",
                   help="also serve text-to-video, image-to-video, long takes, library search and film assembly as "
                        "MCP tools (at /gradio_api/mcp/)")  # fmt: skip
    p.add_argument("--show-test-models", action="store_true", help="list the tiny random-weight models too")
    p.add_argument("--gpus", default=None, help="GPUs to use, one worker each, like 0,1 (default: all visible)")
    p.add_argument("--context-parallel", type=int, default=1, metavar="N",
                   help="split each clip over N GPUs: --gpus in groups of N, one worker per group")  # fmt: skip
    p.add_argument("--ray", default=None, metavar="ADDRESS",
                   help="run the GPU workers as Ray actors on this cluster (see docs/SCALING.md)")  # fmt: skip
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.offline:
        os.environ["HF_HUB_OFFLINE"] = "1"
    settings, warning = load_settings()
    overrides = {}
    if args.model:
        overrides["model"] = args.model
    if args.output_dir:
        overrides["output_dir"] = args.output_dir
    settings = replace(settings, **overrides).validate()

    auth, notice = resolve_auth(args.share, args.auth)
    if notice:
        print(notice, flush=True)

    import gradio as gr
    from starlette.middleware import Middleware

    from studio.guard import Guard
    from studio.page.layout import ASSETS, PAGE_CSS, build_ui

    try:
        devices = parse_devices(args.gpus)
        workers = None
        if args.ray:
            from studio.jobs.ray_actors import ray_pool

            workers = ray_pool(args.ray, settings.profile_choice, settings.speed, offline=args.offline)
        elif args.context_parallel > 1:
            from studio.jobs.split import split_workers

            workers = split_workers(devices, args.context_parallel, settings.profile_choice, settings.speed,
                                    offline=args.offline)  # fmt: skip
        studio = Studio(settings, offline=args.offline, include_test_models=args.show_test_models,
                        settings_warning=warning, flags=overrides, devices=devices, workers=workers)  # fmt: skip
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    for line in studio.warnings:
        print(f"warning: {line}", file=sys.stderr, flush=True)
    if on_zerogpu():  # weights onto "cuda" in this process, before the page opens (see studio/jobs/zerogpu.py)
        try:
            preload(studio.manager, settings.model, TEXT_TO_VIDEO, say=lambda line: print(line, flush=True))
        except UserError as err:
            print(f"warning: the model was not preloaded: {err}", file=sys.stderr, flush=True)
    demo = build_ui(studio)
    demo.queue(default_concurrency_limit=4)
    theme = gr.themes.Soft(
        primary_hue="indigo", font=["ui-sans-serif", "system-ui", "sans-serif"], font_mono=["ui-monospace", "monospace"]
    )  # local fonts only: nothing is fetched from a font service
    print(f"Wan Studio on http://{args.host}:{args.port}  (outputs in {studio.output_dir})", flush=True)
    mcp = args.mcp or settings.mcp_server
    if mcp:
        print(f"MCP server on http://{args.host}:{args.port}/gradio_api/mcp/ (streamable HTTP; "
              f"/gradio_api/mcp/sse for SSE clients)", flush=True)  # fmt: skip
    demo.launch(
        server_name=args.host,
        server_port=args.port,
        share=args.share,
        auth=auth,
        auth_message="Wan Studio: sign in with the user and password given when the studio started.",
        allowed_paths=[str(studio.output_dir), str(ASSETS)],
        blocked_paths=[str(studio.library.jobs_dir), str(config_dir())],
        theme=theme,
        css=PAGE_CSS,
        footer_links=["api"],
        max_file_size=MAX_UPLOAD,
        app_kwargs={"middleware": [Middleware(Guard, output_dir=studio.output_dir, login=auth is not None)]},
        show_error=True,
        mcp_server=mcp,
        quiet=not args.share,  # our own line above gives the address; Gradio's adds "set share=True in launch()"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
