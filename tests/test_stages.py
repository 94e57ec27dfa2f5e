"""The manager's own stages against the diffusers code they replace: prompt encoding (real tokens only,
cached), the VAE decode with uint8 conversion on the device, and bf16 decode's distance from float32."""

from __future__ import annotations

import numpy as np
import torch

from pipelines.decode import decode_latents, video_to_uint8
from pipelines.manager import PipelineManager
from pipelines.prompts import CACHE_SIZE, PromptEncoder
from pipelines.request import GenerationRequest, validate_request
from pipelines.speed import SpeedOptions

TINY = "test-tiny"
PROMPT = "a red cat walks in the rain at night, slow camera pan"


def valid(**fields):
    fields.setdefault("prompt", PROMPT)
    fields.setdefault("model", TINY)
    fields.setdefault("seed", 3)
    return validate_request(GenerationRequest(**fields), default_model=TINY)


def plain_call(pipe, request, **extra):
    return pipe(
        prompt=request.prompt, negative_prompt=request.negative_prompt, height=request.height, width=request.width,
        num_frames=request.frames, num_inference_steps=request.steps, guidance_scale=request.guidance_scale,
        generator=torch.Generator("cpu").manual_seed(request.seed), **extra,
    )  # fmt: skip


def test_prompt_embeddings_match_the_pipelines_padded_encoding_and_are_kept(manager):
    manager.generate(valid())
    pipe = manager.pipeline
    expected, negative = pipe.encode_prompt(PROMPT, "blurry", True, max_sequence_length=512, device=torch.device("cpu"))
    encoder = PromptEncoder(pipe.tokenizer, pipe.text_encoder)
    ours = encoder.embeddings(PROMPT, torch.device("cpu"), expected.dtype)
    assert ours.shape == expected.shape == (1, 512, 32)
    assert torch.allclose(ours, expected, atol=1e-5)  # the padding never changed the real tokens' states
    assert torch.allclose(encoder.embeddings("blurry", torch.device("cpu"), expected.dtype), negative, atol=1e-5)
    assert encoder.encoder_calls == 2
    encoder.embeddings(PROMPT, torch.device("cpu"), expected.dtype)
    assert encoder.encoder_calls == 2  # seen before: the encoder does not run
    for n in range(CACHE_SIZE):
        encoder.embeddings(f"prompt number {n}", torch.device("cpu"), expected.dtype)
    encoder.embeddings(PROMPT, torch.device("cpu"), expected.dtype)
    assert encoder.encoder_calls == 2 + CACHE_SIZE + 1  # the cache is bounded: the oldest went


def test_decode_on_the_device_gives_the_pipelines_own_frames(manager):
    request = valid(frames=13)
    manager.generate(request)
    pipe = manager.pipeline
    latents = plain_call(pipe, request, output_type="latent").frames
    # what the pipeline does with output_type="np", and the float->uint8 conversion the studio used to do
    z = latents.to(pipe.vae.dtype)
    std = 1.0 / torch.tensor(pipe.vae.config.latents_std).view(1, -1, 1, 1, 1)
    mean = torch.tensor(pipe.vae.config.latents_mean).view(1, -1, 1, 1, 1)
    with torch.no_grad():
        video = pipe.vae.decode(z / std + mean, return_dict=False)[0]
        floats = pipe.video_processor.postprocess_video(video, output_type="np")[0]
    expected = (floats * 255.0).round().clip(0, 255).astype(np.uint8)

    frames = video_to_uint8(decode_latents(pipe.vae, latents))
    assert frames.dtype == torch.uint8 and frames.shape == (13, 64, 96, 3)
    assert np.array_equal(frames.numpy(), expected)


def test_a_whole_run_matches_a_plain_diffusers_call(manager):
    request = valid(frames=13)
    ours = manager.generate(request).frames
    output = plain_call(manager.pipeline, request, output_type="np").frames[0]
    plain = (np.asarray(output) * 255.0).round().clip(0, 255).astype(np.uint8)
    difference = np.abs(ours.astype(int) - plain.astype(int))
    # the only change is the prompt's padding, which moves float32 embeddings by ~1e-6
    assert difference.max() <= 1 and difference.mean() < 0.01


def test_bf16_vae_decode_stays_close_to_float32():
    request = valid(frames=13)
    manager = PipelineManager(offline=True)
    full = manager.generate(request).frames
    manager.speed = SpeedOptions(vae_precision="bfloat16")
    half = manager.generate(request)
    assert manager.loads == 1  # a speed option: nothing reloaded
    difference = np.abs(full.astype(int) - half.frames.astype(int))
    # measured on this random-weight VAE: mean 0.31, max 3 levels of 255 (full-size figures: docs/PERFORMANCE.md)
    assert 0 < difference.mean() < 1.0 and difference.max() <= 8
    manager.speed = SpeedOptions()
    assert np.array_equal(manager.generate(request).frames, full)  # and back to float32 exactly
