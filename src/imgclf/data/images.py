"""Decoding one image file into the pixels the network sees, with Pillow.

Every format Pillow reads works (PNG, JPEG, BMP, GIF's first frame, WebP, TIFF, ...).
Images are turned upright by their EXIF orientation first. Palette, alpha, 16-bit, CMYK and
grey-with-alpha images are converted properly: transparency is laid over white, 16-bit
values are scaled rather than clipped. A file that cannot be decoded, or that would decode
to more pixels than Pillow's decompression-bomb limit, raises :class:`BadImage` with the
reason, so the caller can skip it and report it.
"""

from __future__ import annotations

import hashlib
import io
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import numpy as np
from PIL import Image, ImageOps, ImageStat, UnidentifiedImageError

from imgclf.common.errors import one_line

GREY_MODES = frozenset({"1", "L", "LA", "La", "I", "I;16", "I;16B", "I;16L", "I;16N", "F"})
RESIZE_MODES = ("squash", "crop", "pad")
BACKGROUND = 255  # what transparent pixels become: white
RESAMPLE = Image.Resampling.BILINEAR  # antialiased when shrinking


class BadImage(ValueError):
    """A file that is not a readable image; the message says why."""


@dataclass(frozen=True)
class Decoded:
    """An image at its original size, upright, as 8-bit grey (``L``) or ``RGB``."""

    image: Image.Image
    mode: str  # the file's own mode (``P``, ``RGBA``, ``I;16``, ...)
    size: tuple[int, int]  # (width, height) as stored

    @property
    def grey(self) -> bool:
        return self.image.mode == "L"

    def pixel_hash(self) -> str:
        """Identical for identical pixels, whatever the file format or metadata."""
        digest = hashlib.sha256(f"{self.image.mode}{self.image.size}".encode())
        digest.update(self.image.tobytes())
        return digest.hexdigest()


def _to_8bit(image: Image.Image) -> Image.Image:
    """``L`` or ``RGB`` with transparency over white and wide values scaled to 0-255."""
    if image.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        values = np.asarray(image, dtype=np.float64)
        top = 65535.0 if image.mode.startswith("I;16") or values.max() > 255 else 255.0
        return Image.fromarray(np.clip(values / top * 255 + 0.5, 0, 255).astype(np.uint8))
    if image.mode == "P":
        image = image.convert("RGBA" if "transparency" in image.info else "RGB")
    if image.mode in ("1", "L"):
        return image.convert("L")
    if image.mode in ("LA", "La", "PA", "RGBA", "RGBa"):
        grey = image.mode in ("LA", "La")
        rgba = image.convert("RGBA")
        flat = Image.new("RGBA", rgba.size, (BACKGROUND,) * 4)
        flat.alpha_composite(rgba)
        return flat.convert("L" if grey else "RGB")
    return image.convert("RGB")  # RGB, CMYK, YCbCr, LAB, HSV


def decode(path: Path | IO[bytes], at_least: int | None = None) -> Decoded:
    """Open, orient and convert ``path`` (a file name or an open binary file).

    With ``at_least``, a JPEG is decoded straight at the smallest of its built-in scales
    (1/2, 1/4, 1/8) that keeps both sides at least that long: a fraction of the work of
    decoding it whole and shrinking it afterwards.

    Raises:
        BadImage: unreadable, truncated, not an image, or over the decompression-bomb limit.
    """
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as opened:
                mode, size = opened.mode, opened.size
                opened.seek(0)  # an animation's first frame
                if at_least is not None and opened.format == "JPEG":
                    opened.draft(opened.mode, (at_least, at_least))
                upright = ImageOps.exif_transpose(opened)
                upright.load()
                return Decoded(_to_8bit(upright), mode, size)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise BadImage(f"too many pixels (Pillow's decompression-bomb limit): {exc}") from None
    except UnidentifiedImageError:
        raise BadImage("not a readable image: not in any image format Pillow reads") from None
    except (OSError, ValueError, SyntaxError, EOFError) as exc:  # what Pillow raises
        raise BadImage(f"not a readable image: {one_line(exc)}") from None


def resize(image: Image.Image, size: tuple[int, int], how: str) -> Image.Image:
    """``image`` at ``size`` (height, width): ``squash`` stretches it, ``crop`` scales the
    shorter side to fit and cuts the centre, ``pad`` fits it whole and letterboxes it with
    its own mean colour."""
    height, width = size
    if image.size == (width, height):
        return image
    if how == "squash":
        return image.resize((width, height), RESAMPLE)
    if how == "crop":
        return ImageOps.fit(image, (width, height), RESAMPLE)
    mean = tuple(round(v) for v in ImageStat.Stat(image).mean)
    colour = mean[0] if image.mode == "L" else mean
    return ImageOps.pad(image, (width, height), RESAMPLE, color=colour)


def to_array(image: Image.Image, channels: int) -> np.ndarray:
    """Pixels as uint8, channels first (``C x H x W``), grey or RGB as asked."""
    image = image.convert("L" if channels == 1 else "RGB")
    pixels = np.asarray(image, dtype=np.uint8)
    return pixels[None] if channels == 1 else pixels.transpose(2, 0, 1)


def png_bytes(pixels: np.ndarray) -> bytes:
    """uint8 pixels (channels x height x width, 1 or 3 channels) as a PNG file's bytes."""
    out = io.BytesIO()
    image = pixels[0] if pixels.shape[0] == 1 else pixels.transpose(1, 2, 0)
    Image.fromarray(np.ascontiguousarray(image)).save(out, format="PNG")
    return out.getvalue()
