from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from pipelines.catalogue import CATALOGUE, DEFAULT_MODEL, IMAGE_TO_VIDEO, TEXT_TO_VIDEO, get_spec
from pipelines.images import MAX_IMAGE_PIXELS, closest_size, load_image
from pipelines.request import MAX_PROMPT_CHARS, MAX_SEED, GenerationRequest, RequestError, validate_request

TINY = "test-tiny"


def problems(**fields) -> dict[str, str]:
    fields.setdefault("prompt", "a red cat")
    fields.setdefault("model", TINY)
    with pytest.raises(RequestError) as info:
        validate_request(GenerationRequest(**fields), default_model=TINY)
    return info.value.problems


def png_bytes(width: int, height: int, mode: str = "RGB", color=(200, 30, 30)) -> bytes:
    buf = io.BytesIO()
    Image.new(mode, (width, height), color).save(buf, format="PNG")
    return buf.getvalue()


def test_defaults_come_from_the_catalogue():
    valid = validate_request(GenerationRequest(prompt="  a red cat  ", model=TINY, seed=7), default_model=TINY)
    spec = CATALOGUE[TINY]
    assert (valid.width, valid.height) == spec.default_size
    assert (valid.frames, valid.fps, valid.steps) == (spec.frames, spec.fps, spec.steps)
    assert valid.negative_prompt == spec.negative_prompt
    assert valid.prompt == "a red cat" and valid.seed == 7 and valid.task == TEXT_TO_VIDEO


def test_real_catalogue_defaults_match_the_wan_configs():
    five_b = CATALOGUE[DEFAULT_MODEL]
    assert DEFAULT_MODEL == "Wan-AI/Wan2.2-TI2V-5B-Diffusers"
    assert (five_b.default_size, five_b.frames, five_b.fps, five_b.size_multiple) == ((1280, 704), 121, 24, 32)
    t2v = CATALOGUE["Wan-AI/Wan2.2-T2V-A14B-Diffusers"]
    assert (t2v.frames, t2v.fps, t2v.guidance_scale, t2v.guidance_scale_2) == (81, 16, 3.0, 4.0)
    assert CATALOGUE["Wan-AI/Wan2.2-I2V-A14B-Diffusers"].tasks == (IMAGE_TO_VIDEO,)
    assert CATALOGUE["test-tiny"].label.endswith("[TEST MODEL, random weights]")


def test_random_seed_is_drawn_and_reported():
    seeds = {validate_request(GenerationRequest(prompt="x", model=TINY), TINY).seed for _ in range(5)}
    assert len(seeds) > 1 and all(0 <= s <= MAX_SEED for s in seeds)
    assert validate_request(GenerationRequest(prompt="x", model=TINY, seed=-1), TINY).seed >= 0


@pytest.mark.parametrize(
    "fields, field, fragment",
    [
        ({"prompt": "   "}, "prompt", "Write a prompt"),
        ({"prompt": "x" * (MAX_PROMPT_CHARS + 1)}, "prompt", f"keep it under {MAX_PROMPT_CHARS}"),
        ({"width": 100, "height": 64}, "size", "multiples of 32 px; width 100 is not (nearest: 96 or 128)"),
        ({"width": 96}, "size", "Give both width and height"),
        ({"width": 1024, "height": 64}, "size", "between 32 and 256 px"),
        ({"frames": 10}, "frames", "4n+1 (like 9); 10 is not. Nearest: 9 or 13"),
        ({"frames": 1}, "frames", "makes 5 to 33 frames"),
        ({"steps": 0}, "steps", "from 1 to 100"),
        ({"steps": 2.5}, "steps", "whole number"),
        ({"guidance_scale": -1.0}, "guidance_scale", "from 0 to 20"),
        ({"guidance_scale_2": 3.0}, "guidance_scale_2", "has one expert"),
        ({"seed": 2**40}, "seed", "from 0 to 4294967295"),
        ({"task": "i2v"}, "image", "needs a picture"),
        ({"task": "t2v", "image": png_bytes(64, 64)}, "image", "takes no picture"),
    ],
)
def test_each_rule_names_its_field_with_a_readable_message(fields, field, fragment):
    found = problems(**fields)
    assert field in found, found
    assert fragment in found[field]


def test_all_problems_are_reported_together():
    found = problems(prompt="", frames=10, steps=500)
    assert set(found) == {"prompt", "frames", "steps"}


def test_unknown_model_and_unsupported_task():
    assert "Unknown model 'nope'" in problems(model="nope")["model"]
    message = problems(model="Wan-AI/Wan2.2-T2V-A14B-Diffusers", task="i2v", image=png_bytes(64, 64))["task"]
    assert "does not do image-to-video" in message and "Wan-AI/Wan2.2-I2V-A14B-Diffusers" in message


def test_local_folder_is_a_model(tmp_path):
    from pipelines.testmodels import ensure_test_model

    spec = get_spec(str(ensure_test_model(TINY)))
    assert spec.local_path and spec.size_multiple == 32 and IMAGE_TO_VIDEO in spec.tasks


@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "WEBP", "BMP", "GIF", "TIFF"])
def test_common_formats_load_as_rgb(tmp_path, fmt):
    path = tmp_path / f"pic.{fmt.lower()}"
    Image.new("RGB", (120, 80), (10, 200, 30)).save(path, format=fmt)
    image = load_image(path)
    assert image.mode == "RGB" and image.size == (120, 80)


def test_transparency_is_put_on_white_and_exif_rotation_applied(tmp_path):
    rgba = load_image(png_bytes(40, 40, mode="RGBA", color=(0, 0, 0, 0)))
    assert rgba.getpixel((5, 5)) == (255, 255, 255)
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to view"
    path = tmp_path / "rotated.jpg"
    Image.new("RGB", (120, 60), (0, 0, 255)).save(path, exif=exif)
    assert load_image(path).size == (60, 120)


@pytest.mark.parametrize(
    "data, fragment",
    [
        (b"not a picture at all", "could not be read"),
        (png_bytes(64, 64)[:60], "could not be read"),
        (b"", "empty"),
        (png_bytes(8, 8), "at least 16 px"),
    ],
)
def test_bad_pictures_are_refused_clearly(data, fragment):
    found = problems(image=data)
    assert fragment in found["image"]


def test_huge_picture_is_refused_before_decoding(tmp_path):
    side = int((MAX_IMAGE_PIXELS * 1.2) ** 0.5)
    path = tmp_path / "huge.png"
    Image.new("L", (side, side)).save(path, optimize=False)
    from PIL import ImageFile

    def decoded(self, *args, **kwargs):
        raise AssertionError("the pixels were decoded")

    with pytest.MonkeyPatch.context() as patch:  # only the header may be read
        patch.setattr(ImageFile.ImageFile, "load", decoded)
        assert "megapixels" in problems(image=path)["image"]
    assert "does not exist" in problems(image=tmp_path / "missing.png")["image"]


def test_image_to_video_picks_the_closest_preset_and_fits_by_cover_crop():
    # a wide picture gets the landscape preset; cover-crop keeps the centre column's colour
    picture = np.zeros((100, 300, 3), np.uint8)
    picture[:, 100:200] = (255, 0, 0)
    valid = validate_request(GenerationRequest(prompt="x", model=TINY, image=picture), TINY)
    assert valid.task == IMAGE_TO_VIDEO and (valid.width, valid.height) == (96, 64)
    assert valid.image.size == (96, 64)
    assert valid.image.getpixel((48, 32)) == (255, 0, 0)
    assert closest_size((300, 1000), CATALOGUE[TINY].sizes) == (64, 96)
