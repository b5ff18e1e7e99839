"""PyTorch loaders for generator (AR) training over a token store, and the distillation loader.

Two token loaders, one contract (see `pipelines.loader_order`): whole batches in an order fixed
by (seed, epoch), split over ranks and DataLoader workers, resumable from `state_dict()`.

- `ZarrTokenDataset`: random access over the Zarr slot arrays (valid rows of committed shards).
  The ids are first gathered whole-chunk-at-a-time into one dense uint16 array, kept in memory
  (`cache="memory"`) or in a local memmap file shared by every worker (`cache="memmap"`); a batch
  is then one sorted fancy-index gather. A global permutation per epoch.
- `StreamingTokenDataset`: streams the pre-tokenized webdataset shards written by
  `pipelines.publish` (each shard read whole, ids gathered with numpy via the shard's index).
  Shards are shuffled per epoch and dealt to ranks; samples shuffled inside windows of
  `shuffle_window` shards.

Batches are dicts: ids (int64 tensor, (B, streams, positions) or flattened, see `layout`),
key (list[str]) and caption (list[str | None], when `captions=True`).

    ds = ZarrTokenDataset("store", "tokens/wintok-...", batch_size=256, seed=0)
    loader = ResumableLoader(ds, num_workers=4)
    for batch in loader: ...; ckpt["data"] = loader.state_dict()
"""
from __future__ import annotations

import hashlib
import json
import os
import tempfile
from typing import Iterator

import numpy as np
import pyarrow.parquet as pq
import torch

from pipelines.fsutil import is_local, join
from pipelines.loader_common import (arrange_ids, as_store, check_id_layout, check_ids_dtype,
                                     resolve_stage,
                                     stored_captions, token_layout_of)
from pipelines.featurize import zarr_options, zarr_url
from pipelines.loader_distill import DistillDataset, distill_loss
from pipelines.loader_order import (BatchStream, ResumableLoader, check_pos_int, epoch_rng,
                                    split_batches)
from pipelines.manifest import shard_name
from schemas.zarr_layout import open_zarr
from wintok.packing import packed_size, unpack_ids

__all__ = ["ZarrTokenDataset", "StreamingTokenDataset", "DistillDataset", "ResumableLoader",
           "distill_loss", "CACHE_MODES"]

CACHE_MODES = ("memory", "memmap")


