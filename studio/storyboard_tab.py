"""The Storyboard tab's layout: shots with trims and transitions, a title card, audio, export options,
"extend the last shot", and the `/assemble` API endpoint. The handlers live in studio/handlers/storyboard.py."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import gradio as gr

from studio.handlers import bind
from studio.handlers import storyboard as h

if TYPE_CHECKING:
    from studio.server import Studio


@dataclass
class StoryboardTab:
    pick: gr.Dropdown  # the library picker, refreshed with the other library lists
    summary: gr.Markdown
    inputs: list  # the controls in handlers.storyboard's VALUES order
    base: gr.State  # the saved storyboard this page last loaded or saved (JSON)


def build_storyboard_tab(studio: Studio) -> StoryboardTab:
    saved = h.values_of(studio, studio.library.storyboard.load())

    gr.Markdown(
        "Pick clips from the library, trim them (seconds), and choose how each shot joins the next "
        "(`cut` or `crossfade`). The storyboard is saved in the output folder and reopens after a restart."
    )
    with gr.Row():
        pick = gr.Dropdown([], label="Library clip", scale=3)
        add = gr.Button("Add shot", scale=1, elem_id="storyboard-add")
    table = gr.Dataframe(
        value=saved[0], headers=h.SHOT_HEADERS, datatype=["str", "number", "number", "str", "number"],
        column_count=5, interactive=True, show_row_numbers=True, label="Shots (end_s empty: to the clip's end)",
        elem_id="storyboard-table",
    )  # fmt: skip
    with gr.Row():
        row = gr.Number(value=1, precision=0, label="Row", min_width=80)
        up = gr.Button("Move up")
        down = gr.Button("Move down")
        remove = gr.Button("Remove")
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
    summary = gr.Markdown(elem_id="storyboard-summary")
    with gr.Row():
        save = gr.Button("Save storyboard")
        export = gr.Button("Export film", variant="primary", elem_id="storyboard-export")
    film_status = gr.Markdown(elem_id="storyboard-film-status")
    film_video = gr.Video(label="Film", interactive=False, elem_id="storyboard-film", height=360)
    film_file = gr.File(label="Download", interactive=False)
    with gr.Accordion("Extend the last shot", open=True):
        gr.Markdown(
            "Generates the next shot from the last frame of the storyboard's last shot (image-to-video, same "
            "size), and appends it when done, even if you close the page. Repeat for a long take."
        )
        ext_prompt = gr.Textbox(label="What happens next", elem_id="extend-prompt")
        extend = gr.Button("Extend", elem_id="extend-go")
        ext_status = gr.Markdown()
        ext_preview = gr.Image(label="Preview", interactive=False, format="png", height=180)
        ext_hidden = [gr.Textbox(visible=False), gr.Textbox(visible=False), gr.Number(visible=False)]
    api_json = gr.Textbox(visible=False)
    api_button = gr.Button(visible=False)
    api_film = gr.File(visible=False)
    base = gr.State("")

    inputs = [table, title, title_colour, title_s, audio, fade, fmt, fps, slow, size]
    private = dict(api_visibility="private")
    add.click(bind(h.add_shot, studio), [pick, table], table, **private)
    up.click(bind(h.move_up, studio), [table, row], [table, row], **private)
    down.click(bind(h.move_down, studio), [table, row], [table, row], **private)
    remove.click(bind(h.remove_row, studio), [table, row], [table, row], **private)
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
