"""The Settings tab: save (a page action, not an API), and the forms' sizes and frames for the new model."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pipelines import attention, caching
from pipelines.catalogue import IMAGE_TO_VIDEO, TEXT_TO_VIDEO, ModelSpec, UnknownModelError, get_spec
from pipelines.enhance import ENHANCERS
from studio.page.handlers import AUTO_SIZE
from studio.settings import Settings, SettingsError

if TYPE_CHECKING:
    from studio.core import Studio


def save(
    studio: Studio, model: str, profile: str, precision: str, output_dir: str, steps: Any, guidance: Any,
    negative: str, watermark: bool = False, include_prompt: bool = False, attention_backend: str = attention.AUTO,
    compile_blocks: bool = False, vae_precision: str = "float32", confirm_output_dir: bool = False,
    lora_dir: str = "", step_cache: str = "off", cache_threshold: Any = "", enhancer: str | None = None,
    vision_enhancer: str | None = None, keep_language: bool = False, enhance_on_cpu: bool = False,
    take_limit: Any = None, mcp_server: bool = False,
) -> tuple[str, str | None]:  # fmt: skip
    """(status line, new model note or None). Nothing is saved when a value is refused; moving the output
    folder needs `confirm_output_dir` (it takes effect at the next start, and that folder is then served)."""
    try:
        candidate = Settings(
            model=model, memory_profile=profile, precision=precision, output_dir=(output_dir or "").strip(),
            steps=optional_number(steps, "Default steps", whole=True),
            guidance_scale=optional_number(guidance, "Default guidance"),
            negative_prompt=negative or None, watermark=bool(watermark), include_prompt=bool(include_prompt),
            attention=attention_backend or attention.AUTO, compile=bool(compile_blocks),
            vae_precision=vae_precision or "float32", lora_dir=(lora_dir or "").strip(),
            step_cache=step_cache or "off", cache_threshold=optional_number(cache_threshold, "The cache threshold"),
            enhancer=enhancer or studio.settings.enhancer,
            vision_enhancer=vision_enhancer or studio.settings.vision_enhancer,
            enhance_keep_language=bool(keep_language), enhance_on_cpu=bool(enhance_on_cpu),
            take_limit_s=optional_number(take_limit, "The long-take limit") or studio.settings.take_limit_s,
            mcp_server=bool(mcp_server),
        )  # fmt: skip
        candidate.validate()
        caching.check(candidate.step_cache, candidate.cache_threshold, candidate.model)  # MagCache: calibrated?
        candidate.speed.check(studio.manager.device)  # an attention backend this machine can run
        moved = Path(candidate.output_dir).expanduser().resolve() != studio.output_dir
        if moved and not confirm_output_dir:
            raise SettingsError(
                f"The output folder would change to '{candidate.output_dir}' (at the next start; its files are then "
                f"served by the studio). Tick 'Use this output folder' to confirm."
            )
        mcp_changed = candidate.mcp_server != studio.settings.mcp_server
        path = studio.keep_settings(candidate)
    except (SettingsError, attention.AttentionUnavailableError, caching.CacheError) as err:
        return f"**Not saved:** {err}", None
    spec = get_spec(candidate.model)
    after = " The output folder changes at the next start." if moved else ""
    if mcp_changed:
        after += f" The MCP server {'starts' if candidate.mcp_server else 'stops'} at the next start."
    return f"Saved to `{path}`.{after}", f"Model: **{spec.label}** — {spec.description}"


def optional_number(value: Any, what: str, whole: bool = False) -> float | int | None:
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


def form_for_model(studio: Studio, model: str) -> dict[str, Any] | None:
    """Sizes and frame limits of both forms for `model`; None when it is unknown (nothing changes)."""
    try:
        spec = get_spec(model)
    except (UnknownModelError, TypeError):
        return None
    return {
        "t2v_sizes": size_choices(spec.id, TEXT_TO_VIDEO), "i2v_sizes": size_choices(spec.id, IMAGE_TO_VIDEO),
        "min_frames": spec.min_frames, "max_frames": spec.max_frames, "frames": spec.frames, "fps": spec.fps,
        "fast": spec.fast is not None, "fast_label": fast_label(spec), "two_experts": spec.two_experts,
        "end_frame": spec.end_frame,
    }  # fmt: skip


def fast_label(spec: ModelSpec) -> str:
    """The Fast mode switch's label: what it runs for this model, or that it has none."""
    return f"Fast mode: {spec.fast.label}" if spec.fast else "Fast mode (none published for this model)"


def size_choices(spec_id: str, task: str) -> list[str]:
    sizes = [f"{w}x{h}" for w, h in get_spec(spec_id).sizes]
    return [AUTO_SIZE, *sizes] if task == IMAGE_TO_VIDEO else sizes


