"""Colour matching keeps long takes from drifting: on synthetic clips with a known drift, chained as a
storyboard extends a shot (each clip starts from the last one's last frame), and on the engine's own
image-to-video output."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pipelines.colour import match_colours
from pipelines.request import GenerationRequest, validate_request

FRAMES, CHAIN = 17, 6


def scene() -> np.ndarray:
    """A start picture with structure and colour: gradients and a disc."""
    y, x = np.mgrid[0:72, 0:128].astype(np.float32)
    disc = ((x - 80) ** 2 + (y - 36) ** 2 < 400).astype(np.float32)
    rgb = np.stack([60 + x, 40 + 1.5 * y + 80 * disc, 150 - 0.5 * x + 40 * disc], axis=-1)
    return rgb.clip(0, 255).astype(np.uint8)


def drifting_clip(start: np.ndarray, frames: int = FRAMES) -> np.ndarray:
    """What a drifting model does to a shot: the content moves a little, and every frame is warmer, more
    saturated and a bit brighter than the one before (about +10 levels of red over a clip)."""
    out = []
    for t in range(frames):
        moved = np.roll(start.astype(np.float32), shift=t, axis=1)
        grey = moved.mean(axis=-1, keepdims=True)
        saturated = grey + (moved - grey) * (1 + 0.012 * t)
        out.append((saturated + np.array([0.6, 0.1, -0.4]) * t + 0.3 * t).clip(0, 255))
    return np.stack(out).round().astype(np.uint8)


def chain(correct: bool) -> list[float]:
    """Mean colour error (per-channel means, in levels) of each extension's last frame against the first
    start picture."""
    reference = scene()
    start, errors = reference, []
    for _ in range(CHAIN):
        clip = drifting_clip(start)
        if correct:
            clip = match_colours(torch.from_numpy(clip), start).numpy()
        start = clip[-1]
        errors.append(float(np.abs(start.reshape(-1, 3).mean(0) - reference.reshape(-1, 3).mean(0)).mean()))
    return errors


def test_a_chain_of_extensions_drifts_without_correction_and_stays_put_with_it():
    drift, kept = chain(correct=False), chain(correct=True)
    # the figures docs/PERFORMANCE.md records: error after each of six extensions
    print("without", [round(e, 1) for e in drift], "with", [round(e, 2) for e in kept])
    assert drift[-1] > 25 and drift == sorted(drift)  # the drift compounds from shot to shot
    assert max(kept) < 1.5  # matched shots stay on the first picture's colours
    assert kept[-1] < drift[0] / 5


def test_matching_a_clip_to_its_own_colours_changes_nothing_and_keeps_the_picture():
    picture = scene()
    still = torch.from_numpy(np.stack([picture] * 3))
    assert torch.equal(match_colours(still, picture), still)
    drifted = torch.from_numpy(drifting_clip(picture, 9))
    matched = match_colours(drifted, picture).numpy()
    # the structure is the clip's (the disc moved), only its colours were moved back
    assert np.corrcoef(matched[-1, ..., 1].ravel(), drifted[-1, ..., 1].numpy().ravel())[0, 1] > 0.99


@pytest.mark.parametrize("match", [True, False])
def test_image_to_video_output_is_matched_to_its_picture_when_asked(manager, match):
    picture = scene()
    request = validate_request(
        GenerationRequest(prompt="the disc rolls", model="test-tiny", image=picture, width=96, height=64, frames=9,
                          steps=2, seed=3, match_colour=match),
        default_model="test-tiny",
    )  # fmt: skip
    assert request.match_colour is match and request.settings()["match_colour"] is match
    frames = manager.generate(request).frames
    fitted = np.asarray(request.image).reshape(-1, 3).astype(np.float32)
    error = np.abs(frames.reshape(len(frames), -1, 3).mean(axis=1) - fitted.mean(axis=0)).max()
    if match:
        assert error < 2.0  # every frame's colour means on the picture's (random weights: noise otherwise)
    else:
        assert error > 5.0


def test_text_to_video_is_never_colour_matched():
    request = validate_request(GenerationRequest(prompt="a cat", model="test-tiny"), default_model="test-tiny")
    assert request.match_colour is False
