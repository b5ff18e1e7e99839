"""Token loaders on a real featurized store: exactly once, worker-independent order, exact resume."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

from loader_support import built_store, drain
from pipelines.ingest import read_status
from pipelines.loaders import ResumableLoader, StreamingTokenDataset, ZarrTokenDataset

BATCH = 5  # 48 samples: 10 batches, the last one short


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    return built_store(tmp_path_factory)


def make(mode, built, tmp_path_factory=None, **kw):
    kw.setdefault("batch_size", BATCH)
    if mode == "zarr":
        return ZarrTokenDataset(str(built.store), built.tokens, cache_dir=str(built.store.parent / "cache"), **kw)
    return StreamingTokenDataset(str(built.store), built.tokens, **kw)


def stored_keys(built):
    t = read_status(str(built.store))
    return sorted(k for k, s in zip(t.column("key").to_pylist(), t.column("status").to_pylist())
                  if s == "stored")


@pytest.mark.parametrize("mode", ["zarr", "stream"])
def test_every_sample_once_over_ranks_and_workers(built, mode):
    seen = []
    for rank in range(2):
        ds = make(mode, built, rank=rank, world_size=2, seed=3)
        for b in ResumableLoader(ds, num_workers=2):
            seen += b["key"]
    assert len(seen) == len(set(seen)) == 48
    assert sorted(seen) == stored_keys(built)


@pytest.mark.parametrize("mode", ["zarr", "stream"])
def test_same_batches_for_0_1_2_4_workers(built, mode):
    runs = [drain(ResumableLoader(make(mode, built, seed=7), num_workers=w)) for w in (0, 1, 2, 4)]
    assert all(r == runs[0] for r in runs[1:])
    assert len(runs[0]) == 10 and sum(len(b["key"]) for b in runs[0]) == 48
    other_epoch = make(mode, built, seed=7)
    other_epoch.set_epoch(1)
    assert drain(ResumableLoader(other_epoch))[0]["key"] != runs[0][0]["key"]  # reshuffled per epoch


@pytest.mark.parametrize("mode", ["zarr", "stream"])
@pytest.mark.parametrize("k", [0, 3, 9])
def test_resume_after_k_batches_gives_the_remaining_batches(built, mode, k):
    full = ResumableLoader(make(mode, built, seed=11), num_workers=2)
    want = drain(full) + drain(full)  # two epochs uninterrupted
    first = ResumableLoader(make(mode, built, seed=11), num_workers=2)
    it = iter(first)
    got = [next(it) for _ in range(k)]
    state = first.state_dict()
    assert state == {"epoch": 0, "batch": k}
    resumed = ResumableLoader(make(mode, built, seed=11), num_workers=2)
    resumed.load_state_dict(state)
    rest = drain(resumed) + drain(resumed)
    assert [{"key": b["key"], "ids": b["ids"].tolist()} for b in got] + rest == want


def test_dataset_alone_tracks_its_position(built):
    ds = make("zarr", built, seed=1)
    it = iter(ds)
    next(it), next(it)
    assert ds.state_dict() == {"epoch": 0, "batch": 2}


@pytest.mark.parametrize("mode", ["zarr", "stream"])
def test_ids_and_captions_match_the_store(built, mode):
    rows = pq.read_table(sorted(Path(built.store, built.tokens).glob("*.parquet"))).to_pandas()
    want = {k: np.asarray(v, np.int64).reshape(4, 256) for k, v in zip(rows.key, rows.pixel_ids)}
    status = read_status(str(built.store)).to_pandas().set_index("key")
    for b in make(mode, built, seed=0, batch_size=16):
        assert b["ids"].dtype == torch.int64 and b["ids"].shape[1:] == (4, 256)
        for key, ids, cap in zip(b["key"], b["ids"].numpy(), b["caption"]):
            np.testing.assert_array_equal(ids, want[key])
            assert cap == status.loc[key, "caption"]


def test_flattened_layouts(built):
    s = next(iter(make("zarr", built, shuffle=False, batch_size=2)))["ids"]
    c = next(iter(make("zarr", built, shuffle=False, batch_size=2, layout="concat")))["ids"]
    i = next(iter(make("stream", built, shuffle=False, batch_size=2, layout="interleaved")))["ids"]
    assert torch.equal(c, s.reshape(2, -1)) and torch.equal(i, s.transpose(1, 2).reshape(2, -1))


def test_memory_cache_equals_memmap(built):
    a = drain(make("zarr", built, seed=5, cache="memory"))
    assert a == drain(make("zarr", built, seed=5))


def test_bad_arguments_name_the_value(built):
    with pytest.raises(ValueError, match="batch_size"):
        make("zarr", built, batch_size=0)
    with pytest.raises(ValueError, match="rank"):
        make("stream", built, rank=2, world_size=2)
    with pytest.raises(ValueError, match="cache"):
        make("zarr", built, cache="disk")
    with pytest.raises(ValueError, match="layout"):
        make("stream", built, layout="flat")
    with pytest.raises(ValueError, match="tokens/nope"):
        ZarrTokenDataset(str(built.store), "nope")
