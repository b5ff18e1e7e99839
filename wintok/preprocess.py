"""Image decoding and resizing to a tokenizer's input: an explicit, recorded choice.

Resize modes (the official WinTok scripts use both of the first two):
- `center-crop`: shortest side to S, then a centred S x S crop (their eval script);
- `squash`: both sides to S, aspect ratio not kept (their reconstruction script);
- `pad`: longest side to S, centred on a black S x S canvas (keeps the whole image).
"""
from __future__ import annotations

import io
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps

from wintok.errors import ImageError

RESIZE_MODES = ("center-crop", "squash", "pad")
# Refuse images above this many pixels before decoding them (decompression bombs).
MAX_PIXELS = 100_000_000


@dataclass(frozen=True)
class Preprocess:
    """How an image became a tokenizer input; recorded in token files and stores."""

    size: int = 256  # output side S
    resize: str = "center-crop"  # one of RESIZE_MODES
    interpolation: str = "bicubic"  # PIL filter used for resizing (antialiased)

    def __post_init__(self) -> None:
        if self.resize not in RESIZE_MODES:
            raise ValueError(f"resize mode {self.resize!r} is not one of {RESIZE_MODES}")
        if self.interpolation not in _FILTERS:
            raise ValueError(f"interpolation {self.interpolation!r} is not one of {sorted(_FILTERS)}")
        if not 8 <= self.size <= 4096:
            raise ValueError(f"size must be in [8, 4096], got {self.size}")

    def to_dict(self) -> dict:
        return asdict(self)


_FILTERS = {"bicubic": Image.Resampling.BICUBIC, "bilinear": Image.Resampling.BILINEAR,
            "lanczos": Image.Resampling.LANCZOS}


def open_image(src: str | Path | bytes, *, max_pixels: int = MAX_PIXELS) -> Image.Image:
    """Decode to RGB: EXIF orientation applied, alpha composited on black, 16-bit and CMYK
    converted. Raises ImageError with the cause for anything that is not a usable image."""
    try:
        data = src if isinstance(src, (bytes, bytearray)) else Path(src).read_bytes()
    except OSError as e:
        raise ImageError(f"cannot read {src}: {e}") from None
    name = "image bytes" if isinstance(src, (bytes, bytearray)) else str(src)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data))
            w, h = img.size
            if w * h > max_pixels:
                raise ImageError(f"{name} is {w}x{h} = {w * h} pixels, above the limit of "
                                 f"{max_pixels}; refused (decompression bomb guard)")
            img.load()
            img = ImageOps.exif_transpose(img)
    except ImageError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise ImageError(f"{name} refused as a decompression bomb: {e}") from None
    except (OSError, SyntaxError, ValueError) as e:
        raise ImageError(f"{name} cannot be decoded: {e}") from None
    return to_rgb(img)


def to_rgb(img: Image.Image) -> Image.Image:
    """Any PIL mode -> RGB; transparency composited on black, 16-bit scaled to 8-bit."""
    if img.mode in ("I;16", "I;16B", "I;16L", "I"):
        arr = np.asarray(img, dtype=np.float64)
        peak = 65535.0 if img.mode.startswith("I;16") or arr.max() > 255 else 255.0
        img = Image.fromarray(np.clip(arr / peak * 255.0 + 0.5, 0, 255).astype(np.uint8), "L")
    if img.mode == "P" and "transparency" in img.info:
        img = img.convert("RGBA")
    if img.mode in ("RGBA", "LA", "PA"):
        rgba = img.convert("RGBA")
        canvas = Image.new("RGB", rgba.size, (0, 0, 0))
        canvas.paste(rgba, mask=rgba.getchannel("A"))
        return canvas
    return img.convert("RGB")


def resize(img: Image.Image, pre: Preprocess) -> Image.Image:
    """Resize an RGB image to pre.size x pre.size with the recorded mode."""
    s, f = pre.size, _FILTERS[pre.interpolation]
    w, h = img.size
    if pre.resize == "squash":
        return img.resize((s, s), f)
    if pre.resize == "center-crop":
        scale = s / min(w, h)
        nw, nh = max(s, round(w * scale)), max(s, round(h * scale))
        img = img.resize((nw, nh), f)
        left, top = (nw - s) // 2, (nh - s) // 2
        return img.crop((left, top, left + s, top + s))
    scale = s / max(w, h)  # pad
    nw, nh = max(1, round(w * scale)), max(1, round(h * scale))
    canvas = Image.new("RGB", (s, s), (0, 0, 0))
    canvas.paste(img.resize((nw, nh), f), ((s - nw) // 2, (s - nh) // 2))
    return canvas


def to_tensor(images: list[Image.Image] | list[np.ndarray]) -> torch.Tensor:
    """RGB uint8 images (HWC) -> float (B,3,H,W) in [-1,1]."""
    arr = np.stack([np.asarray(im, dtype=np.uint8) for im in images])
    return torch.from_numpy(arr).permute(0, 3, 1, 2).float().div_(127.5).sub_(1.0)


def to_uint8(images: torch.Tensor) -> np.ndarray:
    """float (B,3,H,W) in [-1,1] -> uint8 (B,H,W,3), clamped and rounded."""
    x = images.detach().float().clamp(-1, 1).add(1).mul(127.5).round()
    return x.to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()


def load_for_tokenizer(src: str | Path | bytes, pre: Preprocess) -> tuple[torch.Tensor, tuple[int, int]]:
    """One image file -> ((1,3,S,S) tensor in [-1,1], original (width, height))."""
    img = open_image(src)
    return to_tensor([resize(img, pre)]), img.size
