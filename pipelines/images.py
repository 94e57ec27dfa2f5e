"""Reading and fitting the picture for image-to-video.

Fitting rule (documented in the README): the picture is scaled, keeping its aspect ratio, until it
covers the whole target frame, then centre-cropped to the target size. Nothing is stretched and no
bars are added; when no size is asked for, the model's preset closest to the picture's aspect ratio
is chosen so that the crop is as small as possible.
"""

from __future__ import annotations

import io
import os
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from pipelines.errors import UserError

MAX_IMAGE_BYTES = 50 * 1024 * 1024
MAX_IMAGE_PIXELS = 50_000_000  # 50 megapixels; larger files are refused before decoding
MIN_IMAGE_SIDE = 16

ImageInput = str | os.PathLike | Image.Image | np.ndarray | bytes


class ImageError(UserError, ValueError):
    pass


def load_image(source: ImageInput) -> Image.Image:
    """Open a picture from a path, bytes, PIL image or array as RGB, upright, refusing corrupt or huge input."""
    if isinstance(source, Image.Image):
        image = source
    elif isinstance(source, np.ndarray):
        if source.ndim not in (2, 3) or source.dtype != np.uint8:
            raise ImageError("The image array must be uint8 with shape (H, W) or (H, W, channels).")
        image = Image.fromarray(source)
    else:
        data = _read_bytes(source)
        unreadable = ImageError(
            "The image could not be read: it is damaged or not a picture format Wan Studio reads "
            "(PNG, JPEG, WebP, BMP, GIF, TIFF)."
        )
        try:
            image = Image.open(io.BytesIO(data))
        except Image.DecompressionBombError:  # PIL refuses headers far past its own limit before we see a size
            raise ImageError(
                f"The image has far more than {MAX_IMAGE_PIXELS / 1e6:.0f} megapixels, the limit. Resize it first."
            ) from None
        except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as err:
            raise unreadable from err
        _check_pixels(image.size)  # before decoding, so a decompression bomb never expands
        try:
            image.load()
        except (OSError, SyntaxError, ValueError) as err:
            raise unreadable from err
    _check_pixels(image.size)
    if min(image.size) < MIN_IMAGE_SIDE:
        raise ImageError(f"The image is {image.width}x{image.height}; each side must be at least {MIN_IMAGE_SIDE} px.")
    image = ImageOps.exif_transpose(image)
    return _to_rgb(image)


def _read_bytes(source: str | os.PathLike | bytes) -> bytes:
    if isinstance(source, bytes):
        data = source
    else:
        path = Path(source)
        if not path.is_file():
            raise ImageError(f"The image file '{path}' does not exist.")
        if path.stat().st_size > MAX_IMAGE_BYTES:
            raise ImageError(
                f"The image file is {path.stat().st_size / 2**20:.0f} MB; the limit is {MAX_IMAGE_BYTES // 2**20} MB."
            )
        data = path.read_bytes()
    if len(data) > MAX_IMAGE_BYTES:
        raise ImageError(f"The image is larger than {MAX_IMAGE_BYTES // 2**20} MB.")
    if not data:
        raise ImageError("The image file is empty.")
    return data


def _too_many_pixels_message(size: tuple[int, int]) -> str:
    return (
        f"The image is {size[0]}x{size[1]} ({size[0] * size[1] / 1e6:.0f} megapixels); "
        f"the limit is {MAX_IMAGE_PIXELS / 1e6:.0f} megapixels. Resize it first."
    )


def _check_pixels(size: tuple[int, int]) -> None:
    if size[0] * size[1] > MAX_IMAGE_PIXELS:
        raise ImageError(_too_many_pixels_message(size))


def _to_rgb(image: Image.Image) -> Image.Image:
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")


def closest_size(image_size: tuple[int, int], sizes: tuple[tuple[int, int], ...]) -> tuple[int, int]:
    """The preset whose aspect ratio is nearest the picture's (compared in log space, so 2:1 and 1:2 are symmetric)."""
    aspect = np.log(image_size[0] / image_size[1])
    return min(sizes, key=lambda wh: abs(np.log(wh[0] / wh[1]) - aspect))


def fit_image(image: Image.Image, width: int, height: int) -> Image.Image:
    """Scale to cover width x height, then centre-crop: the README's fitting rule."""
    return ImageOps.fit(image, (width, height), method=Image.Resampling.LANCZOS, centering=(0.5, 0.5))
