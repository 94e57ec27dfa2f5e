"""The upscaler (pipelines/upscale.py) with random-weight Compact models built here: sizes planned and made,
tiles that blend into the untiled result, frames streamed one at a time, cancel between frames, and files
refused by name, a malicious pickle without running it."""

from __future__ import annotations

import hashlib
import pickle
import threading
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

import pipelines.upscale as upscale
from pipelines.upscale import (
    DEFAULT_UPSCALER,
    MAX_SIDE,
    UpscaleCancelled,
    UpscalePlan,
    UpscalerError,
    build_test_upscaler,
    choose_dtype,
    ensure_test_upscaler,
    load_upscaler,
    plan_size,
)


@pytest.fixture(scope="module")
def upscaler():
    return load_upscaler(ensure_test_upscaler())


def frame(height: int, width: int, seed: int = 0) -> np.ndarray:
    """A picture with edges and gradients (noise alone would hide a resize that is off by a pixel)."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width]
    base = np.stack([x * 255 / width, y * 255 / height, ((x // 8 + y // 8) % 2) * 200], axis=-1)
    return np.clip(base + rng.normal(0, 12, base.shape), 0, 255).astype(np.uint8)


class Counting:
    """Wraps the loaded model to record the size of each input it is called on (one per pass or tile)."""

    def __init__(self, model):
        self.model, self.calls = model, []

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        self.calls.append(tuple(x.shape[-2:]))
        return self.model(x)

    def __getattr__(self, name):
        return getattr(self.model, name)


@pytest.fixture
def counted(upscaler):
    model = upscaler._model
    upscaler._model = Counting(model)
    yield upscaler._model
    upscaler._model = model


# ---- Planning ----------------------------------------------------------------------------------------------


def test_plan_passes_and_exact_sizes():
    assert plan_size(832, 480, 2, None, 2) == UpscalePlan(1664, 960, 1)
    assert plan_size(832, 480, 4, None, 2) == UpscalePlan(3328, 1920, 2)  # a ×2 model twice
    assert plan_size(832, 480, 2, None, 4) == UpscalePlan(1664, 960, 1)  # a ×4 model once, then resized down
    assert plan_size(832, 480, 3, None, 2) == UpscalePlan(2496, 1440, 2)
    # a target height: the fewest passes reaching it, then an even width keeping the aspect
    assert plan_size(832, 480, None, 1080, 2) == UpscalePlan(1872, 1080, 2)
    assert plan_size(832, 480, None, 1080, 4) == UpscalePlan(1872, 1080, 1)
    assert plan_size(832, 480, None, 2160, 2) == UpscalePlan(3744, 2160, 3)
    assert plan_size(960, 540, None, 1080, 2) == UpscalePlan(1920, 1080, 1)
    for width, height in ((1280, 704), (704, 1024), (1000, 562), (640, 360)):
        w, h, _ = plan_size(width, height, None, 1080, 2)
        assert h == 1080 and w % 2 == 0
        assert abs(w * height / h - width) <= height / h, (width, height, w)  # the aspect within a pixel


def test_results_over_4096_pixels_a_side_are_refused_naming_the_limit():
    for args in ((3840, 2160, 4, None), (1280, 704, 4, None), (480, 832, None, 4320), (832, 480, None, 2400)):
        with pytest.raises(UpscalerError, match=f"at most {MAX_SIDE} pixels a side"):
            plan_size(*args, 2)
    assert plan_size(1024, 576, 4, None, 2) == UpscalePlan(4096, 2304, 2)  # exactly at the limit
    with pytest.raises(UpscalerError, match="either a scale"):
        plan_size(832, 480, 2, 1080, 2)
    with pytest.raises(UpscalerError, match="either a scale"):
        plan_size(832, 480, None, None, 2)
    with pytest.raises(UpscalerError, match="already 480 pixels tall"):
        plan_size(832, 480, None, 480, 2)
    with pytest.raises(UpscalerError, match="even"):
        plan_size(832, 480, None, 1081, 2)


# ---- Sizes made ----------------------------------------------------------------------------------------------


def test_x2_and_x4_make_exact_sizes(upscaler, counted):
    picture = frame(36, 52)
    (x2,) = upscaler.upscale([picture])
    assert x2.shape == (72, 104, 3) and x2.dtype == np.uint8
    (x4,) = upscaler.upscale([picture], upscaler.plan(52, 36, scale=4))
    assert x4.shape == (144, 208, 3)
    assert counted.calls == [(36, 52), (36, 52), (72, 104)]  # ×4 is the ×2 model twice
    # ... and is what two ×2 runs make (there rounded to uint8 in between, so within a level or two)
    (twice,) = upscaler.upscale([x2])
    assert np.abs(x4.astype(int) - twice).max() <= 2


def test_target_1080_from_832x480(upscaler, counted):
    (out,) = upscaler.upscale([frame(480, 832)], upscaler.plan(832, 480, target_height=1080))
    assert out.shape == (1080, 1872, 3)
    # two passes: the first whole, the second (3328×1920 out, over TILE_ABOVE_PIXELS) in tiles of at most 512
    assert counted.calls[0] == (480, 832)
    tiles = counted.calls[1:]
    assert len(tiles) > 1 and all(h <= upscale.DEFAULT_TILE and w <= upscale.DEFAULT_TILE for h, w in tiles)
    covered = sum(h * w for h, w in tiles)
    assert 960 * 1664 <= covered < 1.5 * 960 * 1664  # the tiles cover the frame without much waste


def test_the_resize_to_a_target_is_a_downscale_of_the_model_output(upscaler):
    """Resizing picks up the model's output, not the source: compared with a plain resize of the passes."""
    picture = frame(40, 64)
    plan = plan_size(64, 40, None, 70, 2)  # one pass (80 tall), then down to 70
    assert plan == UpscalePlan(112, 70, 1)
    (out,) = upscaler.upscale([picture], plan)
    (whole,) = upscaler.upscale([picture])
    resized = torch.nn.functional.interpolate(
        torch.from_numpy(whole).permute(2, 0, 1)[None].float() / 255,
        size=(70, 112), mode="bicubic", antialias=True, align_corners=False,
    )  # fmt: skip
    expected = (resized.clamp(0, 1) * 255).round()[0].permute(1, 2, 0).numpy()
    assert out.shape == (70, 112, 3) and np.abs(out.astype(float) - expected).max() <= 1


