"""Featurize one image shard: decode once, run the tokenizer and the teachers, write per shard.

This module is the step; `pipelines.executor` runs it on Ray (one actor per GPU). For each
shard every image is read and decoded once and the same tensor feeds every model. Outputs:

    tokens/<tokenizer identity>-<prep hash>/   00000.parquet + zarr/ slots + _commits/00000.json
    features/<teacher identity>-<prep hash>/   00000.parquet + zarr/ slots + _commits/00000.json

Each output commits its shard last (data, then marker), so a crash never leaves a shard that
looks done; outputs already committed for a shard are skipped on a rerun.
"""
from __future__ import annotations

import hashlib
import io
import json
import queue
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from typing import Any, Iterator

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from pipelines.fsutil import atomic_write_bytes, is_local, join
from pipelines.manifest import shard_name
from pipelines.shards import Batch, iter_batches, iter_tar_samples
from pipelines.store import Store
from schemas.base import validate_table
from schemas.vectors import half_to_bits, teacher_features_schema, token_rows_schema
from schemas.zarr_layout import open_zarr, teacher_features_layout, token_layout
from wintok.preprocess import Preprocess, to_tensor

IMAGES_STAGE = "images"
SEMANTIC_DTYPES = ("float16", "bfloat16", "int8")


@dataclass(frozen=True)
class FeaturizeSpec:
    """What to compute. Plain data: it travels to Ray workers, which build the models."""

    tokenizer: str | None = None  # tokenizer checkpoint path (None: teacher features only)
    teachers: tuple[str, ...] = ("efficientnet-lite0",)  # teacher specs (wintok.teachers)
    semantic_dtype: str = "float16"  # semantic token storage: float16, bfloat16 or int8
    teacher_patches: bool = False  # also store teacher patch embeddings (float16)
    batch_size: int = 32  # images per model call
    precision: str = "auto"  # fp32 | bf16 | auto (bf16 on GPU, fp32 on CPU); quantizer fp32
    resize: str = "center-crop"  # used only for stored images not already at the input size
    decode_threads: int = 2  # decoding threads per worker
    image_size: int | None = None  # input size for size-agnostic (conv) tokenizers
    hflip: bool = False  # also store the pixel ids of the horizontally flipped image

    def __post_init__(self) -> None:
        if self.tokenizer is None and not self.teachers:
            raise ValueError("nothing to compute: give a tokenizer checkpoint and/or teachers")
        if self.semantic_dtype not in SEMANTIC_DTYPES:
            raise ValueError(f"semantic_dtype {self.semantic_dtype!r} not one of {SEMANTIC_DTYPES}")
        if self.precision not in ("fp32", "bf16", "auto"):
            raise ValueError(f"precision {self.precision!r} not one of fp32, bf16, auto")
        if not 1 <= self.batch_size <= 4096:
            raise ValueError(f"batch_size must be in [1, 4096], got {self.batch_size}")
        if self.decode_threads < 1:
            raise ValueError(f"decode_threads must be >= 1, got {self.decode_threads}")
        Preprocess(resize=self.resize)  # validates the mode

    def to_dict(self) -> dict:
        d = asdict(self)
        d["teachers"] = list(self.teachers)
        return d


@dataclass(frozen=True)
class Output:
    """One output store: its stage name (kind/lineage) and what its rows look like."""

    kind: str  # "tokens" or "features"
    model: str  # "tokenizer" or the teacher spec
    lineage: str  # directory name: <identity>-<prep hash>
    description: dict  # recorded in the manifest

    @property
    def stage(self) -> str:
        return f"{self.kind}/{self.lineage}"

    @property
    def zarr_layout_name(self) -> str:
        return "tokens" if self.kind == "tokens" else "teacher_features"


def lineage_name(identity: str, recipe: dict) -> str:
    """<model identity>-<8 hex of the preprocessing/storage recipe>."""
    digest = hashlib.sha256(json.dumps(recipe, sort_keys=True).encode()).hexdigest()[:8]
    return f"{identity}-{digest}"


def pick_device() -> str:
    """cuda when this process sees a GPU (Ray sets CUDA_VISIBLE_DEVICES per actor), else cpu."""
    return "cuda" if torch.cuda.is_available() else "cpu"