class ZarrTokenDataset(BatchStream):
    """Random-access batches of pixel ids from a token store's Zarr arrays (valid rows only)."""

    def __init__(self, store_root: str, token_stage: str, *, batch_size: int = 256, seed: int = 0,
                 shuffle: bool = True, drop_last: bool = False, rank: int | None = None,
                 world_size: int | None = None, layout: str = "streams", captions: bool = True,
                 cache: str = "memmap", cache_dir: str | None = None, ids_dtype: str = "int64",
                 augment: tuple[str, ...] = (), storage_options: dict | None = None) -> None:
        super().__init__(batch_size=batch_size, seed=seed, shuffle=shuffle, drop_last=drop_last,
                         rank=rank, world_size=world_size)
        if cache not in CACHE_MODES:
            raise ValueError(f"cache {cache!r} not one of {CACHE_MODES}")
        self.layout = check_id_layout(layout)
        self.ids_dtype = check_ids_dtype(ids_dtype)
        store = as_store(store_root, storage_options)
        self.store = store
        self.stage = resolve_stage(store, token_stage, "tokens")
        self.token_layout = token_layout_of(store, self.stage)
        self.zarr_url = zarr_url(store, self.stage)
        self.zarr_options = zarr_options(store)
        group = open_zarr(self.zarr_url, "tokens", storage_options=self.zarr_options)
        self.augment = tuple(augment)
        if set(self.augment) - {"hflip"}:
            raise ValueError(f"augment {self.augment!r}: the only stored variant is 'hflip'")
        if self.augment and "pixel_ids_hflip" not in group:
            raise ValueError(f"{self.stage} has no stored hflip variant: featurize with "
                             f"hflip=True (--hflip) to store it; variants are never guessed at "
                             f"load time")
        self.capacity = int(group.attrs["capacity"])
        commits = store.commits(self.stage)
        valid = np.asarray(group["valid"][:], dtype=bool)
        committed = np.zeros(len(valid), dtype=bool)
        for s in commits:  # a crashed shard may have slots written but no commit marker
            committed[s * self.capacity:(s + 1) * self.capacity] = True
        self.rows = np.flatnonzero(valid & committed)  # dense sample i lives at Zarr row rows[i]
        self.keys = np.asarray(group["key"].get_coordinate_selection(self.rows)
                               if len(self.rows) else [], dtype=object)
        self.captions = stored_captions(store) if captions else None
        self.cache = cache
        digest = hashlib.sha256(json.dumps(
            {s: r.files for s, r in commits.items()}, sort_keys=True).encode()).hexdigest()[:16]
        self.cache_path = None
        if cache == "memmap":
            base = cache_dir or join(tempfile.gettempdir(), "wintok-loader-cache")
            name = self.stage.replace("/", "_") + f"-{digest}{'-hflip' if self.augment else ''}.u16"
            self.cache_path = join(base, name)
            if not os.path.exists(self.cache_path):  # built once, by the process that creates us
                self._build_memmap()
        self._data: np.ndarray | None = None
        self._plan_cache: tuple[int, list] | None = None

    def __len__(self) -> int:
        """Valid samples in the store (all ranks)."""
        return len(self.rows)

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state["_data"], state["_plan_cache"] = None, None  # reopened/recomputed in each worker
        return state

    # ---- dense copy of the ids ----------------------------------------------------------------
    def _read_dense(self) -> Iterator[tuple[int, np.ndarray]]:
        """(dense start, ids) per committed shard: one whole Zarr chunk read per shard."""
        group = open_zarr(self.zarr_url, "tokens", storage_options=self.zarr_options)
        arrays = [group["pixel_ids"]] + ([group["pixel_ids_hflip"]] if self.augment else [])
        shard_of = self.rows // self.capacity
        bounds = np.flatnonzero(np.diff(shard_of, prepend=-1, append=-1))
        for a, b in zip(bounds[:-1], bounds[1:]):
            s = int(shard_of[a])
            sel = self.rows[a:b] - s * self.capacity
            parts = [arr[s * self.capacity:(s + 1) * self.capacity][sel] for arr in arrays]
            # with augment: (n, 2, streams, positions), variant 1 = mirrored image
            yield int(a), np.stack(parts, axis=1) if self.augment else parts[0]

    def _build_memmap(self) -> None:
        S, P = self.token_layout.ids_shape
        os.makedirs(os.path.dirname(self.cache_path), exist_ok=True)
        tmp = f"{self.cache_path}.tmp-{os.getpid()}"
        shape = (max(len(self.rows), 1),) + ((2,) if self.augment else ()) + (S, P)
        mm = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.uint16, shape=shape)
        for start, ids in self._read_dense():
            mm[start:start + len(ids)] = ids
        mm.flush()
        del mm
        os.replace(tmp, self.cache_path)

    def _dense(self) -> np.ndarray:
        if self._data is None:
            if self.cache == "memmap":
                self._data = np.load(self.cache_path, mmap_mode="r")
            else:
                S, P = self.token_layout.ids_shape
                data = np.empty((len(self.rows),) + ((2,) if self.augment else ()) + (S, P), np.uint16)
                for start, ids in self._read_dense():
                    data[start:start + len(ids)] = ids
                self._data = data
        return self._data

    # ---- order --------------------------------------------------------------------------------
    def _plan(self, epoch: int) -> list[np.ndarray]:
        if self._plan_cache is not None and self._plan_cache[0] == epoch:
            return self._plan_cache[1]
        o, n = self.order, len(self.rows)
        perm = epoch_rng(o.seed, epoch).permutation(n) if o.shuffle else np.arange(n)
        if o.drop_last:  # equal shares, so every rank runs the same number of steps
            perm = perm[: n - n % o.world_size]
        plan = split_batches(perm[o.rank::o.world_size], o.batch_size, o.drop_last)
        self._plan_cache = (epoch, plan)
        return plan

    def _flips(self, epoch: int) -> np.ndarray:
        """Per dense sample, whether this epoch serves its mirrored variant (any worker count)."""
        return epoch_rng(self.order.seed, epoch, 7).random(len(self.rows)) < 0.5

    def _load(self, items: list[np.ndarray]) -> Iterator[dict]:
        data = self._dense()
        for idx in items:
            order = np.argsort(idx, kind="stable")
            ids = np.empty((len(idx),) + data.shape[1:], np.uint16)
            ids[order] = data[idx[order]]  # sorted gather: sequential pages of the memmap
            if self.augment:  # one stored variant per sample, a coin from (seed, epoch, sample)
                flip = self._flips(self.epoch)[idx]
                ids = ids[np.arange(len(idx)), flip.astype(np.int64)]
            keys = self.keys[idx].tolist()
            yield _batch(ids, keys, self.captions, self.layout, self.ids_dtype)


