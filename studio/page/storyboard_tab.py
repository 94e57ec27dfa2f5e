"""The Storyboard tab's layout: a strip of shots (poster frames) with an editor for the picked one (trim
with the frames at the in and out points, transition, move, remove), a title card, audio, export options,
a quick preview, "extend the last shot", and the `/assemble` API endpoint. The handlers live in
studio/page/handlers/storyboard.py."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import gradio as gr

from studio.errors import shown_in_page
from studio.page.handlers import bind
from studio.page.handlers import storyboard as h

if TYPE_CHECKING:
    from studio.core import Studio


@dataclass
class StoryboardTab:
    pick: gr.Dropdown  # the library picker, refreshed with the other library lists
    summary: gr.Markdown
    inputs: list  # the controls in handlers.storyboard's VALUES order
    base: gr.State  # the saved storyboard this page last loaded or saved (JSON)


def build_storyboard_tab(studio: Studio) -> StoryboardTab:
    saved = h.values_of(studio, studio.library.storyboard.load())

    gr.Markdown(
        "Build a film from library clips: add shots, pick one in the strip to trim it or choose how it joins the "
        "next, move it left or right. The storyboard is saved in the output folder and reopens after a restart."
    )
    with gr.Row(equal_height=True):
        pick = gr.Dropdown([], label="Library clip", scale=3, elem_id="storyboard-pick")
        add = gr.Button("Add shot", scale=1, elem_id="storyboard-add")
    table = gr.State(saved[0])  # the shots as rows: clip, start_s, end_s, transition, crossfade_s
    picked = gr.State(None)  # the index of the shot in the editor
    shots = gr.Gallery(
        h.strip(studio, saved[0]), label="Shots, in order", columns=6, height=240, fit_columns=False,
        object_fit="cover", allow_preview=False, buttons=[], interactive=False, elem_id="storyboard-strip",
    )  # fmt: skip
    with gr.Group(visible=False, elem_id="storyboard-editor") as editor:
        shot_title = gr.Markdown(elem_id="storyboard-shot-title")
        with gr.Row():
            in_frame = gr.Image(label="In point", interactive=False, height=160, format="png", buttons=[],
                                elem_id="storyboard-in-frame")  # fmt: skip
            out_frame = gr.Image(label="Out point", interactive=False, height=160, format="png", buttons=[],
                                 elem_id="storyboard-out-frame")  # fmt: skip
        with gr.Row():
            start = gr.Slider(0, 1, value=0, step=0.05, label="In (s)", elem_id="storyboard-in")
            end = gr.Slider(0, 1, value=1, step=0.05, label="Out (s)", elem_id="storyboard-out")
        with gr.Row(equal_height=True):
            transition = gr.Dropdown([("Cut", "cut"), ("Crossfade", "crossfade")], value="cut",
                                     label="Into the next shot", elem_id="storyboard-transition")  # fmt: skip
            crossfade = gr.Slider(0.1, 3, value=0.5, step=0.1, label="Crossfade (s)", elem_id="storyboard-crossfade")
        with gr.Row():
            left = gr.Button("◀ Move left", elem_id="storyboard-left")
            right = gr.Button("Move right ▶", elem_id="storyboard-right")
            remove = gr.Button("Remove shot", variant="stop", elem_id="storyboard-remove")
    with gr.Row():
        title = gr.Textbox(value=saved[1], label="Title card (empty: none)", max_length=120)
        title_colour = gr.ColorPicker(value=saved[2], label="Card colour")
        title_s = gr.Slider(0.5, 10, value=saved[3], step=0.5, label="Card seconds")
    with gr.Row():
        audio = gr.Audio(value=saved[4], type="filepath", sources=["upload"], label="Audio track")
        fade = gr.Slider(0, 5, value=saved[5], step=0.25, label="Audio fade in/out (s)")
    with gr.Row():
        fmt = gr.Radio(
            ["mp4", "webm", "gif"], value=saved[6], label="Format",
            info="MP4 and GIF are signed with Content Credentials; WebM cannot carry them.",
        )  # fmt: skip
        fps = gr.Dropdown(h.FPS_CHOICES, value=saved[7], label="Frame rate")
        slow = gr.Checkbox(value=saved[8], label="2x slow motion")
        size = gr.Textbox(value=saved[9], label="Size WxH (empty: first shot's)")
    with gr.Row():
        upscale = gr.Dropdown(
            [("none", "none"), ("1080p", "1080p"), ("4K (2160p)", "4k")], value=saved[10], label="Upscale to",
            info="The default learned upscaler, after the cut; MP4 and WebM.", elem_id="storyboard-upscale",
        )  # fmt: skip
        interpolation = gr.Radio(
            [("Learned (RIFE)", "learned"), ("ffmpeg minterpolate", "ffmpeg")], value=saved[11],
            label="Frame-rate changes and slow motion",
            info="Learned interpolation keeps fast motion sharp; ffmpeg's is the fallback when no model is there.",
            elem_id="storyboard-interpolation",
        )  # fmt: skip
    summary = gr.Markdown(elem_id="storyboard-summary")
    with gr.Row():
        save = gr.Button("Save storyboard", elem_id="storyboard-save")
        quick = gr.Button("Preview (quick, low resolution)", elem_id="storyboard-preview")
        export = gr.Button("Export film", variant="primary", elem_id="storyboard-export")
    quick_film = gr.Video(label="Quick preview of the film (low resolution)", interactive=False, height=240,
                          visible=False, elem_id="storyboard-preview-video")  # fmt: skip
    film_status = gr.Markdown(elem_id="storyboard-film-status")
    film_video = gr.Video(label="Film", interactive=False, elem_id="storyboard-film", height=360)
    film_file = gr.File(label="Download", interactive=False)
    with gr.Accordion("Extend the last shot", open=True):
        gr.Markdown(
            "Generates the next shot from the frame at the Out point of the storyboard's last shot (its last "
            "frame when it is not trimmed), image-to-video at the same size, and appends it when done, even if "
            "you close the page. Repeat for a long take."
        )
        ext_prompt = gr.Textbox(label="What happens next", elem_id="extend-prompt")
        extend = gr.Button("Extend", elem_id="extend-go")
        ext_status = gr.Markdown()
        ext_preview = gr.Image(label="Next shot, live while it is made", interactive=False, format="png", height=180)
        ext_hidden = [gr.Textbox(visible=False), gr.Textbox(visible=False), gr.Number(visible=False)]
    api_json = gr.Textbox(visible=False)
    api_button = gr.Button(visible=False)
    api_film = gr.File(visible=False)
    base = gr.State("")

    inputs = [table, title, title_colour, title_s, audio, fade, fmt, fps, slow, size, upscale, interpolation]
    private = dict(api_visibility="private")
    quiet = dict(show_progress="hidden", **private)

    def show_shot(rows, index):
        if index is None or not rows:
            return gr.update(visible=False), *([gr.skip()] * 7)
        view = h.shot_view(studio, rows, index)
        return (
            gr.update(visible=True),
            f"**{view['title']}**",
            view["in_frame"],
            view["out_frame"],
            gr.update(maximum=round(view["length"], 2), value=round(view["start"], 2)),
            gr.update(maximum=round(view["length"], 2), value=round(view["end"], 2)),
            gr.update(value=view["transition"], interactive=not view["last"]),
            gr.update(value=view["crossfade"], visible=view["transition"] == "crossfade" and not view["last"]),
        )

    def pick_shot(event: gr.SelectData):
        return event.index

    view_outputs = [editor, shot_title, in_frame, out_frame, start, end, transition, crossfade]
    show = shown_in_page(show_shot)
    add.click(bind(h.add_shot, studio), [pick, table], [table, picked], **private)
    shots.select(pick_shot, None, picked, **quiet)
    picked.change(show, [table, picked], view_outputs, **quiet)

    def redraw_strip(rows, index):
        return gr.update(value=h.strip(studio, rows), selected_index=index)

    table.change(shown_in_page(redraw_strip), [table, picked], shots, **quiet).then(
        show, [table, picked], view_outputs, **quiet
    )
    # .input: the user's own changes (dragging or typing), coalesced to the latest while one is handled
    latest = dict(trigger_mode="always_last", **quiet)
    for slider in (start, end):
        slider.input(bind(h.trim, studio), [table, picked, start, end], table, **latest)
    transition.input(bind(h.join, studio), [table, picked, transition, crossfade], table, **quiet)
    crossfade.input(bind(h.join, studio), [table, picked, transition, crossfade], table, **latest)
    for button, handler in ((left, h.move_left), (right, h.move_right), (remove, h.remove)):
        button.click(bind(handler, studio), [table, picked], [table, picked], **quiet)
    quick.click(lambda: gr.update(visible=True), None, quick_film, **quiet).then(
        bind(h.preview, studio), inputs, quick_film, **private
    )
    for component in inputs:
        component.change(bind(h.summarise, studio), inputs, summary, show_progress="hidden", **private)
    save.click(bind(h.save, studio), [base, *inputs], [summary, table, base], **private)
    export.click(
        bind(h.export, studio), [base, *inputs], [film_status, film_video, film_file, table, base], **private
    )  # fmt: skip
    extend.click(
        bind(h.extend_last, studio), [base, ext_prompt, *inputs], [ext_preview, ext_status, *ext_hidden], **private
    ).then(bind(h.reload, studio), None, [*inputs, base], **private)
    api_button.click(bind(h.assemble, studio), api_json, api_film, api_name="assemble")
    return StoryboardTab(pick=pick, summary=summary, inputs=inputs, base=base)
