"""RIFE frame interpolation (pipelines/interpolate.py): the loader's refusals, the streams' frame counts and
source frames, and the network's warp and blend checked with hand-set weights."""

from __future__ import annotations

import threading
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from pipelines.errors import UserError
from pipelines.interpolate import (
    ARCHITECTURE,
    RIFE_WEIGHTS,
    IFNet,
    InterpolationCancelled,
    InterpolatorError,
    build_test_rife,
    ensure_test_rife,
    load_interpolator,
)


@pytest.fixture(scope="module")
def rife():
    return load_interpolator(ensure_test_rife())


def clip(count: int, height: int = 64, width: int = 64, seed: int = 0) -> list[np.ndarray]:
    """Different frames: a moving bright square on noise."""
    rng = np.random.default_rng(seed)
    frames = []
    for i in range(count):
        frame = rng.integers(0, 80, (height, width, 3), dtype=np.uint8)
        frame[10 : 10 + height // 4, 4 * i : 4 * i + width // 4] = 230
        frames.append(frame)
    return frames


def hand_set(folder: Path, name: str = "hand.safetensors", **biases: tuple[slice, float]) -> Path:
    """A checkpoint of the real layout, all zeros except chosen biases of the last block's output convolution
    (channels 4c..4c+3 become channel c after the pixel shuffle: 0-1 frame 0's flow, 2-3 frame 1's, 4 the mask)."""
    with torch.device("meta"):
        shapes = {k: v.shape for k, v in IFNet().state_dict().items()}
    state = {k: torch.zeros(shape) for k, shape in shapes.items()}
    for channels, value in biases.values():
        state["block4.lastconv.0.bias"][channels] = value
    path = folder / name
    save_file(state, str(path))
    return path


# -- streams --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("factor", [2, 4])
def test_a_factor_keeps_every_source_frame_exactly_and_fills_between(rife, factor):
    source = clip(4)
    out = list(rife.by_factor(iter(source), factor))
    assert len(out) == (len(source) - 1) * factor + 1
    for i, frame in enumerate(source):
        assert np.array_equal(out[i * factor], frame)
    for k, frame in enumerate(out):
        assert frame.shape == (64, 64, 3) and frame.dtype == np.uint8
        if k % factor:
            assert not any(np.array_equal(frame, s) for s in source), k


def test_to_fps_keeps_the_duration_and_the_frames_on_source_times(rife):
    source = clip(5)  # 16 fps: 5/16 s; at 24 fps, 7.5 -> 8 frames (round), frame k at k/24 s
    seen = []
    out = list(rife.to_fps(source, 16.0, 24.0, on_frame=seen.append))
    assert len(out) == round(5 * 24 / 16) == 8
    assert seen == list(range(1, 9))
    for k, frame in enumerate(out):
        position = k * 16 / 24  # in source frames
        if position == int(position) or position > len(source) - 1:  # on a source frame, or holding the last
            assert np.array_equal(frame, source[min(int(position), len(source) - 1)]), k
        else:
            assert not any(np.array_equal(frame, s) for s in source), k
    # 0, 2/3, 4/3, 2, 8/3, 10/3, 4, 14/3: k = 0, 3, 6 land on frames 0, 2, 4; k = 7 is past the last one
    assert np.array_equal(out[3], source[2]) and np.array_equal(out[6], source[4])


def test_to_fps_refuses_a_rate_it_cannot_stream(rife):
    with pytest.raises(InterpolatorError, match="8 fps at the least"):
        rife.to_fps(clip(2), 16.0, 7.0)
    with pytest.raises(InterpolatorError, match="positive"):
        rife.to_fps(clip(2), 0.0, 24.0)


def test_the_in_between_frame_is_new_and_the_same_each_time(rife):
    a, b = clip(2)
    first = rife.between(a, b, [0.5])[0]
    assert not np.array_equal(first, a) and not np.array_equal(first, b)
    assert np.array_equal(rife.between(a, b, [0.5])[0], first)  # random weights, still deterministic
    quarter, three_quarters = rife.between(a, b, [0.25, 0.75])
    assert not np.array_equal(quarter, three_quarters)  # the time is an input
    assert np.array_equal(rife.between(a, b, [0.0, 1.0])[0], a)


def test_odd_sizes_come_back_at_their_size(rife):
    a, b = clip(2, height=38, width=70)
    (mid,) = rife.between(a, b, [0.5])
    assert mid.shape == (38, 70, 3) and mid.dtype == np.uint8


def test_cancel_stops_between_pairs_and_reads_no_further(rife):
    cancel = threading.Event()
    pulled = []

    def frames():
        for i, frame in enumerate(clip(6)):
            pulled.append(i)
            yield frame

    def on_frame(produced: int) -> None:
        if produced == 2:  # frame 0 and the first learned frame are out
            cancel.set()

    stream = rife.by_factor(frames(), 2, cancel=cancel, on_frame=on_frame)
    with pytest.raises(InterpolationCancelled):
        list(stream)
    assert pulled == [0, 1]


def test_a_factor_other_than_2_or_4_is_refused_by_name(rife):
    with pytest.raises(InterpolatorError, match="2 or 4, not 3"):
        rife.by_factor(clip(2), 3)


# -- the network, with weights set by hand ---------------------------------------------------------------------


def test_no_flow_and_an_even_mask_average_the_two_frames(tmp_path):
    rife = load_interpolator(hand_set(tmp_path))  # all zeros: no flow, mask 0 -> sigmoid 1/2
    a, b = np.full((38, 70, 3), 40, np.uint8), np.full((38, 70, 3), 200, np.uint8)
    assert np.array_equal(rife.between(a, b, [0.3])[0], np.full_like(a, 120))


def test_the_mask_takes_frame_0_and_its_flow_samples_ahead(tmp_path):
    """Mask logits +20: the output is frame 0 warped by its flow; a flow of +2 px in x reads 2 px to the right
    (the edge repeated past the border), whatever the frame size's padding."""
    rife = load_interpolator(hand_set(tmp_path, flow_x=(slice(0, 4), 2.0), mask=(slice(16, 20), 20.0)))
    ramp = np.tile((np.arange(70) * 3).astype(np.uint8)[None, :, None], (38, 1, 3))
    (out,) = rife.between(ramp, np.full_like(ramp, 60), [0.5])
    assert np.array_equal(out, ramp[:, np.minimum(np.arange(70) + 2, 69)])


# -- loading --------------------------------------------------------------------------------------------------


def test_the_test_model_loads_through_the_real_loader(rife):
    assert rife.info.path == ensure_test_rife() and rife.info.version == "4.26"
    assert len(rife.info.sha256) == 64 and rife.net.block0.conv0[0][0].weight.dtype == torch.float32
    assert ensure_test_rife().stat().st_size < 30e6


def test_published_keys_load_from_a_pickle(tmp_path):
    """The published flownet.pkl: DistributedDataParallel's "module." on every key, plus the training-only
    teacher and time-estimator tensors; the maintainer's .zip release holds it beside its Python files."""
    from safetensors.torch import load_file

    built = build_test_rife(tmp_path)
    state = load_file(str(built))
    published = {f"module.{k}": v for k, v in state.items()}
    published |= {"module.teacher.lastconv.0.bias": torch.zeros(52), "module.caltime.0.weight": torch.zeros(8)}
    pkl = tmp_path / "flownet.pkl"
    torch.save(published, pkl)
    a, b = clip(2)
    expected = load_interpolator(built).between(a, b, [0.5])[0]
    assert np.array_equal(load_interpolator(pkl).between(a, b, [0.5])[0], expected)

    archive = tmp_path / "RIFEv4.26_0921.zip"
    with zipfile.ZipFile(archive, "w") as z:
        z.write(pkl, "train_log/flownet.pkl")
        z.writestr("__MACOSX/train_log/._flownet.pkl", b"resource fork")
        z.writestr("train_log/IFNet_HDv3.py", "raise SystemExit('never run')\n")
    assert np.array_equal(load_interpolator(archive).between(a, b, [0.5])[0], expected)


def test_a_foreign_safetensors_is_refused_naming_the_file(tmp_path):
    path = tmp_path / "upscaler.safetensors"
    save_file({"body.0.weight": torch.randn(4, 3, 3, 3), "body.0.bias": torch.randn(4)}, str(path))
    with pytest.raises(InterpolatorError, match=f"upscaler.safetensors is not a {ARCHITECTURE} checkpoint"):
        load_interpolator(path)


def test_another_rife_layout_is_refused(tmp_path):
    """4.22's encoder gives 8 feature channels, not 4: the same names, other shapes."""
    with torch.device("meta"):
        shapes = {k: v.shape for k, v in IFNet().state_dict().items()}
    state = {k: torch.zeros(s) for k, s in shapes.items()}
    state["encode.cnn3.weight"] = torch.zeros(16, 8, 4, 4)
    save_file(state, str(tmp_path / "rife422.safetensors"))
    with pytest.raises(InterpolatorError, match=r"rife422.safetensors .*encode.cnn3.weight"):
        load_interpolator(tmp_path / "rife422.safetensors")
    unknown = dict(state, **{"encode.cnn3.weight": torch.zeros(16, 4, 4, 4), "module.extra.weight": torch.zeros(1)})
    torch.save(unknown, tmp_path / "extra.pth")
    with pytest.raises(InterpolatorError, match="unknown, e.g. extra.weight"):
        load_interpolator(tmp_path / "extra.pth")


class Planted:
    """Unpickling this would write the marker file (pickle calls open(marker, "w"))."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def test_a_pickle_holding_code_is_refused_without_running_it(tmp_path):
    marker = tmp_path / "ran.txt"
    path = tmp_path / "flownet.pth"
    torch.save({"block0.conv0.0.0.weight": Planted(marker)}, path)
    with pytest.raises(InterpolatorError, match="flownet.pth is not a .*objects other than tensors") as caught:
        load_interpolator(path)
    assert isinstance(caught.value, UserError)
    assert not marker.exists()


def test_the_pinned_weights_name_a_commit_and_a_checksum():
    assert len(RIFE_WEIGHTS.revision) == 40 and int(RIFE_WEIGHTS.revision, 16) >= 0
    assert len(RIFE_WEIGHTS.sha256) == 64 and int(RIFE_WEIGHTS.sha256, 16) >= 0