# ---- Tiles --------------------------------------------------------------------------------------------------


def test_tiled_equals_untiled(upscaler, counted):
    picture = frame(150, 230, seed=3)
    (whole,) = upscaler.upscale([picture])
    assert counted.calls == [(150, 230)]
    (tiled,) = upscaler.upscale([picture], tile=64)
    tiles = counted.calls[1:]
    assert len(tiles) >= 9 and all(h <= 64 and w <= 64 for h, w in tiles)
    difference = np.abs(whole.astype(int) - tiled)
    assert difference.max() <= 1 and difference.mean() < 0.01


def test_a_large_pass_tiles_by_itself(upscaler, counted, monkeypatch):
    picture = frame(100, 140)
    (whole,) = upscaler.upscale([picture])
    monkeypatch.setattr(upscale, "TILE_ABOVE_PIXELS", 100 * 140 * 4 - 1)
    monkeypatch.setattr(upscale, "DEFAULT_TILE", 48)
    (tiled,) = upscaler.upscale([picture])
    assert counted.calls[0] == (100, 140) and len(counted.calls) > 2
    assert np.abs(whole.astype(int) - tiled).max() <= 1


# ---- Weights -----------------------------------------------------------------------------------------------


def test_the_output_comes_from_the_weights(upscaler, tmp_path):
    path = ensure_test_upscaler()
    loaded = upscaler._model.model.state_dict()
    stored = load_file(str(path))
    assert loaded.keys() == stored.keys()
    assert all(torch.equal(loaded[key], stored[key]) for key in stored)
    assert upscaler.info.name == path.stem and upscaler.info.path == path
    assert upscaler.info.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
    assert upscaler.info.architecture == "RealESRGAN Compact" and upscaler.info.scale == 2
    assert upscaler.dtype == torch.float32  # on the CPU

    other = load_upscaler(build_test_upscaler(tmp_path, seed=1))
    picture = frame(32, 48)
    (mine,) = upscaler.upscale([picture])
    (theirs,) = other.upscale([picture])
    assert np.abs(mine.astype(int) - theirs).mean() > 2
    assert other.info.sha256 != upscaler.info.sha256


def test_the_test_upscaler_is_built_once_and_the_same_each_time(tmp_path):
    path = ensure_test_upscaler()
    stamp = path.stat().st_mtime_ns
    assert ensure_test_upscaler() == path and path.stat().st_mtime_ns == stamp
    assert build_test_upscaler(tmp_path).read_bytes() == path.read_bytes()  # fixed seed


def test_dtype_per_device():
    cuda, cpu = torch.device("cuda"), torch.device("cpu")
    assert choose_dtype(cuda, supports_half=True, supports_bfloat16=True) == torch.float16
    assert choose_dtype(cuda, supports_half=False, supports_bfloat16=True) == torch.bfloat16
    assert choose_dtype(cuda, supports_half=False, supports_bfloat16=False) == torch.float32
    assert choose_dtype(cpu, supports_half=True, supports_bfloat16=True) == torch.float32


def test_the_default_is_pinned():
    assert len(DEFAULT_UPSCALER.revision) == 40 and int(DEFAULT_UPSCALER.revision, 16) >= 0
    assert len(DEFAULT_UPSCALER.sha256) == 64 and int(DEFAULT_UPSCALER.sha256, 16) >= 0
    assert DEFAULT_UPSCALER.filename.endswith(".safetensors") and DEFAULT_UPSCALER.licence


