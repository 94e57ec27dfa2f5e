"""Learned frame interpolation: RIFE 4.26, the IFNet of Practical-RIFE, written here from its description.

RIFE (Huang et al., "Real-Time Intermediate Flow Estimation for Video Frame Interpolation", ECCV 2022) estimates
the flow from a wanted in-between time t back to each of the two frames, coarse to fine, then warps both frames
to t and blends them with a learned mask. Version 4.x takes t as an input, so any t in (0, 1) is one pass.

The supported version is 4.26 (hzwer, 2024-09-21; the one Wan2GP uses). Its layout is the 4.25 one, which the
maintainer's notes for 4.25 describe as "more flow blocks, so the scale_list changes": a small feature encoder
(`encode`: three convolutions and a transposed one, 16 hidden channels, 4 feature channels per frame) and five
flow blocks (`block0`..`block4`, 192/128/96/64/32 channels) that work at 1/16, 1/8, 1/4, 1/2 and 1/1 of the
frame. Each block is two stride-2 convolutions (`conv0`), eight residual convolutions with a learned per-channel
gain (`convblock`, `beta`) and a transposed convolution with a pixel shuffle (`lastconv`) giving 13 channels: 4
of flow (two 2-D flows), 1 of mask and 8 of features for the next block. Where it comes from: the blocks, their
inputs and the coarse-to-fine loop from Practical-RIFE's train_log/IFNet_HDv3.py and RIFE_HDv3.py (scale list
16/8/4/2/1); the 4.25/4.26 widths (4 feature channels, 15 and 28 block inputs) from two independent
reimplementations (painebenjamin/RIFE, TheAnimeScripter's rifearches), and checked against the published files:
the 4.26 checkpoint holds 158 inference tensors, and this layout saved as safetensors is 22,674,392 bytes, the
size of a published 4.25/4.26 conversion (benjamin-paine/taproot-common). Nothing is copied. Parameter names
are the published ones so the published state dict loads strictly, after two documented steps: the "module."
prefix of its DistributedDataParallel wrapper is stripped and the 40 training-only tensors ("teacher." and
"caltime.", a distillation teacher and a time estimator the inference never runs) are dropped; every other key
and shape must match exactly. 4.25 files share the layout and load too; other versions are refused, naming the file.

Frames stream: a clip is read, interpolated and handed on a pair at a time, so memory stays flat in clip length
(two source frames and a batch of at most `BATCH` in-between frames are held).
"""

from __future__ import annotations

import io
import math
import os
import pickle
import shutil
import tempfile
import threading
import zipfile
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from pipelines.catalogue import HubFile
from pipelines.errors import UserError
from pipelines.testmodels import cache_root
from pipelines.weights import file_sha256

RIFE_VERSION = "4.26"
ARCHITECTURE = f"RIFE {RIFE_VERSION} IFNet"

# The maintainer's own Hub copy of the 4.26 release: the archive holds train_log/flownet.pkl (24,636,301 bytes,
# SHA-256 45c7f741…c6f53f, the file Wan2GP ships as rife4.26.pkl) beside the reference Python files, which are
# never run. Revision and SHA-256 as pinned by an independent build script (a MiniMax-H3 ComfyUI bake that
# checks both with sha256sum); the Hub's file list of hzwer/RIFE shows the same short commit (01fdc7e). Not yet
# downloaded here (no network): a wrong checksum would be refused by `fetch_file`, never loaded. A safetensors
# alternative of the same layout whose checksum the Hub's own commit page shows, version (4.25 or 4.26) not
# stated: benjamin-paine/taproot-common @ d556fe57524f691388df3d28a082a0ff1625e784,
# image-interpolation-rife-flownet.safetensors, e4638dde35c5467e3a29df4dfbd3b5972ab5919ecce39f8d9def482f70633368.
RIFE_WEIGHTS = HubFile(
    repo="hzwer/RIFE",
    revision="01fdc7e97404120c243c3ea7b427046e5dc7643e",
    filename="RIFEv4.26_0921.zip",
    sha256="1fa9b9cda3d9b8c3e301359e2595960902f97bf926c08598b0e9957a3f3f760e",
    name="RIFE 4.26",
    licence="MIT",
)

