"""Long takes (pipelines/long_take.py): the plan, and takes run window by window through the manager with the
test models, checked where the frames enter the model."""

from __future__ import annotations

import threading

import numpy as np
import pytest
import torch

from pipelines import manager as manager_module
from pipelines.catalogue import CATALOGUE, get_spec
from pipelines.long_take import (
    CLEAN_LATENTS,
    LATENT_REPLACEMENT,
    MASK_CHANNELS,
    PICTURE,
    PROMPT,
    START_IMAGE,
    TakeError,
    continuation_for,
    crossfade,
    plan_take,
    run_take,
    window_seed,
)
from pipelines.manager import GenerationCancelled
from pipelines.request import GenerationRequest, validate_request

PROMPTS = ["a cat walks in the city", "a dog runs on the sea", "rain and snow at night"]
START = np.full((64, 96, 3), 70, np.uint8)
START[:, 48:] = 180  # two halves, so the colour statistics have a spread


def request(model: str, **fields):
    fields.setdefault("steps", 2)
    return validate_request(GenerationRequest(prompt=PROMPTS[0], model=model, seed=11, **fields), default_model=model)


def encoded(pipe, frames: np.ndarray) -> torch.Tensor:
    """The VAE's normalised latents of `frames` (K, H, W, 3) uint8 as a clip, computed here with the public API."""
    video = torch.from_numpy(frames).permute(3, 0, 1, 2)[None].float() / 127.5 - 1.0
    vae = pipe.vae
    with torch.no_grad():
        latents = vae.encode(video.to(vae.dtype)).latent_dist.mode()
    mean = torch.tensor(vae.config.latents_mean).view(1, -1, 1, 1, 1)
    std = torch.tensor(vae.config.latents_std).view(1, -1, 1, 1, 1)
    return (latents.float() - mean) / std


@pytest.fixture
def spy(manager, monkeypatch):
    """What each window's pipeline call was given, the first transformer input of each call (step 1, the
    conditional pass: where the frames enter the model), and each window's own frames as the manager made them."""
    from diffusers import WanImageToVideoPipeline, WanPipeline

    seen = {"calls": [], "frames": [], "pipes": []}
    for cls in (WanPipeline, WanImageToVideoPipeline):

        def call(self, *args, _real=cls.__call__, **kwargs):
            record = {"kwargs": kwargs, "input": None}
            seen["calls"].append(record)
            seen["pipes"].append(self)

            def first_input(module, args, kw):
                if record["input"] is None:
                    record["input"] = {k: kw[k].detach().clone() for k in ("hidden_states", "timestep")}

            models = [m for m in (self.transformer, getattr(self, "transformer_2", None)) if m is not None]
            handles = [m.register_forward_pre_hook(first_input, with_kwargs=True) for m in models]
            try:
                return _real(self, *args, **kwargs)
            finally:
                for handle in handles:
                    handle.remove()

        monkeypatch.setattr(cls, "__call__", call)
    generate = manager.generate

    def spied_generate(*args, **kwargs):
        result = generate(*args, **kwargs)
        seen["frames"].append(result.frames.copy())  # before the take blends into them
        return result

    monkeypatch.setattr(manager, "generate", spied_generate)
    return seen


# ---- the plan ------------------------------------------------------------------------------------------
def test_a_plan_has_the_documented_frame_count_and_windows():
    spec = get_spec("test-tiny")
    plan = plan_take(spec, PROMPTS, windows=3, frames_per_window=17, overlap=5)
    assert plan.total_frames == 3 * 17 - 2 * 5 == 41
    assert [plan.start_of(i) for i in range(3)] == [0, 12, 24]
    assert plan.prompts == tuple(PROMPTS)

    fewer = plan_take(spec, PROMPTS[:2], windows=3, frames_per_window=17, overlap=5)
    assert fewer.prompts == (PROMPTS[0], PROMPTS[1], PROMPTS[1])  # the last prompt holds for the rest
    assert plan_take(spec, "one for all", windows=2).prompts == ("one for all",) * 2

    # In seconds: whole windows, then the shortest last window that reaches the length
    by_time = plan_take(spec, "a", seconds=10)  # 80 frames at 8 fps; 9-frame windows, overlap capped at 1
    assert by_time.overlap == 1 and 80 <= by_time.total_frames < 84
    assert set(by_time.window_frames[:-1]) == {9} and by_time.window_frames[-1] <= 9

    real = get_spec("Wan-AI/Wan2.2-TI2V-5B-Diffusers")
    minute = plan_take(real, "a", seconds=60)
    assert minute.overlap == 9 and 59.8 <= minute.duration_s <= 60.0  # never past the limit
    assert minute.windows == 13 and minute.frames_per_window == 121
    assert plan_take(real, "a", seconds=300, limit_s=300).duration_s <= 300


