"""Start and end frames: image-to-video that ends on a given picture, where the model takes one (diffusers'
WanImageToVideoPipeline with the A14B layout), refused by name where it would be ignored (TI2V-5B)."""

from __future__ import annotations

import json
import threading

import numpy as np
import pytest
import torch
from PIL import Image

from library.clips import read_sidecar, save_clip
from pipelines.catalogue import CATALOGUE
from pipelines.request import GenerationRequest, RequestError, ValidRequest, validate_request

I2V_A14B = "test-tiny-i2v-a14b"
START = np.full((48, 64, 3), 40, np.uint8)
END = np.full((48, 64, 3), 220, np.uint8)


def request(model: str = I2V_A14B, **fields) -> ValidRequest:
    fields.setdefault("image", START)
    return validate_request(
        GenerationRequest(prompt="a door opens", model=model, steps=2, seed=5, match_colour=False, **fields),
        default_model=model,
    )


def test_the_catalogue_says_which_models_take_an_end_frame():
    assert CATALOGUE["Wan-AI/Wan2.2-I2V-A14B-Diffusers"].end_frame
    assert not CATALOGUE["Wan-AI/Wan2.2-TI2V-5B-Diffusers"].end_frame  # expand_timesteps: diffusers ignores it


def test_an_end_frame_is_refused_where_the_pipeline_would_ignore_it():
    with pytest.raises(RequestError) as err:
        request(model="test-tiny", end_image=END)
    assert "cannot end on a given frame" in err.value.problems["end_image"]
    with pytest.raises(RequestError) as err:
        validate_request(GenerationRequest(prompt="a", model="test-tiny", end_image=END), default_model="test-tiny")
    assert "An end frame goes with image-to-video" in err.value.problems["end_image"]
    with pytest.raises(RequestError) as err:
        request(end_image=b"not a picture")
    assert err.value.problems["end_image"].startswith("The end frame: ")


def test_the_end_frame_reaches_the_pipeline_and_is_kept_with_the_clip(manager, tmp_path):
    plain = manager.generate(request()).frames  # loads the model
    pipe = manager._loaded.pipe
    seen = {}
    real = pipe.prepare_latents

    def spy(*args, **kwargs):
        seen["last_image"] = kwargs.get("last_image", args[10] if len(args) > 10 else None)
        return real(*args, **kwargs)

    pipe.prepare_latents = spy
    try:
        result = manager.generate(request(end_image=END))
    finally:
        del pipe.prepare_latents
    last = seen["last_image"]
    assert isinstance(last, torch.Tensor) and last.shape[-2:] == (48, 64)
    assert torch.allclose(last, torch.full_like(last, 220 / 127.5 - 1), atol=1e-3)  # the end picture, as given
    assert not np.array_equal(result.frames, plain)  # and it conditions the clip

    files = save_clip(result, tmp_path)
    assert files.end_image is not None and files.end_image.name.endswith(".end.png")
    assert np.array_equal(np.asarray(Image.open(files.end_image)), END)
    sidecar = read_sidecar(files.video)
    assert sidecar["end_image"] == files.end_image.name and sidecar["settings"]["end_frame"] is True


def test_colour_matching_keeps_the_way_from_the_start_picture_to_the_end_picture(manager):
    """Colour matching (on by default for image-to-video) pulled every frame to the start picture's colours,
    so a clip asked to end on a bright picture was brought back to the dark start."""
    asked = GenerationRequest(prompt="a door opens", model=I2V_A14B, steps=2, seed=5, image=START, end_image=END)
    valid = validate_request(asked, default_model=I2V_A14B)
    assert valid.match_colour  # the default
    matched = manager.generate(valid).frames
    means = matched.reshape(matched.shape[0], -1).mean(axis=1)
    assert abs(means[0] - START.mean()) < 8 and abs(means[-1] - END.mean()) < 8, means
    assert np.all(np.diff(means) > 0)  # and steadily from one to the other


def test_a_queued_job_keeps_its_end_frame_across_a_restart(tmp_path):
    from library import Library
    from pipelines.manager import PipelineManager
    from studio.jobs.queue import JobQueue

    library = Library.open(tmp_path / "outputs")
    hold = threading.Event()
    queue = JobQueue(PipelineManager(offline=True), library, generate=lambda *args, **kwargs: hold.wait(30))
    job = queue.submit(request(end_image=END))
    record = json.loads((library.jobs_dir / f"{job.id}.json").read_text())
    assert record["end_image"] == f"{job.id}.end.png"
    again = JobQueue(PipelineManager(offline=True), library, generate=lambda *a, **k: hold.wait(30)).get(job.id)
    hold.set()
    assert np.array_equal(np.asarray(again.request.end_image), END)
    assert again.request.settings() == job.request.settings()