SCALES = (16, 8, 4, 2, 1)  # the blocks' working scale: each refines the flow at twice the previous resolution
PAD = 64  # 1/16 for the first block, then its two stride-2 convolutions: sizes must divide by 16 x 4
BATCH = 4  # in-between frames computed in one pass (a x4 factor's three times fit one batch)
FACTORS = (2, 4)
_TRAINING_ONLY = ("teacher.", "caltime.")
_ARCHIVE_MEMBER = "flownet.pkl"
_ARCHIVE_MAX_BYTES = 256 << 20  # the real member is 24.6 MB; anything far larger is not it (and not unpacked)
_TEST_BUILD = 1  # bump when the test model's layout or seed changes, so cached copies are rebuilt


class InterpolatorError(UserError):
    """A model file that is not a RIFE 4.26 checkpoint, or a request the interpolator cannot do."""


class InterpolationCancelled(Exception):
    """Raised between frame pairs once the caller's cancel event is set."""


# ---------------------------------------------------------------------------------------------------------------
# The network


def _leaky() -> nn.LeakyReLU:
    return nn.LeakyReLU(0.2, inplace=True)


class Head(nn.Module):
    """Per-frame features for the flow blocks: half resolution inside, full resolution out (4 channels)."""

    def __init__(self, hidden: int = 16, out: int = 4):
        super().__init__()
        self.cnn0 = nn.Conv2d(3, hidden, 3, 2, 1)
        self.cnn1 = nn.Conv2d(hidden, hidden, 3, 1, 1)
        self.cnn2 = nn.Conv2d(hidden, hidden, 3, 1, 1)
        self.cnn3 = nn.ConvTranspose2d(hidden, out, 4, 2, 1)
        self.relu = _leaky()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.cnn0(x))
        x = self.relu(self.cnn1(x))
        x = self.relu(self.cnn2(x))
        return self.cnn3(x)


class ResConv(nn.Module):
    """A residual 3x3 convolution whose branch is scaled by a learned per-channel gain (`beta`)."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, 1, 1)
        self.beta = nn.Parameter(torch.ones(1, channels, 1, 1))
        self.relu = _leaky()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.relu(self.conv(x) * self.beta + x)


class IFBlock(nn.Module):
    """One flow block: at 1/`scale` of the frame, it reads its inputs (and the flow so far) and returns a flow
    (or a flow correction), the blend mask's logits and 8 feature channels for the next block, all at full size.
    Inside, it works at a further quarter resolution and comes back up by a transposed convolution and a pixel
    shuffle, which is why its input must divide by 4."""

    OUT = 13  # 4 flow + 1 mask + 8 features, after the pixel shuffle

    def __init__(self, in_channels: int, channels: int):
        super().__init__()
        self.conv0 = nn.Sequential(
            nn.Sequential(nn.Conv2d(in_channels, channels // 2, 3, 2, 1), _leaky()),
            nn.Sequential(nn.Conv2d(channels // 2, channels, 3, 2, 1), _leaky()),
        )
        self.convblock = nn.Sequential(*(ResConv(channels) for _ in range(8)))
        self.lastconv = nn.Sequential(nn.ConvTranspose2d(channels, self.OUT * 4, 4, 2, 1), nn.PixelShuffle(2))

    def forward(
        self, x: torch.Tensor, flow: torch.Tensor | None, scale: int
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        x = _resize(x, 1 / scale)
        if flow is not None:  # the flow so far, in this scale's pixels
            x = torch.cat((x, _resize(flow, 1 / scale) / scale), 1)
        out = _resize(self.lastconv(self.convblock(self.conv0(x))), scale)
        return out[:, :4] * scale, out[:, 4:5], out[:, 5:]


def _resize(x: torch.Tensor, factor: float) -> torch.Tensor:
    """Bilinear resize by `factor`; sizes are multiples of `PAD`, so every factor here gives whole sizes."""
    return x if factor == 1 else F.interpolate(x, scale_factor=factor, mode="bilinear", align_corners=False)


def backward_warp(image: torch.Tensor, flow: torch.Tensor) -> torch.Tensor:
    """`image` sampled at each pixel plus `flow` (in pixels, x then y): output(p) = image(p + flow(p)), bilinear,
    the border pixels repeated outside the frame. The sampling positions are always float32: in float16 a
    1280-pixel row's positions would be off by up to half a pixel."""
    n, _, h, w = flow.shape
    flow = flow.float()
    ys = torch.linspace(-1.0, 1.0, h, device=flow.device)
    xs = torch.linspace(-1.0, 1.0, w, device=flow.device)
    grid_y, grid_x = torch.meshgrid(ys, xs, indexing="ij")
    # align_corners=True: -1 and +1 are the centres of the first and last pixels, so one pixel is 2 / (size - 1)
    x = grid_x + flow[:, 0] * (2.0 / (w - 1))
    y = grid_y + flow[:, 1] * (2.0 / (h - 1))
    grid = torch.stack((x, y), dim=-1)
    warped = F.grid_sample(image.float(), grid, mode="bilinear", padding_mode="border", align_corners=True)
    return warped.to(image.dtype)


