"""An invisible video watermark that survives re-encoding, rescaling, cropping, letterboxing, frame-rate changes,
trimming and editing into a film: a tiled, band-limited spread-spectrum pattern in luma, found again by
autocorrelation (its period gives the scale) and a synchronisation pattern (its cyclic offset gives the crop).

Embedding. One TILE x TILE pattern is made once per payload (and cached): a sync pattern plus 48 orthonormal
carriers, each the sign of one codeword bit (32 payload bits + CRC-16). All 49 are band-limited noise (periods
of about 9 to 40 pixels), so they live through H.264 and a halving of the frame. The tile repeats over the frame
from its top-left corner, and the same pattern goes into every frame: embedding is frame-independent (a clip
marked in pieces equals the clip marked whole) and a frame-rate change or a trim keeps it. Per frame, only a
perceptual mask is computed (local luma activity on 4x4 blocks from a 2x2-subsampled luma, smoothed): textured
areas carry up to STRENGTH levels, flat areas (sky, walls, gradients) at most one level here and there. The
pattern is cached in int16 fixed point per (payload, frame size) and weighted per block by broadcasting; the
change is applied with saturating uint8 arithmetic (7-12.5 ms per 720P frame on 2 shared EPYC cores).

Reading. The frames' luma is averaged (the pattern adds up, moving content washes out), whitened in the
frequency domain, and its autocorrelation says the tile's period in pixels, i.e. the scale (0.3x to 2.6x).
Around the best periods (and the unscaled one) the whitened image is folded modulo the period onto one tile, and
a cyclic correlation with the sync pattern finds the offset; a peak of CONFIDENCE_MIN sigmas (calibrated on
unmarked video) is required, then the carriers give soft bits, the weakest of which may be flipped (Chase
decoding, at most 2**CHASE_BITS tries) until the CRC checks. A payload needs both. False-positive bound: on an
unmarked clip whose sync peak passes CONFIDENCE_MIN by chance, each of the 2**CHASE_BITS candidates passes the
CRC-16 with probability 2**-16, so P(false payload) <= P(peak >= CONFIDENCE_MIN) * 2**(CHASE_BITS - 16) =
P(peak >= 8 sigma) / 1024; in bench/bench_watermark.py no unmarked clip of 500 reached the threshold.
Limits: no rotation, no change of aspect ratio by stretching, no mirroring; flat clips
carry a weak mark; clips much smaller than a tile carry fewer samples and need more frames.
numpy only: no model, no download.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from itertools import combinations

import numpy as np

TILE = 128  # the pattern's period in pixels at the embedding size
BAND = (3.2, 14.0)  # the pattern's spatial frequencies, in cycles per tile
STRENGTH = 5.5  # luma levels on textured areas (before the mask)
SHARE_BITS = 5
SHARE_ONE = 1 << SHARE_BITS  # fixed point of the mask's share and of the pattern in the embedder
MASK_FLOOR = 0.04  # share of STRENGTH on perfectly flat areas (at most one level)
ACTIVITY_FULL = 10.0  # local luma activity (levels) at which the full strength is used
SYNC_SHARE = 0.1  # share of the pattern's power in the sync pattern
PAYLOAD_BITS = 32
CRC_BITS = 16
CODE_BITS = PAYLOAD_BITS + CRC_BITS
CHASE_BITS = 6  # least reliable bits tried flipped when the CRC fails
CONFIDENCE_MIN = 8.0  # sync peak height (sigmas) needed to decode; unmarked video peaked at 7.4 in 500
SCALES = (0.3, 2.6)  # scales searched: the reading frame's size over the marked one's
KEY = 0x5741_4E32  # "WAN2": public, so any copy of Wan Studio reads any other's marks
_RGB_TO_Y = np.array([0.299, 0.587, 0.114], np.float32)
WINDOW_FRAMES = 24  # read_file sums frames in groups of this many and reads two groups at a time


@dataclass(frozen=True)
class WatermarkReading:
    payload: int | None  # None when no valid codeword was found
    bit_agreement: float  # share of per-tile bit readings that agree with the decoded codeword (0.5 = noise)
    blocks: int  # per-tile bit readings that voted
    confidence: float = 0.0  # the sync peak in sigmas (CONFIDENCE_MIN needed)
    scale: float = 1.0  # the reading frame's scale relative to the marked one
    offset: tuple[int, int] = (0, 0)  # where the tile's origin was found (rows, columns, in marked pixels)
    bits: tuple[int, ...] = ()  # the codeword bits as read, before correction


def crc16(value: int, bits: int = PAYLOAD_BITS) -> int:
    """CRC-16/CCITT over the payload's bits."""
    crc = 0xFFFF
    for i in reversed(range(bits)):
        bit = (value >> i) & 1
        top = (crc >> 15) & 1
        crc = (crc << 1) & 0xFFFF
        if top ^ bit:
            crc ^= 0x1021
    return crc


