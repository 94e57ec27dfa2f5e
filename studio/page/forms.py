"""The generation form shared by the Text to video and Image to video tabs, and the request it makes."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import gradio as gr

from library.presets import preset_names
from pipelines.catalogue import ModelSpec
from studio.page.handlers.generate import frames_note, overlap_note, seed_info
from studio.page.handlers.settings import fast_label, negative_default, size_choices
from studio.page.widgets import Number, Slider
from studio.settings import Settings

LORA_SLOTS = 4

EXAMPLE_PROMPTS = [
    "A red fox trots through fresh snow at sunrise, breath steaming, low tracking shot",
    "Time-lapse of clouds rolling over a mountain lake, reflections on calm water",
    "A paper boat drifts down a rain-soaked city gutter, neon reflections, macro lens",
    "A teacher draws a glowing diagram of the solar system on a chalkboard, planets start to orbit",
]


@dataclass
class GenerationForm:
    task: str
    prompt: gr.Textbox
    negative: gr.Textbox
    size: gr.Dropdown
    frames: gr.Slider
    steps: gr.Slider
    guidance: gr.Slider
    seed: gr.Number
    go: gr.Button
    cancel: gr.Button
    status: gr.Markdown
    preview: gr.Image
    video: gr.Video
    seed_used: gr.Number
    job: gr.Textbox
    fast: gr.Checkbox
    lora_slots: list  # [(file dropdown, strength slider, high-noise checkbox, low-noise checkbox)] * LORA_SLOTS
    loras_json: gr.Textbox  # hidden: the slots as the API's `loras` argument
    negative_reset: gr.Button
    new_seed: gr.Button  # ⚄ (a die in common fonts): a new seed per clip again, after Reuse put a clip's in
    kept: gr.State  # the steps and guidance the user had when ticking Fast mode, given back when unticking
    finished: list = field(default_factory=list)  # the events that stream a job to this form: what ends with it
    enhance: gr.Button | None = None  # rewrites the prompt with the prompt enhancer
    take_prompts: gr.Textbox | None = None  # a long take: one prompt per window, one per line
    take_seconds: gr.Number | None = None  # a long take's length (0: one window per prompt)
    take_overlap: gr.Number | None = None  # frames each window continues from (0: the model's own)
    keep: gr.Button | None = None  # stops a long take and keeps its finished windows as a clip
    preset_pick: gr.Dropdown | None = None  # the saved presets
    preset_name: gr.Textbox | None = None
    preset_save: gr.Button | None = None
    preset_load: gr.Button | None = None
    preset_file: gr.File | None = None  # the saved preset to download, or a preset file to load
    preset_status: gr.Markdown | None = None

    @property
    def lora_inputs(self) -> list:
        return [widget for slot in self.lora_slots for widget in slot]

    @property
    def generate_inputs(self) -> list:
        """The generate event's inputs (its API parameters) after the request's controls."""
        return [*self.settings_inputs, self.loras_json, self.fast]

    @property
    def take_inputs(self) -> list:
        """The long-take controls, the generate handlers' last parameters."""
        return [self.take_prompts, self.take_seconds, self.take_overlap]

    @property
    def settings_inputs(self) -> list:
        """The controls of a request, in the order of the generate handlers' parameters."""
        return [self.prompt, self.negative, self.size, self.frames, self.steps, self.guidance, self.seed]

    @property
    def by_name(self) -> dict[str, Any]:
        """The controls by the name of the setting they hold (what `reuse_values` fills in)."""
        return {
            "prompt": self.prompt, "negative_prompt": self.negative, "size": self.size, "frames": self.frames,
            "steps": self.steps, "guidance_scale": self.guidance, "seed": self.seed, "fast": self.fast,
            "window_prompts": self.take_prompts, "take_seconds": self.take_seconds, "take_overlap": self.take_overlap,
        }  # fmt: skip

    @property
    def outputs(self) -> list:
        """What a generation stream updates: (preview, status, clip, job id, seed)."""
        return [self.preview, self.status, self.video, self.job, self.seed_used]


