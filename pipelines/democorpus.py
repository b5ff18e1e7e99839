"""An offline corpus of real photos (crops of scikit-image's sample images) plus hostile files.

Deterministic from a seed. Used by the tests, the benchmark and `wintok demo`:

    with serve_directory(out_dir) as base_url:
        urls = build_demo_corpus(out_dir, base_url=base_url, n_images=200, hostile=True)
"""

from __future__ import annotations

import io
import os
import struct
import zlib
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

PHOTO_SOURCES = ("astronaut", "coffee", "chelsea", "rocket", "hubble_deep_field", "immunohistochemistry",
                 "coins", "camera", "moon", "colorwheel", "clock", "brick", "grass", "gravel")

# Hostile cases: name -> (url path relative to the server root, description). Files are written by
# build_demo_corpus; paths under _hostile/ are dynamic routes of pipelines.loopback.
HOSTILE_CASES = {
    "http_404": "_hostile/status/404",
    "http_500": "_hostile/status/500",
    "stall": "_hostile/stall/stall.jpg",
    "flaky_503": "_hostile/flaky/flaky.jpg",
    "truncated_jpeg": "hostile/truncated.jpg",
    "header_only_jpeg": "hostile/header_only.jpg",
    "not_an_image": "hostile/not_an_image.jpg",
    "bomb_png": "hostile/bomb_20000x20000.png",
    "tiny_1x1": "hostile/tiny_1x1.png",
    "grayscale": "hostile/gray.jpg",
    "cmyk_jpeg": "hostile/cmyk.jpg",
    "alpha_png": "hostile/alpha.png",
    "png_16bit": "hostile/16bit.png",
    "animated_gif": "hostile/animated.gif",
    "exif_rotated": "hostile/exif_rotated.jpg",
    "duplicate_a": "hostile/dup_a.jpg",
    "duplicate_b": "hostile/dup_b.jpg",
    "refused_scheme": "file:///etc/passwd",
    "refused_malformed": "http://[::1/x.jpg",
}


def _source(name: str) -> np.ndarray:
    import skimage.data

    img = getattr(skimage.data, name)()
    if img.ndim == 3 and img.shape[2] == 4:
        img = img[:, :, :3]
    return img


def _photo(rng: np.random.Generator, sources: dict[str, np.ndarray],
           names: tuple[str, ...] = PHOTO_SOURCES) -> tuple[np.ndarray, str]:
    from PIL import Image

    name = names[int(rng.integers(len(names)))]
    src = sources.setdefault(name, _source(name))
    h, w = src.shape[:2]
    ch = int(rng.integers(min(96, h), h + 1))
    cw = int(np.clip(ch * rng.uniform(0.6, 1.6), min(96, w), w))
    y = int(rng.integers(0, h - ch + 1))
    x = int(rng.integers(0, w - cw + 1))
    crop = src[y:y + ch, x:x + cw]
    if rng.random() < 0.5:
        crop = crop[:, ::-1]
    scale = rng.uniform(0.5, 1.5)
    size = (max(64, int(cw * scale)), max(64, int(ch * scale)))
    img = Image.fromarray(np.ascontiguousarray(crop)).resize(size, Image.BICUBIC)
    return np.asarray(img), name


def _encode(arr: np.ndarray, fmt: str, **kw) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format=fmt, **kw)
    return buf.getvalue()