def codeword(payload: int) -> np.ndarray:
    if not 0 <= payload < 2**PAYLOAD_BITS:
        raise ValueError(f"the payload must fit {PAYLOAD_BITS} bits")
    value = (payload << CRC_BITS) | crc16(payload)
    return np.array([(value >> (CODE_BITS - 1 - i)) & 1 for i in range(CODE_BITS)], dtype=np.int64)


@lru_cache(maxsize=1)
def _patterns() -> np.ndarray:
    """(1 + CODE_BITS, TILE, TILE): the sync pattern and the carriers, orthonormal, band-limited, from KEY."""
    rng = np.random.default_rng(KEY)
    ky = np.fft.fftfreq(TILE, 1 / TILE)[:, None]
    kx = np.fft.rfftfreq(TILE, 1 / TILE)[None, :]
    radius = np.hypot(ky, kx)
    band = (radius >= BAND[0]) & (radius <= BAND[1])
    spectra = rng.standard_normal((1 + CODE_BITS, *band.shape)) + 1j * rng.standard_normal((1 + CODE_BITS, *band.shape))
    tiles = np.fft.irfft2(spectra * band, s=(TILE, TILE)).reshape(1 + CODE_BITS, -1)
    q, _ = np.linalg.qr(tiles.T)  # orthonormal columns, still in the band
    q = q.T * np.sign(np.sum(q.T * tiles, axis=1, keepdims=True))
    return (q * TILE).reshape(1 + CODE_BITS, TILE, TILE).astype(np.float32)  # unit RMS each


@lru_cache(maxsize=4)
def _tile(payload: int) -> np.ndarray:
    """The payload's pattern over one tile, unit RMS."""
    p = _patterns()
    signs = codeword(payload) * 2.0 - 1.0
    tile = np.sqrt(SYNC_SHARE) * p[0] + np.sqrt((1 - SYNC_SHARE) / CODE_BITS) * np.tensordot(signs, p[1:], axes=1)
    # shifted cyclically by the payload, so a mark laid over another (a film of marked clips) sits at another
    # offset and the two do not cancel: the reader's offset search finds one of them whole
    shift = (payload * 0x9E3779B1) >> 7
    return np.roll(tile / tile.std(), (shift % TILE, (shift >> 7) % TILE), axis=(0, 1)).astype(np.float32)


