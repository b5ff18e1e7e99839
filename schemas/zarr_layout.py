"""Zarr array layouts (slot layout: row = shard * capacity + index, with a validity mask).

Each shard owns `capacity` consecutive rows and chunks are aligned to shards along axis 0, so
parallel writers never share a chunk. Rows beyond a shard's sample count have valid == 0.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

ZARR_LAYOUT_VERSION = 1


@dataclass(frozen=True)
class ArraySpec:
    """One array of a layout: per-row shape (after the row axis) and dtype."""

    name: str
    row_shape: tuple[int, ...]
    dtype: str  # numpy dtype name; float16/bfloat16 values are stored as uint16 bits
    fill_value: int | float = 0
    attrs: dict = field(default_factory=dict)


@dataclass(frozen=True)
class ZarrLayout:
    """A versioned group of arrays sharing the slot row axis."""

    name: str
    num_shards: int
    capacity: int  # rows reserved per shard
    arrays: tuple[ArraySpec, ...]
    version: int = ZARR_LAYOUT_VERSION

    @property
    def rows(self) -> int:
        """Total rows (num_shards * capacity)."""
        return self.num_shards * self.capacity

    def row(self, shard: int, index: int) -> int:
        """Global row of sample `index` in `shard`."""
        if not 0 <= index < self.capacity:
            raise ValueError(f"index {index} outside shard capacity {self.capacity}")
        if not 0 <= shard < self.num_shards:
            raise ValueError(f"shard {shard} outside [0, {self.num_shards})")
        return shard * self.capacity + index

    def attrs(self) -> dict:
        """Group attributes recording the layout (checked on open)."""
        return {
            "wintok.layout": self.name,
            "wintok.layout_version": self.version,
            "num_shards": self.num_shards,
            "capacity": self.capacity,
            "arrays": {a.name: {"row_shape": list(a.row_shape), "dtype": a.dtype, **a.attrs} for a in self.arrays},
        }


def _common(num_shards: int, capacity: int) -> tuple[ArraySpec, ...]:
    for n, v in (("num_shards", num_shards), ("capacity", capacity)):
        if not isinstance(v, int) or v <= 0:
            raise ValueError(f"{n} must be a positive int, got {v!r}")
    return (
        ArraySpec("valid", (), "uint8"),
        ArraySpec("key", (), "str"),
    )


def teacher_features_layout(dim: int, *, num_shards: int, capacity: int,
                            patch_shape: tuple[int, int] | None = None) -> ZarrLayout:
    """Layout of teacher features: pooled (rows, dim) float32 + valid + key, and optionally
    patch (rows, tokens, patch_dim) as float16 bits."""
    arrays = _common(num_shards, capacity) + (ArraySpec("pooled", (dim,), "float32"),)
    if patch_shape is not None:
        arrays += (ArraySpec("patch", tuple(patch_shape), "uint16", attrs={"wintok.dtype": "float16"}),)
    return ZarrLayout("teacher_features", num_shards, capacity, arrays)


def token_layout(
    num_streams: int, positions: int, semantic_shape: tuple[int, ...] | None, semantic_dtype: str,
    *, num_shards: int, capacity: int, hflip: bool = False,
) -> ZarrLayout:
    """Layout of tokens: pixel_ids (rows, streams, positions) uint16 + semantic (+ scale for int8)."""
    if semantic_dtype not in ("float16", "bfloat16", "int8"):
        raise ValueError(f"semantic_dtype {semantic_dtype!r} not accepted; use float16, bfloat16 or int8")
    arrays = _common(num_shards, capacity) + (ArraySpec("pixel_ids", (num_streams, positions), "uint16"),)
    if hflip:  # ids of the horizontally mirrored image
        arrays += (ArraySpec("pixel_ids_hflip", (num_streams, positions), "uint16"),)
    if semantic_shape is None:  # no continuous tokens (e.g. WeTok)
        return ZarrLayout("tokens", num_shards, capacity, arrays)
    arrays += (ArraySpec("semantic", tuple(semantic_shape), "int8" if semantic_dtype == "int8" else "uint16",
                         attrs={"wintok.dtype": semantic_dtype}),)
    if semantic_dtype == "int8":
        arrays += (ArraySpec("semantic_scale", tuple(semantic_shape[:-1]), "float32"),)
    return ZarrLayout("tokens", num_shards, capacity, arrays)


def create_zarr(store_url: str, layout: ZarrLayout, *, storage_options: dict | None = None):
    """Create an empty Zarr v3 group for `layout` (chunks aligned to shards) and return it.

    `storage_options`: fsspec options (credentials, endpoint) for a remote `store_url`."""
    import zarr  # lazy: only publishing needs zarr

    group = zarr.open_group(store_url, mode="w", storage_options=storage_options or None)
    group.attrs.update(layout.attrs())
    for spec in layout.arrays:
        shape = (layout.rows,) + spec.row_shape
        chunks = (layout.capacity,) + spec.row_shape
        if spec.dtype == "str":
            group.create_array(spec.name, shape=shape, chunks=chunks, dtype=str, fill_value="")
        else:
            group.create_array(spec.name, shape=shape, chunks=chunks, dtype=np.dtype(spec.dtype),
                               fill_value=spec.fill_value, attributes=dict(spec.attrs))
    return group


def open_zarr(store_url: str, layout_name: str, *, mode: str = "r",
              storage_options: dict | None = None):
    """Open a Zarr group and refuse it when its layout name or version does not match."""
    import zarr

    group = zarr.open_group(store_url, mode=mode, storage_options=storage_options or None)
    name = group.attrs.get("wintok.layout")
    version = group.attrs.get("wintok.layout_version")
    if name != layout_name:
        raise ValueError(f"{store_url}: expected Zarr layout {layout_name!r}, found {name!r}")
    if not isinstance(version, int) or version > ZARR_LAYOUT_VERSION:
        raise ValueError(f"{store_url}: Zarr layout version {version!r} is newer than the "
                         f"{ZARR_LAYOUT_VERSION} this code reads; upgrade wintok-pipeline")
    return group