def _bomb_png(width: int, height: int) -> bytes:
    """A grayscale PNG of width x height zero pixels: a few hundred KB on disk, huge decoded."""
    def chunk(tag: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF)

    comp = zlib.compressobj(9)
    row = b"\x00" * (width + 1)
    idat = b"".join(comp.compress(row) for _ in range(height)) + comp.flush()
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def _hostile_files(rng: np.random.Generator, sources: dict) -> dict[str, bytes]:
    from PIL import Image

    photo, _ = _photo(rng, sources)
    jpeg = _encode(photo, "JPEG", quality=90)
    gray = np.asarray(Image.fromarray(photo).convert("L"))
    rgba = np.dstack([photo, (np.arange(photo.shape[1]) % 256).astype(np.uint8)[None].repeat(photo.shape[0], 0)])
    cmyk = io.BytesIO()
    Image.fromarray(photo).convert("CMYK").save(cmyk, format="JPEG", quality=90)
    png16 = io.BytesIO()
    Image.fromarray((gray.astype(np.uint16) * 257)).save(png16, format="PNG")
    frames = [Image.fromarray(_photo(rng, sources)[0]).resize((128, 96)) for _ in range(3)]
    gif = io.BytesIO()
    frames[0].save(gif, format="GIF", save_all=True, append_images=frames[1:], duration=100, loop=0)
    exif = Image.Exif()
    exif[0x0112] = 6  # Orientation: rotate 90 CW to display
    exif_jpeg = io.BytesIO()
    Image.fromarray(_photo(rng, sources)[0]).save(exif_jpeg, format="JPEG", quality=90, exif=exif)
    dup = _encode(_photo(rng, sources)[0], "JPEG", quality=88)
    return {
        "stall.jpg": _encode(_photo(rng, sources)[0], "JPEG", quality=85),
        "flaky.jpg": _encode(_photo(rng, sources)[0], "JPEG", quality=85),
        "truncated.jpg": jpeg[: int(len(jpeg) * 0.6)],
        "header_only.jpg": jpeg[:200],
        "not_an_image.jpg": b"<html><body>this is not an image</body></html>\n" * 20,
        "bomb_20000x20000.png": _bomb_png(20000, 20000),
        "tiny_1x1.png": _encode(np.full((1, 1, 3), 200, np.uint8), "PNG"),
        "gray.jpg": _encode(gray, "JPEG", quality=90),
        "cmyk.jpg": cmyk.getvalue(),
        "alpha.png": _encode(rgba, "PNG"),
        "16bit.png": png16.getvalue(),
        "animated.gif": gif.getvalue(),
        "exif_rotated.jpg": exif_jpeg.getvalue(),
        "dup_a.jpg": dup,
        "dup_b.jpg": dup,
    }


def build_demo_corpus(out_dir: str | os.PathLike, *, base_url: str, n_images: int = 64, seed: int = 0,
                      hostile: bool = False, sources: tuple[str, ...] = PHOTO_SOURCES) -> Path:
    """Write `n_images` photos (and hostile files when asked) under out_dir; return the URL list parquet.

    `sources`: which scikit-image sample photos the crops come from (hold some out to evaluate).
    The list has columns url, caption, uid, case ("photo" or a HOSTILE_CASES name); hostile rows
    are interleaved at deterministic positions. Photos are JPEG, one in five PNG.
    """
    if not isinstance(n_images, int) or n_images < 0:
        raise ValueError(f"n_images must be a non-negative int, got {n_images!r}")
    if not isinstance(base_url, str) or not base_url.startswith(("http://", "https://")):
        raise ValueError(f"base_url must be an http(s) URL such as the one serve_directory yields, got {base_url!r}")
    unknown = sorted(set(sources) - set(PHOTO_SOURCES))
    if not sources or unknown:
        raise ValueError(f"sources must be a non-empty subset of {PHOTO_SOURCES}, got unknown {unknown}")
    base_url = base_url.rstrip("/")
    out = Path(out_dir)
    (out / "photos").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    cache: dict[str, np.ndarray] = {}
    rows = []
    for i in range(n_images):
        arr, src = _photo(rng, cache, tuple(sources))
        if rng.random() < 0.2:
            name, data = f"photos/{i:05d}.png", _encode(arr, "PNG")
        else:
            name, data = f"photos/{i:05d}.jpg", _encode(arr, "JPEG", quality=int(rng.integers(80, 96)))
        (out / name).write_bytes(data)
        rows.append({"url": f"{base_url}/{name}", "caption": f"a crop of {src.replace('_', ' ')} #{i}",
                     "uid": f"photo-{i}", "case": "photo"})
    if hostile:
        (out / "hostile").mkdir(exist_ok=True)
        for name, data in _hostile_files(np.random.default_rng(seed + 1), cache).items():
            (out / "hostile" / name).write_bytes(data)
        for k, (case, path) in enumerate(HOSTILE_CASES.items()):
            url = path if "://" in path else f"{base_url}/{path}"
            pos = (k * 7919 + seed) % (len(rows) + 1)
            rows.insert(pos, {"url": url, "caption": f"hostile case {case}", "uid": f"hostile-{case}",
                              "case": case})
    table = pa.Table.from_pylist(rows, schema=pa.schema([("url", pa.string()), ("caption", pa.string()),
                                                         ("uid", pa.string()), ("case", pa.string())]))
    path = out / "urls.parquet"
    pq.write_table(table, path)
    return path