class StreamingTokenDataset(BatchStream):
    """Batches of pixel ids streamed from the published webdataset shards of a token stage."""

    def __init__(self, store_root: str, token_stage: str, *, batch_size: int = 256, seed: int = 0,
                 shuffle: bool = True, drop_last: bool = False, rank: int | None = None,
                 world_size: int | None = None, layout: str = "streams", captions: bool = True,
                 shuffle_window: int = 2, ids_dtype: str = "int64",
                 storage_options: dict | None = None) -> None:
        from pipelines.publish import published_info, published_stage

        super().__init__(batch_size=batch_size, seed=seed, shuffle=shuffle, drop_last=drop_last,
                         rank=rank, world_size=world_size)
        self.layout = check_id_layout(layout)
        self.ids_dtype = check_ids_dtype(ids_dtype)
        self.window = check_pos_int("shuffle_window", shuffle_window)
        self.with_captions = bool(captions)
        store = as_store(store_root, storage_options)
        self.store = store
        self.stage = published_stage(store, token_stage)
        self.info = published_info(store, self.stage)
        self.counts = {s: int(r.counts["samples"]) for s, r in store.commits(self.stage).items()}
        if not self.counts:
            raise ValueError(f"{self.stage} has no committed shards: run pipelines.publish.publish first")
        self._cache: dict[tuple[int, ...], tuple] = {}

    def __len__(self) -> int:
        """Published samples (all ranks)."""
        return sum(self.counts.values())

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state["_cache"] = {}
        return state

    def _plan(self, epoch: int) -> list[list[tuple[tuple[int, ...], np.ndarray]]]:
        o = self.order
        shards = np.asarray(sorted(self.counts), dtype=np.int64)
        if o.shuffle:
            shards = shards[epoch_rng(o.seed, epoch).permutation(len(shards))]
        mine = [int(s) for s in shards[o.rank::o.world_size]]
        seq_w, seq_p = [], []
        windows = [tuple(mine[i:i + self.window]) for i in range(0, len(mine), self.window)]
        for w, win in enumerate(windows):
            n = sum(self.counts[s] for s in win)
            pos = epoch_rng(o.seed, epoch, 1, win[0]).permutation(n) if o.shuffle else np.arange(n)
            seq_w.append(np.full(n, w, np.int64))
            seq_p.append(pos)
        if not windows:
            return []
        seq = np.stack([np.concatenate(seq_w), np.concatenate(seq_p)], axis=1)
        plan = []
        for b in split_batches(seq, o.batch_size, o.drop_last):
            cuts = np.flatnonzero(np.diff(b[:, 0])) + 1
            plan.append([(windows[int(part[0, 0])], part[:, 1]) for part in np.split(b, cuts)])
        return plan

    def _load(self, items: list) -> Iterator[dict]:
        for segments in items:
            parts = [self._window(win).take(pos) for win, pos in segments]
            ids = np.concatenate([p[0] for p in parts])
            keys = [k for p in parts for k in p[1]]
            batch = _batch(ids, keys, None, self.layout, self.ids_dtype)
            if self.with_captions:
                batch["caption"] = [c for p in parts for c in p[2]]
            yield batch

    def _window(self, win: tuple[int, ...]) -> "_Window":
        if win not in self._cache:
            if len(self._cache) >= 2:  # batches span at most two consecutive windows
                self._cache.pop(next(iter(self._cache)))
            self._cache[win] = _Window([read_published_shard(self.store, self.stage, s, self.info)
                                        for s in win], self.info)
        return self._cache[win]


