"""End-to-end engine tests on the offline test models: request -> manager -> frames -> MP4 -> decoded again."""

from __future__ import annotations

import json
import re
import threading

import numpy as np
import pytest
import torch

from library.clips import read_sidecar, save_clip
from pipelines.manager import BusyError, GenerationCancelled, PipelineManager
from pipelines.memory import DoesNotFitError, MemoryBudget
from pipelines.request import GenerationRequest, validate_request
from tests.media import decode_video, moov_before_mdat, probe

TINY = "test-tiny"


def valid(**fields):
    fields.setdefault("prompt", "a red cat walks in the rain")
    fields.setdefault("model", TINY)
    fields.setdefault("seed", 1234)
    return validate_request(GenerationRequest(**fields), default_model=TINY)


def picture() -> np.ndarray:
    y, x = np.mgrid[0:64, 0:96]
    return np.stack([x * 2, y * 3, np.full_like(x, 128)], axis=-1).astype(np.uint8)


def test_text_to_video_end_to_end(manager, out_dir):
    request = valid(frames=13, width=64, height=96)
    events = []
    result = manager.generate(request, on_progress=events.append)
    files = save_clip(result, out_dir)

    frames, fps = decode_video(files.video)
    assert frames.shape == (13, 96, 64, 3)
    assert fps == pytest.approx(8.0)
    stream = next(s for s in probe(files.video)["streams"] if s["codec_type"] == "video")
    assert (stream["codec_name"], stream["pix_fmt"]) == ("h264", "yuv420p")
    assert moov_before_mdat(files.video)

    # the decoded clip is the generated frames: random-weight output is pixel noise, which 4:2:0 H.264
    # blurs, so compare what survives it, the colour of 16x16 blocks
    def blocks(v):
        return v.reshape(13, 6, 16, 4, 16, 3).mean(axis=(2, 4))

    assert np.abs(blocks(frames.astype(float)) - blocks(result.frames.astype(float))).mean() < 3

    denoise = [e for e in events if e.stage == "denoise" and e.preview is not None]
    assert [e.step for e in denoise] == [1, 2, 3, 4]  # one preview per step, in order
    assert all(e.preview.dtype == np.uint8 and e.preview.ndim == 4 for e in denoise)
    assert events[-1].stage == "decode"  # every preview came before the final clip
    assert denoise[-1].eta_s == 0
    # the VAE decode that follows the last step is announced, not left showing "0 s left"
    after_last_step = events[events.index(denoise[-1]) + 1]
    assert after_last_step.stage == "decode" and after_last_step.message.startswith("Decoding the frames")
    again = []
    manager.generate(request, on_progress=again.append)
    assert re.search(r"Decoding the frames with the VAE, about \d+ s", " ".join(e.message for e in again))


def test_sidecar_round_trips_every_setting(manager, out_dir):
    request = valid(negative_prompt="blur", steps=3, guidance_scale=4.5)
    files = save_clip(manager.generate(request), out_dir)
    sidecar = read_sidecar(files.video)
    assert json.loads(files.sidecar.read_text()) == sidecar
    assert sidecar["file"] == files.video.name
    assert sidecar["model"] == TINY and sidecar["is_test_model"] is True
    assert sidecar["model_revision"].startswith("random-weights-v")
    assert sidecar["app"] == "Wan Studio" and sidecar["app_version"]
    assert {"load_s", "denoise_s", "decode_s", "total_s", "preview_s_per_step"} <= set(sidecar["timings"])
    # the stored settings rebuild the same request
    settings = dict(sidecar["settings"])
    settings.pop("fps")  # the model's
    assert settings.pop("end_frame") is False  # whether an end picture was given (stored beside the clip)
    rebuilt = validate_request(GenerationRequest(**settings), default_model=TINY)
    assert rebuilt.settings() == request.settings()


