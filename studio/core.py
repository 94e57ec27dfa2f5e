"""`Studio`: what the page, the API and the launcher work on: the settings, the library (output folder), the
pipeline managers and the job queue in front of them. It knows nothing of the page: `studio.server` builds
the page from it (`studio.page.layout.build_ui`), and tests use it without a server."""

from __future__ import annotations

import math
import secrets
import threading
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

from PIL import Image

from library import Library, Shot
from library.files import check_room
from library.lora_folder import LoraFolder
from library.media import estimate_mp4_mb
from library.post import PostRequest
from library.post_models import DEFAULT, TEST, PostModels, UpscalerFolder
from pipelines.catalogue import get_spec
from pipelines.enhance import TEST_ENHANCER, TEST_ENHANCER_VL, EnhanceError
from pipelines.long_take import TakeError, plan_take
from pipelines.manager import PipelineManager
from pipelines.parallel import check_request
from pipelines.request import GenerationRequest, validate_request
from studio.jobs.enhancing import MAX_ENHANCE_CHARS, EnhanceRequest
from studio.jobs.queue import Job, JobQueue
from studio.jobs.workers import GpuWorker, LocalWorker, parse_devices, worker_labels
from studio.jobs.zerogpu import ZEROGPU_PROFILE, ZeroGpuWorker, on_zerogpu
from studio.settings import Settings, load_settings, save_settings


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
        self.upscalers = UpscalerFolder()
        self.library.post_models = PostModels(self.upscalers, offline=offline, default=self._post_default(settings))
        if zero:  # the GPU is lent only inside a generation's GPU function: a film's learned steps use the CPU
            self.library.post_models.film_device = "cpu"
        if zero:
            workers = [ZeroGpuWorker(self.manager)]
        elif not workers:
            labels = worker_labels([m.device for m in self.managers])
            workers = [LocalWorker(m, label=label) for m, label in zip(self.managers, labels, strict=True)]
        self.jobs = JobQueue(workers, self.library, clip_options=settings.clip_options)
        self.jobs.offline = offline
        self.warnings = [w for w in (settings_warning, *self.library.warnings, *self.jobs.warnings) if w]

    def submit(self, request: GenerationRequest, append_to_storyboard: bool = False) -> Job:
        """Validate now (bad input is answered at once, the seed is drawn once) and queue."""
        valid = validate_request(request, self.settings.model)
        for worker in self.jobs.workers:  # a clip split over GPUs has its own limits: refused now, not later
            check_request(valid, getattr(worker, "degree", 1))
        return self.jobs.submit(valid, append_to_storyboard=append_to_storyboard)

    def submit_take(self, request: GenerationRequest, prompts: Sequence[str], seconds: float | None = None,
                    overlap: int | None = None, lead_in: Shot | None = None,
                    append_to_storyboard: bool = False) -> Job:  # fmt: skip
        """Validate and plan a long take now (a refusal names the field) and queue it: one clip of several
        windows of `request.frames` each, with one prompt for all or one per window; `seconds` long, or without
        it one window per prompt; `overlap` the frames each window continues from (None: the model's own).
        `lead_in`: a storyboard shot the take continues from its last frames (its Out point)."""
        prompts = [p.strip() for p in prompts if isinstance(p, str) and p.strip()]
        if prompts:  # window 1's prompt is the request's
            request = replace(request, prompt=prompts[0])
        valid = validate_request(request, self.settings.model)
        if not self.takes_run_here:
            elsewhere = ", ".join(w.label for w in self.jobs.workers)
            raise TakeError("workers", f"Long takes run on a GPU of this machine, and this studio's clips run "
                                       f"elsewhere ({elsewhere}). Make the shot with Extend the last shot "
                                       "instead.")  # fmt: skip
        prompts = prompts or [valid.prompt]
        plan = plan_take(valid.spec, prompts, seconds=seconds, windows=None if seconds else len(prompts),
                         frames_per_window=valid.frames, overlap=overlap,
                         limit_s=self.settings.take_limit_s)  # fmt: skip
        # the windows' segments and the joined clip are on disk together before the segments go
        check_room(self.library.root, 2 * estimate_mp4_mb(plan.total_frames, valid.width, valid.height), "the take")
        asked = {"prompts": list(prompts), "seconds": seconds, "overlap": overlap}
        lead = None
        if lead_in is not None:  # the K frames before the shot's Out point, read when the job runs
            lead = {"clip": lead_in.clip, "end_s": lead_in.end_s, "frames": plan.overlap}
            asked["continues"] = lead_in.clip
        return self.jobs.submit(replace(valid, prompt=plan.prompts[0]), take=plan, take_asked=asked, lead_in=lead,
                                append_to_storyboard=append_to_storyboard)  # fmt: skip

    @property
    def takes_run_here(self) -> bool:
        """Whether long takes (and multi-frame extensions) can run: on this machine's own workers, not on Ray
        actors, GPU groups or ZeroGPU, whose runs cannot take the engine's per-window hooks."""
        return all(isinstance(w, LocalWorker) and not isinstance(w, ZeroGpuWorker) for w in self.jobs.workers)

    def submit_post(self, action: str, clip: str, model: str | None = None, **how: object) -> Job:
        """Check an upscale (`scale`/`height`) or a frame interpolation (`factor`/`fps`) of a library clip now
        (a refusal names the field) and queue it for a GPU worker."""
        request: PostRequest = self.library.check_post(action, clip, model, **how)
        return self.jobs.submit_post(request)

    def submit_enhance(self, prompt: str, image: Image.Image | None = None, keep_language: bool | None = None,
                       seed: int | None = None) -> Job:  # fmt: skip
        """Queue a rewrite of `prompt` by the enhancer Settings name (the vision one when there is a picture;
        the test ones with the test video model); EnhanceError at once for an empty or overlong prompt."""
        prompt = str(prompt or "").strip()
        if not prompt:
            raise EnhanceError("Type a prompt to enhance first.")
        if len(prompt) > MAX_ENHANCE_CHARS:
            raise EnhanceError(f"A prompt to enhance holds at most {MAX_ENHANCE_CHARS} characters; this one has "
                               f"{len(prompt)}.")  # fmt: skip
        s = self.settings
        vision = image is not None
        if get_spec(s.model).is_test:
            enhancer = TEST_ENHANCER_VL.id if vision else TEST_ENHANCER.id
        else:
            enhancer = s.vision_enhancer if vision else s.enhancer
        keep = s.enhance_keep_language if keep_language is None else bool(keep_language)
        try:
            seed = -1 if seed is None else float(seed)
        except (TypeError, ValueError):
            raise EnhanceError(f"seed must be a whole number; got {str(seed)[:20]!r}.") from None
        if not (math.isfinite(seed) and seed == int(seed) and -1 <= seed < 2**31):
            raise EnhanceError(f"seed must be a whole number from 0 to {2**31 - 1}, or -1 for a random one.")
        seed = secrets.randbelow(2**31) if seed < 0 else int(seed)
        request = EnhanceRequest(prompt, enhancer, keep, seed, on_cpu=s.enhance_on_cpu, image=image)
        return self.jobs.submit_enhance(request)

    @staticmethod
    def _post_default(settings: Settings) -> str:
        """The test upscaler and interpolator go with the test video models (noise in, noise out, seconds)."""
        return TEST if get_spec(settings.model).is_test else DEFAULT

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
        self.library.post_models.default = self._post_default(settings)
        self.jobs.clip_options = settings.clip_options