@dataclass
class ShardResult:
    shard: int
    samples: int = 0
    featurized: int = 0
    failures: list[tuple[str, int, str]] = field(default_factory=list)
    skipped_outputs: list[str] = field(default_factory=list)
    seconds: dict[str, float] = field(default_factory=dict)  # read_decode, model, write, total
    device: str = "cpu"
    worker: str = ""


class ShardFeaturizer:
    """Holds the models once and featurizes shards one at a time (the Ray actor's body)."""

    def __init__(self, spec: FeaturizeSpec, store: Store, *, capacity: int,
                 device: str | None = None, worker: str = ""):
        from wintok.teachers import build_teacher
        from wintok.tokenizer import load_tokenizer

        self.spec, self.store = spec, store
        self.capacity = capacity
        self.device = device or pick_device()
        self.precision = spec.precision if spec.precision != "auto" else (
            "bf16" if self.device.startswith("cuda") else "fp32")
        self.worker = worker
        kw = {"image_size": spec.image_size} if spec.image_size else {}
        self.tokenizer = load_tokenizer(spec.tokenizer, **kw).eval().to(self.device) if spec.tokenizer else None
        self.teachers = {t: build_teacher(t).to(self.device) for t in spec.teachers}
        size = self.tokenizer.image_size if self.tokenizer else spec.image_size or 256
        self.pre = Preprocess(size=size, resize=spec.resize)
        self.outputs = plan_outputs(spec, self.tokenizer, self.teachers, self.pre)
        self._pool = ThreadPoolExecutor(spec.decode_threads, thread_name_prefix="decode")

    # ------------------------------------------------------------------ one shard
    def process(self, shard: int) -> ShardResult:
        t0 = time.perf_counter()
        res = ShardResult(shard=shard, device=self.device, worker=self.worker)
        todo = [o for o in self.outputs if not self.store.is_committed(o.stage, shard)]
        res.skipped_outputs = [o.stage for o in self.outputs if o not in todo]
        if not todo:
            return res
        tar_path = join(self.store.stage_dir(IMAGES_STAGE), f"{shard_name(shard)}.tar")
        writers = {o.stage: _ShardWriter(self.store, o, shard, self) for o in todo}
        timing = {"read_decode": 0.0, "model": 0.0, "write": 0.0}
        with self.store.fs.open(tar_path, "rb") as f:
            batches = _prefetch(iter_batches(iter_tar_samples(f, where=tar_path), self.pre,
                                             self.spec.batch_size, self._pool), depth=3)
            write_q = _BackgroundWriter()
            for batch, waited in batches:
                timing["read_decode"] += waited
                res.samples += batch.samples
                res.failures.extend(batch.failures)
                if not batch.keys:
                    continue
                tm = time.perf_counter()
                computed = self._compute(batch, todo)
                timing["model"] += time.perf_counter() - tm
                res.featurized += len(batch.keys)
                write_q.submit(lambda b=batch, c=computed: [writers[s].add(b, c[s]) for s in writers])
            timing["write"] += write_q.close()
        if res.samples > self.capacity:
            raise RuntimeError(f"shard {shard} has {res.samples} samples, more than the store's "
                               f"capacity {self.capacity} per shard")
        tw = time.perf_counter()
        for w in writers.values():
            w.commit(res)
        timing["write"] += time.perf_counter() - tw
        timing["total"] = time.perf_counter() - t0
        res.seconds = timing
        return res

    @torch.no_grad()
    def _compute(self, batch: Batch, todo: list[Output]) -> dict[str, dict[str, np.ndarray]]:
        """Run every model that still has an output to write on one decoded batch."""
        x = to_tensor(list(batch.pixels))
        if self.device.startswith("cuda"):
            x = x.pin_memory().to(self.device, non_blocking=True)
        out: dict[str, dict[str, np.ndarray]] = {}
        for o in todo:
            if o.kind == "tokens":
                enc = self.tokenizer.encode(x, precision=self.precision)
                d = {"pixel_ids": enc.ids.to(torch.int32).cpu().numpy().astype(np.uint16)}
                if enc.semantic is not None:
                    d["semantic"] = enc.semantic.float().cpu().numpy()
                if o.description.get("hflip"):  # same decoded tensor, mirrored
                    flipped = self.tokenizer.encode(x.flip(-1), precision=self.precision)
                    d["pixel_ids_hflip"] = flipped.ids.to(torch.int32).cpu().numpy().astype(np.uint16)
                out[o.stage] = d
            else:
                emb = self.teachers[o.model].embed(x, patches=self.spec.teacher_patches,
                                                   precision=self.precision)
                d = {"pooled": emb.pooled.cpu().numpy()}
                if emb.patches is not None:
                    d["patch"] = emb.patches.cpu().numpy()
                out[o.stage] = d
        return out


