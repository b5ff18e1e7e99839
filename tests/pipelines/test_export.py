"""LlamaGen export: one codes/labels .npy per sample, shapes and vocabulary as documented."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from loader_support import built_store
from pipelines.export import export_llamagen


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    return built_store(tmp_path_factory)


def test_llamagen_codes_and_labels(built, tmp_path):
    s = export_llamagen(str(built.store), built.tokens, str(tmp_path), dataset="demo", label_column="uid")
    assert s.samples == 48 and s.vocab_size == 4 * 4096 and s.seq_len == 1024
    info = json.loads((tmp_path / "export_info.json").read_text())
    rows = pd.read_parquet(sorted(Path(built.store, built.tokens).glob("[0-9]*.parquet"))).set_index("key")
    for idx in (0, 17, 47):
        codes = np.load(tmp_path / "demo256_codes" / f"{idx}.npy")
        label = np.load(tmp_path / "demo256_labels" / f"{idx}.npy")
        assert codes.shape == (1, 1, 1024) and label.shape == (1,)
        ids = np.asarray(rows.loc[info["keys"][idx], "pixel_ids"], np.int64).reshape(4, 256)
        # interleaved: position p, stream s at p*4 + s, shifted by s*4096
        np.testing.assert_array_equal(codes[0, 0].reshape(256, 4), (ids + np.arange(4)[:, None] * 4096).T)
        assert label[0] in info["labels"].values()
    assert len(list((tmp_path / "demo256_codes").glob("*.npy"))) == 48


def test_concat_layout_without_offsets_or_labels(built, tmp_path):
    export_llamagen(str(built.store), built.tokens, str(tmp_path), layout="concat", offset_streams=False)
    info = json.loads((tmp_path / "export_info.json").read_text())
    codes = np.load(tmp_path / "imagenet256_codes" / "3.npy")
    rows = pd.read_parquet(sorted(Path(built.store, built.tokens).glob("[0-9]*.parquet"))).set_index("key")
    np.testing.assert_array_equal(codes.reshape(-1), rows.loc[info["keys"][3], "pixel_ids"])
    assert np.load(tmp_path / "imagenet256_labels" / "3.npy").tolist() == [0]
    with pytest.raises(ValueError, match="layout"):
        export_llamagen(str(built.store), built.tokens, str(tmp_path), layout="streams")
