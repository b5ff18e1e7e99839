"""Schemas: writers refuse wrong tables, versions are checked on read, vector helpers round-trip."""

import io

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from wintok.packing import pack_ids, packed_size, unpack_ids

from schemas import (
    INGEST_STATUS,
    SchemaError,
    TableSpec,
    bits_to_float32,
    check_schema_version,
    check_store_format,
    half_to_bits,
    teacher_features_schema,
    token_rows_schema,
    validate_table,
)
from schemas.zarr_layout import create_zarr, open_zarr, token_layout


def _features(dim, n=3, width=None):
    width = width or dim
    vals = pa.array(np.arange(n * width, dtype=np.float32))
    return pa.table({"key": [f"{i:010d}" for i in range(n)], "shard": pa.array([0] * n, pa.int32()),
                     "index": pa.array(range(n), pa.int32()),
                     "pooled": pa.FixedSizeListArray.from_arrays(vals, width)})


def test_teacher_features_round_trip_through_parquet():
    spec = teacher_features_schema(8)
    table = validate_table(_features(8), spec)
    buf = io.BytesIO()
    pq.write_table(table, buf)
    back = pq.read_table(io.BytesIO(buf.getvalue()))
    check_schema_version(back.schema, spec)
    assert back.column("pooled").type == pa.list_(pa.float32(), 8)
    np.testing.assert_array_equal(np.stack(back.column("pooled").to_numpy(zero_copy_only=False)).ravel(),
                                  np.arange(24, dtype=np.float32))


def test_writer_refuses_wrong_width_dtype_missing_and_extra_columns():
    spec = teacher_features_schema(8)
    with pytest.raises(SchemaError, match="pooled"):
        validate_table(_features(8, width=4), spec)  # wrong vector width
    t = _features(8).set_column(1, "shard", pa.array([0, 0, 0], pa.int64()))
    with pytest.raises(SchemaError, match="shard.*int64"):
        validate_table(t, spec)  # wrong dtype
    with pytest.raises(SchemaError, match="missing column key"):
        validate_table(_features(8).drop_columns(["key"]), spec)
    with pytest.raises(SchemaError, match="unexpected column 'extra'"):
        validate_table(_features(8).append_column("extra", pa.array([1, 2, 3])), spec)
    t = _features(8).set_column(0, "key", pa.array(["a", None, "c"]))
    with pytest.raises(SchemaError, match="nulls"):
        validate_table(t, spec)


def test_reader_refuses_newer_version_and_other_table():
    spec = teacher_features_schema(4)
    newer = TableSpec(spec.name, spec.version + 1, spec.schema)
    with pytest.raises(SchemaError, match="newer.*upgrade"):
        check_schema_version(newer.tagged(), spec)
    with pytest.raises(SchemaError, match="expected a 'teacher_features' table"):
        check_schema_version(INGEST_STATUS.tagged(), spec)
    with pytest.raises(SchemaError, match="newer wintok-pipeline"):
        check_store_format(99, where="x")