class IFNet(nn.Module):
    """RIFE 4.26's flow network. Frames: (N, 3, H, W) in [0, 1] with H and W multiples of `PAD`; `timestep`:
    (N,) in (0, 1). Returns the frame at each time, (N, 3, H, W)."""

    FEATURES = 4  # per frame, from `encode`

    def __init__(self, widths: Sequence[int] = (192, 128, 96, 64, 32)):
        super().__init__()
        first = 3 + 3 + 2 * self.FEATURES + 1  # both frames, their features, the time
        later = 6 + 2 * self.FEATURES + 1 + 1 + 8 + 4  # both warped, their warped features, time, mask, feat, flow
        self.block0 = IFBlock(first, widths[0])
        self.block1 = IFBlock(later, widths[1])
        self.block2 = IFBlock(later, widths[2])
        self.block3 = IFBlock(later, widths[3])
        self.block4 = IFBlock(later, widths[4])
        self.encode = Head(out=self.FEATURES)

    def forward(self, img0: torch.Tensor, img1: torch.Tensor, timestep: torch.Tensor) -> torch.Tensor:
        n, _, h, w = img0.shape
        time = timestep.to(img0.dtype).view(-1, 1, 1, 1).expand(n, 1, h, w)

        # 1. Features of each frame, computed once and warped along with the frame at every later step.
        f0, f1 = self.encode(img0), self.encode(img1)
        frame_and_features0, frame_and_features1 = torch.cat((img0, f0), 1), torch.cat((img1, f1), 1)

        # 2. The coarsest block guesses both flows (time -> frame 0, time -> frame 1) from the frames alone.
        flow, mask, feat = self.block0(torch.cat((img0, img1, f0, f1, time), 1), None, SCALES[0])

        # 3. Each finer block sees both frames (and features) warped by the flow so far, the time, the last mask
        #    and features, and adds a correction to the flow; the mask is replaced, not accumulated.
        for block, scale in zip((self.block1, self.block2, self.block3, self.block4), SCALES[1:], strict=True):
            warped0 = backward_warp(frame_and_features0, flow[:, :2])
            warped1 = backward_warp(frame_and_features1, flow[:, 2:4])
            inputs = torch.cat((warped0[:, :3], warped1[:, :3], warped0[:, 3:], warped1[:, 3:], time, mask, feat), 1)
            correction, mask, feat = block(inputs, flow, scale)
            flow = flow + correction

        # 4. Warp both frames to the time with the final flow; the sigmoid of the mask says how much of frame 0
        #    each pixel takes (occlusions come from whichever frame still shows that spot).
        weight0 = torch.sigmoid(mask)
        return backward_warp(img0, flow[:, :2]) * weight0 + backward_warp(img1, flow[:, 2:4]) * (1 - weight0)