class _Window:
    """Raw bytes of a few published shards; ids are gathered and unpacked per batch only."""

    def __init__(self, shards: list[tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]], info: dict):
        self.info = info
        bases = np.cumsum([0] + [len(s[0]) for s in shards])[:-1]
        self.data = np.concatenate([s[0] for s in shards])  # the shards' tar bytes, back to back
        self.offsets = np.concatenate([s[1] + b for s, b in zip(shards, bases)])
        self.keys = np.concatenate([s[2] for s in shards])
        self.caps = np.concatenate([s[3] for s in shards])

    def take(self, pos: np.ndarray) -> tuple[np.ndarray, list, list]:
        return (ids_at(self.data, self.offsets[pos], self.info), self.keys[pos].tolist(),
                self.caps[pos].tolist())


def ids_at(data: np.ndarray, offsets: np.ndarray, info: dict) -> np.ndarray:
    """Decode the ids payloads starting at `offsets` of a published tar: (n, streams, positions)."""
    S, P = info["layout"]["num_streams"], info["positions"]
    n = len(offsets)
    packed = info["format"] == "packed"
    bits = int(info["bits"]) if packed else 16
    nbytes = packed_size(S * P, bits) if packed else S * P * 2
    # one memcpy per sample: rows of a sliding window over the shard bytes
    raw = (np.lib.stride_tricks.sliding_window_view(data, nbytes)[offsets] if n
           else np.zeros((0, nbytes), np.uint8))
    if not packed:
        return raw.view("<u2").astype(np.uint16, copy=False).reshape(n, S, P)
    if (S * P * bits) % 8 == 0 and (bits != 12 or (S * P) % 2 == 0):  # no per-sample padding
        return unpack_ids(raw, bits, n * S * P).reshape(n, S, P)
    return np.stack([unpack_ids(r.tobytes(), bits, S * P) for r in raw]).reshape(n, S, P)


def read_published_shard(store, stage: str, shard: int, info: dict) -> tuple[np.ndarray, ...]:
    """(tar bytes as uint8, ids payload offsets, keys, captions) of one published shard."""
    d = store.stage_dir(stage)
    index = pq.read_table(join(d, f"{shard_name(shard)}.index.parquet"), filesystem=_arrow_fs(store),
                          columns=["key", "caption", "ids_offset"])
    data = np.frombuffer(store.fs.cat_file(join(d, f"{shard_name(shard)}.tar")), np.uint8)
    offsets = index.column("ids_offset").to_numpy().astype(np.int64)
    keys = np.asarray(index.column("key").to_pylist(), dtype=object)
    caps = np.asarray(index.column("caption").to_pylist(), dtype=object)
    return data, offsets, keys, caps


def _batch(ids: np.ndarray, keys: list[str], captions: dict | None, layout: str,
           dtype: str = "int64") -> dict:
    out = {"ids": torch.from_numpy(arrange_ids(ids, layout).astype(dtype)), "key": keys}
    if captions is not None:
        out["caption"] = [captions.get(k) for k in keys]
    return out


def _arrow_fs(store):
    """A pyarrow filesystem for the store (None for local paths)."""
    if is_local(store.fs):
        return None
    from pyarrow.fs import FSSpecHandler, PyFileSystem

    return PyFileSystem(FSSpecHandler(store.fs))