@pytest.mark.parametrize("dtype", ["float16", "bfloat16", "int8"])
def test_token_rows_schema_round_trip(dtype):
    streams, positions, shape = 2, 16, (16, 8)
    spec = token_rows_schema(streams, positions, shape, dtype, packed_bits=12)
    rng = np.random.default_rng(0)
    n = 4
    ids = rng.integers(0, 4096, (n, streams * positions)).astype(np.uint16)
    sem = rng.normal(size=(n, 16 * 8)).astype(np.float32)
    cols = {"key": [str(i) for i in range(n)], "shard": pa.array([3] * n, pa.int32()),
            "index": pa.array(range(n), pa.int32()),
            "pixel_ids": pa.FixedSizeListArray.from_arrays(pa.array(ids.ravel()), streams * positions),
            "pixel_ids_packed": pa.array([pack_ids(r, 12) for r in ids], pa.binary(packed_size(streams * positions, 12)))}
    if dtype == "int8":
        scale = np.abs(sem.reshape(n, 16, 8)).max(-1) / 127
        q = np.round(sem.reshape(n, 16, 8) / scale[..., None]).astype(np.int8)
        cols["semantic"] = pa.FixedSizeListArray.from_arrays(pa.array(q.ravel()), 128)
        cols["semantic_scale"] = pa.FixedSizeListArray.from_arrays(pa.array(scale.ravel().astype(np.float32)), 16)
    else:
        cols["semantic"] = pa.FixedSizeListArray.from_arrays(pa.array(half_to_bits(sem, dtype).ravel()), 128)
    table = validate_table(pa.table(cols), spec)
    buf = io.BytesIO()
    pq.write_table(table, buf)
    back = pq.read_table(io.BytesIO(buf.getvalue()))
    check_schema_version(back.schema, spec)
    assert back.schema.metadata[b"wintok.semantic_dtype"] == dtype.encode()
    got_ids = np.stack(back.column("pixel_ids").to_numpy(zero_copy_only=False))
    np.testing.assert_array_equal(got_ids, ids)
    for row, packed in zip(ids, back.column("pixel_ids_packed").to_pylist()):
        np.testing.assert_array_equal(unpack_ids(packed, 12, streams * positions), row)
    if dtype != "int8":
        got = bits_to_float32(np.stack(back.column("semantic").to_numpy(zero_copy_only=False)), dtype)
        np.testing.assert_allclose(got, sem, rtol=1e-2 if dtype == "bfloat16" else 1e-3, atol=1e-2)


def test_token_schema_rejects_bad_parameters():
    with pytest.raises(ValueError, match="semantic_dtype 'float32' not accepted"):
        token_rows_schema(1, 4, (4, 2), "float32")
    with pytest.raises(ValueError, match="positions must be a positive integer"):
        token_rows_schema(1, 0, (4, 2), "int8")


def test_bf16_exact_bits():
    x = np.array([1.0, -2.5, 3.140625], np.float32)  # exactly representable in bf16
    np.testing.assert_array_equal(bits_to_float32(half_to_bits(x, "bfloat16"), "bfloat16"), x)


def test_zarr_slot_layout_create_and_check(tmp_path):
    layout = token_layout(2, 16, (16, 8), "int8", num_shards=3, capacity=10)
    g = create_zarr(str(tmp_path / "tok.zarr"), layout)
    assert g["pixel_ids"].shape == (30, 2, 16) and g["pixel_ids"].chunks == (10, 2, 16)
    assert g["semantic_scale"].shape == (30, 16)
    assert layout.row(2, 3) == 23
    open_zarr(str(tmp_path / "tok.zarr"), "tokens")
    with pytest.raises(ValueError, match="expected Zarr layout 'teacher_features'"):
        open_zarr(str(tmp_path / "tok.zarr"), "teacher_features")


def test_12_bit_packing_golden_bytes_and_array_input():
    """LSB first: ids 0xABC, 0x123 pack to bytes BC 3A 12; a uint8 array (2-D, as the streaming
    loader gathers rows) unpacks like bytes, and a short buffer is refused in either form."""
    assert pack_ids(np.array([0xABC, 0x123]), 12) == bytes([0xBC, 0x3A, 0x12])
    ids = np.random.default_rng(3).integers(0, 4096, (5, 1024))
    rows = np.stack([np.frombuffer(pack_ids(r, 12), np.uint8) for r in ids])  # (5, 1536)
    np.testing.assert_array_equal(unpack_ids(rows, 12, ids.size).reshape(ids.shape), ids)
    np.testing.assert_array_equal(unpack_ids(pack_ids(ids[0, :7], 12), 12, 7), ids[0, :7])
    with pytest.raises(ValueError, match="need 1536 bytes"):
        unpack_ids(rows[0, :-1], 12, 1024)