# ---------------------------------------------------------------------------------------------------------------
# Loading


def _read_tensors(path: Path) -> dict[str, torch.Tensor]:
    """The file's tensors by name, read without running any code from it: safetensors, or a PyTorch pickle read
    with `weights_only=True` (tensors and plain containers only; a pickle naming any other object is refused
    before that object is made), or the maintainer's release archive holding one such pickle."""
    suffix = path.suffix.lower()
    try:
        if suffix == ".safetensors":
            from safetensors import SafetensorError
            from safetensors.torch import load_file

            try:
                return load_file(str(path), device="cpu")
            except SafetensorError as err:
                raise ValueError(err) from None
        if suffix in (".pkl", ".pth", ".pt"):
            return torch.load(path, map_location="cpu", weights_only=True)
        if suffix == ".zip":
            return torch.load(io.BytesIO(_archive_member(path)), map_location="cpu", weights_only=True)
    except (OSError, EOFError, ValueError, RuntimeError, pickle.UnpicklingError, zipfile.BadZipFile) as err:
        if isinstance(err, FileNotFoundError):
            raise InterpolatorError(f"The interpolation model {path} does not exist.") from None
        if isinstance(err, pickle.UnpicklingError) and "weights only" in str(err).lower():
            reason = "it holds objects other than tensors, which are never loaded"
        else:
            reason = str(err).strip().splitlines()[0][:160] if str(err).strip() else type(err).__name__
        raise InterpolatorError(f"{path.name} is not a {ARCHITECTURE} checkpoint ({reason}).") from None
    raise InterpolatorError(f"{path.name} is not a {ARCHITECTURE} checkpoint (not .safetensors, .pkl, .pth or .zip).")


def _archive_member(path: Path) -> bytes:
    """The one flownet.pkl in a release archive (macOS resource forks beside it ignored), read into memory."""
    with zipfile.ZipFile(path) as archive:
        members = [
            m for m in archive.infolist()
            if Path(m.filename).name == _ARCHIVE_MEMBER and not m.filename.startswith("__MACOSX/")
        ]  # fmt: skip
        if len(members) != 1:
            raise ValueError(f"the archive holds {len(members)} {_ARCHIVE_MEMBER} files, not one")
        if members[0].file_size > _ARCHIVE_MAX_BYTES:
            raise ValueError(f"its {_ARCHIVE_MEMBER} is {members[0].file_size} bytes")
        return archive.read(members[0])


def _published_keys(tensors: object, path: Path) -> dict[str, torch.Tensor]:
    """The inference tensors under this module's names: the wrapper's "module." prefix stripped and the
    training-only tensors dropped (see the module's docstring); nothing else is renamed or skipped."""
    if not isinstance(tensors, dict) or not all(isinstance(v, torch.Tensor) for v in tensors.values()):
        raise InterpolatorError(f"{path.name} is not a {ARCHITECTURE} checkpoint (it holds no state dict).")
    state = {}
    for key, value in tensors.items():
        name = key.removeprefix("module.") if isinstance(key, str) else key
        if isinstance(name, str) and name.startswith(_TRAINING_ONLY):
            continue
        state[name] = value
    return state