def plan_outputs(spec: FeaturizeSpec, tokenizer, teachers: dict, pre: Preprocess) -> list[Output]:
    """The output stores of a run, named by model identity and recipe."""
    outputs = []
    if tokenizer is not None:
        recipe = {"preprocess": pre.to_dict(), "semantic_dtype": spec.semantic_dtype}
        if spec.hflip:  # only when asked, so stores made without it keep their names
            recipe["hflip"] = True
        desc = {"family": tokenizer.family, "identity": tokenizer.identity,
                "checkpoint": spec.tokenizer, "layout": tokenizer.layout.to_dict(),
                "semantic_shape": list(tokenizer.semantic_shape) if tokenizer.semantic_shape else None,
                **recipe}
        outputs.append(Output("tokens", "tokenizer", lineage_name(tokenizer.identity, recipe), desc))
    for t_spec, t in teachers.items():
        recipe = {"preprocess": pre.to_dict(), "teacher_preprocess": t.preprocess,
                  "patches": spec.teacher_patches}
        desc = {"teacher": t_spec, "identity": t.identity, "dim": t.dim, "patch_dim": None,
                "patch_tokens": None, **recipe}
        if spec.teacher_patches and t.patch_dim:
            probe = t.embed(torch.zeros(1, 3, pre.size, pre.size), patches=True).patches
            desc["patch_tokens"], desc["patch_dim"] = int(probe.shape[1]), int(probe.shape[2])
        outputs.append(Output("features", t_spec, lineage_name(t.identity, recipe), desc))
    return outputs


