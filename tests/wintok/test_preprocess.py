"""Image decoding and resize modes."""
import io

import numpy as np
import pytest
from PIL import Image

from wintok import ImageError
from wintok.preprocess import Preprocess, open_image, resize, to_tensor, to_uint8


def encode(img: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **kw)
    return buf.getvalue()


def test_resize_modes_geometry():
    # a 200x100 image: left half red, right half blue
    arr = np.zeros((100, 200, 3), np.uint8)
    arr[:, :100, 0] = 255
    arr[:, 100:, 2] = 255
    img = Image.fromarray(arr)
    crop = np.asarray(resize(img, Preprocess(size=64, resize="center-crop")))
    assert crop.shape == (64, 64, 3)
    assert crop[:, :30, 0].min() > 200 and crop[:, 34:, 2].min() > 200  # centre keeps both halves
    pad = np.asarray(resize(img, Preprocess(size=64, resize="pad")))
    assert pad[:14].max() == 0 and pad[-14:].max() == 0 and pad[32, 5, 0] > 200  # black bars
    squash = np.asarray(resize(img, Preprocess(size=64, resize="squash")))
    assert squash[:, :30, 0].min() > 200 and squash[:, 34:, 2].min() > 200


def test_tensor_roundtrip_exact():
    arr = np.random.default_rng(0).integers(0, 256, (2, 8, 8, 3), dtype=np.uint8)
    x = to_tensor(list(arr))
    assert x.shape == (2, 3, 8, 8) and float(x.min()) >= -1 and float(x.max()) <= 1
    assert np.array_equal(to_uint8(x), arr)


def test_modes_are_converted_to_rgb():
    rgba = Image.new("RGBA", (4, 4), (255, 0, 0, 0))  # fully transparent red -> black
    assert np.asarray(open_image(encode(rgba, "PNG"))).max() == 0
    g16 = Image.fromarray(np.full((4, 4), 65535, np.uint16))
    assert np.asarray(open_image(encode(g16, "PNG"))).min() == 255
    cmyk = Image.new("CMYK", (4, 4), (0, 0, 0, 0))  # no ink = white
    assert np.asarray(open_image(encode(cmyk, "JPEG"))).min() > 240
    assert open_image(encode(Image.new("L", (4, 4), 7), "PNG")).mode == "RGB"


def test_exif_orientation_applied():
    img = Image.new("RGB", (40, 20), (0, 255, 0))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 on display
    out = open_image(encode(img, "JPEG", exif=exif))
    assert out.size == (20, 40)


def test_bad_images_raise_with_cause():
    with pytest.raises(ImageError, match="cannot be decoded"):
        open_image(b"GIF89a but not really")
    full = encode(Image.new("RGB", (64, 64), (1, 2, 3)), "JPEG")
    with pytest.raises(ImageError, match="cannot be decoded"):
        open_image(full[: len(full) // 3])
    huge = encode(Image.new("1", (20000, 20000)), "PNG")  # tiny on disk, 400M pixels
    assert len(huge) < 200_000
    with pytest.raises(ImageError, match="decompression bomb"):
        open_image(huge)


def test_preprocess_validates():
    with pytest.raises(ValueError, match="resize mode 'stretch'"):
        Preprocess(resize="stretch")
