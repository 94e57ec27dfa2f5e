"""The Gradio Blocks page: Text to video, Image to video, Library, Storyboard, Settings, Verify, and the
live queue. Layout and wiring only: every handler is a plain function in studio/page/handlers/, bound to the
studio with `bind`, which also turns any failure into a plain message.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import gradio as gr

from library.presets import SETTINGS
from pipelines import attention
from pipelines.catalogue import IMAGE_TO_VIDEO, TEXT_TO_VIDEO, get_spec
from pipelines.long_take import DEFAULT_LIMIT_S, MAX_LIMIT_S
from pipelines.memory import AUTO, PROFILES
from studio.errors import shown_in_page
from studio.page.forms import build_form
from studio.page.handlers import ASSETS, bind
from studio.page.handlers import enhance as enh
from studio.page.handlers import generate as gen
from studio.page.handlers import library as lib
from studio.page.handlers import links as lnk
from studio.page.handlers import post as pst
from studio.page.handlers import queue as que
from studio.page.handlers import settings as sett
from studio.page.handlers import storyboard as board
from studio.page.handlers import verify as ver
from studio.page.storyboard_tab import build_storyboard_tab
from studio.page.widgets import Number, Picture, Upload
from studio.settings import PRECISIONS, model_choices

if TYPE_CHECKING:
    from studio.core import Studio

PRIVATE = dict(api_visibility="private")
# Phone width: posters two (library) or three (storyboard) to a row instead of tiny cells. Gradio sets the
# column count inline; a stylesheet rule marked important wins over it.
PAGE_CSS = """
@media (max-width: 640px) {
  #library-grid .grid-container { --grid-cols: 2 !important; }
  #storyboard-strip .grid-container { --grid-cols: 3 !important; }
}
"""


def _shown(value: float | None) -> str:
    return "" if value is None else f"{value:g}"


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
        with gr.Row(visible=not studio.has_gpu, elem_id="gpu-notice-row", equal_height=True):
            gpu_notice = gr.Markdown(sett.gpu_notice(studio), elem_id="gpu-notice")
            use_test = gr.Button("Try it with the test model", variant="primary", scale=0, min_width=240,
                                 visible=not spec.is_test, elem_id="use-test-model")  # fmt: skip

        with gr.Tabs() as tabs:
            # ---- Text to video ------------------------------------------------------------------
            with gr.Tab("Text to video", id="t2v"):
                t2v, _ = build_form(TEXT_TO_VIDEO, spec, settings, "Describe the shot")

            # ---- Image to video -----------------------------------------------------------------
            with gr.Tab("Image to video", id="i2v"):

                def picture_widgets():
                    image = Picture(
                        label="Start picture (upload or paste)", sources=["upload", "clipboard"],
                        value=str(ASSETS / "example-landscape.png"), elem_id="i2v-image",
                    )  # fmt: skip
                    with gr.Row():
                        from_clip = gr.Dropdown([], label="Or the last frame of a library clip", scale=3)
                        use_frame = gr.Button("Use last frame", scale=1)
                    match = gr.Checkbox(
                        value=True, label="Keep the picture's colours", elem_id="i2v-match-colour",
                        info="Matches every frame's colours to the start picture (moving towards the end "
                        "picture when one is given), so shots extended one after another do not drift in colour "
                        "or saturation. Untick for a deliberate change of light.",
                    )  # fmt: skip
                    with gr.Accordion("End frame (optional)", open=False, visible=spec.end_frame,
                                      elem_id="i2v-end-frame") as end_box:  # fmt: skip
                        gr.Markdown("The clip ends on this picture: a start and an end frame, the model fills in "
                                    "the motion between them.")  # fmt: skip
                        end = Picture(label="End frame", sources=["upload", "clipboard"], elem_id="i2v-end-image")
                    return image, from_clip, use_frame, match, end, end_box

                i2v, (i_image, i_from_clip, i_use_frame, i_match, i_end, i_end_box) = build_form(
                    IMAGE_TO_VIDEO, spec, settings, "What happens next", above_prompt=picture_widgets
                )
                i2v.size.value = gen.AUTO_SIZE

            # ---- Library ------------------------------------------------------------------------
            with gr.Tab("Library", id="library"):
                with gr.Row(equal_height=True):
                    # labels a screen reader says; the placeholder and the first choices say the same on screen
                    lib_search = gr.Textbox(label="Search the prompts", placeholder="Search the prompts",
                                            show_label=False, scale=3, elem_id="library-search",
                                            submit_btn=False)  # fmt: skip
                    lib_model = gr.Dropdown([("All models", lib.ALL)], value=lib.ALL, label="Filter by model",
                                            show_label=False, scale=2, elem_id="library-model")  # fmt: skip
                    lib_task = gr.Dropdown(
                        [("Both kinds", lib.ALL), ("Text to video", TEXT_TO_VIDEO), ("Image to video", IMAGE_TO_VIDEO)],
                        value=lib.ALL, label="Filter by kind", show_label=False, scale=2, elem_id="library-task",
                    )  # fmt: skip
                    lib_refresh = gr.Button("Refresh", scale=1, min_width=100)
                lib_grid = gr.Gallery(
                    label="Clips, newest first", columns=6, height="auto", fit_columns=False, object_fit="cover",
                    allow_preview=False,
                    buttons=[], interactive=False, elem_id="library-grid",
                )  # fmt: skip
                with gr.Row(equal_height=True, elem_id="library-pager"):
                    lib_newer = gr.Button("◀ Newer", size="sm", scale=0, min_width=90, elem_id="library-newer")
                    lib_summary = gr.Markdown("", elem_id="library-summary")
                    lib_older = gr.Button("Older ▶", size="sm", scale=0, min_width=90, elem_id="library-older")
                lib_page = gr.State(1)  # the grid's page (one page of posters at a time)
                lib_posters = gr.Timer(1.0, active=False)  # redraws the page while its posters are being made
                lib_names = gr.State([])  # the clip name of each grid cell, in order
                lib_pick = gr.Textbox(visible=False, elem_id="library-pick")  # the clip picked in the grid
                with gr.Row():
                    lib_video = gr.Video(label="Clip", interactive=False, elem_id="library-video")
                    with gr.Column():
                        lib_details = gr.Markdown("Pick a clip in the grid.", elem_id="library-details")
                        with gr.Row():
                            lib_reuse = gr.Button("Reuse settings", elem_id="library-reuse")
                            lib_continue = gr.Button("Continue from its last frame", elem_id="library-continue")
                            lib_delete = gr.Button("Move to trash", variant="stop", elem_id="library-delete")
                        lib_status = gr.Markdown("", elem_id="library-status")  # where a trashed clip went
                        with gr.Accordion("Upscale and smooth motion", open=False, elem_id="library-post"):
                            upscalers = pst.upscaler_choices(studio)
                            with gr.Row():
                                lib_up_how = gr.Dropdown(list(pst.UPSCALE_CHOICES), value="×2", label="Upscale",
                                                         elem_id="library-upscale-how", scale=1)  # fmt: skip
                                lib_upscaler = gr.Dropdown(upscalers, value=upscalers[0][1], label="Upscaler",
                                                           elem_id="library-upscaler", scale=2)  # fmt: skip
                                lib_up_go = gr.Button("Upscale", elem_id="library-upscale", scale=1)
                            with gr.Row():
                                lib_smooth_how = gr.Dropdown(
                                    list(pst.SMOOTH_CHOICES), value="×2 frames", scale=3,
                                    label="Smooth motion (learned in-between frames, same duration)",
                                    elem_id="library-smooth-how",
                                )  # fmt: skip
                                lib_smooth_go = gr.Button("Smooth motion", elem_id="library-smooth", scale=1)
                            gr.Markdown("Each makes a new clip beside this one, signed with it as the source.")
                            lib_post_preview = gr.Image(label="Progress", interactive=False, height=160,
                                                        format="png", elem_id="library-post-preview")  # fmt: skip
                            with gr.Row():
                                lib_post_status = gr.Markdown("", elem_id="library-post-status")
                                lib_post_cancel = gr.Button("Cancel", size="sm", scale=0, min_width=90,
                                                            elem_id="library-post-cancel")  # fmt: skip
                            lib_post_clip = gr.Textbox(visible=False)  # the new clip's path, when done
                            lib_post_job = gr.Textbox(visible=False)
                            lib_post_seed = gr.Number(visible=False)
                        with gr.Accordion("All settings and details (JSON)", open=False):
                            lib_info = gr.JSON(show_label=False)

            # ---- Storyboard ---------------------------------------------------------------------
            with gr.Tab("Storyboard", id="storyboard"):
                board_tab = build_storyboard_tab(studio)

            # ---- Settings -----------------------------------------------------------------------
            with gr.Tab("Settings", id="settings"):
                s_model = gr.Dropdown(
                    model_choices(include_tests),
                    value=settings.model,
                    label="Model",
                    allow_custom_value=True,
                    elem_id="settings-model",
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
                with gr.Row():
                    s_output = gr.Textbox(
                        value=settings.output_dir, label="Output folder (applies after a restart)", scale=3,
                        elem_id="settings-output",
                    )  # fmt: skip
                    s_confirm_output = gr.Checkbox(
                        value=False, label="Use this output folder", scale=1, elem_id="settings-confirm-output"
                    )
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
                    s_cache = gr.Radio(
                        [("off", "off"), ("First Block Cache", "first-block"), ("TaylorSeer", "taylorseer"),
                         ("MagCache (after calibrate-cache)", "magcache")],
                        value=settings.step_cache, label="Step cache: skip transformer work between similar steps "
                        "(faster, slightly different frames)", elem_id="settings-cache", scale=3,
                    )  # fmt: skip
                    s_cache_threshold = gr.Textbox(
                        value=_shown(settings.cache_threshold), label="Cache threshold (0 to 1)",
                        placeholder="empty: the cache's own", elem_id="settings-cache-threshold", scale=1,
                    )  # fmt: skip
                with gr.Accordion("LoRAs", open=False, elem_id="settings-loras"):
                    s_lora_dir = gr.Textbox(
                        value=settings.lora_dir, label="LoRA folder", placeholder=str(studio.loras.root),
                        elem_id="settings-lora-dir",
                    )  # fmt: skip
                    with gr.Row():
                        s_lora_file = Upload(
                            label="Add a LoRA (.safetensors)", file_types=[".safetensors"], scale=3,
                            elem_id="settings-lora-upload",
                        )  # fmt: skip
                        s_lora_keep = gr.Button("Add to the LoRA folder", scale=1, elem_id="settings-lora-keep")
                    with gr.Row():
                        s_lora_link = gr.Textbox(label="Or add from a link", scale=3, elem_id="settings-lora-link",
                                                 placeholder="owner/repo/file.safetensors, a huggingface.co or "
                                                             "civitai.com link, or any https link")  # fmt: skip
                        s_lora_link_low = gr.Textbox(label="Low-noise file's link (an A14B pair; else empty)",
                                                     scale=2, elem_id="settings-lora-link-low")  # fmt: skip
                        s_lora_fetch = gr.Button("Download and add", scale=1, elem_id="settings-lora-fetch")
                    s_lora_status = gr.Markdown("", elem_id="settings-lora-status")  # kept, or why not
                    s_lora_list = gr.Markdown(sett.lora_table(studio), elem_id="settings-lora-list")
                with gr.Accordion("Prompt enhancer", open=False, elem_id="settings-enhancer"):
                    gr.Markdown("*Enhance the prompt* rewrites a short idea in the detailed style the Wan models were "
                                "trained on. The model downloads on first use; it runs as a job and is unloaded "
                                "afterwards, so it never holds memory a generation needs.")  # fmt: skip
                    with gr.Row():
                        s_enhancer = gr.Dropdown(sett.enhancer_choices("text"), value=settings.enhancer,
                                                 label="For text", elem_id="settings-enhancer-text")  # fmt: skip
                        s_vision_enhancer = gr.Dropdown(
                            sett.enhancer_choices("vision"), value=settings.vision_enhancer,
                            label="With a picture (image to video)", elem_id="settings-enhancer-vision",
                        )  # fmt: skip
                    with gr.Row():
                        s_keep_language = gr.Checkbox(value=settings.enhance_keep_language,
                                                      label="Keep the prompt's language (else English)")  # fmt: skip
                        s_enhance_cpu = gr.Checkbox(value=settings.enhance_on_cpu,
                                                    label="Run the enhancer on the CPU (slower; never waits for "
                                                          "the GPU)")  # fmt: skip
                s_take_limit = Number(value=settings.take_limit_s, precision=0, minimum=DEFAULT_LIMIT_S,
                                      maximum=MAX_LIMIT_S, elem_id="settings-take-limit",
                                      label=f"Longest long take, in seconds ({DEFAULT_LIMIT_S:g} to {MAX_LIMIT_S:g})",
                                      info="A long take is made as windows; memory stays flat, time and disk grow "
                                           "with its length.")  # fmt: skip
                s_mcp = gr.Checkbox(value=settings.mcp_server, elem_id="settings-mcp",
                                    label="Serve the studio's tools to AI agents over MCP (from the next start; "
                                          "the same as starting with --mcp)")  # fmt: skip
                with gr.Accordion("Upscalers", open=False, elem_id="settings-upscalers"):
                    gr.Markdown(f"Upscalers folder: `{studio.upscalers.root}`. Any upscaler spandrel recognises "
                                "(Real-ESRGAN, SPAN, SwinIR, HAT, DAT…); `.safetensors` preferred, a `.pth` is "
                                "read as tensors only, never as code.")  # fmt: skip
                    with gr.Row():
                        s_up_file = Upload(label="Add an upscaler (.safetensors or .pth)", scale=3,
                                           file_types=[".safetensors", ".pth", ".pt", ".ckpt"],
                                           elem_id="settings-upscaler-upload")  # fmt: skip
                        s_up_keep = gr.Button("Add to the Upscalers folder", scale=1, elem_id="settings-upscaler-keep")
                    with gr.Row():
                        s_up_link = gr.Textbox(
                            label="Or add from a link",
                            scale=3,
                            elem_id="settings-upscaler-link",
                            placeholder="owner/repo/4x-model.safetensors, or an https link",
                        )
                        s_up_fetch = gr.Button("Download and add", scale=1, elem_id="settings-upscaler-fetch")
                    s_up_status = gr.Markdown("", elem_id="settings-upscaler-status")
                with gr.Row():
                    s_watermark = gr.Checkbox(
                        value=settings.watermark,
                        label="Invisible watermark in new clips and films (names the clip even when a copy has lost "
                        "its Content Credentials)",  # fmt: skip
                    )
                    s_include_prompt = gr.Checkbox(
                        value=settings.include_prompt, label="Put the prompt in the signed Content Credentials"
                    )
                gr.Markdown(
                    "Every clip and film is signed with Content Credentials (C2PA) that label it as AI-generated, "
                    "with a key made on this machine that never leaves it."
                )
                s_save = gr.Button("Save settings", variant="primary", elem_id="settings-save")
                s_status = gr.Markdown("\n\n".join(studio.warnings), elem_id="settings-status")

            # ---- Verify ---------------------------------------------------------------------------
            with gr.Tab("Verify", id="verify"):
                gr.Markdown(
                    "Check any video or picture: does it carry valid Content Credentials, what do they declare, "
                    "was it changed after signing, and does it carry a Wan Studio watermark?"
                )
                v_file = Upload(label="File to check", elem_id="verify-file")
                v_go = gr.Button("Verify", variant="primary", elem_id="verify-go")
                v_report = gr.Markdown(elem_id="verify-report")
                v_details = gr.JSON(label="Details")

        # ---- Queue: always visible, shows the running job after a reload ------------------------
        with gr.Accordion("Queue and activity", open=True):
            q_timer = gr.Timer(1.0)
            with gr.Row():  # only what exists: the preview and the picker appear with a job to show
                q_table = gr.Markdown("No jobs yet.", elem_id="queue-table")
                q_preview = gr.Image(label="Running job", interactive=False, height=200, format="png", visible=False,
                                     elem_id="queue-preview")  # fmt: skip
            with gr.Row(visible=False) as q_controls:  # any page can stop any job, whichever page started it
                q_pick = gr.Dropdown([], label="Running or queued job", scale=3, elem_id="queue-pick")
                q_cancel = gr.Button("Cancel this job", variant="stop", scale=1, elem_id="queue-cancel")
            q_note = gr.Markdown("", elem_id="queue-note")
            q_shown = gr.State([])  # the active job ids the picker holds, so a tick only redraws it on change

        # ---- wiring -------------------------------------------------------------------------------
        def default_negative():
            value, note = sett.negative_default(studio.settings)
            return gr.update(value=value, info=note)

        def toggle_fast(fast: bool, steps: float, guidance: float, kept: dict | None):
            steps, guidance, kept = gen.toggle_fast(studio, fast, steps, guidance, kept)
            return gr.update(**steps), gr.update(**guidance), kept

        def new_seed():
            return gr.update(value=-1, info=gen.seed_info())

        def frames_typed(frames):  # the raw number typed, before the page moves it into the model's range
            return gr.update(info=gen.frames_info(studio, frames))

        # The LoRA slots become the `loras` argument first, so the page and an API client call the same handler.
        # The page's events show a refusal or a failure as the form's status line (no error painted over every
        # output); the API's endpoints, on buttons the page never shows, raise it and stream plain text.
        # A long take has endpoints of its own (the clip endpoints' parameters, then the take's), so raw HTTP
        # callers of /text_to_video and /image_to_video keep sending the values they always sent.
        for form, api, in_page, inputs, take_api in (
            (t2v, gen.text_to_video, gen.text_to_video_in_page, t2v.generate_inputs, gen.long_take),
            (i2v, gen.image_to_video, gen.image_to_video_in_page,
             [i_image, *i2v.generate_inputs, i_match, i_end], gen.long_take_from_image),
        ):  # fmt: skip
            form.finished.append(form.go.click(gen.slots_to_loras, form.lora_inputs, form.loras_json,
                                               concurrency_limit=None, **PRIVATE).then(
                bind(in_page, studio), [*inputs, *form.take_inputs], form.outputs, concurrency_limit=None,
                show_progress="hidden", **PRIVATE,
            ))  # fmt: skip
            gr.Button(visible=False).click(
                bind(api, studio), inputs, form.outputs, api_name=api.__name__, concurrency_limit=None
            )
            gr.Button(visible=False).click(bind(take_api, studio), [*inputs, *form.take_inputs], form.outputs,
                                           api_name=take_api.__name__, concurrency_limit=None)  # fmt: skip
            form.negative_reset.click(shown_in_page(default_negative), None, form.negative, **PRIVATE)
            # .input, not .change: only the user's own click; Reuse sets the switch and the values together
            form.fast.input(shown_in_page(toggle_fast), [form.fast, form.steps, form.guidance, form.kept],
                            [form.steps, form.guidance, form.kept], **PRIVATE)  # fmt: skip
            form.new_seed.click(new_seed, None, form.seed, show_progress="hidden", **PRIVATE)
            # a long take can be stopped keeping its finished windows: the button shows while the form makes one
            for field in (form.take_prompts, form.take_seconds):
                field.change(lambda prompts, seconds: gr.update(visible=gen.is_take(prompts, seconds)),
                             [form.take_prompts, form.take_seconds], form.keep, show_progress="hidden",
                             **PRIVATE)  # fmt: skip
            form.seed.input(lambda: gr.update(info=gen.seed_info()), None, form.seed, show_progress="hidden",
                            **PRIVATE)  # fmt: skip
            # unprocessed: a stock slider refuses an out-of-range number before the handler could say what it became
            form.frames.input(shown_in_page(frames_typed), form.frames, form.frames, preprocess=False,
                              trigger_mode="always_last", show_progress="hidden", **PRIVATE)  # fmt: skip
        # Enhance: the prompt box gets the rewrite (image-to-video: the vision enhancer looks at the picture)
        t2v.enhance.click(bind(enh.enhance_in_page, studio), t2v.prompt, [t2v.prompt, t2v.status],
                          concurrency_limit=None, show_progress="hidden", **PRIVATE)  # fmt: skip
        i2v.enhance.click(bind(enh.enhance_in_page, studio), [i2v.prompt, i_image], [i2v.prompt, i2v.status],
                          concurrency_limit=None, show_progress="hidden", **PRIVATE)  # fmt: skip
        gr.Button(visible=False).click(
            bind(enh.enhance, studio),
            [gr.Textbox("", visible=False), gr.Image(None, visible=False, type="filepath"),
             gr.Checkbox(False, visible=False), gr.Number(-1, visible=False)],
            gr.Textbox(visible=False), api_name="enhance", concurrency_limit=None,
        )  # fmt: skip
        gr.Button(visible=False).click(
            bind(lib.search_library, studio),
            [gr.Textbox("", visible=False), gr.Textbox("", visible=False), gr.Textbox("", visible=False),
             gr.Number(20, visible=False)],
            gr.Textbox(visible=False), api_name="search_library", concurrency_limit=None,
        )  # fmt: skip
        t2v.cancel.click(bind(gen.cancel, studio), t2v.job, t2v.status, api_name="cancel", concurrency_limit=None)
        i2v.cancel.click(bind(gen.cancel, studio), i2v.job, i2v.status, concurrency_limit=None, **PRIVATE)
        t2v.keep.click(bind(gen.keep_windows, studio), t2v.job, t2v.status, api_name="keep_windows",
                       concurrency_limit=None)  # fmt: skip
        i2v.keep.click(bind(gen.keep_windows, studio), i2v.job, i2v.status, concurrency_limit=None, **PRIVATE)

        lora_pickers = [slot[0] for form in (t2v, i2v) for slot in form.lora_slots]

        def refresh_lora_choices(*picked):
            choices = lnk.lora_choices(studio, sett.lora_choices(studio))  # files, then pairs as one choice
            values = {value for _, value in choices}
            return (sett.lora_table(studio),
                    *(gr.update(choices=choices, value=v if v in values else None) for v in picked))  # fmt: skip

        def refresh_queue(picked: str | None, shown: list[str]):
            active = que.active(studio)
            ids = [job.id for job in active]
            if ids == shown:
                picker = controls = gr.skip()
            else:
                picker = gr.update(
                    choices=que.picker_choices(active), value=picked if picked in ids else (ids[0] if ids else None)
                )
                controls = gr.update(visible=bool(ids))
            text, preview = que.table(studio)
            return text, gr.update(value=preview, visible=preview is not None), picker, controls, ids

        for trigger in (q_timer.tick, demo.load):
            trigger(refresh_queue, [q_pick, q_shown], [q_table, q_preview, q_pick, q_controls, q_shown],
                    show_progress="hidden", **PRIVATE)  # fmt: skip

        # Each form remembers its last job in the browser (localStorage): after a reload it shows that job
        # again, running, queued or finished, and follows it to its end.
        for form in (t2v, i2v):
            remembered = gr.BrowserState("", storage_key=f"wan-studio-{form.task}-job")
            form.job.change(lambda job_id: job_id, form.job, remembered, **PRIVATE)
            form.finished.append(demo.load(bind(gen.resume, studio), remembered, form.outputs,
                                           show_progress="hidden", concurrency_limit=None, **PRIVATE))  # fmt: skip
        q_cancel.click(bind(gen.cancel, studio), q_pick, q_note, concurrency_limit=None, **PRIVATE)

        library_lists = [i_from_clip, board_tab.pick]  # the clip pickers outside the Library tab
        grid_inputs = [lib_search, lib_model, lib_task, lib_pick, lib_page]
        grid_outputs = [lib_grid, lib_names, lib_model, lib_pick, lib_page, lib_summary, lib_newer, lib_older,
                        lib_posters]  # fmt: skip
        grid_event = dict(show_progress="hidden", concurrency_limit=None, **PRIVATE)  # reads only: never waits

        def refresh_library():
            names = lib.clip_choices(studio)
            first = names[0][1] if names else None
            return tuple(gr.update(choices=names, value=first) for _ in library_lists)

        def refresh_grid(query: str, model: str, task: str, picked: str | None, page: int):
            # on screen at once, with placeholders where posters are still being made; the timer then redraws
            # the page (read afresh: the page, search and clips as they are then) until they are all there
            shown = lib.grid(studio, query, model, task, page)
            # the pick is only changed when it left the grid: a refresh started before the user picked another
            # clip must not take that pick back
            keep = picked if picked in shown.names else (shown.names[0] if shown.names else "")
            selected = shown.names.index(keep) if keep else None
            return (gr.update(value=shown.cells, selected_index=selected), shown.names,
                    gr.update(choices=lib.filters(studio)), gr.skip() if keep == picked else keep, shown.page,
                    shown.summary, gr.update(interactive=shown.page > 1),
                    gr.update(interactive=shown.page < shown.pages), gr.Timer(active=bool(shown.making)))  # fmt: skip

        def first_page():
            return 1

        def pick_cell(names: list[str], event: gr.SelectData):
            return (names[event.index], "") if 0 <= event.index < len(names) else (gr.skip(), gr.skip())

        def reuse(name: str | None):
            task, values, picture = lib.reuse(studio, name)
            form = i2v if task == IMAGE_TO_VIDEO else t2v
            loras, cache, match_colour = values.pop("loras"), values.pop("cache"), values.pop("match_colour")
            end_picture = values.pop("end_image")
            updates = {form.by_name[field]: value for field, value in values.items()}
            steps, guidance = gen.fast_controls(studio, values["fast"])  # locked while Fast mode is on
            updates[form.steps] = gr.update(**dict(steps, value=values["steps"]))
            updates[form.guidance] = gr.update(**dict(guidance, value=values["guidance_scale"]))
            updates[form.seed] = gr.update(value=values["seed"], info=gen.seed_info(values["seed"]))
            updates[form.frames] = gr.update(value=values["frames"], info=gen.frames_info(studio))
            updates[form.kept] = None  # unticking Fast mode now gives the model's own steps, not an older form's
            if len(loras) > len(form.lora_slots):
                gr.Warning(f"This clip used {len(loras)} LoRAs; the form holds {len(form.lora_slots)}, so only the "
                           "first ones are filled in. The API and the CLI take up to 8.")  # fmt: skip
            note = sett.use_cache(studio, cache)
            if note:
                gr.Info(note)
                updates[s_cache] = studio.settings.step_cache
                updates[s_cache_threshold] = _shown(studio.settings.cache_threshold)
            for n, (file, strength, high, low) in enumerate(form.lora_slots):
                lora = loras[n] if n < len(loras) else {}
                experts = lora.get("experts", "both")
                updates.update({file: lora.get("file"), strength: lora.get("strength", 1.0),
                                high: experts in ("both", "high"), low: experts in ("both", "low")})  # fmt: skip
            if picture:
                updates[i_image] = picture
            if task == IMAGE_TO_VIDEO:
                updates[i_match] = match_colour
                updates[i_end] = end_picture
            updates[tabs] = gr.Tabs(selected="i2v" if task == IMAGE_TO_VIDEO else "t2v")
            return updates

        def trash(name: str | None):
            return "", lib.trash(studio, name)  # the sentence stays: it says where the files went

        def use_last_frame(name: str | None):
            return lib.last_frame(studio, name), gr.Tabs(selected="i2v")

        demo.load(bind(board.reload, studio), None, [*board_tab.inputs, board_tab.base], **PRIVATE).then(
            bind(board.summarise, studio), board_tab.inputs, board_tab.summary, **PRIVATE
        )
        refresh_library, refresh_grid = shown_in_page(refresh_library), shown_in_page(refresh_grid)
        for trigger in (lib_refresh.click, demo.load):
            trigger(refresh_library, None, library_lists, **PRIVATE)
            trigger(refresh_grid, grid_inputs, grid_outputs, **grid_event)
        lib_posters.tick(refresh_grid, grid_inputs, grid_outputs, **grid_event)
        for trigger in (lib_search.change, lib_model.input, lib_task.input):
            trigger(first_page, None, lib_page, **grid_event).then(refresh_grid, grid_inputs, grid_outputs,
                                                                   **grid_event)  # fmt: skip
        for button, step in ((lib_newer, -1), (lib_older, 1)):
            button.click(lambda page, step=step: page + step, lib_page, lib_page, **grid_event).then(
                refresh_grid, grid_inputs, grid_outputs, **grid_event)  # fmt: skip
        # one event: the pick and the cleared status together (as two, a slow clear could land after a trash
        # that followed the pick and wipe out where the trashed clip went)
        lib_grid.select(pick_cell, lib_names, [lib_pick, lib_status], show_progress="hidden", **PRIVATE)
        lib_pick.change(bind(lib.show_clip, studio), lib_pick, [lib_video, lib_details, lib_info],
                        show_progress="hidden", **PRIVATE)  # fmt: skip
        # After a form's job has ended, not when its player changes: a change comes with the job's last streamed
        # update, and an event joined then can land just as the server closes the page's event stream (its
        # last event done), so the page never hears it end and the Library stays stale until the next event.
        for event in (*t2v.finished, *i2v.finished):
            event.then(refresh_library, None, library_lists, **PRIVATE)
            event.then(refresh_grid, grid_inputs, grid_outputs, **grid_event)
        all_form_controls = [*t2v.by_name.values(), *i2v.by_name.values(), *t2v.lora_inputs, *i2v.lora_inputs,
                             t2v.kept, i2v.kept, s_cache, s_cache_threshold, i_image, i_match, i_end,
                             tabs]  # fmt: skip
        lib_reuse.click(shown_in_page(reuse), lib_pick, all_form_controls, **PRIVATE)
        lib_continue.click(shown_in_page(use_last_frame), lib_pick, [i_image, tabs], **PRIVATE)
        lib_delete.click(shown_in_page(trash), lib_pick, [lib_pick, lib_status], **PRIVATE).success(
            refresh_grid, grid_inputs, grid_outputs, **grid_event
        ).then(refresh_library, None, library_lists, **PRIVATE)
        i_use_frame.click(shown_in_page(use_last_frame), i_from_clip, [i_image, tabs], **PRIVATE)

        settings_inputs = [
            s_model, s_profile, s_precision, s_output, s_steps, s_guidance, s_negative, s_watermark, s_include_prompt,
            s_attention, s_compile, s_vae_precision, s_confirm_output, s_lora_dir, s_cache, s_cache_threshold,
            s_enhancer, s_vision_enhancer, s_keep_language, s_enhance_cpu, s_take_limit, s_mcp,
        ]  # fmt: skip

        def save_settings(*values):
            status, note = sett.save(studio, *values)
            return status, note if note is not None else gr.skip()

        expert_boxes = [widget for form in (t2v, i2v) for slot in form.lora_slots for widget in slot[2:]]

        def forms_for_model(model: str):
            limits = sett.form_for_model(studio, model)
            if limits is None:
                return [gr.skip()] * len(model_dependent)
            frames = gr.update(minimum=limits["min_frames"], maximum=limits["max_frames"], value=limits["frames"],
                               label=f"Frames ({limits['fps']} fps)",
                               info=gen.frames_note(get_spec(model)))  # fmt: skip
            fast = gr.update(value=False, label=limits["fast_label"], interactive=limits["fast"])
            steps, guidance = (gr.update(**values) for values in gen.fast_controls(studio, False))
            negative = default_negative()
            return (gr.update(choices=limits["t2v_sizes"], value=limits["t2v_sizes"][0]), frames, fast, steps,
                    guidance, negative, gr.update(choices=limits["i2v_sizes"], value=gen.AUTO_SIZE), frames, fast,
                    steps, guidance, negative,
                    gr.update(visible=limits["end_frame"]), None, None,
                    *[gr.update(visible=limits["two_experts"]) for _ in expert_boxes])  # fmt: skip

        model_dependent = [t2v.size, t2v.frames, t2v.fast, t2v.steps, t2v.guidance, t2v.negative, i2v.size,
                           i2v.frames, i2v.fast, i2v.steps, i2v.guidance, i2v.negative, i_end_box, t2v.kept, i2v.kept,
                           *expert_boxes]  # fmt: skip
        s_save.click(shown_in_page(save_settings), settings_inputs, [s_status, model_note], **PRIVATE).then(
            shown_in_page(forms_for_model), s_model, model_dependent, **PRIVATE
        ).then(shown_in_page(refresh_lora_choices), lora_pickers, [s_lora_list, *lora_pickers], **PRIVATE)
        demo.load(shown_in_page(refresh_lora_choices), lora_pickers, [s_lora_list, *lora_pickers], **PRIVATE)

        def switch_to_test_model():
            notice, note = sett.use_test_model(studio)
            return (
                notice,
                note,
                gr.update(choices=model_choices(True), value=studio.settings.model),
                gr.update(visible=False),
            )

        use_test.click(shown_in_page(switch_to_test_model), None, [gpu_notice, model_note, s_model, use_test],
                       **PRIVATE).then(
            shown_in_page(forms_for_model), s_model, model_dependent, **PRIVATE
        ).then(shown_in_page(refresh_lora_choices), lora_pickers, [s_lora_list, *lora_pickers], **PRIVATE)  # fmt: skip

        def keep_lora(upload):
            return None, sett.add_lora(studio, upload)  # the box emptied either way, ready for the next file

        s_lora_keep.click(shown_in_page(keep_lora), s_lora_file, [s_lora_file, s_lora_status], **PRIVATE).then(
            shown_in_page(refresh_lora_choices), lora_pickers, [s_lora_list, *lora_pickers], **PRIVATE
        )
        v_go.click(bind(ver.verify, studio), v_file, [v_report, v_details], api_name="verify")

        # Upscale and Smooth motion: queued jobs the details panel follows; the new clip is then picked.
        post_outputs = [lib_post_preview, lib_post_status, lib_post_clip, lib_post_job, lib_post_seed]
        post_buttons = ((lib_up_go, pst.upscale_in_page, [lib_pick, lib_up_how, lib_upscaler]),
                        (lib_smooth_go, pst.interpolate_in_page, [lib_pick, lib_smooth_how]))  # fmt: skip
        for button, handler, inputs in post_buttons:
            button.click(bind(handler, studio), inputs, post_outputs, concurrency_limit=None, show_progress="hidden",
                         **PRIVATE).then(  # the new clip picked, on page 1 where the newest clip is
                lambda path: (Path(path).name, 1) if path else (gr.skip(), gr.skip()), lib_post_clip,
                [lib_pick, lib_page], **PRIVATE,
            ).then(refresh_grid, grid_inputs, grid_outputs, **grid_event).then(
                refresh_library, None, library_lists, **PRIVATE)  # fmt: skip
        # the API's parameters have defaults only where their hidden inputs hold a value
        for api, name in ((pst.upscale, "upscale"), (pst.interpolate, "interpolate")):
            hidden = [gr.Number(0, visible=False), gr.Number(0, visible=False), gr.Textbox("", visible=False)]
            gr.Button(visible=False).click(bind(api, studio), [lib_pick, *hidden], post_outputs, api_name=name,
                                           concurrency_limit=None)  # fmt: skip
        lib_post_cancel.click(bind(gen.cancel, studio), lib_post_job, lib_post_status, concurrency_limit=None,
                              **PRIVATE)  # fmt: skip

        def keep_upscaler(upload):
            status, choices = pst.add_upscaler(studio, upload)
            return None, status, gr.update(choices=choices)

        s_up_keep.click(shown_in_page(keep_upscaler), s_up_file, [s_up_file, s_up_status, lib_upscaler], **PRIVATE)

        # Add from a link: the download followed on the status line, then the pickers offer what was kept
        s_lora_fetch.click(bind(lnk.add_lora_link, studio), [s_lora_link, s_lora_link_low], s_lora_status,
                           show_progress="hidden", **PRIVATE).then(
            shown_in_page(refresh_lora_choices), lora_pickers, [s_lora_list, *lora_pickers], **PRIVATE)  # fmt: skip
        s_up_fetch.click(bind(lnk.add_upscaler_link, studio), s_up_link, s_up_status, show_progress="hidden",
                         **PRIVATE).then(
            lambda: gr.update(choices=pst.upscaler_choices(studio)), None, lib_upscaler, **PRIVATE)  # fmt: skip

        # Presets: a form's settings and LoRAs saved under a name; loading one fetches missing LoRAs by their links
        for form in (t2v, i2v):
            preset_values = [form.by_name[name] for name in SETTINGS]

            def save_preset(name, loras_json, *values):
                status, path = lnk.save(studio, name, loras_json, *values)
                return status, path, gr.update(choices=lnk.presets(studio), value=Path(path).stem)

            def load_preset(name, upload, form=form):
                loaded = lnk.load(studio, name, upload)
                updates = {form.by_name[key]: value for key, value in loaded["settings"].items()
                           if key in form.by_name and value is not None}  # fmt: skip
                loras = lnk.as_slots(studio, loaded["loras"])
                for n, (file, strength, high, low) in enumerate(form.lora_slots):
                    lora = loras[n] if n < len(loras) else {}
                    experts = lora.get("experts", "both")
                    updates.update({file: gr.update(choices=lnk.lora_choices(studio, sett.lora_choices(studio)),
                                                    value=lora.get("file")),
                                    strength: lora.get("strength", 1.0), high: experts in ("both", "high"),
                                    low: experts in ("both", "low")})  # fmt: skip
                left = len(loras) - len(form.lora_slots)
                updates[form.preset_status] = f"Loaded the preset '{loaded['name']}'." + (
                    f" {left} of its LoRAs did not fit the form's {len(form.lora_slots)} slots: the API and the "
                    "CLI take up to 8." if left > 0 else "")  # fmt: skip
                return updates

            form.preset_save.click(gen.slots_to_loras, form.lora_inputs, form.loras_json, **PRIVATE).then(
                shown_in_page(save_preset), [form.preset_name, form.loras_json, *preset_values],
                [form.preset_status, form.preset_file, form.preset_pick], **PRIVATE)  # fmt: skip
            # a preset picked by name is the one to load, not a file saved or dropped earlier
            form.preset_pick.input(lambda: None, None, form.preset_file, **PRIVATE)
            form.preset_load.click(
                shown_in_page(load_preset), [form.preset_pick, form.preset_file],
                [*form.by_name.values(), *form.lora_inputs, form.preset_status], **PRIVATE)  # fmt: skip

    return demo