# --------------------------------------------------------------------------- writing
def quantize_int8(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Symmetric per-token int8: x ~ q * scale, scale = max|x| / 127 over the last axis."""
    scale = np.abs(x).max(axis=-1) / 127.0
    safe = np.where(scale > 0, scale, 1.0)
    q = np.clip(np.rint(x / safe[..., None]), -127, 127).astype(np.int8)
    return q, scale.astype(np.float32)


def dequantize_int8(q: np.ndarray, scale: np.ndarray) -> np.ndarray:
    return q.astype(np.float32) * scale[..., None]


class _ShardWriter:
    """Accumulates one output's rows for one shard; writes Parquet + Zarr slots, then commits."""

    def __init__(self, store: Store, out: Output, shard: int, owner: ShardFeaturizer):
        self.store, self.out, self.shard = store, out, shard
        self.owner = owner
        self.keys: list[str] = []
        self.indices: list[int] = []
        self.parts: dict[str, list[np.ndarray]] = {}

    def add(self, batch: Batch, arrays: dict[str, np.ndarray]) -> None:
        self.keys.extend(batch.keys)
        self.indices.extend(batch.indices)
        for k, v in arrays.items():
            self.parts.setdefault(k, []).append(v)

    def _cat(self, name: str, row_shape: tuple[int, ...]) -> np.ndarray:
        parts = self.parts.get(name)
        return np.concatenate(parts) if parts else np.zeros((0,) + row_shape, np.float32)

    def commit(self, res: ShardResult) -> None:
        o, fs = self.out, self.store.fs
        stage_dir = self.store.stage_dir(o.stage)
        n = len(self.keys)
        cols: dict[str, Any] = {"key": pa.array(self.keys, pa.string()),
                                "shard": pa.array(np.full(n, self.shard, np.int32)),
                                "index": pa.array(np.asarray(self.indices, np.int32))}
        zarr_rows: dict[str, np.ndarray] = {}
        if o.kind == "tokens":
            streams, positions = o.description["layout"]["num_streams"], _positions(o)
            ids = self._cat("pixel_ids", (streams, positions)).astype(np.uint16)
            cols["pixel_ids"] = _fixed(ids.reshape(n, streams * positions))
            zarr_rows["pixel_ids"] = ids
            hflip = bool(o.description.get("hflip"))
            if hflip:
                flipped = self._cat("pixel_ids_hflip", (streams, positions)).astype(np.uint16)
                cols["pixel_ids_hflip"] = _fixed(flipped.reshape(n, streams * positions))
                zarr_rows["pixel_ids_hflip"] = flipped
            sem_shape = o.description["semantic_shape"]
            if sem_shape:
                sem = self._cat("semantic", tuple(sem_shape))
                dt = o.description["semantic_dtype"]
                if dt == "int8":
                    q, scale = quantize_int8(sem)
                    cols["semantic"] = _fixed(q.reshape(n, int(np.prod(sem_shape))))
                    cols["semantic_scale"] = _fixed(scale.reshape(n, int(np.prod(sem_shape[:-1]))))
                    zarr_rows["semantic"], zarr_rows["semantic_scale"] = q, scale
                else:
                    bits = half_to_bits(sem, dt)
                    cols["semantic"] = _fixed(bits.reshape(n, int(np.prod(sem_shape))))
                    zarr_rows["semantic"] = bits
            spec = token_rows_schema(streams, positions, tuple(sem_shape) if sem_shape else None,
                                     o.description["semantic_dtype"], hflip=hflip)
        else:
            dim = o.description["dim"]
            pooled = self._cat("pooled", (dim,)).astype(np.float32)
            cols["pooled"] = _fixed(pooled)
            zarr_rows["pooled"] = pooled
            patch_tokens = None
            if o.description["patch_dim"]:
                patch = self._cat("patch", (o.description["patch_tokens"], o.description["patch_dim"]))
                patch_tokens = patch.shape[1]
                bits = half_to_bits(patch, "float16")
                cols["patch"] = _fixed(bits.reshape(n, patch_tokens * o.description["patch_dim"]))
                zarr_rows["patch"] = bits
            spec = teacher_features_schema(dim, patch_tokens=patch_tokens,
                                           patch_dim=o.description["patch_dim"])
        table = validate_table(pa.table(cols), spec)
        name = f"{shard_name(self.shard)}.parquet"
        buf = pa.BufferOutputStream()
        pq.write_table(table, buf, compression="zstd", row_group_size=1024)
        data = buf.getvalue().to_pybytes()
        atomic_write_bytes(fs, join(stage_dir, name), data)
        files = {name: hashlib.sha256(data).hexdigest()}
        files.update(self._write_zarr(zarr_rows))
        counts = {"samples": res.samples, "rows": n, "decode_failed": len(res.failures)}
        self.store.commit_shard(o.stage, self.shard, files, counts,
                                extra={"failures": [list(f) for f in res.failures],
                                       "worker": res.worker, "device": res.device})

    def _write_zarr(self, rows: dict[str, np.ndarray]) -> dict[str, None]:
        """Write this shard's slot rows (its own chunk: no other writer touches it)."""
        group = open_zarr(zarr_url(self.store, self.out.stage), self.out.zarr_layout_name, mode="r+",
                          storage_options=zarr_options(self.store))
        cap = self.owner.capacity
        start = self.shard * cap
        idx = np.asarray(self.indices, np.int64)
        written = []
        valid = np.zeros(cap, np.uint8)
        valid[idx] = 1
        keys = np.full(cap, "", dtype=object)
        keys[idx] = self.keys
        payload = {"valid": valid, "key": keys}
        for name, arr in rows.items():
            block = np.zeros((cap,) + arr.shape[1:], arr.dtype)
            block[idx] = arr
            payload[name] = block
        import zarr

        # Write every chunk even when it equals the fill value (an all-failed shard, zero ids):
        # the commit records a checksum for each chunk file, so each must exist.
        with zarr.config.set({"array.write_empty_chunks": True}):
            for name, block in payload.items():
                group[name][start:start + cap] = block
                written.append(name)
        return {rel: None for rel in _chunk_files(self.store, self.out, written, self.shard)}


def _positions(o: Output) -> int:
    g = o.description["layout"]["grid"]
    return int(g[0]) * int(g[1])


def _fixed(a: np.ndarray) -> pa.FixedSizeListArray:
    a = np.ascontiguousarray(a)
    return pa.FixedSizeListArray.from_arrays(pa.array(a.reshape(-1)), a.shape[1])


def zarr_url(store: Store, stage: str) -> str:
    """URL of a stage's Zarr group (a plain path on the local filesystem)."""
    path = join(store.stage_dir(stage), "zarr")
    return path if is_local(store.fs) else store.fs.unstrip_protocol(path)


def zarr_options(store: Store) -> dict | None:
    """The fsspec options Zarr needs to open `zarr_url` (credentials, endpoint), if remote."""
    return None if is_local(store.fs) else (dict(store.storage_options) or None)


def _chunk_files(store: Store, out: Output, arrays: list[str], shard: int) -> list[str]:
    """Relative paths (from the stage dir) of the chunk files this shard wrote."""
    fs, stage_dir = store.fs, store.stage_dir(out.stage)
    found = []
    for name in arrays:
        root = join(stage_dir, "zarr", name, "c", str(shard))
        found += fs.find(root) if fs.isdir(root) else [root]
    return [fs._strip_protocol(p)[len(fs._strip_protocol(stage_dir)) + 1:] for p in found]


def create_output_arrays(store: Store, out: Output, *, num_shards: int, capacity: int) -> None:
    """Create (or grow) an output's Zarr group for `num_shards` shards of `capacity` slots."""
    from schemas.zarr_layout import create_zarr

    d = out.description
    if out.kind == "tokens":
        layout = token_layout(d["layout"]["num_streams"], _positions(out),
                              tuple(d["semantic_shape"]) if d["semantic_shape"] else None,
                              d["semantic_dtype"], num_shards=num_shards, capacity=capacity,
                              hflip=bool(d.get("hflip")))
    else:
        patch = (d["patch_tokens"], d["patch_dim"]) if d.get("patch_dim") else None
        layout = teacher_features_layout(d["dim"], num_shards=num_shards, capacity=capacity,
                                         patch_shape=patch)
    url = zarr_url(store, out.stage)
    if not store.fs.exists(join(url, "zarr.json")):
        create_zarr(url, layout, storage_options=zarr_options(store))
        return
    group = open_zarr(url, out.zarr_layout_name, mode="r+", storage_options=zarr_options(store))
    if group.attrs["capacity"] != capacity:
        raise ValueError(f"{url} was created with {group.attrs['capacity']} slots per shard, "
                         f"this run needs {capacity}")
    if group.attrs["num_shards"] < num_shards:
        for name in group.array_keys():
            arr = group[name]
            arr.resize((num_shards * capacity,) + arr.shape[1:])
        group.attrs.update(layout.attrs())


# --------------------------------------------------------------------------- overlap
def _prefetch(it: Iterator[Batch], depth: int) -> Iterator[tuple[Batch, float]]:
    """Run `it` in a thread, `depth` batches ahead; yields (batch, seconds waited for it)."""
    q: queue.Queue = queue.Queue(maxsize=depth)
    done = object()

    def run() -> None:
        try:
            for item in it:
                q.put(item)
            q.put(done)
        except BaseException as e:  # handed to the consumer, which re-raises it
            q.put(e)

    threading.Thread(target=run, daemon=True, name="shard-reader").start()
    while True:
        t = time.perf_counter()
        item = q.get()
        waited = time.perf_counter() - t
        if item is done:
            return
        if isinstance(item, BaseException):
            raise item
        yield item, waited


class _BackgroundWriter:
    """One thread that runs write jobs in order while the model computes the next batch."""

    def __init__(self) -> None:
        self.q: queue.Queue = queue.Queue(maxsize=4)
        self.error: BaseException | None = None
        self.busy = 0.0
        self.thread = threading.Thread(target=self._run, daemon=True, name="shard-writer")
        self.thread.start()

    def _run(self) -> None:
        while (job := self.q.get()) is not None:
            if self.error is None:
                t = time.perf_counter()
                try:
                    job()
                except BaseException as e:  # re-raised by close()
                    self.error = e
                self.busy += time.perf_counter() - t

    def submit(self, job) -> None:
        if self.error is not None:
            raise self.error
        self.q.put(job)

    def close(self) -> float:
        self.q.put(None)
        self.thread.join()
        if self.error is not None:
            raise self.error
        return self.busy