def _check_layout(state: dict[str, torch.Tensor], net: IFNet, path: Path) -> None:
    expected = {name: tuple(t.shape) for name, t in net.state_dict().items()}
    missing = sorted(set(expected) - set(state))
    extra = sorted(str(k) for k in set(state) - set(expected))
    wrong = sorted(k for k in set(expected) & set(state) if tuple(state[k].shape) != expected[k])
    floats = all(t.is_floating_point() for t in state.values())
    if missing or extra or wrong or not floats:
        first = (
            f"{len(missing)} missing, e.g. {missing[0]}" if missing
            else f"{len(extra)} unknown, e.g. {extra[0]}" if extra
            else f"{wrong[0]} is {tuple(state[wrong[0]].shape)}, not {expected[wrong[0]]}" if wrong
            else "its tensors are not floating point"
        )  # fmt: skip
        raise InterpolatorError(f"{path.name} is not a {ARCHITECTURE} checkpoint ({first}).")


@dataclass(frozen=True)
class InterpolatorInfo:
    """What a clip's sidecar and Content Credentials record about the model that made its in-between frames."""

    name: str
    path: Path
    sha256: str
    version: str = RIFE_VERSION
    architecture: str = ARCHITECTURE


def load_interpolator(path: Path, device: str | torch.device = "cpu") -> Interpolator:
    """A RIFE 4.26 interpolator from a `.safetensors` file (preferred), a `.pkl`/`.pth`/`.pt` PyTorch pickle (read with
    `torch.load(weights_only=True)`: it cannot run code) or the maintainer's `.zip` release. Any file whose
    tensors are not exactly this architecture's is refused with `InterpolatorError` naming the file. Runs in
    float16 on CUDA (Practical-RIFE's own half-precision mode: half the memory, tensor cores; the warps stay
    float32) and float32 elsewhere."""
    path = Path(path)
    device = torch.device(device)
    state = _published_keys(_read_tensors(path), path)
    with torch.device("meta"):  # shapes only: the file's tensors are assigned, nothing is initialised twice
        net = IFNet()
    _check_layout(state, net, path)
    net.load_state_dict(state, strict=True, assign=True)
    dtype = torch.float16 if device.type == "cuda" else torch.float32
    net = net.to(device=device, dtype=dtype).eval().requires_grad_(False)
    sha256 = file_sha256(path)
    name = _stored_name(path) or (RIFE_WEIGHTS.name if sha256 == RIFE_WEIGHTS.sha256 else f"RIFE ({path.name})")
    return Interpolator(net, InterpolatorInfo(name=name, path=path, sha256=sha256), device, dtype)


def _stored_name(path: Path) -> str | None:
    """The name a safetensors file carries in its metadata (the test model says it is one)."""
    if path.suffix.lower() != ".safetensors":
        return None
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        return (f.metadata() or {}).get("name")


# ---------------------------------------------------------------------------------------------------------------
# Running


