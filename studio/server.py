"""`python app.py`: start the studio. Flags beat saved settings; saved settings beat defaults."""

from __future__ import annotations

import argparse
import os
import secrets
import sys
import threading
from dataclasses import replace
from pathlib import Path

from library import Library
from library.lora_folder import LoraFolder
from pipelines.catalogue import TEXT_TO_VIDEO, get_spec
from pipelines.errors import UserError
from pipelines.manager import PipelineManager
from pipelines.parallel import check_request
from pipelines.request import GenerationRequest, validate_request
from studio.jobs import Job, JobQueue
from studio.settings import Settings, config_dir, load_settings, save_settings
from studio.workers import GpuWorker, LocalWorker, parse_devices, worker_labels
from studio.zerogpu import ZEROGPU_PROFILE, ZeroGpuWorker, on_zerogpu, preload

ASSETS = Path(__file__).resolve().parents[1] / "assets"
AUTH_ENV = "WAN_STUDIO_AUTH"
MAX_UPLOAD = "250mb"  # pictures are checked against 50 MB by the engine, audio against 200 MB by the library


class Studio:
    """What the page works on: the settings, the library (output folder), one pipeline manager, and the
    job queue in front of them."""

    def __init__(self, settings: Settings, offline: bool = False, include_test_models: bool = False,
                 settings_warning: str | None = None, flags: dict | None = None, devices: list[str] | None = None,
                 workers: list[GpuWorker] | None = None):  # fmt: skip
        """`settings` are the saved settings with the start-up `flags` (--model, --output-dir) applied;
        `devices` one local worker each (default: every visible GPU); `workers` remote ones instead (Ray)."""
        self.settings = settings
        self.flags = dict(flags or {})
        self.saved = settings if not self.flags else replace(settings, **{
            name: getattr(load_settings()[0], name) for name in self.flags})  # fmt: skip
        zero = on_zerogpu()
        devices = ["cuda"] if zero else devices or parse_devices(None)  # ZeroGPU: one GPU, lent per call
        self.managers = [PipelineManager(profile=ZEROGPU_PROFILE if zero else settings.profile_choice,
                                         offline=offline, speed=settings.speed, device=device)
                         for device in devices]  # fmt: skip
        self.manager = self.managers[0]  # the first device: memory estimates and backend checks
        # without a GPU the real models cannot run: the test model is offered beside them
        self.has_gpu = self.manager.device.type == "cuda" or bool(workers)
        self.include_test_models = include_test_models or get_spec(settings.model).is_test or not self.has_gpu
        self.library = Library.open(Path(settings.output_dir))  # LibraryError when it cannot be written
        self.output_dir = self.library.root
        # the library's index is read now, beside the start-up, so the first look at a big library is quick
        threading.Thread(target=self.library.clips, name="library-index", daemon=True).start()
        self.loras = LoraFolder(settings.lora_dir or None)
        if zero:
            workers = [ZeroGpuWorker(self.manager)]
        elif not workers:
            labels = worker_labels([m.device for m in self.managers])
            workers = [LocalWorker(m, label=label) for m, label in zip(self.managers, labels, strict=True)]
        self.jobs = JobQueue(workers, self.library, clip_options=settings.clip_options)
        self.warnings = [w for w in (settings_warning, *self.library.warnings, *self.jobs.warnings) if w]

    def submit(self, request: GenerationRequest, append_to_storyboard: bool = False) -> Job:
        """Validate now (bad input is answered at once, the seed is drawn once) and queue."""
        valid = validate_request(request, self.settings.model)
        for worker in self.jobs.workers:  # a clip split over GPUs has its own limits: refused now, not later
            check_request(valid, getattr(worker, "degree", 1))
        return self.jobs.submit(valid, append_to_storyboard=append_to_storyboard)

    def keep_settings(self, settings: Settings) -> Path:
        """Save `settings` (already checked) and apply them. A value that only a start-up flag set, and the
        user left as it was, is saved as it was before: flags hold for this run, never for the next."""
        stored = replace(settings, **{name: getattr(self.saved, name) for name, value in self.flags.items()
                                      if getattr(settings, name) == value})  # fmt: skip
        path = save_settings(stored)
        self.saved = stored
        self.apply_settings(settings)
        return path

    def apply_settings(self, settings: Settings) -> None:
        """Model, profile, speed and form defaults apply to the next job; the output folder after a restart."""
        self.settings = settings
        for worker in self.jobs.workers:
            worker.configure(settings.profile_choice, settings.speed)
        self.loras = LoraFolder(settings.lora_dir or None)
        self.jobs.clip_options = settings.clip_options


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
    from studio.ui import PAGE_CSS, build_ui

    try:
        devices = parse_devices(args.gpus)
        workers = None
        if args.ray:
            from studio.ray_workers import ray_pool

            workers = ray_pool(args.ray, settings.profile_choice, settings.speed, offline=args.offline)
        elif args.context_parallel > 1:
            from studio.split_worker import split_workers

            workers = split_workers(devices, args.context_parallel, settings.profile_choice, settings.speed,
                                    offline=args.offline)  # fmt: skip
        studio = Studio(settings, offline=args.offline, include_test_models=args.show_test_models,
                        settings_warning=warning, flags=overrides, devices=devices, workers=workers)  # fmt: skip
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    for line in studio.warnings:
        print(f"warning: {line}", file=sys.stderr, flush=True)
    if on_zerogpu():  # weights onto "cuda" in this process, before the page opens (see studio/zerogpu.py)
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
        quiet=not args.share,  # our own line above gives the address; Gradio's adds "set share=True in launch()"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