def build_form(
    task: str, spec: ModelSpec, settings: Settings, placeholder: str, above_prompt: Callable[[], Any] | None = None
) -> tuple[GenerationForm, Any]:
    """Lay out one tab's form; `above_prompt` adds widgets (the start picture) above the prompt."""
    sizes = size_choices(spec.id, task)
    with gr.Row():
        with gr.Column(scale=1, min_width=300):
            extra = above_prompt() if above_prompt else None
            prompt = gr.Textbox(label="Prompt", lines=3, placeholder=placeholder, elem_id=f"{task}-prompt")
            # a local language model rewrites the prompt in the detailed style the Wan models were trained on
            enhance = gr.Button("Enhance the prompt (then edit it)", size="sm", elem_id=f"{task}-enhance")
            if above_prompt is None:
                gr.Examples(EXAMPLE_PROMPTS, inputs=prompt, label="Examples")
            negative_value, negative_note = negative_default(settings)
            negative = gr.Textbox(
                label="Negative prompt (what to avoid)", lines=2, value=negative_value, info=negative_note,
                elem_id=f"{task}-negative",
            )  # fmt: skip
            negative_reset = gr.Button(
                "Reset to the default negative prompt", size="sm", elem_id=f"{task}-negative-reset"
            )
            with gr.Row():
                size = gr.Dropdown(sizes, value=sizes[0], label="Size", allow_custom_value=True, elem_id=f"{task}-size")
                frames = Slider(
                    spec.min_frames, spec.max_frames, value=spec.frames, step=spec.frame_step,
                    label=f"Frames ({spec.fps} fps)", info=frames_note(spec), elem_id=f"{task}-frames",
                )  # fmt: skip
            with gr.Row():
                steps = Slider(
                    1, 100, value=settings.steps or spec.steps, step=1, label="Steps", elem_id=f"{task}-steps"
                )
                guidance = Slider(
                    0, 20, value=settings.guidance_scale or spec.guidance_scale, step=0.5, label="Guidance",
                    elem_id=f"{task}-guidance",
                )  # fmt: skip
            with gr.Row(equal_height=True):
                seed = Number(value=-1, precision=0, label="Seed (-1 = random)", info=seed_info(), scale=4,
                              elem_id=f"{task}-seed")  # fmt: skip
                new_seed = gr.Button("⚄ New seed", scale=1, min_width=110, elem_id=f"{task}-new-seed")
            fast = gr.Checkbox(
                value=False, label=fast_label(spec),
                interactive=spec.fast is not None, elem_id=f"{task}-fast",
                info="Step-distilled weights with their authors' settings (steps, no CFG): about 10-20x faster.",
            )  # fmt: skip
            with gr.Accordion("LoRAs (styles and fine-tunes)", open=False):
                gr.Markdown(
                    "The LoRAs of the LoRA folder made for this model (add them in Settings). On the A14B models "
                    "each LoRA goes to the high-noise expert (early steps: motion, layout), the low-noise one "
                    "(late steps: detail), or both."
                )
                slots = []
                for n in range(LORA_SLOTS):
                    with gr.Row():
                        slots.append((
                            gr.Dropdown([], value=None, label=f"LoRA {n + 1}", scale=3, elem_id=f"{task}-lora-{n}"),
                            Slider(-2, 2, value=1.0, step=0.05, label="Strength", scale=2),
                            gr.Checkbox(value=True, label="High-noise", scale=1, min_width=100,
                                        visible=spec.two_experts),
                            gr.Checkbox(value=True, label="Low-noise", scale=1, min_width=100,
                                        visible=spec.two_experts),
                        ))  # fmt: skip
                loras_json = gr.Textbox(value="[]", visible=False, label="loras")
            with gr.Accordion("Presets (settings and LoRAs, to reuse or share)", open=False,
                              elem_id=f"{task}-presets"):  # fmt: skip
                with gr.Row():
                    preset_pick = gr.Dropdown(preset_names(), value=None, label="Preset", scale=2,
                                              elem_id=f"{task}-preset-pick")  # fmt: skip
                    preset_load = gr.Button("Load", scale=1, elem_id=f"{task}-preset-load")
                with gr.Row():
                    preset_name = gr.Textbox(label="Save this form as", scale=2, elem_id=f"{task}-preset-name")
                    preset_save = gr.Button("Save", scale=1, elem_id=f"{task}-preset-save")
                preset_file = gr.File(label="The preset file: download it to share, or drop one here to load it",
                                      file_types=[".json"], elem_id=f"{task}-preset-file")  # fmt: skip
                preset_status = gr.Markdown("", elem_id=f"{task}-preset-status")
            with gr.Accordion("Long take (one clip of several windows)", open=False, elem_id=f"{task}-take"):
                gr.Markdown(
                    "One clip longer than a model's clip, made as windows of *Frames* each: every window continues "
                    "from the last frames of the one before, so motion carries across the joint. Give a length, a "
                    "prompt per window, or both (then the last prompt holds to the end)."
                )
                take_prompts = gr.Textbox(
                    label="Window prompts, one per line (window 1 first; empty: the Prompt above for every window)",
                    value="", lines=3, elem_id=f"{task}-take-prompts",
                )  # fmt: skip
                with gr.Row():
                    take_seconds = Number(value=0, minimum=0, label="Length in seconds (0: one window per line)",
                                          elem_id=f"{task}-take-seconds")  # fmt: skip
                    take_overlap = Number(value=0, minimum=0, precision=0, elem_id=f"{task}-take-overlap",
                                          label="Overlap in frames (0: the model's own)",
                                          info=overlap_note(spec))  # fmt: skip
            with gr.Row():
                go = gr.Button("Generate", variant="primary", elem_id=f"{task}-generate")
                cancel = gr.Button("Cancel", variant="stop", elem_id=f"{task}-cancel")
                keep = gr.Button("Stop, keep the finished windows", visible=False, elem_id=f"{task}-keep")
            status = gr.Markdown("Ready.", elem_id=f"{task}-status")  # under the button: where the eye is
        with gr.Column(scale=1, min_width=300):
            preview = gr.Image(label="Live preview", interactive=False, elem_id=f"{task}-preview", format="png")
            video = gr.Video(label="Clip", interactive=False, elem_id=f"{task}-video")
            seed_used = gr.Number(None, label="Seed used", precision=0, interactive=False, elem_id=f"{task}-seed-used")
            job = gr.Textbox(visible=False, label="Job id")
    form = GenerationForm(
        task, prompt, negative, size, frames, steps, guidance, seed, go, cancel, status, preview, video, seed_used, job,
        fast, slots, loras_json, negative_reset, new_seed, gr.State(None), enhance=enhance, take_prompts=take_prompts,
        take_seconds=take_seconds, take_overlap=take_overlap, keep=keep, preset_pick=preset_pick,
        preset_name=preset_name, preset_save=preset_save, preset_load=preset_load, preset_file=preset_file,
        preset_status=preset_status,
    )  # fmt: skip
    return form, extra