class Interpolator:
    """A loaded RIFE network and the frame plumbing around it: uint8 RGB frames (H, W, 3) in and out, any size
    (padded to a multiple of `PAD` by repeating the edge, cropped back)."""

    def __init__(self, net: IFNet, info: InterpolatorInfo, device: torch.device, dtype: torch.dtype):
        self.net, self.info, self.device, self.dtype = net, info, device, dtype

    # -- one pair ---------------------------------------------------------------------------------------------

    def between(self, a: np.ndarray, b: np.ndarray, times: Sequence[float]) -> list[np.ndarray]:
        """The frames at each of `times` between `a` (time 0) and `b` (time 1). A time of exactly 0 or 1 gives a
        copy of that frame; others are one network pass each, `BATCH` at a time."""
        shape = _check_frame(a)
        if _check_frame(b) != shape:
            raise ValueError(f"the two frames differ in size: {a.shape} and {b.shape}")
        return list(self._times(self._tensor(a), self._tensor(b), a, b, list(times)))

    def _times(
        self, ta: torch.Tensor, tb: torch.Tensor, a: np.ndarray, b: np.ndarray, times: list[float]
    ) -> Iterator[np.ndarray]:
        """`between` as a stream, on tensors already made: a batch of learned frames at a time, in order."""
        for t in times:
            if not 0.0 <= t <= 1.0:
                raise ValueError(f"times lie in [0, 1], not {t}")
        height, width = a.shape[:2]
        batch: list[float] = []
        for t in times:
            if t in (0.0, 1.0):
                if batch:
                    yield from self._run(ta, tb, batch, height, width)
                    batch = []
                yield (a if t == 0.0 else b).copy()
                continue
            batch.append(t)
            if len(batch) == BATCH:
                yield from self._run(ta, tb, batch, height, width)
                batch = []
        if batch:
            yield from self._run(ta, tb, batch, height, width)

    @torch.inference_mode()
    def _run(self, ta: torch.Tensor, tb: torch.Tensor, times: list[float], height: int, width: int) -> list:
        n = len(times)
        timestep = torch.tensor(times, device=self.device, dtype=self.dtype)
        out = self.net(ta.expand(n, -1, -1, -1), tb.expand(n, -1, -1, -1), timestep)
        out = out[:, :, :height, :width].float().clamp_(0, 1).mul_(255).round_().to(torch.uint8)
        return [frame.numpy() for frame in out.permute(0, 2, 3, 1).contiguous().cpu()]

    def _tensor(self, frame: np.ndarray) -> torch.Tensor:
        """(1, 3, H', W') in [0, 1] on the device, H' and W' rounded up to `PAD`. The edge is repeated rather
        than zero-filled, so the padding looks like more of the picture instead of a black border to match."""
        height, width = frame.shape[:2]
        t = torch.from_numpy(np.ascontiguousarray(frame)).to(self.device).permute(2, 0, 1)[None]
        t = t.to(self.dtype) / 255
        pad_h, pad_w = -height % PAD, -width % PAD
        return F.pad(t, (0, pad_w, 0, pad_h), mode="replicate") if pad_h or pad_w else t

    # -- streams ----------------------------------------------------------------------------------------------

    def by_factor(
        self,
        frames: Iterable[np.ndarray],
        factor: int,
        cancel: threading.Event | None = None,
        on_frame: Callable[[int], None] | None = None,
    ) -> Iterator[np.ndarray]:
        """n frames in, (n - 1) * factor + 1 out: each source frame unchanged (the same array) at positions 0,
        factor, 2 * factor..., and factor - 1 learned frames at equal times between each pair. `on_frame` gets
        the number of frames produced so far; `cancel` is looked at before each new source frame is read."""
        if isinstance(factor, bool) or factor not in FACTORS:
            raise InterpolatorError(f"RIFE interpolation multiplies frames by 2 or 4, not {factor}.")
        times = [k / factor for k in range(1, factor)]
        return self._stream(frames, lambda index: times, cancel, on_frame, end=None)

    def to_fps(
        self,
        frames: Iterable[np.ndarray],
        source_fps: float,
        target_fps: float,
        cancel: threading.Event | None = None,
        on_frame: Callable[[int], None] | None = None,
    ) -> Iterator[np.ndarray]:
        """The clip at `target_fps` for the same duration: n frames (n / source_fps seconds) become
        round(n * target_fps / source_fps), frame k showing time k / target_fps. A time on a source frame gives
        that frame unchanged; a time between two gives RIFE's frame at that fraction; times after the last
        source frame (it is shown for 1 / source_fps seconds) repeat it. The target must be at least half the
        source rate: then every output time is met while its pair is at hand, and the count is known only at
        the end of a stream."""
        for value, label in ((source_fps, "source"), (target_fps, "target")):
            if not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
                raise InterpolatorError(f"The {label} frame rate must be a positive number, not {value!r}.")
        step = _rational(source_fps) / _rational(target_fps)  # source frames per output frame
        if step > 2:
            raise InterpolatorError(
                f"RIFE can take {source_fps:g} fps down to {source_fps / 2:g} fps at the least, not {target_fps:g} fps."
            )
        counter = {"k": 0}

        def times_in(left: int) -> list[float]:
            """Output frames whose source time lies in [left, left + 1), as fractions (0: the left frame)."""
            found = []
            while counter["k"] * step < left + 1:
                found.append(float(counter["k"] * step - left))
                counter["k"] += 1
            return found

        def end(count: int) -> int:
            """How many frames remain once the stream held `count` source frames: the rest of the duration."""
            return max(0, round(count / step) - counter["k"])

        return self._stream(frames, times_in, cancel, on_frame, end=end)

    def _stream(
        self,
        frames: Iterable[np.ndarray],
        times_in: Callable[[int], list[float]],
        cancel: threading.Event | None,
        on_frame: Callable[[int], None] | None,
        end: Callable[[int], int] | None,
    ) -> Iterator[np.ndarray]:
        """The generator behind both streams: a pair at a time, the right frame's tensor kept for the next pair.
        `times_in(i)` gives the times wanted in [i, i + 1) as fractions (0 is frame i itself, yielded as is);
        for a factor the frame at i is always yielded first. `end(n)` says how many copies of the last frame
        close the stream (None: just the last frame once, as a factor wants)."""
        source = iter(frames)
        produced = 0

        def out(frame: np.ndarray) -> np.ndarray:
            nonlocal produced
            produced += 1
            if on_frame is not None:
                on_frame(produced)
            return frame

        def next_frame() -> np.ndarray | None:
            if cancel is not None and cancel.is_set():
                raise InterpolationCancelled()
            return next(source, None)

        def generate() -> Iterator[np.ndarray]:
            left = next_frame()
            if left is None:
                return
            shape, left_tensor, index = _check_frame(left), self._tensor(left), 0
            while (right := next_frame()) is not None:
                if _check_frame(right) != shape:
                    raise ValueError(f"frame {index + 1} is {right.shape}, the clip's frames are {left.shape}")
                right_tensor = self._tensor(right)
                times = times_in(index)
                if end is None:
                    yield out(left)  # a factor: the source frame, then the learned frames after it
                elif times and times[0] == 0.0:
                    yield out(left)
                    times = times[1:]
                for frame in self._times(left_tensor, right_tensor, left, right, times):
                    yield out(frame)
                left, left_tensor, index = right, right_tensor, index + 1
            for _ in range(1 if end is None else end(index + 1)):
                yield out(left)

        return generate()