def test_same_seed_same_frames_other_seed_other_frames(manager):
    first = manager.generate(valid(seed=42)).frames
    again = manager.generate(valid(seed=42)).frames
    other = manager.generate(valid(seed=43)).frames
    assert np.array_equal(first, again)
    assert not np.array_equal(first, other)


def test_image_to_video_end_to_end_and_switch_reuses_components(manager, out_dir):
    manager.generate(valid())  # text-to-video resident
    before = manager.pipeline
    loads = manager.loads
    events = []
    result = manager.generate(valid(image=picture(), frames=9), on_progress=events.append)
    after = manager.pipeline
    assert manager.loaded[:2] == (TINY, "i2v")
    assert manager.loads == loads  # nothing reloaded from disk
    for name in ("transformer", "text_encoder", "vae", "tokenizer"):
        assert getattr(after, name) is getattr(before, name), name

    files = save_clip(result, out_dir)
    frames, _ = decode_video(files.video)
    assert frames.shape == (9, 64, 96, 3)
    assert files.input_image is not None and files.input_image.is_file()
    assert read_sidecar(files.video)["input_image"] == files.input_image.name
    # image-to-video previews show the input picture as frame 0
    preview = next(e.preview for e in events if e.preview is not None)
    assert np.abs(preview[0, 80, :, 0].astype(int) - np.linspace(0, 190, preview.shape[2])).mean() < 20

    manager.generate(valid())  # and back again, still without a load
    assert manager.loads == loads and manager.pipeline.transformer is before.transformer


def test_wan21_layout_model_runs(manager, out_dir):
    result = manager.generate(valid(model="test-tiny-wan21", frames=5))
    assert result.frames.shape == (5, 48, 64, 3)


def test_cancel_stops_within_one_step_and_the_next_run_works(manager):
    cancel = threading.Event()
    steps_seen = []

    def on_progress(progress):
        if progress.stage == "denoise" and progress.step:
            steps_seen.append(progress.step)
            if progress.step == 2:
                cancel.set()

    with pytest.raises(GenerationCancelled):
        manager.generate(valid(steps=8), on_progress=on_progress, cancel=cancel)
    assert steps_seen == [1, 2]
    assert not manager.busy
    assert manager.generate(valid(steps=2)).frames.shape[0] == 9


def test_a_request_that_cannot_fit_fails_before_loading():
    tight = PipelineManager(offline=True, memory_probe=lambda device: MemoryBudget(0.0, 0.01, "cpu"))
    with pytest.raises(DoesNotFitError) as info:
        tight.generate(valid())
    assert "does not fit: even with the 'cpu' profile it needs about" in str(info.value)
    assert "GB of RAM (0.0 GB free)" in str(info.value) and "Nothing would fit" in str(info.value)
    assert tight.loads == 0 and tight.loaded is None


def test_the_loaded_models_own_ram_is_not_held_against_its_next_run():
    """The OS does not count a loaded model's weights as available RAM, yet they are ours to reuse: on a
    machine where a request just fits, its second run was refused (an A14B pair on 64 GB, after one clip)."""
    from pipelines.memory import PROFILES, estimate_need

    request = valid()
    need = estimate_need(request.spec, PROFILES["cpu"], request.width, request.height, request.frames).ram_gb
    total = need / 0.9 + 1e-4  # this machine's RAM: the request fits with nothing loaded, with no room to spare
    holder: dict = {}

    def weights_in_ram_gb() -> float:  # what the loaded pipeline holds, as the OS sees it
        loaded = holder["manager"].loaded and holder["manager"]._loaded
        if not loaded:
            return 0.0
        tensors = {t.data_ptr(): t for m in loaded.pipe.components.values() if isinstance(m, torch.nn.Module)
                   for t in (*m.parameters(), *m.buffers())}  # fmt: skip
        return sum(t.numel() * t.element_size() for t in tensors.values()) / 2**30

    manager = PipelineManager(offline=True, memory_probe=lambda device: MemoryBudget(0.0, total - weights_in_ram_gb(),
                                                                                     "cpu"))  # fmt: skip
    holder["manager"] = manager
    manager.generate(request)
    assert weights_in_ram_gb() > 0
    assert manager.generate(valid(seed=8)).frames.shape[0] == request.frames  # refused before: "needs about …"
    with pytest.raises(DoesNotFitError):  # and what does not fit is still refused
        manager.generate(valid(frames=33))
    assert manager.loads == 1