def test_the_plan_refuses_a_too_long_take_and_too_many_prompts_by_name():
    real = get_spec("Wan-AI/Wan2.2-TI2V-5B-Diffusers")
    with pytest.raises(TakeError) as err:
        plan_take(real, "a", seconds=61)
    assert err.value.field == "limit" and "at most 60 s" in str(err.value)
    with pytest.raises(TakeError) as err:
        plan_take(real, "a", windows=20)  # 2249 frames, 93.7 s
    assert err.value.field == "limit" and "93.7 s" in str(err.value)
    assert plan_take(real, "a", windows=20, limit_s=120).windows == 20  # a raised limit
    with pytest.raises(TakeError) as err:
        plan_take(real, "a", seconds=10, limit_s=301)
    assert err.value.field == "limit" and "300" in str(err.value)
    with pytest.raises(TakeError) as err:  # under a second: a window would be shorter than the model's least
        plan_take(real, "a", seconds=0.1, limit_s=0.1)
    assert err.value.field == "limit"

    with pytest.raises(TakeError) as err:
        plan_take(get_spec("test-tiny"), [*PROMPTS, "one more"], windows=3, frames_per_window=17)
    assert err.value.field == "prompts" and "4 prompts for a take of 3 windows" in str(err.value)
    with pytest.raises(TakeError) as err:
        plan_take(get_spec("test-tiny"), ["a", " "], windows=2)
    assert err.value.field == "prompts" and "Prompt 2 is empty" in str(err.value)
    for overlap in (3, 0, 9):  # not 4n+1; none; more than half of a 17-frame window
        with pytest.raises(TakeError) as err:
            plan_take(get_spec("test-tiny"), "a", windows=2, frames_per_window=17, overlap=overlap)
        assert err.value.field == "overlap"


def test_each_catalogue_model_has_its_documented_continuation():
    def choice(model):
        c = continuation_for(CATALOGUE[model])
        return c.model, c.method, c.default_overlap

    assert choice("Wan-AI/Wan2.2-TI2V-5B-Diffusers") == ("Wan-AI/Wan2.2-TI2V-5B-Diffusers", CLEAN_LATENTS, 9)
    assert choice("Wan-AI/Wan2.2-I2V-A14B-Diffusers") == ("Wan-AI/Wan2.2-I2V-A14B-Diffusers", MASK_CHANNELS, 5)
    assert choice("Wan-AI/Wan2.2-T2V-A14B-Diffusers") == ("Wan-AI/Wan2.2-I2V-A14B-Diffusers", MASK_CHANNELS, 5)
    assert choice("Wan-AI/Wan2.1-T2V-1.3B-Diffusers") == ("Wan-AI/Wan2.1-T2V-1.3B-Diffusers", LATENT_REPLACEMENT, 9)
    assert choice("test-tiny-a14b") == ("test-tiny-i2v-a14b", MASK_CHANNELS, 5)  # the test layouts alike
    assert window_seed(11, 0) == 11 and window_seed(11, 1) == window_seed(11, 1) != window_seed(11, 2)


