"""The Gradio Blocks page: Text to video, Image to video, Library, Settings, and the live queue.

Handlers here only translate between widgets and the studio's objects (GenerationRequest, JobQueue,
Settings); the generation streams watch a server-owned job, so a closed tab never stops it.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import gradio as gr

from pipelines.catalogue import IMAGE_TO_VIDEO, TEXT_TO_VIDEO, get_spec
from pipelines.memory import AUTO, PROFILES
from pipelines.request import GenerationRequest
from studio import history
from studio.jobs import RUNNING
from studio.settings import PRECISIONS, Settings, SettingsError, model_choices, save_settings
from studio.storyboard_tab import build_storyboard_tab
from studio.verify import report as verify_report
from studio.watch import status_text, submit, watch

if TYPE_CHECKING:
    from studio.server import Studio

ASSETS = Path(__file__).resolve().parents[1] / "assets"
AUTO_SIZE = "auto (match the picture)"
EXAMPLE_PROMPTS = [
    "A red fox trots through fresh snow at sunrise, breath steaming, low tracking shot",
    "Time-lapse of clouds rolling over a mountain lake, reflections on calm water",
    "A paper boat drifts down a rain-soaked city gutter, neon reflections, macro lens",
    "A teacher draws a glowing diagram of the solar system on a chalkboard, planets start to orbit",
]


def size_choices(spec_id: str, task: str) -> list[str]:
    sizes = [f"{w}x{h}" for w, h in get_spec(spec_id).sizes]
    return [AUTO_SIZE, *sizes] if task == IMAGE_TO_VIDEO else sizes


def parse_size(text: str | None) -> tuple[int | None, int | None]:
    if not text or text == AUTO_SIZE:
        return None, None
    try:
        width, height = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise gr.Error(f"Size must look like 1280x704; got '{text}'.") from None
    return width, height


def _number(value: float | None) -> int | None:
    return None if value is None else int(value)


def build_ui(studio: Studio) -> gr.Blocks:
    settings = studio.settings
    spec = get_spec(settings.model)
    include_tests = studio.include_test_models

    with gr.Blocks(title="Wan Studio", analytics_enabled=False, fill_width=True) as demo:
        gr.Markdown(
            "# Wan Studio\nMake video clips with the open Wan2.2 models on your own GPU. "
            "Jobs run on this machine; closing the page never stops them."
        )
        model_note = gr.Markdown(f"Model: **{spec.label}** — {spec.description}", elem_id="model-note")

        with gr.Tabs() as tabs:
            # ---- Text to video ------------------------------------------------------------------
            with gr.Tab("Text to video", id="t2v"):
                with gr.Row():
                    with gr.Column(scale=1, min_width=300):
                        t_prompt = gr.Textbox(
                            label="Prompt", lines=3, placeholder="Describe the shot", elem_id="t2v-prompt"
                        )
                        gr.Examples(EXAMPLE_PROMPTS, inputs=t_prompt, label="Examples")
                        t_negative = gr.Textbox(
                            label="Negative prompt", lines=2, value=settings.negative_prompt or spec.negative_prompt
                        )
                        with gr.Row():
                            t_size = gr.Dropdown(
                                size_choices(spec.id, TEXT_TO_VIDEO),
                                value=size_choices(spec.id, TEXT_TO_VIDEO)[0],
                                label="Size",
                                allow_custom_value=True,
                            )
                            t_frames = gr.Slider(
                                spec.min_frames,
                                spec.max_frames,
                                value=spec.frames,
                                step=spec.frame_step,
                                label=f"Frames ({spec.fps} fps)",
                            )
                        with gr.Row():
                            t_steps = gr.Slider(
                                1, 100, value=settings.steps or spec.steps, step=1, label="Steps", elem_id="t2v-steps"
                            )
                            t_guidance = gr.Slider(
                                0, 20, value=settings.guidance_scale or spec.guidance_scale, step=0.5, label="Guidance"
                            )
                            t_seed = gr.Number(value=-1, precision=0, label="Seed (-1 = random)")
                        with gr.Row():
                            t_go = gr.Button("Generate", variant="primary", elem_id="t2v-generate")
                            t_cancel = gr.Button("Cancel", variant="stop", elem_id="t2v-cancel")
                    with gr.Column(scale=1, min_width=300):
                        t_status = gr.Markdown("Ready.", elem_id="t2v-status")
                        t_preview = gr.Image(
                            label="Live preview", interactive=False, elem_id="t2v-preview", format="png"
                        )
                        t_video = gr.Video(label="Clip", interactive=False, elem_id="t2v-video")
                        t_seed_used = gr.Number(label="Seed used", precision=0, interactive=False)
                        t_job = gr.Textbox(visible=False, label="Job id")

            # ---- Image to video -----------------------------------------------------------------
            with gr.Tab("Image to video", id="i2v"):
                with gr.Row():
                    with gr.Column(scale=1, min_width=300):
                        i_image = gr.Image(
                            label="Start picture (upload or paste)", type="pil", sources=["upload", "clipboard"],
                            value=str(ASSETS / "example-landscape.png"), elem_id="i2v-image",
                        )  # fmt: skip
                        with gr.Row():
                            i_from_clip = gr.Dropdown([], label="Or the last frame of a library clip", scale=3)
                            i_use_frame = gr.Button("Use last frame", scale=1)
                        i_prompt = gr.Textbox(
                            label="Prompt", lines=3, placeholder="What happens next", elem_id="i2v-prompt"
                        )
                        i_negative = gr.Textbox(
                            label="Negative prompt", lines=2, value=settings.negative_prompt or spec.negative_prompt
                        )
                        with gr.Row():
                            i_size = gr.Dropdown(
                                size_choices(spec.id, IMAGE_TO_VIDEO),
                                value=AUTO_SIZE,
                                label="Size",
                                allow_custom_value=True,
                            )
                            i_frames = gr.Slider(
                                spec.min_frames,
                                spec.max_frames,
                                value=spec.frames,
                                step=spec.frame_step,
                                label=f"Frames ({spec.fps} fps)",
                            )
                        with gr.Row():
                            i_steps = gr.Slider(1, 100, value=settings.steps or spec.steps, step=1, label="Steps")
                            i_guidance = gr.Slider(
                                0, 20, value=settings.guidance_scale or spec.guidance_scale, step=0.5, label="Guidance"
                            )
                            i_seed = gr.Number(value=-1, precision=0, label="Seed (-1 = random)")
                        with gr.Row():
                            i_go = gr.Button("Generate", variant="primary", elem_id="i2v-generate")
                            i_cancel = gr.Button("Cancel", variant="stop")
                    with gr.Column(scale=1, min_width=300):
                        i_status = gr.Markdown("Ready.")
                        i_preview = gr.Image(label="Live preview", interactive=False, format="png")
                        i_video = gr.Video(label="Clip", interactive=False)
                        i_seed_used = gr.Number(label="Seed used", precision=0, interactive=False)
                        i_job = gr.Textbox(visible=False, label="Job id")

            # ---- Library ------------------------------------------------------------------------
            with gr.Tab("Library", id="library"):
                with gr.Row():
                    lib_pick = gr.Dropdown([], label="Clips in the output folder (newest first)", scale=4)
                    lib_refresh = gr.Button("Refresh", scale=1)
                with gr.Row():
                    lib_video = gr.Video(label="Clip", interactive=False, elem_id="library-video")
                    lib_info = gr.JSON(label="Settings and details")
                with gr.Row():
                    lib_reuse = gr.Button("Reuse settings")
                    lib_continue = gr.Button("Continue from its last frame")

            # ---- Storyboard ---------------------------------------------------------------------
            with gr.Tab("Storyboard", id="storyboard"):
                board_tab = build_storyboard_tab(studio)

            # ---- Settings -----------------------------------------------------------------------
            with gr.Tab("Settings", id="settings"):
                s_model = gr.Dropdown(
                    model_choices(include_tests), value=settings.model, label="Model", allow_custom_value=True
                )
                s_profile = gr.Dropdown(
                    [AUTO, *[p for p in PROFILES if p != "cpu"]], value=settings.memory_profile, label="Memory profile"
                )
                s_precision = gr.Radio(
                    list(PRECISIONS), value=settings.precision, label="Precision (with the auto profile)"
                )
                s_output = gr.Textbox(value=settings.output_dir, label="Output folder (applies after a restart)")
                with gr.Row():
                    s_steps = gr.Number(value=settings.steps, precision=0, label="Default steps (empty: the model's)")
                    s_guidance = gr.Number(value=settings.guidance_scale, label="Default guidance (empty: the model's)")
                s_negative = gr.Textbox(
                    value=settings.negative_prompt, label="Default negative prompt (empty: the model's)"
                )
                with gr.Row():
                    s_watermark = gr.Checkbox(
                        value=settings.watermark, label="Invisible watermark in new clips (survives re-encoding)"
                    )
                    s_include_prompt = gr.Checkbox(
                        value=settings.include_prompt, label="Put the prompt in the signed Content Credentials"
                    )
                gr.Markdown(
                    "Every clip and film is signed with Content Credentials (C2PA) that label it as AI-generated, "
                    "with a key made on this machine that never leaves it."
                )
                s_save = gr.Button("Save settings", variant="primary", elem_id="settings-save")
                s_status = gr.Markdown(studio.settings_warning or "", elem_id="settings-status")

            # ---- Verify ---------------------------------------------------------------------------
            with gr.Tab("Verify", id="verify"):
                gr.Markdown(
                    "Check any video or picture: does it carry valid Content Credentials, what do they declare, "
                    "was it changed after signing, and does it carry a Wan Studio watermark?"
                )
                v_file = gr.File(label="File to check", type="filepath", elem_id="verify-file")
                v_go = gr.Button("Verify", variant="primary", elem_id="verify-go")
                v_report = gr.Markdown(elem_id="verify-report")
                v_details = gr.JSON(label="Details")

        # ---- Queue: always visible, shows the running job after a reload ------------------------
        with gr.Accordion("Queue and activity", open=True):
            q_timer = gr.Timer(1.0)
            with gr.Row():
                q_table = gr.Markdown("No jobs yet.", elem_id="queue-table")
                q_preview = gr.Image(label="Running job", interactive=False, height=200, format="png")

        # ---- handlers -----------------------------------------------------------------------
        async def text_to_video(prompt: str, negative_prompt: str = "", size: str = "", frames: float = 0,
                          steps: float = 0, guidance_scale: float = -1, seed: float = -1):  # fmt: skip
            current = studio.settings
            width, height = parse_size(size or None)
            request = GenerationRequest(
                prompt=prompt, model=current.model, task=TEXT_TO_VIDEO, negative_prompt=negative_prompt or None,
                width=width, height=height, frames=_number(frames) or None, steps=_number(steps) or None,
                guidance_scale=None if guidance_scale is None or guidance_scale < 0 else float(guidance_scale),
                seed=_number(seed),
            )  # fmt: skip
            async for update in watch(studio, submit(studio, request)):
                yield update

        async def image_to_video(image, prompt: str, negative_prompt: str = "", size: str = AUTO_SIZE,
                                 frames: float = 0, steps: float = 0, guidance_scale: float = -1,
                                 seed: float = -1):  # fmt: skip
            current = studio.settings
            if image is None:
                raise gr.Error("Image-to-video needs a picture: upload one or pick a clip's last frame.")
            width, height = parse_size(size)
            request = GenerationRequest(
                prompt=prompt, model=current.model, task=IMAGE_TO_VIDEO, negative_prompt=negative_prompt or None,
                width=width, height=height, frames=_number(frames) or None, steps=_number(steps) or None,
                guidance_scale=None if guidance_scale is None or guidance_scale < 0 else float(guidance_scale),
                seed=_number(seed), image=image,
            )  # fmt: skip
            async for update in watch(studio, submit(studio, request)):
                yield update

        def cancel(job_id: str) -> str:
            if job_id and studio.jobs.cancel(job_id):
                return "Cancelling…"
            return "Nothing to cancel."

        gen_outputs_t = [t_preview, t_status, t_video, t_job, t_seed_used]
        gen_outputs_i = [i_preview, i_status, i_video, i_job, i_seed_used]
        t_go.click(
            text_to_video, [t_prompt, t_negative, t_size, t_frames, t_steps, t_guidance, t_seed], gen_outputs_t,
            api_name="text_to_video", concurrency_limit=None, show_progress="minimal",
        )  # fmt: skip
        i_go.click(
            image_to_video, [i_image, i_prompt, i_negative, i_size, i_frames, i_steps, i_guidance, i_seed],
            gen_outputs_i, api_name="image_to_video", concurrency_limit=None, show_progress="minimal",
        )  # fmt: skip
        t_cancel.click(cancel, t_job, t_status, api_name="cancel", concurrency_limit=None)
        i_cancel.click(cancel, i_job, i_status, api_visibility="private", concurrency_limit=None)

        def refresh_queue():
            jobs = studio.jobs.jobs()[:12]
            if not jobs:
                return "No jobs yet.", None
            lines = ["| Job | Status | Prompt |", "|---|---|---|"]
            for job in jobs:
                prompt = (job.fields.get("prompt") or "")[:50].replace("|", "/")
                lines.append(f"| `{job.id}` | {status_text(job, studio.jobs.position(job.id))} | {prompt} |")
            running = next((j for j in jobs if j.status == RUNNING), None)
            return "\n".join(lines), running.preview if running is not None else None

        q_timer.tick(refresh_queue, None, [q_table, q_preview], api_visibility="private", show_progress="hidden")
        demo.load(refresh_queue, None, [q_table, q_preview], api_visibility="private", show_progress="hidden")

        def clip_names() -> list[tuple[str, str]]:
            return [(c.title, c.video.name) for c in history.list_clips(studio.output_dir)]

        def refresh_library():
            names = clip_names()
            first = names[0][1] if names else None
            return tuple(gr.update(choices=names, value=first) for _ in range(3))  # Gradio edits each in place

        def show_clip(name: str | None):
            clip = history.find_clip(studio.output_dir, name) if name else None
            if clip is None:
                return None, None
            return str(clip.video), clip.sidecar

        def reuse(name: str | None):
            clip = history.find_clip(studio.output_dir, name) if name else None
            if clip is None:
                raise gr.Error("Pick a clip first.")
            s = clip.settings
            size = f"{s['width']}x{s['height']}"
            is_i2v = clip.sidecar.get("task") == IMAGE_TO_VIDEO
            image = str(clip.input_image) if is_i2v and clip.input_image and clip.input_image.is_file() else gr.update()
            values = [s["prompt"], s["negative_prompt"], size, s["frames"], s["steps"], s["guidance_scale"], s["seed"]]
            keep = [gr.update()] * 7
            return (
                *(keep if is_i2v else values),
                *(values if is_i2v else keep),
                image,
                gr.Tabs(selected="i2v" if is_i2v else "t2v"),
            )

        def use_last_frame(name: str | None):
            clip = history.find_clip(studio.output_dir, name) if name else None
            if clip is None:
                raise gr.Error("Pick a clip first.")
            return history.last_frame(clip.video), gr.Tabs(selected="i2v")

        demo.load(board_tab.reload, None, board_tab.inputs, api_visibility="private").then(
            board_tab.summarise, board_tab.inputs, board_tab.summary, api_visibility="private"
        )
        lib_refresh.click(refresh_library, None, [lib_pick, i_from_clip, board_tab.pick], api_visibility="private")
        demo.load(refresh_library, None, [lib_pick, i_from_clip, board_tab.pick], api_visibility="private")
        lib_pick.change(show_clip, lib_pick, [lib_video, lib_info], api_visibility="private")
        t_video.change(refresh_library, None, [lib_pick, i_from_clip, board_tab.pick], api_visibility="private")
        i_video.change(refresh_library, None, [lib_pick, i_from_clip, board_tab.pick], api_visibility="private")
        lib_reuse.click(
            reuse, lib_pick,
            [t_prompt, t_negative, t_size, t_frames, t_steps, t_guidance, t_seed,
             i_prompt, i_negative, i_size, i_frames, i_steps, i_guidance, i_seed, i_image, tabs],
            api_visibility="private",
        )  # fmt: skip
        lib_continue.click(use_last_frame, lib_pick, [i_image, tabs], api_visibility="private")
        i_use_frame.click(use_last_frame, i_from_clip, [i_image, tabs], api_visibility="private")

        def save(
            model, profile, precision, output_dir, steps, guidance, negative, watermark=False, include_prompt=False
        ):
            candidate = Settings(
                model=model, memory_profile=profile, precision=precision, output_dir=(output_dir or "").strip(),
                steps=None if steps in (None, "") else int(steps),
                guidance_scale=None if guidance in (None, "") else float(guidance),
                negative_prompt=negative or None, watermark=bool(watermark), include_prompt=bool(include_prompt),
            )  # fmt: skip
            try:
                path = save_settings(candidate)
            except SettingsError as err:
                return f"**Not saved:** {err}", gr.update()
            studio.apply_settings(candidate)
            new_spec = get_spec(candidate.model)
            return f"Saved to `{path}`.", f"Model: **{new_spec.label}** — {new_spec.description}"

        s_save.click(
            save,
            [s_model, s_profile, s_precision, s_output, s_steps, s_guidance, s_negative, s_watermark, s_include_prompt],
            [s_status, model_note],
            api_name="save_settings",
        )  # fmt: skip

        def verify(path: str | None):
            if not path:
                raise gr.Error("Choose a file to check.")
            text, details = verify_report(Path(path))
            return "\n\n".join(text.splitlines()), details

        v_go.click(verify, v_file, [v_report, v_details], api_name="verify")

        def form_for_model(model: str):
            try:
                new = get_spec(model)
            except ValueError:
                return [gr.update()] * 4
            frames = gr.update(
                minimum=new.min_frames, maximum=new.max_frames, value=new.frames, label=f"Frames ({new.fps} fps)"
            )
            return (
                gr.update(choices=size_choices(new.id, TEXT_TO_VIDEO), value=size_choices(new.id, TEXT_TO_VIDEO)[0]),
                frames,
                gr.update(choices=size_choices(new.id, IMAGE_TO_VIDEO), value=AUTO_SIZE),
                frames,
            )

        s_save.click(form_for_model, s_model, [t_size, t_frames, i_size, i_frames], api_visibility="private")

    return demo