def test_one_generation_at_a_time(manager):
    started, release = threading.Event(), threading.Event()

    def slow(progress):
        if progress.stage == "denoise" and progress.step == 1:
            started.set()
            release.wait(30)

    worker = threading.Thread(target=manager.generate, args=(valid(),), kwargs={"on_progress": slow})
    worker.start()
    assert started.wait(60)
    with pytest.raises(BusyError, match="busy"):
        manager.generate(valid(), wait=False)
    release.set()
    worker.join(60)
    assert not manager.busy


def test_unload_frees_the_model(manager):
    import gc
    import weakref

    manager.generate(valid())
    modules = [weakref.ref(getattr(manager.pipeline, n)) for n in ("transformer", "text_encoder", "vae")]
    manager.unload()
    assert manager.loaded is None and manager.pipeline is None
    gc.collect()
    assert all(ref() is None for ref in modules), "something still holds the unloaded model"
    assert manager.generate(valid()).frames.shape[0] == 9


def test_fp8_weights_and_vae_tiling_run(monkeypatch):
    """The module changes of the fp8 and offload profiles (layerwise fp8 casting, VAE tiling) on the test model;
    only where the modules live differs on a GPU."""
    from dataclasses import replace

    from pipelines import memory

    request = valid(width=96, height=64, frames=9)
    full = PipelineManager(offline=True).generate(request)
    monkeypatch.setitem(memory.PROFILES, "cpu", replace(memory.PROFILES["cpu"], fp8=True, vae_tiling=True))
    manager = PipelineManager(offline=True)
    lean = manager.generate(request)
    pipe = manager._loaded.pipe
    assert pipe.transformer.blocks[0].ffn.net[2].weight.dtype == torch.float8_e4m3fn  # stored in fp8
    assert pipe.vae.use_tiling
    assert lean.frames.shape == full.frames.shape
    # fp8 rounding changes the output a little (0.17/255 on average here), far less than another seed does
    # (correlation 0.6)
    a, b = full.frames.astype(float).ravel(), lean.frames.astype(float).ravel()
    assert np.corrcoef(a, b)[0, 1] > 0.999 and np.abs(a - b).mean() > 0


def test_loading_reports_each_large_component_by_size():
    events = []
    PipelineManager(offline=True).generate(valid(frames=5), on_progress=events.append)
    loads = [e for e in events if e.stage == "load"]
    parts = [e.message.split(" (")[0] for e in loads if e.message.startswith("Loading the")]
    assert parts == ["Loading the transformer", "Loading the text encoder", "Loading the vae"]
    fractions = [e.fraction for e in loads]
    assert fractions == sorted(fractions) and len(set(fractions)) >= 4 and fractions[-1] == 1.0
    assert all(re.search(r"\([\d.]+ [MG]B\)$", e.message) for e in loads if e.message.startswith("Loading the"))


