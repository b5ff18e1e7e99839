"""Published webdataset shards read with plain webdataset; stores read by DuckDB, Polars, pandas, zarr."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import duckdb
import numpy as np
import pandas as pd
import polars as pl
import pytest
import webdataset as wds
import zarr

from featurize_support import copy_store, data_files
from loader_support import built_store
from pipelines.ingest import read_status
from pipelines.publish import publish
from pipelines.store import open_store
from wintok.packing import unpack_ids


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    return built_store(tmp_path_factory)


def token_rows(built) -> pd.DataFrame:
    return pd.read_parquet(sorted(Path(built.store, built.tokens).glob("[0-9]*.parquet")))


def published_dir(store: Path, tokens: str) -> Path:
    return Path(store, "published", tokens.split("/", 1)[1])


def test_packed_shards_read_with_plain_webdataset(built):
    d = published_dir(built.store, built.tokens)
    info = json.loads((d / "_info.json").read_text())
    assert info["format"] == "packed" and info["bits"] == 12
    want = {k: np.asarray(v, np.uint16) for k, v in zip(token_rows(built).key, token_rows(built).pixel_ids)}
    caps = read_status(str(built.store)).to_pandas().set_index("key").caption
    urls = [str(p) for p in sorted(d.glob("*.tar"))]
    seen = with_caption = 0
    for sample in wds.WebDataset(urls, shardshuffle=False).decode():
        ids = unpack_ids(sample["ids12"], 12, 4 * 256).reshape(4, 256)
        assert len(sample["ids12"]) == 1536  # 12 bits per id on disk
        np.testing.assert_array_equal(ids.reshape(-1), want[sample["__key__"]])
        cap = caps[sample["__key__"]]
        assert sample.get("txt") == (cap if isinstance(cap, str) else None)  # .txt only when captioned
        seen += 1
        with_caption += "txt" in sample
    assert seen == 48 and with_caption > 0


def test_npy_format_with_labels_and_resume(built, tmp_path):
    store = copy_store(built.store, tmp_path / "store")
    lineage = built.tokens.split("/", 1)[1]
    with pytest.raises(ValueError, match="other settings"):  # same lineage, other format
        publish(str(store), built.tokens, format="npy")
    shutil.rmtree(published_dir(store, built.tokens))
    s1 = publish(str(store), lineage, format="npy", label_column="uid")
    assert s1.shards_written == [0, 1, 2] and s1.samples == 48
    before = data_files(store, f"published/{lineage}")
    (published_dir(store, built.tokens) / "_commits" / "00001.json").unlink()  # as if it crashed
    s2 = publish(str(store), built.tokens, format="npy", label_column="uid")
    assert s2.shards_written == [1] and s2.shards_skipped == [0, 2]
    assert data_files(store, f"published/{lineage}") == before  # reproducible bytes
    assert open_store(str(store)).verify(f"published/{lineage}").ok
    info = json.loads((published_dir(store, built.tokens) / "_info.json").read_text())
    rows = token_rows(built).set_index("key")
    for sample in wds.WebDataset(str(published_dir(store, built.tokens) / "00000.tar"),
                                 shardshuffle=False).decode():
        np.testing.assert_array_equal(sample["ids.npy"].reshape(-1), rows.loc[sample["__key__"], "pixel_ids"])
        assert sample["ids.npy"].shape == (4, 256) and sample["ids.npy"].dtype == np.uint16
        assert isinstance(sample["cls"], int) and sample["cls"] >= 0
        assert sample["cls"] in info["labels"].values()


def test_publish_rejects_bad_arguments(built):
    with pytest.raises(ValueError, match="format"):
        publish(str(built.store), built.tokens, format="arrow")
    with pytest.raises(ValueError, match="label column 'nope'"):
        publish(str(built.store), built.tokens, label_column="nope")
    with pytest.raises(ValueError, match="tokens/missing"):
        publish(str(built.store), "missing")


def test_token_and_feature_parquet_open_in_duckdb_polars_pandas(built):
    glob = str(Path(built.store, built.tokens, "*.parquet"))
    n, n_keys, width = duckdb.sql(f"SELECT count(*), count(DISTINCT key), max(len(pixel_ids)) "
                                  f"FROM read_parquet('{glob}')").fetchall()[0]
    assert (n, n_keys, width) == (48, 48, 1024)
    first = duckdb.sql(f"SELECT key, pixel_ids[1] AS id0 FROM read_parquet('{glob}') ORDER BY key LIMIT 1").fetchall()[0]
    df = pl.read_parquet(glob).sort("key")
    assert df.height == 48 and df["pixel_ids"].dtype == pl.Array(pl.UInt16, 1024)  # fixed-size list
    assert (df["key"][0], int(df["pixel_ids"][0][0])) == first
    feats = pl.read_parquet(str(Path(built.store, built.features, "*.parquet")))
    assert feats.height == 48 and set(feats["key"]) == set(df["key"])
    pdf = token_rows(built)
    assert len(pdf) == 48 and len(pdf.pixel_ids.iloc[0]) == 1024
    joined = duckdb.sql(f"SELECT count(*) FROM read_parquet('{glob}') t JOIN "
                        f"read_parquet('{Path(built.store, built.features, '*.parquet')}') f USING (key)").fetchall()[0]
    assert joined == (48,)


def test_zarr_stores_open_in_zarr(built):
    g = zarr.open_group(str(Path(built.store, built.tokens, "zarr")), mode="r")
    valid = g["valid"][:] == 1
    ids = g["pixel_ids"][:][valid]
    assert ids.shape == (48, 4, 256) and ids.dtype == np.uint16
    rows = token_rows(built).set_index("key")
    for key, row_ids in zip(g["key"][:][valid][:5], ids[:5]):
        np.testing.assert_array_equal(row_ids.reshape(-1), rows.loc[key, "pixel_ids"])
    f = zarr.open_group(str(Path(built.store, built.features, "zarr")), mode="r")
    assert f["pooled"][:][f["valid"][:] == 1].shape[0] == 48
