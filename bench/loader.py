"""AR-training loader throughput and bytes on disk, ours vs the usual layouts, in one run.

    .venv/bin/python bench/loader.py --samples 20000 --out /tmp/loader-bench

A synthetic token store (random 12-bit ids, (4, 256) per sample) is written through the store's
own paths (token_rows_schema Parquet, schemas.zarr_layout Zarr slots, Store.commit_shard), then
published with pipelines.publish. Compared, at batch 256, in-process and at 1 and 2 DataLoader workers:
ours random-access (Zarr -> memmap) and streaming (published packed shards); (a) one .npy per
sample read with np.load in a map-style Dataset (LlamaGen's layout); (b) a plain webdataset tar
of .npy; (c) a raw numpy memmap batched gather (the limit). Prints a table and writes JSON.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch
from torch.utils.data import DataLoader, Dataset, IterableDataset, get_worker_info

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipelines.fsutil import atomic_write_bytes, join  # noqa: E402
from pipelines.loaders import ResumableLoader, StreamingTokenDataset, ZarrTokenDataset  # noqa: E402
from pipelines.manifest import shard_name  # noqa: E402
from pipelines.publish import publish  # noqa: E402
from pipelines.store import new_run_id, open_store  # noqa: E402
from schemas.base import validate_table  # noqa: E402
from schemas.vectors import token_rows_schema  # noqa: E402
from schemas.zarr_layout import create_zarr, token_layout  # noqa: E402
from wintok.packing import packed_size  # noqa: E402
from wintok.tokenizer import TokenLayout  # noqa: E402

STREAMS, POSITIONS, VOCAB = 4, 256, 4096


def write_synthetic_store(root: Path, n: int, shard_size: int, seed: int = 0) -> tuple[str, np.ndarray]:
    """A token store of n random samples (Parquet + Zarr slots + commits); returns (stage, ids)."""
    store = open_store(str(root), create=True)
    layout = TokenLayout("wintok", STREAMS, (16, 16), VOCAB)
    stage = "tokens/synthetic-" + hashlib.sha256(f"{n}-{seed}".encode()).hexdigest()[:12]
    lineage = {"family": "wintok", "identity": "synthetic", "layout": layout.to_dict(),
               "semantic_shape": None, "semantic_dtype": "float16",
               "preprocess": {"size": 256, "resize": "center-crop", "interpolation": "bicubic"}}
    ids = np.random.default_rng(seed).integers(0, VOCAB, (n, STREAMS, POSITIONS), dtype=np.uint16)
    num_shards = (n + shard_size - 1) // shard_size
    run_id = new_run_id()
    with store.writer(run_id=run_id):
        store.record_run(stage, {"synthetic": True}, run_id=run_id, lineage=lineage)
        d = store.stage_dir(stage)
        group = create_zarr(join(d, "zarr"), token_layout(STREAMS, POSITIONS, None, "float16",
                                                          num_shards=num_shards, capacity=shard_size))
        spec = token_rows_schema(STREAMS, POSITIONS, None, "float16")
        for s in range(num_shards):
            part = ids[s * shard_size:(s + 1) * shard_size]
            m = len(part)
            keys = [f"{s * shard_size + i:010d}" for i in range(m)]
            flat = part.reshape(m, -1)
            table = validate_table(pa.table({
                "key": pa.array(keys), "shard": pa.array(np.full(m, s, np.int32)),
                "index": pa.array(np.arange(m, dtype=np.int32)),
                "pixel_ids": pa.FixedSizeListArray.from_arrays(pa.array(flat.reshape(-1)), flat.shape[1])}), spec)
            buf = pa.BufferOutputStream()
            pq.write_table(table, buf, compression="zstd")
            atomic_write_bytes(store.fs, join(d, f"{shard_name(s)}.parquet"), buf.getvalue().to_pybytes())
            lo = s * shard_size
            valid = np.zeros(shard_size, np.uint8)
            valid[:m] = 1
            block = np.zeros((shard_size, STREAMS, POSITIONS), np.uint16)
            block[:m] = part
            kblock = np.full(shard_size, "", dtype=object)
            kblock[:m] = keys
            group["valid"][lo:lo + shard_size] = valid
            group["key"][lo:lo + shard_size] = kblock
            group["pixel_ids"][lo:lo + shard_size] = block
            store.commit_shard(stage, s, [f"{shard_name(s)}.parquet"], {"samples": m, "rows": m})
        store.finish_run(stage, run_id=run_id, result={"samples": n})
    return stage, ids


# ----------------------------------------------------------------------------- baselines
class NpyPerSample(Dataset):
    """(a) LlamaGen's layout: one .npy per sample, np.load in __getitem__."""

    def __init__(self, folder: str, n: int):
        self.folder, self.n = folder, n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> torch.Tensor:
        return torch.from_numpy(np.load(f"{self.folder}/{i}.npy").astype(np.int64))


