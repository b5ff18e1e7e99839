"""Arrow schemas for teacher features and token rows, parameterised by vector sizes.

Half-precision values (float16, bfloat16) are stored as their raw 16-bit patterns in uint16
lists, tagged in field metadata (`wintok.dtype`), so every reader (DuckDB, Polars, pandas, HF
datasets) can load them; view them back with `numpy.view(np.float16)` or
`torch.from_numpy(a).view(torch.bfloat16)`. int8 semantic tokens carry one float32 scale per
token (value = int8 * scale).
"""

from __future__ import annotations

import math

import numpy as np
import pyarrow as pa

from schemas.base import TableSpec
from wintok.packing import packed_size

SEMANTIC_DTYPES = ("float16", "bfloat16", "int8")


def _dtype_field(name: str, item: pa.DataType, size: int, dtype: str, nullable: bool = False) -> pa.Field:
    return pa.field(name, pa.list_(item, size), nullable=nullable,
                    metadata={b"wintok.dtype": dtype.encode()})


def _positive_int(name: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value <= 0:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return int(value)


def teacher_features_schema(dim: int, *, patch_tokens: int | None = None,
                            patch_dim: int | None = None) -> TableSpec:
    """Schema of teacher embeddings: pooled float32 (dim) and optional float16-bit patch tokens
    (patch_tokens x patch_dim, patch_dim defaulting to dim)."""
    dim = _positive_int("dim", dim)
    fields = [
        pa.field("key", pa.string(), nullable=False),
        pa.field("shard", pa.int32(), nullable=False),
        pa.field("index", pa.int32(), nullable=False),  # position in the shard = Zarr slot
        _dtype_field("pooled", pa.float32(), dim, "float32"),
    ]
    meta = {b"wintok.dim": str(dim).encode()}
    if patch_tokens is not None:
        patch_tokens = _positive_int("patch_tokens", patch_tokens)
        patch_dim = dim if patch_dim is None else _positive_int("patch_dim", patch_dim)
        fields.append(_dtype_field("patch", pa.uint16(), patch_tokens * patch_dim, "float16"))
        meta[b"wintok.patch_tokens"] = str(patch_tokens).encode()
        meta[b"wintok.patch_dim"] = str(patch_dim).encode()
    return TableSpec(name="teacher_features", version=1, schema=pa.schema(fields, metadata=meta))


def token_rows_schema(
    num_streams: int,
    positions: int,
    semantic_shape: tuple[int, ...] | None,
    semantic_dtype: str,
    *,
    packed_bits: int | None = None,
    hflip: bool = False,
) -> TableSpec:
    """Schema of tokenizer output: uint16 pixel ids (streams*positions) and semantic tokens.

    `semantic_shape` is the per-image shape whose last axis is the channel axis; int8 adds a
    `semantic_scale` column with one float32 per token (prod(semantic_shape[:-1])).
    `packed_bits` adds `pixel_ids_packed`: the same ids bit-packed (`wintok.packing`, least
    significant bit first), e.g. 12 bits each for 4096-entry codebooks.
    """
    num_streams = _positive_int("num_streams", num_streams)
    positions = _positive_int("positions", positions)
    if semantic_shape is not None and (not isinstance(semantic_shape, (tuple, list)) or len(semantic_shape) == 0):
        raise ValueError(f"semantic_shape must be a non-empty tuple of positive ints, got {semantic_shape!r}")
    if semantic_shape is not None:
        semantic_shape = tuple(_positive_int("semantic_shape entry", s) for s in semantic_shape)
    if semantic_dtype not in SEMANTIC_DTYPES:
        raise ValueError(f"semantic_dtype {semantic_dtype!r} not accepted; use one of {SEMANTIC_DTYPES}")
    n_ids = num_streams * positions
    fields = [
        pa.field("key", pa.string(), nullable=False),
        pa.field("shard", pa.int32(), nullable=False),
        pa.field("index", pa.int32(), nullable=False),  # position in the shard = Zarr slot
        _dtype_field("pixel_ids", pa.uint16(), n_ids, "uint16"),
    ]
    if hflip:  # ids of the horizontally mirrored image (an augmentation variant, stored explicitly)
        fields.append(_dtype_field("pixel_ids_hflip", pa.uint16(), n_ids, "uint16"))
    if packed_bits is not None:
        fields.append(pa.field("pixel_ids_packed", pa.binary(packed_size(n_ids, packed_bits)),
                               nullable=False, metadata={b"wintok.bits": str(packed_bits).encode()}))
    if semantic_shape is not None:  # None: no continuous tokens (e.g. WeTok)
        n_sem = math.prod(semantic_shape)
        if semantic_dtype == "int8":
            fields.append(_dtype_field("semantic", pa.int8(), n_sem, "int8"))
            fields.append(_dtype_field("semantic_scale", pa.float32(), math.prod(semantic_shape[:-1]),
                                       "float32"))
        else:
            fields.append(_dtype_field("semantic", pa.uint16(), n_sem, semantic_dtype))
    meta = {
        b"wintok.num_streams": str(num_streams).encode(),
        b"wintok.positions": str(positions).encode(),
        b"wintok.semantic_shape": ",".join(map(str, semantic_shape or ())).encode(),
        b"wintok.semantic_dtype": semantic_dtype.encode(),
    }
    return TableSpec(name="token_rows", version=1, schema=pa.schema(fields, metadata=meta))


def half_to_bits(values: np.ndarray, dtype: str) -> np.ndarray:
    """float values -> uint16 bit patterns of float16 or bfloat16 (round to nearest even)."""
    x = np.asarray(values, np.float32)
    if dtype == "float16":
        return x.astype(np.float16).view(np.uint16)
    if dtype == "bfloat16":
        u = x.view(np.uint32)
        rounding = ((u >> 16) & 1) + 0x7FFF
        return ((u + rounding) >> 16).astype(np.uint16)
    raise ValueError(f"dtype {dtype!r} not accepted; use 'float16' or 'bfloat16'")


def bits_to_float32(bits: np.ndarray, dtype: str) -> np.ndarray:
    """uint16 bit patterns of float16/bfloat16 -> float32."""
    b = np.asarray(bits, np.uint16)
    if dtype == "float16":
        return b.view(np.float16).astype(np.float32)
    if dtype == "bfloat16":
        return (b.astype(np.uint32) << 16).view(np.float32)
    raise ValueError(f"dtype {dtype!r} not accepted; use 'float16' or 'bfloat16'")
