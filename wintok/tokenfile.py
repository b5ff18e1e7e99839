"""The single-image token file written by `wintok encode` and read by `wintok decode`.

JSON, one object (format_version 1):
    format          "wintok-tokens"
    format_version  1
    family, layout  the tokenizer family and its id layout (wintok.tokenizer.TokenLayout)
    checkpoint      {"identity": ..., "source": ...}   decode refuses another identity unless forced
    preprocess      {"size", "resize", "interpolation"} how the image became the input
    original_size   [width, height] of the source image
    ids             {"shape": [streams, positions], "bits": 12, "encoding": "bitpack-le-base64",
                     "data": ...}  ids packed least-significant-bit first (wintok.packing)
    semantic        optional {"shape": [N, D], "dtype": "float16"|"float32", "data": base64}
"""
from __future__ import annotations

import base64
import binascii
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from wintok.errors import TokenFileError
from wintok.packing import pack_ids, packed_size, unpack_ids
from wintok.preprocess import Preprocess
from wintok.tokenizer import TokenLayout

FORMAT = "wintok-tokens"
FORMAT_VERSION = 1
MAX_FILE_BYTES = 64 * 1024 * 1024  # a token file is a few KB; refuse anything absurd unread
SEMANTIC_DTYPES = ("float16", "float32")


@dataclass
class TokenFile:
    layout: TokenLayout
    identity: str
    source: str
    preprocess: Preprocess
    original_size: tuple[int, int]
    ids: np.ndarray  # (streams, positions) uint16
    semantic: np.ndarray | None = None  # (N, D)

    def to_json(self, *, semantic_dtype: str = "float16") -> str:
        if semantic_dtype not in SEMANTIC_DTYPES:
            raise ValueError(f"semantic dtype must be one of {SEMANTIC_DTYPES}, got {semantic_dtype!r}")
        bits = self.layout.bits_per_id
        doc: dict[str, Any] = {
            "format": FORMAT, "format_version": FORMAT_VERSION,
            "family": self.layout.family, "layout": self.layout.to_dict(),
            "checkpoint": {"identity": self.identity, "source": self.source},
            "preprocess": self.preprocess.to_dict(),
            "original_size": list(self.original_size),
            "ids": {"shape": list(self.ids.shape), "bits": bits,
                    "encoding": "bitpack-le-base64",
                    "data": base64.b64encode(pack_ids(self.ids, bits)).decode()},
        }
        if self.semantic is not None:
            arr = np.ascontiguousarray(self.semantic, dtype=semantic_dtype)
            doc["semantic"] = {"shape": list(arr.shape), "dtype": semantic_dtype,
                               "data": base64.b64encode(arr.tobytes()).decode()}
        return json.dumps(doc, indent=1)

    def save(self, path: str | Path, **kwargs: Any) -> Path:
        path = Path(path)
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(self.to_json(**kwargs))
        os.replace(tmp, path)
        return path


def _fail(path: Any, why: str) -> TokenFileError:
    return TokenFileError(f"{path}: {why}")


def read_token_file(path: str | Path) -> TokenFile:
    """Parse and validate a token file; every inconsistency raises TokenFileError."""
    path = Path(path)
    try:
        size = path.stat().st_size
    except OSError as e:
        raise _fail(path, f"cannot read ({e})") from None
    if size > MAX_FILE_BYTES:
        raise _fail(path, f"is {size} bytes; token files are small (limit {MAX_FILE_BYTES}), "
                          f"refusing to parse it")
    try:
        doc = json.loads(path.read_bytes())
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as e:
        raise _fail(path, f"is not valid JSON ({e})") from None
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        raise _fail(path, f"is not a token file (expected \"format\": \"{FORMAT}\")")
    if doc.get("format_version") != FORMAT_VERSION:
        raise _fail(path, f"has format_version {doc.get('format_version')!r}; this wintok reads "
                          f"{FORMAT_VERSION}")
    try:
        layout = TokenLayout.from_dict(doc["layout"])
        pre = Preprocess(**doc["preprocess"])
        ck = doc["checkpoint"]
        identity, source = str(ck["identity"]), str(ck.get("source", ""))
        ow, oh = (int(v) for v in doc["original_size"])
        ids_doc = doc["ids"]
        shape = tuple(int(v) for v in ids_doc["shape"])
        bits = int(ids_doc["bits"])
        data = base64.b64decode(ids_doc["data"], validate=True)
    except (KeyError, TypeError, ValueError, binascii.Error) as e:
        raise _fail(path, f"is malformed ({type(e).__name__}: {e})") from None
    if shape != layout.ids_shape:
        raise _fail(path, f"ids shape {list(shape)} does not match its layout {list(layout.ids_shape)}")
    if bits != layout.bits_per_id:
        raise _fail(path, f"ids use {bits} bits but the layout needs {layout.bits_per_id}")
    count = shape[0] * shape[1]
    if len(data) != packed_size(count, bits):
        raise _fail(path, f"ids data is {len(data)} bytes, expected {packed_size(count, bits)}: "
                          f"truncated or corrupt")
    ids = unpack_ids(data, bits, count).reshape(shape)
    if ids.size and int(ids.max()) >= layout.vocab_per_stream:
        raise _fail(path, f"id {int(ids.max())} is out of range for {layout.vocab_per_stream} "
                          f"entries per stream")
    semantic = None
    if doc.get("semantic") is not None:
        semantic = _read_semantic(path, doc["semantic"])
    return TokenFile(layout=layout, identity=identity, source=source, preprocess=pre,
                     original_size=(ow, oh), ids=ids, semantic=semantic)


def _read_semantic(path: Path, sem: Any) -> np.ndarray:
    try:
        dtype = str(sem["dtype"])
        shape = tuple(int(v) for v in sem["shape"])
        raw = base64.b64decode(sem["data"], validate=True)
    except (KeyError, TypeError, ValueError, binascii.Error) as e:
        raise _fail(path, f"semantic block is malformed ({e})") from None
    if dtype not in SEMANTIC_DTYPES or len(shape) != 2 or min(shape) <= 0:
        raise _fail(path, f"semantic block has dtype {dtype!r} shape {list(shape)}")
    if len(raw) != np.dtype(dtype).itemsize * shape[0] * shape[1]:
        raise _fail(path, "semantic data length does not match its shape: truncated or corrupt")
    return np.frombuffer(raw, dtype=dtype).reshape(shape)