def test_fast_mode_runs_the_distilled_transformers_weights_not_the_base_models(manager):
    """The sidecar names the distilled checkpoint; the weights that run must be its own. Loaded without them, a
    user gets the base model on a 3-step DMD schedule (broken frames) under the distilled name."""
    from safetensors.torch import load_file

    from pipelines.testmodels import ensure_fast_test_weights, ensure_test_model

    distilled = load_file(next((ensure_fast_test_weights(TINY).transformer / "transformer").glob("*.safetensors")))
    base = load_file(next((ensure_test_model(TINY) / "transformer").glob("*.safetensors")))
    calls = []
    result = manager.generate(valid(fast=True, frames=5))
    transformer = manager.pipeline.transformer
    hook = transformer.register_forward_hook(lambda *_: calls.append(1))
    try:
        again = manager.generate(valid(fast=True, frames=5))
    finally:
        hook.remove()
    assert result.fast and len(calls) == again.request.steps  # this transformer is the one each step ran
    running = transformer.state_dict()
    assert set(running) == set(distilled)
    assert all(torch.equal(running[name].to(tensor.dtype), tensor) for name, tensor in distilled.items())
    assert not all(torch.equal(base[name], distilled[name]) for name in base)  # the two checkpoints differ
    base_run = manager.generate(valid(frames=5, steps=3))  # back to the model's own weights
    assert manager.pipeline.transformer is not transformer
    own = manager.pipeline.transformer.state_dict()
    assert all(torch.equal(own[name].to(tensor.dtype), tensor) for name, tensor in base.items())
    assert base_run.fast is None


def test_switching_between_models_that_share_a_text_encoder_and_vae_keeps_those():
    """The test Wan2.1 and A14B layouts share their text encoder and VAE (as the real Wan2.1 1.3B and A14B pair
    do): a switch reads only the new transformers from disk, and the kept modules give the new model's clip."""
    manager = PipelineManager(offline=True)
    manager.generate(valid(model="test-tiny-wan21", frames=5))
    kept = {name: getattr(manager.pipeline, name) for name in ("tokenizer", "text_encoder", "vae")}
    old_transformer = manager.pipeline.transformer
    events = []
    switched = manager.generate(valid(model="test-tiny-a14b", frames=5), on_progress=events.append)
    assert manager.loaded[0] == "test-tiny-a14b" and manager.loads == 2
    assert all(getattr(manager.pipeline, name) is module for name, module in kept.items())
    assert manager.pipeline.transformer is not old_transformer
    read = [e.message.split(" (")[0] for e in events if e.message.startswith("Loading the")]
    assert read == ["Loading the transformer", "Loading the second transformer"]  # nothing else from disk
    fresh = PipelineManager(offline=True).generate(valid(model="test-tiny-a14b", frames=5))
    assert np.array_equal(switched.frames, fresh.frames)  # the kept modules are the new model's own
    manager.generate(valid(frames=5))  # TI2V layout: nothing shared, its own text encoder and VAE
    assert manager.pipeline.text_encoder is not kept["text_encoder"] and manager.pipeline.vae is not kept["vae"]


def test_models_load_one_at_a_time_whichever_manager_asks():
    """One load at a time in the process (diffusers' lazy imports are not thread-safe, and two loads at once
    double the host-RAM peak): a second manager's load waits while the first is held inside its own."""
    first, second = PipelineManager(offline=True), PipelineManager(offline=True)
    inside, release, second_arrived = threading.Event(), threading.Event(), threading.Event()
    log: list[tuple[str, str]] = []

    def watched(manager: PipelineManager, name: str) -> None:
        load = manager._from_pretrained

        def wrapper(*args, **kwargs):
            log.append((name, "in"))
            if name == "first":
                inside.set()
                release.wait(60)
            else:
                second_arrived.set()
            try:
                return load(*args, **kwargs)
            finally:
                log.append((name, "out"))

        manager._from_pretrained = wrapper

    watched(first, "first")
    watched(second, "second")

    def on_second(progress):
        if "one load at a time" in progress.message:
            second_arrived.set()  # told to wait for the other load

    runs = [
        threading.Thread(target=first.generate, args=(valid(frames=5),)),
        threading.Thread(target=second.generate, args=(valid(frames=5),), kwargs={"on_progress": on_second}),
    ]
    runs[0].start()
    assert inside.wait(60)
    runs[1].start()
    try:
        assert second_arrived.wait(60)
        assert log == [("first", "in")]  # the second load has not begun while the first is under way
    finally:
        release.set()
        for run in runs:
            run.join(120)
    assert log == [("first", "in"), ("first", "out"), ("second", "in"), ("second", "out")]
    assert first.loaded and second.loaded
