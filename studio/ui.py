"""The Gradio Blocks page: Text to video, Image to video, Library, Settings, and the live queue.

Handlers here only translate between widgets and the studio's objects (GenerationRequest, JobQueue,
Settings); the generation streams watch a server-owned job, so a closed tab never stops it.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import gradio as gr

from pipelines import attention
from pipelines.catalogue import IMAGE_TO_VIDEO, TEXT_TO_VIDEO, get_spec
from pipelines.memory import AUTO, PROFILES
from studio import film, history
from studio.forms import AUTO_SIZE, build_form, form_request, reuse_values, size_choices
from studio.jobs import RUNNING
from studio.settings import PRECISIONS, Settings, SettingsError, model_choices, save_settings
from studio.storyboard_tab import build_storyboard_tab
from studio.verify import report as verify_report
from studio.watch import status_text, submit, watch

if TYPE_CHECKING:
    from studio.server import Studio

ASSETS = Path(__file__).resolve().parents[1] / "assets"


def _shown(value: float | None) -> str:
    return "" if value is None else f"{value:g}"


def _optional_number(value, what: str, whole: bool = False) -> float | int | None:
    """A settings field where empty means "the model's own"; SettingsError for anything but a number."""
    if value is None or not str(value).strip():
        return None
    try:
        number = float(str(value).strip())
    except ValueError:
        raise SettingsError(f"{what} must be a number, or empty for the model's own; got '{value}'.") from None
    if whole:
        if not number.is_integer():
            raise SettingsError(f"{what} must be a whole number, or empty for the model's own; got '{value}'.")
        return int(number)
    return number


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
                t2v, _ = build_form(TEXT_TO_VIDEO, spec, settings, "Describe the shot")

            # ---- Image to video -----------------------------------------------------------------
            with gr.Tab("Image to video", id="i2v"):

                def picture_widgets():
                    image = gr.Image(
                        label="Start picture (upload or paste)", type="pil", sources=["upload", "clipboard"],
                        value=str(ASSETS / "example-landscape.png"), elem_id="i2v-image",
                    )  # fmt: skip
                    with gr.Row():
                        from_clip = gr.Dropdown([], label="Or the last frame of a library clip", scale=3)
                        use_frame = gr.Button("Use last frame", scale=1)
                    return image, from_clip, use_frame

                i2v, (i_image, i_from_clip, i_use_frame) = build_form(
                    IMAGE_TO_VIDEO, spec, settings, "What happens next", above_prompt=picture_widgets
                )
                i2v.size.value = AUTO_SIZE

            # ---- Library ------------------------------------------------------------------------
            with gr.Tab("Library", id="library"):
                with gr.Row():
                    lib_pick = gr.Dropdown(
                        [], label="Clips in the output folder (newest first)", scale=4, elem_id="library-pick"
                    )
                    lib_refresh = gr.Button("Refresh", scale=1)
                with gr.Row():
                    lib_video = gr.Video(label="Clip", interactive=False, elem_id="library-video")
                    lib_info = gr.JSON(label="Settings and details")
                with gr.Row():
                    lib_reuse = gr.Button("Reuse settings")
                    lib_continue = gr.Button("Continue from its last frame")
                    lib_delete = gr.Button("Move to trash", variant="stop", elem_id="library-delete")

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
                with gr.Row():
                    here = attention.resolve(attention.AUTO, studio.manager.device).name
                    s_attention = gr.Dropdown(
                        [(f"auto (here: {here})", attention.AUTO)]
                        + [(f"{b.name}: {b.label}", b.name) for b in attention.BACKENDS.values()],
                        value=settings.attention, label="Attention backend", elem_id="settings-attention",
                    )  # fmt: skip
                    s_vae_precision = gr.Radio(
                        [("float32 (exact)", "float32"), ("bfloat16 (faster decode)", "bfloat16")],
                        value=settings.vae_precision, label="VAE decode precision",
                    )  # fmt: skip
                s_compile = gr.Checkbox(
                    value=settings.compile,
                    label="Compile the transformer blocks: faster steps after a warm-up of about a minute "
                    "(on the first run and once for each new size)",
                )
                s_output = gr.Textbox(value=settings.output_dir, label="Output folder (applies after a restart)")
                with gr.Row():
                    # Text boxes, not number boxes: an empty number box sends 0, which would save "0 steps" or
                    # guidance 0 for a field the user never touched.
                    s_steps = gr.Textbox(
                        value=_shown(settings.steps), label="Default steps", placeholder="empty: the model's own",
                        elem_id="settings-steps",
                    )  # fmt: skip
                    s_guidance = gr.Textbox(
                        value=_shown(settings.guidance_scale), label="Default guidance",
                        placeholder="empty: the model's own", elem_id="settings-guidance",
                    )  # fmt: skip
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
            with gr.Row():  # any page can stop any job: after a reload the forms no longer know theirs
                q_pick = gr.Dropdown([], label="Running or queued job", scale=3, elem_id="queue-pick")
                q_cancel = gr.Button("Cancel this job", variant="stop", scale=1, elem_id="queue-cancel")
            q_note = gr.Markdown("", elem_id="queue-note")
            q_shown = gr.State([])  # the active job ids the picker holds, so a tick only redraws it on change

        # ---- handlers -----------------------------------------------------------------------
        async def text_to_video(prompt: str, negative_prompt: str = "", size: str = "", frames: float = 0,
                                steps: float = 0, guidance_scale: float = -1, seed: float = -1):  # fmt: skip
            request = form_request(
                studio.settings.model, TEXT_TO_VIDEO, prompt, negative_prompt, size, frames, steps, guidance_scale, seed
            )
            async for update in watch(studio, submit(studio, request)):
                yield update

        async def image_to_video(image, prompt: str, negative_prompt: str = "", size: str = AUTO_SIZE,
                                 frames: float = 0, steps: float = 0, guidance_scale: float = -1,
                                 seed: float = -1):  # fmt: skip
            if image is None:
                raise gr.Error("Image-to-video needs a picture: upload one or pick a clip's last frame.")
            request = form_request(
                studio.settings.model, IMAGE_TO_VIDEO, prompt, negative_prompt, size, frames, steps, guidance_scale,
                seed, image=image,
            )  # fmt: skip
            async for update in watch(studio, submit(studio, request)):
                yield update

        def cancel(job_id: str) -> str:
            if job_id and studio.jobs.cancel(job_id):
                return "Cancelling…"
            return "Nothing to cancel."

        t2v.go.click(
            text_to_video, t2v.settings_inputs, t2v.outputs,
            api_name="text_to_video", concurrency_limit=None, show_progress="minimal",
        )  # fmt: skip
        i2v.go.click(
            image_to_video, [i_image, *i2v.settings_inputs], i2v.outputs,
            api_name="image_to_video", concurrency_limit=None, show_progress="minimal",
        )  # fmt: skip
        t2v.cancel.click(cancel, t2v.job, t2v.status, api_name="cancel", concurrency_limit=None)
        i2v.cancel.click(cancel, i2v.job, i2v.status, api_visibility="private", concurrency_limit=None)

        def refresh_queue(picked: str | None, shown: list[str]):
            everything = studio.jobs.jobs()
            active = [job for job in reversed(everything) if not job.finished]  # running first, then queue order
            ids = [job.id for job in active]
            if ids == shown:
                picker = gr.skip()
            else:
                choices = [(f"{job.id} — {(job.fields.get('prompt') or '')[:40]}", job.id) for job in active]
                picker = gr.update(choices=choices, value=picked if picked in ids else (ids[0] if ids else None))
            jobs = everything[:12]
            if not jobs:
                return "No jobs yet.", None, picker, ids
            lines = ["| Job | Status | Prompt |", "|---|---|---|"]
            for job in jobs:
                prompt = (job.fields.get("prompt") or "")[:50].replace("|", "/")
                lines.append(f"| `{job.id}` | {status_text(job, studio.jobs.position(job.id))} | {prompt} |")
            running = next((j for j in jobs if j.status == RUNNING), None)
            return "\n".join(lines), running.preview if running is not None else None, picker, ids

        queue_outputs = [q_table, q_preview, q_pick, q_shown]
        for trigger in (q_timer.tick, demo.load):
            trigger(
                refresh_queue, [q_pick, q_shown], queue_outputs, api_visibility="private", show_progress="hidden"
            )  # fmt: skip
        q_cancel.click(cancel, q_pick, q_note, api_visibility="private", concurrency_limit=None)

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
            is_i2v = clip.sidecar.get("task") == IMAGE_TO_VIDEO
            image = str(clip.input_image) if is_i2v and clip.input_image and clip.input_image.is_file() else gr.update()
            values = reuse_values(clip.settings)
            keep = [gr.update()] * 7
            return (
                *(keep if is_i2v else values),
                *(values if is_i2v else keep),
                image,
                gr.Tabs(selected="i2v" if is_i2v else "t2v"),
            )

        def delete_clip(name: str | None):
            if not name:
                raise gr.Error("Pick a clip first.")
            try:
                shots = film.load_storyboard(studio.output_dir).shots
            except (ValueError, film.StoryboardError):
                shots = []
            used = [n for n, shot in enumerate(shots, start=1) if shot.clip == Path(name).name]
            if used:
                raise gr.Error(f"This clip is shot {used[0]} of the storyboard: remove it there first.")
            try:
                folder = history.move_to_trash(studio.output_dir, name)
            except LookupError as err:
                raise gr.Error(str(err)) from None
            gr.Info(f"Moved to {folder}. Move the files back to restore the clip.")
            return refresh_library()

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
        for form in (t2v, i2v):
            form.video.change(refresh_library, None, [lib_pick, i_from_clip, board_tab.pick], api_visibility="private")
        lib_reuse.click(
            reuse, lib_pick, [*t2v.settings_inputs, *i2v.settings_inputs, i_image, tabs], api_visibility="private"
        )
        lib_continue.click(use_last_frame, lib_pick, [i_image, tabs], api_visibility="private")
        lib_delete.click(delete_clip, lib_pick, [lib_pick, i_from_clip, board_tab.pick], api_visibility="private")
        i_use_frame.click(use_last_frame, i_from_clip, [i_image, tabs], api_visibility="private")

        def save(
            model, profile, precision, output_dir, steps, guidance, negative, watermark=False, include_prompt=False,
            attention_backend=attention.AUTO, compile_blocks=False, vae_precision="float32",
        ):  # fmt: skip
            try:
                candidate = Settings(
                    model=model, memory_profile=profile, precision=precision, output_dir=(output_dir or "").strip(),
                    steps=_optional_number(steps, "Default steps", whole=True),
                    guidance_scale=_optional_number(guidance, "Default guidance"),
                    negative_prompt=negative or None, watermark=bool(watermark), include_prompt=bool(include_prompt),
                    attention=attention_backend or attention.AUTO, compile=bool(compile_blocks),
                    vae_precision=vae_precision or "float32",
                )  # fmt: skip
                candidate.validate()
                candidate.speed.check(studio.manager.device)  # an attention backend this machine can run
                path = save_settings(candidate)
            except (SettingsError, attention.AttentionUnavailableError) as err:
                return f"**Not saved:** {err}", gr.update()
            studio.apply_settings(candidate)
            new_spec = get_spec(candidate.model)
            return f"Saved to `{path}`.", f"Model: **{new_spec.label}** — {new_spec.description}"

        s_save.click(
            save,
            [s_model, s_profile, s_precision, s_output, s_steps, s_guidance, s_negative, s_watermark, s_include_prompt,
             s_attention, s_compile, s_vae_precision],
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

        s_save.click(form_for_model, s_model, [t2v.size, t2v.frames, i2v.size, i2v.frames], api_visibility="private")

    return demo