def _check_frame(frame: np.ndarray) -> tuple[int, ...]:
    if not isinstance(frame, np.ndarray) or frame.dtype != np.uint8 or frame.ndim != 3 or frame.shape[2] != 3:
        got = f"{frame.dtype} {frame.shape}" if isinstance(frame, np.ndarray) else type(frame).__name__
        raise ValueError(f"frames are uint8 arrays of shape (height, width, 3), not {got}")
    return frame.shape


def _rational(fps: float) -> Fraction:
    """A frame rate as an exact fraction (30000/1001 stays itself), so times that fall on source frames do."""
    return Fraction(fps).limit_denominator(1_000_000)


# ---------------------------------------------------------------------------------------------------------------
# The random-weight test model


def build_test_rife(folder: Path) -> Path:
    """A full-size RIFE 4.26 network with fixed random weights, saved as safetensors in `folder`: tests and a
    machine without the real weights go through the same loader and forward pass. Its frames are not useful."""
    from safetensors.torch import save_file

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(4026)
        net = IFNet()
    state = {name: t.detach().contiguous() for name, t in net.state_dict().items()}
    path = Path(folder) / f"rife-test-v{_TEST_BUILD}.safetensors"
    save_file(state, str(path), metadata={"name": "RIFE test model (random weights)", "version": RIFE_VERSION})
    return path


def ensure_test_rife() -> Path:
    """The cached test model, built the first time (into a staging folder, then renamed into place)."""
    root = cache_root()
    final = root / f"rife-test-v{_TEST_BUILD}.safetensors"
    if final.is_file():
        return final
    root.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".rife-", dir=root))
    try:
        os.replace(build_test_rife(staging), final)  # atomic; two builders write the same bytes
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return final