# ---- Streaming and cancel -----------------------------------------------------------------------------------


def test_frames_stream_one_at_a_time(upscaler):
    pulled = []

    def frames():
        for n in range(5):
            pulled.append(n)
            yield frame(24, 32, seed=n)

    outputs = upscaler.upscale(frames())
    assert pulled == []  # nothing read before the first frame is asked for
    first = next(outputs)
    assert len(pulled) == 1 and first.shape == (48, 64, 3)
    rest = list(outputs)
    assert len(rest) == 4 and len(pulled) == 5


def test_cancel_stops_between_frames(upscaler):
    cancel = threading.Event()
    pulled, told = [], []

    def frames():
        for n in range(5):
            pulled.append(n)
            yield frame(24, 32, seed=n)

    def on_frame(done: int) -> None:
        told.append(done)
        if done == 2:
            cancel.set()

    outputs = upscaler.upscale(frames(), cancel=cancel, on_frame=on_frame)
    assert next(outputs).shape == (48, 64, 3)
    assert next(outputs).shape == (48, 64, 3)  # the frame under way when cancel came is finished
    with pytest.raises(UpscaleCancelled):
        next(outputs)
    assert told == [1, 2] and pulled == [0, 1]  # the third frame was never read


# ---- Files refused ------------------------------------------------------------------------------------------


class Payload:
    """Unpickling this calls open(marker, "w"): the file appears only if the pickle ran its global."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def test_a_pth_that_would_run_code_is_refused_without_running_it(tmp_path):
    weights = load_file(str(ensure_test_upscaler()))
    # the payload works: an unrestricted load of such a checkpoint creates its marker
    control = tmp_path / "control.pth"
    torch.save({**weights, "extra": Payload(tmp_path / "control-ran")}, control)
    torch.load(control, weights_only=False)
    assert (tmp_path / "control-ran").exists()

    marker = tmp_path / "payload-ran"
    evil = tmp_path / "evil.pth"
    torch.save({**weights, "extra": Payload(marker)}, evil)
    with pytest.raises(UpscalerError, match="evil.pth.*cannot be loaded safely.*safetensors"):
        load_upscaler(evil)
    assert not marker.exists()

    raw = tmp_path / "raw.ckpt"  # a bare pickle, not PyTorch's zip format
    raw.write_bytes(pickle.dumps(Payload(marker), protocol=2))
    with pytest.raises(UpscalerError, match="raw.ckpt"):
        load_upscaler(raw)
    assert not marker.exists()


def test_a_plain_pth_state_dict_loads(upscaler, tmp_path):
    weights = load_file(str(ensure_test_upscaler()))
    path = tmp_path / "plain.pth"
    torch.save({"params_ema": weights, "iter": 1000}, path)  # BasicSR's layout, with training metadata
    loaded = load_upscaler(path)
    assert loaded.info.architecture == "RealESRGAN Compact" and loaded.info.name == "plain"
    picture = frame(20, 28)
    assert np.array_equal(next(loaded.upscale([picture])), next(upscaler.upscale([picture])))


def test_files_spandrel_does_not_recognise_are_refused_by_name(tmp_path):
    foreign = tmp_path / "not-an-upscaler.safetensors"
    save_file({"encoder.layer.0.weight": torch.randn(8, 8), "decoder.bias": torch.randn(8)}, str(foreign))
    with pytest.raises(UpscalerError, match="'not-an-upscaler.safetensors' is not an upscaler spandrel recognises"):
        load_upscaler(foreign)

    broken = tmp_path / "broken.safetensors"
    broken.write_bytes(ensure_test_upscaler().read_bytes()[:300])
    with pytest.raises(UpscalerError, match="'broken.safetensors' cannot be read"):
        load_upscaler(broken)

    with pytest.raises(UpscalerError, match="'notes.txt' is not an upscaler file"):
        (tmp_path / "notes.txt").write_text("hello")
        load_upscaler(tmp_path / "notes.txt")
    with pytest.raises(UpscalerError, match="does not exist"):
        load_upscaler(tmp_path / "missing.safetensors")


def test_a_model_that_does_not_upscale_is_refused_by_name(tmp_path):
    from spandrel.architectures.Compact import Compact

    path = tmp_path / "denoise-1x.safetensors"  # a Compact at scale 1: spandrel calls it "Restoration"
    model = Compact(num_in_ch=3, num_out_ch=3, num_feat=8, num_conv=1, upscale=1)
    save_file({key: value.contiguous() for key, value in model.state_dict().items()}, str(path))
    with pytest.raises(UpscalerError, match="'denoise-1x.safetensors' is a 1× restoration model.*not an upscaler"):
        load_upscaler(path)