class RawMemmap(IterableDataset):
    """(c) the limit: sorted batched gather from one raw uint16 memmap, batches dealt to workers."""

    def __init__(self, path: str, n: int, batch: int, seed: int = 0):
        self.path, self.n, self.batch, self.seed = path, n, batch, seed

    def __iter__(self):
        info = get_worker_info()
        w, nw = (0, 1) if info is None else (info.id, info.num_workers)
        data = np.load(self.path, mmap_mode="r")
        perm = np.random.default_rng(self.seed).permutation(self.n)
        for b in range(w, (self.n + self.batch - 1) // self.batch, nw):
            idx = np.sort(perm[b * self.batch:(b + 1) * self.batch])
            yield torch.from_numpy(data[idx].astype(np.int64))


def _to_int64(t: tuple) -> torch.Tensor:
    return torch.from_numpy(t[0].astype(np.int64))


def wds_npy_loader(urls: list[str], batch: int, workers: int):
    """(b) a plain webdataset pipeline over tars of .npy members."""
    import webdataset as wds

    ds = (wds.WebDataset(urls, shardshuffle=False, nodesplitter=None, empty_check=False)
          .decode().to_tuple("ids.npy").map(_to_int64).batched(batch, collation_fn=torch.stack))
    return DataLoader(ds, batch_size=None, num_workers=workers)


def write_baselines(out: Path, ids: np.ndarray, shard_size: int) -> dict[str, Path]:
    import webdataset as wds

    npy_dir = out / "npy_per_sample"
    npy_dir.mkdir(parents=True, exist_ok=True)
    for i, a in enumerate(ids):
        np.save(npy_dir / f"{i}.npy", a)
    tar_dir = out / "wds_npy"
    tar_dir.mkdir(exist_ok=True)
    for s in range(0, len(ids), shard_size):
        with wds.TarWriter(str(tar_dir / f"{s // shard_size:05d}.tar")) as w:
            for i in range(s, min(s + shard_size, len(ids))):
                w.write({"__key__": f"{i:010d}", "ids.npy": ids[i]})
    raw = out / "raw.npy"
    np.save(raw, ids)
    return {"npy": npy_dir, "wds": tar_dir, "raw": raw}


def disk_bytes(path: Path) -> tuple[int, int]:
    """(sum of file sizes, allocated bytes incl. filesystem blocks) under a path."""
    files = [path] if path.is_file() else [p for p in path.rglob("*") if p.is_file()]
    return sum(p.stat().st_size for p in files), sum(p.stat().st_blocks * 512 for p in files)


def time_loader(make, n_expected: int, max_seconds: float) -> float:
    """Samples/s of one pass (stopped after max_seconds), after a one-batch warm-up."""
    it = iter(make())
    first = next(it)
    count, t0 = 0, time.perf_counter()
    for b in it:
        x = b["ids"] if isinstance(b, dict) else b
        count += x.shape[0]
        if time.perf_counter() - t0 > max_seconds:
            break
    dt = time.perf_counter() - t0
    del first
    return count / dt if dt > 0 else float("nan")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--samples", type=int, default=20000)
    p.add_argument("--shard-size", type=int, default=2000)
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--out", default="/tmp/wintok-loader-bench")
    p.add_argument("--max-seconds", type=float, default=8.0)
    p.add_argument("--json", default=None)
    p.add_argument("--ids-dtype", default="int16", choices=["int64", "int32", "int16"],
                   help="dtype our loaders hand out (the baselines hand out uint16 arrays)")
    a = p.parse_args()
    if a.samples <= 0 or a.shard_size <= 0 or a.batch <= 0:
        raise ValueError(f"--samples, --shard-size and --batch must be positive, got {a.samples}, "
                         f"{a.shard_size}, {a.batch}")
    out = Path(a.out)
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    t = time.perf_counter()
    stage, ids = write_synthetic_store(out / "store", a.samples, a.shard_size)
    publish(str(out / "store"), stage, format="packed")
    paths = write_baselines(out / "baselines", ids, a.shard_size)
    print(f"wrote {a.samples} samples in {time.perf_counter() - t:.1f}s", flush=True)
    store, n, B = str(out / "store"), a.samples, a.batch
    cache = str(out / "cache")
    ZarrTokenDataset(store, stage, cache_dir=cache, captions=False)  # builds the memmap cache once

    makers = {
        "ours: random access (Zarr -> memmap)": lambda w: ResumableLoader(
            ZarrTokenDataset(store, stage, batch_size=B, cache_dir=cache, captions=False,
                             ids_dtype=a.ids_dtype), num_workers=w),
        "ours: streaming (published, 12-bit packed)": lambda w: ResumableLoader(
            StreamingTokenDataset(store, stage, batch_size=B, captions=False, ids_dtype=a.ids_dtype),
            num_workers=w),
        "(a) one .npy per sample (LlamaGen)": lambda w: DataLoader(
            NpyPerSample(str(paths["npy"]), n), batch_size=B, shuffle=True, num_workers=w),
        "(b) webdataset tar of .npy": lambda w: wds_npy_loader(
            sorted(str(x) for x in paths["wds"].glob("*.tar")), B, w),
        "(c) raw memmap batched gather (limit)": lambda w: DataLoader(
            RawMemmap(str(paths["raw"]), n, B), batch_size=None, num_workers=w),
    }
    lineage = stage.split("/", 1)[1]
    zarr_dir = out / "store" / stage / "zarr" / "pixel_ids"
    sizes = {
        "ours: random access (Zarr -> memmap)": disk_bytes(zarr_dir),
        "ours: streaming (published, 12-bit packed)": disk_bytes(out / "store" / "published" / lineage),
        "(a) one .npy per sample (LlamaGen)": disk_bytes(paths["npy"]),
        "(b) webdataset tar of .npy": disk_bytes(paths["wds"]),
        "(c) raw memmap batched gather (limit)": disk_bytes(paths["raw"]),
    }
    results = {}
    for name, make in makers.items():
        results[name] = {f"w{w}": time_loader(lambda: make(w), n, a.max_seconds) for w in (0, 1, 2)}
        results[name]["bytes_per_sample"] = sizes[name][0] / n
        results[name]["alloc_per_sample"] = sizes[name][1] / n
        print(name, results[name], flush=True)
    packed = packed_size(STREAMS * POSITIONS, 12)
    ref = {k: results[k] for k in results}
    ra, st = "ours: random access (Zarr -> memmap)", "ours: streaming (published, 12-bit packed)"
    a_, b_, c_ = "(a) one .npy per sample (LlamaGen)", "(b) webdataset tar of .npy", "(c) raw memmap batched gather (limit)"
    print(f"\n{'loader':46s} {'in-process':>12s} {'1 worker':>12s} {'2 workers':>12s} {'bytes/sample':>13s} "
          f"{'bits/id':>8s}")
    for k, r in ref.items():
        print(f"{k:46s} {r['w0']:12,.0f} {r['w1']:12,.0f} {r['w2']:12,.0f} {r['bytes_per_sample']:13,.0f} "
              f"{8 * r['bytes_per_sample'] / (STREAMS * POSITIONS):8.2f}")
    print(f"bit-packed ids alone: {packed} bytes/sample (12 bits per id)")
    ratios = {}
    for ours in (ra, st):
        for w in ("w0", "w1", "w2"):
            ratios[f"{ours} {w}"] = {"vs (a) [>=50x]": results[ours][w] / results[a_][w],
                                     "vs (b) [>=20x]": results[ours][w] / results[b_][w],
                                     "vs (c) [>=0.5x]": results[ours][w] / results[c_][w]}
    print("\nratios (target in brackets):")
    for k, r in ratios.items():
        print(f"  {k:52s} " + "  ".join(f"{m} {v:7.2f}" for m, v in r.items()))
    report = {"samples": n, "batch": B, "results": results, "ratios": ratios, "packed_bytes": packed,
              "cpu_count": os.cpu_count()}
    if a.json:
        Path(a.json).write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
