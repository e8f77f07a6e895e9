"""Decoding image files: every format and mode into 8-bit pixels, upright, or a reason."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from imgclf.data import images
from imgclf.data.images import BadImage, decode, resize, to_array

from .conftest import photo


@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "BMP", "GIF", "WEBP", "TIFF"])
def test_every_common_format_decodes(tmp_path, fmt):
    path = tmp_path / f"x.{fmt.lower()}"
    photo((200, 30, 30), (20, 10), 0).save(path, format=fmt)
    decoded = decode(path)
    assert decoded.image.mode == "RGB"
    assert decoded.image.size == (20, 10)
    red, green, _ = np.asarray(decoded.image, dtype=float).mean(axis=(0, 1))
    assert red > 120 > green


def test_an_animated_gif_gives_its_first_frame(tmp_path):
    frames = [Image.new("RGB", (8, 8), colour) for colour in ((250, 0, 0), (0, 0, 250))]
    frames[0].save(tmp_path / "a.gif", save_all=True, append_images=frames[1:])
    assert decode(tmp_path / "a.gif").image.getpixel((4, 4))[0] > 200


def test_exif_orientation_turns_the_image_upright(tmp_path):
    image = Image.new("RGB", (40, 20), (0, 0, 0))
    image.paste((255, 255, 255), (0, 0, 10, 20))  # a white band on the left
    exif = Image.Exif()
    exif[0x0112] = 6  # stored turned: displays rotated 90 degrees clockwise
    image.save(tmp_path / "turned.jpg", exif=exif, quality=95)
    upright = decode(tmp_path / "turned.jpg").image
    assert upright.size == (20, 40)
    assert upright.getpixel((10, 2))[0] > 200 and upright.getpixel((10, 37))[0] < 50


def test_transparency_is_laid_over_white(tmp_path):
    rgba = Image.new("RGBA", (4, 4), (255, 0, 0, 0))  # fully transparent red
    rgba.save(tmp_path / "rgba.png")
    assert decode(tmp_path / "rgba.png").image.getpixel((0, 0)) == (255, 255, 255)
    la = Image.new("LA", (4, 4), (0, 128))  # black at half opacity
    la.save(tmp_path / "la.png")
    decoded = decode(tmp_path / "la.png")
    assert decoded.grey and 120 <= decoded.image.getpixel((0, 0)) <= 135


def test_a_palette_image_with_transparency_converts(tmp_path):
    image = Image.new("P", (4, 4), 1)
    image.putpalette([0, 0, 0, 0, 200, 0] + [0] * 762)
    image.save(tmp_path / "p.png", transparency=0)
    assert decode(tmp_path / "p.png").image.getpixel((0, 0)) == (0, 200, 0)


def test_sixteen_bit_grey_is_scaled_not_clipped(tmp_path):
    values = np.array([[0, 32768], [65535, 1000]], dtype=np.uint16)
    Image.fromarray(values).save(tmp_path / "deep.png")
    decoded = decode(tmp_path / "deep.png")
    assert decoded.grey and decoded.mode.startswith("I")
    assert np.asarray(decoded.image).tolist() == [[0, 128], [255, 4]]


def test_cmyk_becomes_rgb(tmp_path):
    Image.new("CMYK", (4, 4), (0, 255, 255, 0)).save(tmp_path / "c.jpg")
    red, green, blue = decode(tmp_path / "c.jpg").image.getpixel((1, 1))
    assert red > 200 and green < 60 and blue < 60


@pytest.mark.parametrize(("name", "data", "reason"), [
    ("empty.png", b"", "not a readable image"),
    ("notes.jpg", b"these are words, not pixels", "not a readable image"),
])
def test_files_that_are_not_images_give_a_reason(tmp_path, name, data, reason):
    (tmp_path / name).write_bytes(data)
    with pytest.raises(BadImage, match=reason):
        decode(tmp_path / name)


def test_a_truncated_jpeg_is_refused(tmp_path):
    photo((10, 200, 10), (64, 64), 1).save(tmp_path / "whole.jpg", quality=95)
    data = (tmp_path / "whole.jpg").read_bytes()
    (tmp_path / "cut.jpg").write_bytes(data[: len(data) // 2])
    with pytest.raises(BadImage, match="not a readable image"):
        decode(tmp_path / "cut.jpg")


def test_a_decompression_bomb_is_refused(tmp_path, monkeypatch):
    Image.new("L", (100, 100)).save(tmp_path / "big.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
    with pytest.raises(BadImage, match="decompression-bomb limit"):
        decode(tmp_path / "big.png")


def test_identical_pixels_hash_alike_across_formats(tmp_path):
    image = photo((30, 30, 200), (16, 12), 2)
    image.save(tmp_path / "a.png")
    image.save(tmp_path / "b.bmp")
    photo((30, 30, 200), (16, 12), 3).save(tmp_path / "c.png")
    a, b, c = (decode(tmp_path / n).pixel_hash() for n in ("a.png", "b.bmp", "c.png"))
    assert a == b != c


def test_resize_modes():
    wide = Image.new("RGB", (40, 20), (255, 255, 255))
    wide.paste((0, 0, 0), (0, 0, 10, 20))  # black band on the left quarter
    squashed = resize(wide, (10, 10), "squash")
    cropped = resize(wide, (10, 10), "crop")
    padded = resize(wide, (10, 10), "pad")
    assert squashed.size == cropped.size == padded.size == (10, 10)
    assert squashed.getpixel((0, 5))[0] < 30  # the band is squeezed, still there
    assert cropped.getpixel((0, 5))[0] > 200  # the centre crop cut the band off
    mean = round(255 * 0.75)  # letterbox bars take the image's own mean colour
    assert abs(padded.getpixel((5, 0))[0] - mean) <= 1
    assert padded.getpixel((0, 5))[0] < 30  # the whole image is there, band included


def test_arrays_are_channels_first_in_the_channels_asked():
    image = Image.new("RGB", (5, 3), (10, 20, 30))
    assert to_array(image, 3).shape == (3, 3, 5)
    grey = to_array(image, 1)
    assert grey.shape == (1, 3, 5) and grey.dtype == np.uint8


def test_grey_modes_are_known():
    assert {"L", "LA", "I;16", "1"} <= images.GREY_MODES
    assert "RGB" not in images.GREY_MODES


def test_a_large_jpeg_decodes_at_a_reduced_scale_when_only_a_small_size_is_needed(tmp_path):
    photo((200, 30, 30), (800, 600), 4).save(tmp_path / "big.jpg", quality=90)
    assert decode(tmp_path / "big.jpg").image.size == (800, 600)
    small = decode(tmp_path / "big.jpg", at_least=64).image
    assert small.size == (100, 75)  # 1/8: the smallest scale still at least 64 on each side
    assert min(resize(small, (64, 64), "crop").size) == 64