# ---- takes with the test models ----------------------------------------------------------------------
def test_a_three_window_take_conditions_each_window_on_the_last_frames_of_the_one_before(manager, spy):
    """TI2V layout, started from the prompt: windows 2 and 3 are image-to-video on the same weights with the
    previous window's last 5 frames as two clean latent frames at timestep 0."""
    plan = plan_take(get_spec("test-tiny"), PROMPTS, windows=3, frames_per_window=17, overlap=5)
    handed = []
    records = run_take(manager, request("test-tiny"), plan, lambda frames, i: handed.append((i, frames.copy())))

    # The documented frame count, streamed: each window's new frames only (never the take so far)
    assert [(i, f.shape[0]) for i, f in handed] == [(0, 12), (1, 12), (2, 17)]
    take = np.concatenate([f for _, f in handed])
    assert take.shape == (plan.total_frames, 64, 96, 3) == (41, 64, 96, 3)
    own = spy["frames"]  # each window's frames as the manager made them
    assert [f.shape[0] for f in own] == [17, 17, 17]

    # The window prompts reached the pipeline in order (their embeddings, as the pipeline was called)
    calls = spy["calls"]
    assert len(calls) == 3
    encoder = manager._loaded.prompts
    distinct = [encoder.embeddings(p, torch.device("cpu"), torch.float32) for p in PROMPTS]
    assert not torch.equal(distinct[0], distinct[1]) and not torch.equal(distinct[1], distinct[2])
    for call, prompt in zip(calls, PROMPTS, strict=True):
        assert torch.equal(
            call["kwargs"]["prompt_embeds"], encoder.embeddings(prompt, torch.device("cpu"), torch.float32)
        )
    assert [r.prompt for r in records] == PROMPTS

    # Where the frames enter the model: window n+1's first two latent frames ARE window n's last 5 frames,
    # encoded, held clean (timestep 0 on their tokens) while the rest is denoised
    pipe = spy["pipes"][-1]
    for n in (0, 1):
        first = calls[n + 1]["input"]
        expected = encoded(pipe, own[n][-5:])
        assert expected.shape[2] == 2
        assert torch.allclose(first["hidden_states"][:, :, :2].float(), expected, atol=1e-5)
        tokens_per_frame = (64 // 16 // 2) * (96 // 16 // 2)
        timestep = first["timestep"][0]
        assert torch.all(timestep[: 2 * tokens_per_frame] == 0) and torch.all(timestep[2 * tokens_per_frame :] > 0)
    assert calls[0]["input"]["hidden_states"].shape[1] == 48 and "image" not in calls[0]["kwargs"]

    # The overlap is crossfaded: window n's last 5 frames into window n+1's first 5
    for n in (0, 1):
        start = plan.start_of(n + 1)
        assert np.array_equal(take[start : start + 5], crossfade(own[n][-5:], own[n + 1][:5]))
        assert np.array_equal(take[start + 5 : start + 12], own[n + 1][5:12])

    # The record of every window
    assert [(r.index, r.frames, r.overlap, r.start, r.conditioning) for r in records] == [
        (0, 17, 0, 0, PROMPT), (1, 17, 5, 12, CLEAN_LATENTS), (2, 17, 5, 24, CLEAN_LATENTS),
    ]  # fmt: skip
    assert [r.seed for r in records] == [11, window_seed(11, 1), window_seed(11, 2)]
    assert [r.task for r in records] == ["t2v", "i2v", "i2v"] and records[1].result.frames.size == 0
    assert set(records[2].record()) >= {"prompt", "seed", "frames", "overlap", "conditioning", "timings"}


def test_the_a14b_pair_continues_through_the_mask_channels_and_the_light_model_by_replacement(manager, spy):
    """T2V-A14B layout: window 2 on the I2V-A14B layout, the last 5 frames in its VAE condition under a mask of
    ones; Wan2.1 layout: the last 5 frames' latents written over the first latent frames, exact at the end."""
    plan = plan_take(get_spec("test-tiny-a14b"), PROMPTS[:2], windows=2, frames_per_window=13, overlap=5)
    records = run_take(manager, request("test-tiny-a14b"), plan, lambda frames, i: None)
    assert [(r.model, r.conditioning) for r in records] == [
        ("test-tiny-a14b", PROMPT), ("test-tiny-i2v-a14b", MASK_CHANNELS),
    ]  # fmt: skip
    first = spy["calls"][1]["input"]["hidden_states"]  # noise 16 | mask 4 | condition 16
    assert first.shape[1] == 36
    assert torch.all(first[:, 16:20, :2] == 1) and torch.all(first[:, 16:20, 2:] == 0)
    expected = encoded(spy["pipes"][1], spy["frames"][0][-5:])
    assert torch.allclose(first[:, 20:, :2].float(), expected, atol=1e-4)

    decoded = []
    real_decode = manager_module.decode_latents

    def decode(vae, latents, precision="float32"):
        decoded.append(latents.detach().clone())
        return real_decode(vae, latents, precision)

    manager_module.decode_latents = decode
    try:
        plan = plan_take(get_spec("test-tiny-wan21"), PROMPTS[:2], windows=2, frames_per_window=13, overlap=5)
        records = run_take(manager, request("test-tiny-wan21"), plan, lambda frames, i: None)
    finally:
        manager_module.decode_latents = real_decode
    assert [r.conditioning for r in records] == [PROMPT, LATENT_REPLACEMENT]
    expected = encoded(spy["pipes"][-1], spy["frames"][-2][-5:])
    assert torch.allclose(decoded[-1][:, :, :2].float(), expected, atol=1e-5)
    entered = spy["calls"][-1]["input"]["hidden_states"][:, :, :2]
    assert not torch.allclose(entered, expected, atol=1e-2)  # at step 1 they are noised to its level


def test_one_frame_of_overlap_is_the_start_image_and_every_window_keeps_the_first_windows_colours(
    manager, spy, monkeypatch
):
    references = []
    real_match = manager_module.match_colours

    def match(frames, reference, end=None, **kwargs):
        references.append(np.asarray(reference).copy())
        return real_match(frames, reference, end, **kwargs)

    monkeypatch.setattr(manager_module, "match_colours", match)
    plan = plan_take(get_spec("test-tiny"), "a cat", windows=2, frames_per_window=9, overlap=1)
    records = run_take(manager, request("test-tiny", image=START), plan, lambda frames, i: None)
    assert [r.conditioning for r in records] == [PICTURE, START_IMAGE]
    image = spy["calls"][1]["kwargs"]["image"]  # the pipeline's own picture input
    assert np.array_equal(np.asarray(image), spy["frames"][0][-1])
    assert len(references) == 2 and all(np.array_equal(r, START) for r in references)


def test_cancel_during_window_two_keeps_window_one_and_never_hands_window_two(manager):
    cancel = threading.Event()
    handed = []

    def progress(index, report):
        if index == 1 and report.stage == "denoise" and report.step == 1:
            cancel.set()

    plan = plan_take(get_spec("test-tiny"), PROMPTS, windows=3, frames_per_window=9, overlap=1)
    with pytest.raises(GenerationCancelled):
        run_take(manager, request("test-tiny"), plan, lambda f, i: handed.append((i, f.shape[0])), progress, cancel)
    # window 1 whole (its last frame, held for the blend, handed on when the take stopped); nothing of window 2
    assert handed == [(0, 8), (0, 1)]
    assert manager.generate(request("test-tiny")).frames.shape[0] == 9  # the manager works on