def use_cache(studio: Studio, record: Any) -> str | None:
    """Set the studio's step cache to the one a reused clip was made with, and say so; None when it already
    is. A cache this model cannot use now (MagCache before calibration) is left as it is, with the reason."""
    kind = record.get("kind", "off") if isinstance(record, dict) else "off"
    threshold = record.get("threshold") if isinstance(record, dict) and kind != "off" else None
    current = studio.settings
    try:
        now = caching.check(current.step_cache, current.cache_threshold, current.model)
    except caching.CacheError:
        now = None
    if now is not None and now.kind == kind and (kind == "off" or now.threshold == threshold):
        return None
    candidate = replace(current, step_cache=kind, cache_threshold=threshold)
    try:
        candidate.validate()
        caching.check(kind, threshold, candidate.model)
        studio.keep_settings(candidate)
    except (SettingsError, caching.CacheError) as err:
        return f"The step cache stays as it is: {err}"
    shown = "off" if kind == "off" else f"{kind}, threshold {threshold}"
    return f"Step cache set to {shown} in Settings, as this clip was made."


def lora_choices(studio: Studio) -> list[str]:
    """The file names of the LoRAs in the LoRA folder made for the current model, for the forms' pickers (the
    Settings list says what the others were made for)."""
    width = get_spec(studio.settings.model).transformer_width
    return [e.name for e in studio.loras.entries() if e.info is not None and (not width or e.info.width == width)]


def lora_table(studio: Studio) -> str:
    """The LoRA folder as a Markdown list: each file, what it was made for, or why it cannot be used."""
    entries = studio.loras.entries()
    if not entries:
        return f"No LoRAs yet. Upload one here or put `.safetensors` files in `{studio.loras.root}`."
    lines = [f"LoRAs in `{studio.loras.root}`:", ""]
    lines += [f"- {_escaped(entry.label)}" for entry in entries]
    return "\n".join(lines)


def keep_lora(studio: Studio, upload: Any) -> str:
    """Check an uploaded file and keep it in the LoRA folder; the sentence that says what happened."""
    if not upload:
        return "Choose a `.safetensors` LoRA file first."
    path = Path(upload if isinstance(upload, (str, Path)) else getattr(upload, "name", ""))  # a path, or a file
    name = studio.loras.keep(path)  # LoraError / LibraryError with the reason
    return f"Kept '{name}' in the LoRA folder: pick it in the LoRAs section of either form."


def add_lora(studio: Studio, upload: Any) -> str:
    """`keep_lora` for the page: a refusal is the status line's sentence, not an error painted on the upload box
    (which would hide its upload button until cleared)."""
    from pipelines.errors import UserError

    try:
        return keep_lora(studio, upload)
    except UserError as err:
        return f"**Not added:** {err}"


def _escaped(text: str) -> str:
    return "".join("\\" + c if c in "\\`*_[]<>#|" else c for c in text)


def gpu_notice(studio: Studio) -> str:
    """What the top of the page says about the GPU: nothing when there is one."""
    if studio.has_gpu:
        return ""
    if get_spec(studio.settings.model).is_test:
        return ("**No CUDA GPU on this machine: you are using the test model.** Its clips are noise made in "
                "seconds, and every part of the studio works with them. The Wan models need an NVIDIA GPU: "
                "Wan2.2 TI2V-5B makes 720P on a 24 GB card.")  # fmt: skip
    return ("**No CUDA GPU was found on this machine.** The Wan models need an NVIDIA GPU (Wan2.2 TI2V-5B makes "
            "720P on a 24 GB card; on a CPU a clip would take hours and tens of GB of RAM). You can still try "
            "every part of the studio with the built-in test model: random weights, noise for clips, seconds "
            "each.")  # fmt: skip


def use_test_model(studio: Studio) -> tuple[str, str]:
    """Switch to the built-in test model (saved like a choice in Settings); (notice, model note)."""
    from pipelines.catalogue import TEST_TINY

    studio.keep_settings(replace(studio.settings, model=TEST_TINY).validate())
    spec = get_spec(TEST_TINY)
    return gpu_notice(studio), f"Model: **{spec.label}** — {spec.description}"


def negative_default(settings: Settings) -> tuple[str, str]:
    """(the negative prompt a form starts with, the note under it): the saved default, else the model's own,
    with an English gloss when that is Wan's Chinese one."""
    from pipelines.catalogue import WAN_NEGATIVE_PROMPT, WAN_NEGATIVE_PROMPT_GLOSS

    spec = get_spec(settings.model)
    if settings.negative_prompt:
        return settings.negative_prompt, "Your default from Settings."
    if spec.negative_prompt == WAN_NEGATIVE_PROMPT:
        return spec.negative_prompt, (
            "The model's own default, in Chinese as Wan was trained. It says: " + WAN_NEGATIVE_PROMPT_GLOSS + "."
        )
    return spec.negative_prompt, "The model's own default."


def enhancer_choices(kind: str) -> list[tuple[str, str]]:
    """(label, id) of the prompt enhancers of a kind ("text" or "vision"), with their size and licence."""
    return [(f"{s.name} ({s.size_gb:g} GB; {s.licence})" if not s.is_test else s.name, s.id)
            for s in ENHANCERS.values() if s.kind == kind]  # fmt: skip