@lru_cache(maxsize=4)
def _frame_pattern(payload: int, height: int, width: int) -> np.ndarray:
    """The tile repeated over the frame rounded up to whole 4x4 blocks, times STRENGTH, in int16 fixed point
    (x SHARE_ONE), shaped (blocks down, 4, blocks across, 4) to be weighted per block by broadcasting."""
    hb, wb = -(-height // 4), -(-width // 4)
    reps = (-(-hb * 4 // TILE), -(-wb * 4 // TILE))
    tiled = np.tile(_tile(payload) * (STRENGTH * SHARE_ONE), reps)[: hb * 4, : wb * 4]
    return np.rint(tiled).astype(np.int16).reshape(hb, 4, wb, 4)


def _luma(frames: np.ndarray) -> np.ndarray:
    return frames.astype(np.float32) @ _RGB_TO_Y


def _box3(a: np.ndarray) -> np.ndarray:
    """3x3 mean with edge replication."""
    p = np.pad(a, 1, mode="edge")
    rows = p[:-2] + p[1:-1] + p[2:]
    return (rows[:, :-2] + rows[:, 1:-1] + rows[:, 2:]) / 9


def _mask(frame: np.ndarray) -> np.ndarray:
    """(blocks down, blocks across) int16 share of STRENGTH per 4x4 block, in 1/SHARE_ONE: local luma activity
    (texture inside a block, from its 2x2 subsampled luma, and steps between blocks), smoothed; MASK_FLOOR on
    flat areas, 1 from ACTIVITY_FULL up. Computed on a quarter of the pixels."""
    height, width = frame.shape[:2]
    hb, wb = -(-height // 4), -(-width // 4)
    rgb = frame[::2, ::2]
    sub = rgb[..., 0] * _RGB_TO_Y[0] + rgb[..., 1] * _RGB_TO_Y[1] + rgb[..., 2] * _RGB_TO_Y[2]
    if sub.shape != (2 * hb, 2 * wb):
        sub = np.pad(sub, ((0, 2 * hb - sub.shape[0]), (0, 2 * wb - sub.shape[1])), mode="edge")
    corners = (sub[0::2, 0::2], sub[0::2, 1::2], sub[1::2, 0::2], sub[1::2, 1::2])  # the 4 samples of each block
    mean = sum(corners) / 4  # (sums of the 4 samples, not mean(axis=...): 10x faster)
    square = sum(c * c for c in corners) / 4
    inner = np.sqrt(np.maximum(square - mean * mean, 0))
    step = np.abs(mean - _box3(mean)) * 2
    activity = _box3(_box3(np.minimum(inner + step, 3 * ACTIVITY_FULL)))
    share = MASK_FLOOR + (1 - MASK_FLOOR) * np.clip(activity / ACTIVITY_FULL, 0, 1)
    return np.rint(share * SHARE_ONE).astype(np.int16)


def embed(frames: np.ndarray, payload: int) -> np.ndarray:
    """Return watermarked copies of (F, H, W, 3) uint8 frames (`embed_frame` on each)."""
    out = np.empty_like(frames)
    for n, frame in enumerate(frames):
        embed_frame(frame, payload, out=out[n])
    return out


def embed_frame(frame: np.ndarray, payload: int, out: np.ndarray | None = None) -> np.ndarray:
    """Return a watermarked copy of one (H, W, 3) uint8 frame (into `out` when given). The change is a luma-only
    offset, the same pattern in every frame weighted by the frame's own mask, so a writer marks each frame as it
    encodes it (`media.Mp4Writer(mark=...)`): the mark is computed while x264 encodes the frames before, and no
    marked copy of the whole clip is held. Per frame (2.5 ms at 720P): the mask on a quarter of the pixels, one
    int16 multiply broadcast per 4x4 block, and one int16 add of the frame and the change (no float frame)."""
    height, width, _ = frame.shape
    pattern = _frame_pattern(payload, height, width)
    share = _mask(frame)
    delta = pattern * share[:, None, :, None]
    delta += SHARE_ONE * SHARE_ONE // 2
    delta >>= 2 * SHARE_BITS  # rounded luma levels
    delta = np.repeat(delta.reshape(pattern.shape[0] * 4, -1)[:height, :width], 3, axis=1)  # the same on R, G, B
    marked = np.add(frame, delta.reshape(height, width, 3), dtype=np.int16)
    np.clip(marked, 0, 255, out=marked)
    if out is None:
        return marked.astype(np.uint8)
    out[...] = marked
    return out


def _whiten(plane: np.ndarray) -> np.ndarray:
    """The plane with its spectrum flattened (each frequency divided by its neighbourhood's mean magnitude):
    content's smooth spectrum goes flat, the tiled pattern's line spectrum stands out."""
    z = plane - plane.mean()
    spectrum = np.fft.rfft2(z)
    magnitude = np.abs(spectrum)
    k = 4  # neighbourhood: (2k+1)^2 frequencies
    padded = np.pad(magnitude, ((k, k), (0, 0)), mode="wrap")
    padded = np.pad(padded, ((0, 0), (k, k)), mode="reflect")
    c = np.cumsum(np.cumsum(padded, axis=0), axis=1)
    c = np.pad(c, ((1, 0), (1, 0)))
    n = 2 * k + 1
    local = (c[n:, n:] - c[:-n, n:] - c[n:, :-n] + c[:-n, :-n]) / n**2
    white = spectrum / (local + 1e-6 * (local.max() + 1e-12))
    h, w = plane.shape
    fy = np.abs(np.fft.fftfreq(h))[:, None]
    fx = np.fft.rfftfreq(w)[None, :]
    white[np.hypot(fy, fx) < 0.004] = 0  # gradients, letterbox bars
    return np.fft.irfft2(white, s=plane.shape).astype(np.float32)


@lru_cache(maxsize=1)
def _lattice() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The tile's frequencies (cycles per tile, half plane, off the axes) and the patterns' power at each."""
    ky = np.fft.fftfreq(TILE, 1 / TILE)[:, None] * np.ones((1, TILE // 2 + 1))
    kx = np.fft.rfftfreq(TILE, 1 / TILE)[None, :] * np.ones((TILE, 1))
    power = (np.abs(_spectra()) ** 2).sum(axis=0)
    keep = (np.hypot(ky, kx) >= BAND[0]) & (np.hypot(ky, kx) <= BAND[1]) & (ky != 0) & (kx != 0)
    return ky[keep], kx[keep], power[keep] / power[keep].mean()


def _scales(white: np.ndarray, count: int = 5) -> list[float]:
    """The likeliest scales from the plane's power spectrum: a tiled pattern is a lattice of spectral lines
    whose spacing says the tile's period (offset plays no part). Each scale's score is the mean power at
    its lattice points; the local maxima come first."""
    h, w = white.shape
    power = np.abs(np.fft.rfft2(white)) ** 2
    power /= power.mean() + 1e-12
    power = power + np.roll(power, 1, axis=0)  # a line between bins leaks into its neighbours
    power[:, 1:] += power[:, :-1].copy()
    ky, kx, weight = _lattice()
    scales = np.exp(np.arange(np.log(SCALES[0]), np.log(SCALES[1]), 0.002))
    by = ky[None, :] * h / (TILE * scales[:, None])
    bx = kx[None, :] * w / (TILE * scales[:, None])
    inside = (bx < power.shape[1] - 1) & (np.abs(by) < h / 2 - 1)
    y0, x0 = np.floor(by).astype(np.int64), np.floor(bx).astype(np.int64)
    fy, fx = by - y0, bx - x0
    value = sum(
        power[(y0 + i) % h, np.minimum(x0 + j, power.shape[1] - 1)] * (fy if i else 1 - fy) * (fx if j else 1 - fx)
        for i in (0, 1)
        for j in (0, 1)
    )  # fmt: skip
    points = (inside * weight).sum(axis=1)
    score = np.where(points > 20, (value * inside * weight).sum(axis=1) / np.maximum(points, 1), 0)
    peaks = [i for i in range(1, len(score) - 1) if score[i] >= score[i - 1] and score[i] >= score[i + 1]]
    peaks.sort(key=lambda i: -score[i])
    found: list[float] = []
    for i in peaks:
        if all(abs(np.log(scales[i] / f)) > 0.01 for f in found):
            found.append(float(scales[i]))
        if len(found) == count:
            break
    return found


def _fold(white: np.ndarray, scale: float, groups: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """The whitened plane mapped to the marked size and folded onto one tile, each pixel shared bilinearly
    between its four nearest tile positions: (sum, weight), per source tile when `groups`."""
    h, w = white.shape
    rows = np.maximum((np.arange(h) + 0.5) / scale - 0.5, 0)  # pixel centres, as ffmpeg's scale maps them
    cols = np.maximum((np.arange(w) + 0.5) / scale - 0.5, 0)
    r0, c0 = np.floor(rows).astype(np.int64), np.floor(cols).astype(np.int64)
    fr, fc = (rows - r0).astype(np.float32), (cols - c0).astype(np.float32)
    size = TILE * TILE
    gw = int(c0.max()) // TILE + 2
    n = size * (gw * (int(r0.max()) // TILE + 2) if groups else 1)
    flat = white.ravel()
    total = np.zeros(n)
    weight = np.zeros(n)
    for dr in (0, 1):
        for dc in (0, 1):
            r, c = r0 + dr, c0 + dc
            index = ((r % TILE) * TILE)[:, None] + (c % TILE)[None, :]
            if groups:
                index = index + (((r0 // TILE) * gw)[:, None] + (c0 // TILE)[None, :]) * size
            share = ((fr if dr else 1 - fr)[:, None] * (fc if dc else 1 - fc)[None, :]).ravel()
            total += np.bincount(index.ravel(), weights=flat * share, minlength=n)
            weight += np.bincount(index.ravel(), weights=share, minlength=n)
    return total.reshape(-1, TILE, TILE).squeeze(0) if not groups else total.reshape(-1, TILE, TILE), (
        weight.reshape(-1, TILE, TILE).squeeze(0) if not groups else weight.reshape(-1, TILE, TILE)
    )


@lru_cache(maxsize=1)
def _spectra() -> np.ndarray:
    return np.conj(np.fft.rfft2(_patterns()))


def _sync(white: np.ndarray, scale: float) -> tuple[float, tuple[int, int], np.ndarray]:
    """At this scale: the peak, in sigmas, over all cyclic offsets of the plane's energy in the pattern space (sync
    and carriers together, so all of the mark's power finds the offset), the tile origin's offset (rows, columns)
    and the sync and carrier correlations there."""
    total, count = _fold(white, scale)
    seen = count > 0.05
    tile = np.where(seen, total / np.maximum(count, 1e-6), 0)
    tile = np.where(seen, tile - tile[seen].mean(), 0)
    corr = np.fft.irfft2(np.fft.rfft2(tile)[None] * _spectra(), s=tile.shape)
    energy = np.einsum("kij,kij->ij", corr, corr)
    peak = int(np.argmax(energy))
    z = float((energy.flat[peak] - energy.mean()) / (energy.std() + 1e-12))
    offset = (peak // TILE, peak % TILE)
    return z, offset, corr[:, offset[0], offset[1]]


def _search(white: np.ndarray) -> tuple[float, float, tuple[int, int]]:
    """(confidence, scale, offset) of the best sync peak: the unscaled, halved and doubled frame, then around
    the scales the power spectrum suggests."""
    best = (-np.inf, 1.0, (0, 0))
    for scale in (1.0, 0.5, 2.0):
        z, offset, _ = _sync(white, scale)
        best = max(best, (z, scale, offset), key=lambda b: b[0])
    if best[0] >= 2 * CONFIDENCE_MIN:
        return best
    for centre in _scales(white):
        local = (-np.inf, centre, (0, 0))
        for step in np.arange(-0.006, 0.0061, 0.002):
            scale = centre * (1 + step)
            z, offset, _ = _sync(white, scale)
            local = max(local, (z, scale, offset), key=lambda b: b[0])
        best = max(best, local, key=lambda b: b[0])
    return best


def _soft_bits(white: np.ndarray, scale: float, offset: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """Carrier correlations for the whole plane (CODE_BITS,) and per source tile (tiles, CODE_BITS)."""
    total, count = _fold(white, scale, groups=True)
    carriers = np.roll(_patterns()[1:], offset, axis=(1, 2)).reshape(CODE_BITS, -1)
    flat_total = total.reshape(len(total), -1)
    per_tile = flat_total @ carriers.T.astype(np.float64)
    used = count.reshape(len(count), -1).sum(axis=1) > 0
    return per_tile.sum(axis=0), per_tile[used]


def _luma_sum(frames: np.ndarray) -> np.ndarray:
    total = np.zeros(frames.shape[1:3], np.float64)
    for start in range(0, len(frames), 16):
        total += _luma(frames[start : start + 16]).sum(axis=0)
    return total


def _decode(soft: np.ndarray) -> int | None:
    """The payload whose codeword the soft bits give, the least reliable flipped as needed; None if none checks."""
    hard = (soft > 0).astype(np.int64)
    weakest = np.argsort(np.abs(soft))[:CHASE_BITS]
    for flips in range(CHASE_BITS + 1):
        for chosen in combinations(weakest, flips):
            bits = hard.copy()
            bits[list(chosen)] ^= 1
            value = int("".join(map(str, bits)), 2)
            payload, crc = value >> CRC_BITS, value & (2**CRC_BITS - 1)
            if crc16(payload) == crc:
                return payload
    return None


def _read(mean_luma: np.ndarray) -> WatermarkReading:
    """The reading of a mean luma plane."""
    if min(mean_luma.shape) < 16:
        return WatermarkReading(None, 0.5, 0, confidence=0.0)
    white = _whiten(mean_luma.astype(np.float32))
    confidence, scale, offset = _search(white)
    soft, per_tile = _soft_bits(white, scale, offset)
    payload = _decode(soft) if confidence >= CONFIDENCE_MIN else None
    reference = codeword(payload) if payload is not None else (soft > 0).astype(np.int64)
    agreement = float(((per_tile > 0) == reference[None].astype(bool)).mean()) if per_tile.size else 0.5
    return WatermarkReading(payload, agreement, int(per_tile.size), confidence=round(confidence, 2),
                            scale=round(scale, 4), offset=offset, bits=tuple(int(b) for b in soft > 0))  # fmt: skip


def extract(frames: np.ndarray) -> WatermarkReading:
    """Find the pattern's scale and offset in (F, H, W, 3) frames (all averaged) and read the payload; None
    unless the sync peak is clear and the CRC checks."""
    if len(frames) == 0:
        return WatermarkReading(None, 0.5, 0, confidence=0.0)
    return _read(_luma_sum(frames) / len(frames))


def raw_bit_accuracy(frames: np.ndarray, payload: int) -> float:
    """Share of the 48 codeword bits read right from the whole clip, before the CRC and any correction (the
    "bit accuracy" of the literature), at the scale and offset the search finds."""
    reading = extract(frames)
    if not reading.bits:
        return 0.5
    return float((np.array(reading.bits) == codeword(payload)).mean())


def read_file(path: str, max_frames: int = WINDOW_FRAMES * 30) -> WatermarkReading | None:
    """The watermark in a video or GIF file, through its first `max_frames` frames in windows of 2 x
    WINDOW_FRAMES frames (stepping WINDOW_FRAMES: a marked shot inside a film is found) and from the start to
    the window's end (a long marked clip adds up); the first reading whose payload checks, else the most
    confident; None if the file holds no frames."""
    import imageio_ffmpeg

    try:
        reader = imageio_ffmpeg.read_frames(str(path))
        meta = next(reader)
    except (OSError, RuntimeError, StopIteration):
        return None
    width, height = meta["size"]
    sums: list[tuple[np.ndarray, int]] = []  # (luma sum, frames) per WINDOW_FRAMES
    chunk: list[np.ndarray] = []
    best: WatermarkReading | None = None
    seen = 0

    def attempt() -> WatermarkReading:
        nonlocal best
        sums.append((_luma_sum(np.stack(chunk)), len(chunk)))
        chunk.clear()
        planes = [sums[-2:]] + ([sums] if len(sums) > 2 else [])
        for part in planes:
            reading = _read(sum(t for t, _ in part) / sum(n for _, n in part))
            if best is None or reading.payload is not None or reading.confidence > best.confidence:
                best = reading
            if reading.payload is not None:
                break
        return best

    try:
        for buffer in reader:
            chunk.append(np.frombuffer(buffer, np.uint8).reshape(height, width, 3))
            seen += 1
            if len(chunk) == WINDOW_FRAMES and attempt().payload is not None:
                return best
            if seen >= max_frames:
                break
    finally:
        reader.close()
    if chunk:
        attempt()
    return best
