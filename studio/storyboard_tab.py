"""The Storyboard tab: shots in order with trims and transitions, a title card, audio, export options,
"extend the last shot", and the `/assemble` API endpoint (storyboard JSON in, film out)."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import gradio as gr
import pandas as pd

from pipelines.catalogue import IMAGE_TO_VIDEO, image_to_video_model_for
from pipelines.request import GenerationRequest
from studio import film, history
from studio.watch import submit, watch

if TYPE_CHECKING:
    from studio.server import Studio

SHOT_HEADERS = ["clip", "start_s", "end_s", "transition", "crossfade_s"]
FPS_CHOICES = ["source", "16", "24", "30"]


@dataclass
class StoryboardTab:
    pick: gr.Dropdown  # the library picker, refreshed with the other library lists
    summary: gr.Markdown
    inputs: list
    summarise: Callable[..., str]  # run at page load too
    reload: Callable[[], tuple]  # the saved storyboard for every input, at page load


def board_to_rows(board: film.Storyboard) -> pd.DataFrame:
    rows = [[s.clip, s.start_s, s.end_s, s.transition, s.crossfade_s] for s in board.shots]
    return pd.DataFrame(rows, columns=SHOT_HEADERS)


def rows_to_shots(rows: Any) -> list[film.Shot]:
    """Table rows (a DataFrame or lists) to shots; a bad cell names its row."""
    values = rows.values.tolist() if hasattr(rows, "values") else list(rows or [])
    shots = []
    for n, row in enumerate(values, start=1):
        row = list(row) + [""] * (5 - len(row))
        clip, start, end, transition, crossfade = row[:5]
        if not str(clip or "").strip():
            continue  # an empty row the table added
        try:
            shots.append(
                film.Shot(
                    clip=str(clip).strip(),
                    start_s=float(start or 0),
                    end_s=None if end in ("", None) or pd.isna(end) else float(end),
                    transition=str(transition or "cut").strip().lower(),
                    crossfade_s=float(crossfade or 0.5),
                )
            )
        except ValueError:
            raise gr.Error(f"Row {n}: start, end and crossfade are seconds (numbers).") from None
    return shots


def build_storyboard_tab(studio: Studio) -> StoryboardTab:
    out = studio.output_dir
    try:
        saved = film.load_storyboard(out)
    except (ValueError, film.StoryboardError):
        saved = film.Storyboard()

    gr.Markdown(
        "Pick clips from the library, trim them (seconds), and choose how each shot joins the next "
        "(`cut` or `crossfade`). The storyboard is saved in the output folder and reopens after a restart."
    )
    with gr.Row():
        pick = gr.Dropdown([], label="Library clip", scale=3)
        add = gr.Button("Add shot", scale=1, elem_id="storyboard-add")
    table = gr.Dataframe(
        value=board_to_rows(saved), headers=SHOT_HEADERS, datatype=["str", "number", "number", "str", "number"],
        column_count=5, interactive=True, show_row_numbers=True, label="Shots (end_s empty: to the clip's end)",
        elem_id="storyboard-table",
    )  # fmt: skip
    with gr.Row():
        row = gr.Number(value=1, precision=0, label="Row", min_width=80)
        up = gr.Button("Move up")
        down = gr.Button("Move down")
        remove = gr.Button("Remove")
    with gr.Row():
        title = gr.Textbox(value=saved.title or "", label="Title card (empty: none)")
        title_colour = gr.ColorPicker(value=saved.title_colour, label="Card colour")
        title_s = gr.Slider(0.5, 10, value=saved.title_s, step=0.5, label="Card seconds")
    with gr.Row():
        audio = gr.Audio(value=saved.audio, type="filepath", sources=["upload"], label="Audio track")
        fade = gr.Slider(0, 5, value=saved.audio_fade_s, step=0.25, label="Audio fade in/out (s)")
    with gr.Row():
        fmt = gr.Radio(
            ["mp4", "webm", "gif"], value=saved.format, label="Format",
            info="MP4 and GIF are signed with Content Credentials; WebM cannot carry them.",
        )  # fmt: skip
        fps = gr.Dropdown(FPS_CHOICES, value=str(int(saved.fps)) if saved.fps else "source", label="Frame rate")
        slow = gr.Checkbox(value=saved.slow_motion, label="2x slow motion")
        size = gr.Textbox(
            value="x".join(map(str, saved.size)) if saved.size else "", label="Size WxH (empty: first shot's)"
        )
    summary = gr.Markdown(elem_id="storyboard-summary")
    with gr.Row():
        save = gr.Button("Save storyboard")
        export = gr.Button("Export film", variant="primary", elem_id="storyboard-export")
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

    inputs = [table, title, title_colour, title_s, audio, fade, fmt, fps, slow, size]

    def board_from(rows, title_, colour, card_s, audio_path, fade_s, format_, fps_, slow_, size_) -> film.Storyboard:
        board = film.Storyboard(
            shots=rows_to_shots(rows), title=(title_ or "").strip() or None, title_colour=colour or "#101828",
            title_s=float(card_s), audio=_keep_audio(out, audio_path), audio_fade_s=float(fade_s), format=format_,
            fps=None if fps_ in (None, "", "source") else float(fps_), slow_motion=bool(slow_),
            size=_parse_size(size_),
        )  # fmt: skip
        return board

    def summarise(*values) -> str:
        try:
            board = board_from(*values)
            seconds = film.film_duration(board, out)
        except (gr.Error, film.StoryboardError) as err:
            return f"**Not ready:** {getattr(err, 'message', None) or err}"
        count = len(board.shots)
        return f"**Film: {count} shot{'' if count == 1 else 's'}, {seconds:.1f} s**"

    def add_shot(name: str | None, rows):
        if not name:
            raise gr.Error("Pick a clip from the library first.")
        shots = rows_to_shots(rows) + [film.Shot(clip=name)]
        return board_to_rows(film.Storyboard(shots=shots))

    def move(rows, index: float | None, delta: int):
        shots = rows_to_shots(rows)
        i = int(index or 0) - 1
        if not 0 <= i < len(shots):
            raise gr.Error(f"Row must be from 1 to {len(shots)}.")
        if delta == 0:
            shots.pop(i)
            return board_to_rows(film.Storyboard(shots=shots)), max(1, i)
        j = min(max(i + delta, 0), len(shots) - 1)
        shots[i], shots[j] = shots[j], shots[i]
        return board_to_rows(film.Storyboard(shots=shots)), j + 1

    def save_board(*values) -> str:
        path = film.save_storyboard(board_from(*values), out)
        return f"Saved to `{path.name}`. " + summarise(*values)

    def export_board(*values, progress=gr.Progress()):  # noqa: B008 (Gradio fills it in)
        board = board_from(*values)
        film.save_storyboard(board, out)
        path = _export(board, progress)
        return (str(path) if board.format != "gif" else None), str(path)

    def assemble(storyboard: str, progress=gr.Progress()):  # noqa: B008
        try:
            board = film.Storyboard.from_json(json.loads(storyboard or "{}"))
        except json.JSONDecodeError as err:
            raise gr.Error(f"The storyboard is not valid JSON: {err}") from None
        except film.StoryboardError as err:
            raise gr.Error(str(err)) from None
        return str(_export(board, progress))

    def _export(board: film.Storyboard, progress) -> Path:
        try:
            path = film.export_film(board, out, on_progress=lambda f, m: progress(f, desc=m))
        except film.StoryboardError as err:
            raise gr.Error(str(err)) from None
        record = json.loads(path.with_suffix(path.suffix + ".json").read_text())
        if not record.get("provenance", {}).get("signed"):
            gr.Warning(f"The film is not signed: {record.get('provenance', {}).get('signing_error')}")
        return path

    async def extend_last(prompt: str, *values):
        board = board_from(*values)
        if not board.shots:
            raise gr.Error("Add a shot first: the extension starts from the last shot's last frame.")
        film.save_storyboard(board, out)
        clip = history.find_clip(out, board.shots[-1].clip)
        if clip is None:
            raise gr.Error(f"The last shot's clip '{board.shots[-1].clip}' is not in the library.")
        s = clip.settings
        model = image_to_video_model_for(clip.sidecar.get("model") or studio.settings.model)
        request = GenerationRequest(
            prompt=prompt, model=model.id, task=IMAGE_TO_VIDEO, negative_prompt=s.get("negative_prompt"),
            width=s.get("width"), height=s.get("height"), frames=s.get("frames"), steps=s.get("steps"),
            guidance_scale=s.get("guidance_scale"), image=history.last_frame(clip.video),
        )  # fmt: skip
        job = submit(studio, request, extra={"append_to_storyboard": True})
        async for preview, status, done_clip, job_id, seed in watch(studio, job):
            yield preview, status, done_clip, job_id, seed

    def reload_rows():
        return board_to_rows(film.load_storyboard(out))

    def reload_all():
        """The saved storyboard into every control: a reopened page shows what was saved, not what the
        page held when the server started."""
        try:
            board = film.load_storyboard(out)
        except (ValueError, film.StoryboardError):
            board = film.Storyboard()
        return (
            board_to_rows(board), board.title or "", board.title_colour, board.title_s, board.audio,
            board.audio_fade_s, board.format, str(int(board.fps)) if board.fps else "source", board.slow_motion,
            "x".join(map(str, board.size)) if board.size else "",
        )  # fmt: skip

    add.click(add_shot, [pick, table], table, api_visibility="private")
    up.click(lambda r, i: move(r, i, -1), [table, row], [table, row], api_visibility="private")
    down.click(lambda r, i: move(r, i, 1), [table, row], [table, row], api_visibility="private")
    remove.click(lambda r, i: move(r, i, 0), [table, row], [table, row], api_visibility="private")
    for component in inputs:
        component.change(summarise, inputs, summary, api_visibility="private", show_progress="hidden")
    save.click(save_board, inputs, summary, api_visibility="private")
    export.click(export_board, inputs, [film_video, film_file], api_visibility="private")
    extend.click(
        extend_last, [ext_prompt, *inputs], [ext_preview, ext_status, *ext_hidden], api_visibility="private"
    ).then(reload_rows, None, table, api_visibility="private")
    api_button.click(assemble, api_json, api_film, api_name="assemble")
    return StoryboardTab(pick=pick, summary=summary, inputs=inputs, summarise=summarise, reload=reload_all)


def _parse_size(text: str | None) -> tuple[int, int] | None:
    if not text or not text.strip():
        return None
    try:
        width, height = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise gr.Error(f"Size must look like 1280x704; got '{text}'.") from None
    return width, height


def _keep_audio(output_dir: Path, path: str | None) -> str | None:
    """Uploaded audio lives in Gradio's cache; keep a copy beside the storyboard so it reopens later."""
    if not path:
        return None
    source = Path(path)
    kept = output_dir / "audio"
    if source.parent == kept:
        return str(source)
    kept.mkdir(parents=True, exist_ok=True)
    target = kept / source.name
    if not target.exists():
        shutil.copy2(source, target)
    return str(target)
