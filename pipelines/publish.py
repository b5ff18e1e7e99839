"""Publish a token stage as pre-tokenized webdataset shards (no image is re-encoded).

Layout, one tar per committed token shard, committed last through `Store.commit_shard`:

    <store>/published/<token lineage>/
        _info.json              format version, member format, TokenLayout, bits, label column
        00000.tar               webdataset shard, samples in the token shard's order
        00000.index.parquet     key, index, caption, label, ids_offset (byte offset of the ids
                                payload inside the tar): lets the streaming loader gather all ids
                                of a shard with one read and one numpy gather
        _commits/00000.json     both files with sha256, counts

Members of a sample (plain webdataset reads them; `wds.WebDataset(url).decode()`):

- `format="packed"` (default, 12 bits per id for 4096-entry codebooks): `<key>.ids<bits>`, e.g.
  `<key>.ids12` = the (num_streams, positions) ids, row-major, packed with
  `wintok.packing.pack_ids(ids, bits)` (LSB first); decode with
  `unpack_ids(raw, bits, S*P).reshape(S, P)`.
- `format="npy"`: `<key>.ids.npy` = `np.save` of the uint16 (num_streams, positions) array;
  `.decode()` turns it into a numpy array by itself.
- `<key>.txt` caption (when the sample has one), `<key>.cls` integer label (when a label column
  is given; the value -> int mapping is in `_info.json`).
"""
from __future__ import annotations

import hashlib
import io
import json
import tarfile
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from pipelines.fsutil import atomic_write_bytes, join
from pipelines.loader_common import as_store, lineage_of, resolve_stage, stored_captions
from pipelines.manifest import shard_name
from pipelines.store import Store, new_run_id
from wintok.packing import pack_ids, packed_size
from wintok.tokenizer import TokenLayout

PUBLISH_FORMATS = ("packed", "npy")
PUBLISHED_VERSION = 1
INFO_NAME = "_info.json"


@dataclass
class PublishSummary:
    """What a publish run did."""

    stage: str
    shards_written: list[int] = field(default_factory=list)
    shards_skipped: list[int] = field(default_factory=list)
    samples: int = 0


def published_stage(store: Store, token_stage: str) -> str:
    """'published/<lineage>' of a token stage ('tokens/<lineage>' or the bare lineage)."""
    lineage = token_stage.split("/", 1)[1] if token_stage.startswith("tokens/") else token_stage
    return store.stage_name("published", lineage)


def published_info(store: Store, stage: str) -> dict:
    """The `_info.json` of a published stage (format, layout, bits); refuses a newer version."""
    path = join(store.stage_dir(stage), INFO_NAME)
    if not store.fs.exists(path):
        raise ValueError(f"{stage} is not published (no {INFO_NAME}); run pipelines.publish.publish")
    info = json.loads(store.fs.cat_file(path))
    if info.get("format_version", 0) > PUBLISHED_VERSION:
        raise ValueError(f"{stage}: published format version {info.get('format_version')} is newer "
                         f"than {PUBLISHED_VERSION}; upgrade wintok-pipeline")
    return info


def label_map(store: Store, column: str) -> tuple[dict[str, int], dict[str, int]]:
    """(key -> int label, value -> int label) from an ingest status column (e.g. 'uid').

    Values that are all non-negative integers keep their value; otherwise the sorted distinct
    values are numbered 0, 1, 2, ...; samples with no value get -1.
    """
    from pipelines.ingest import read_status

    table = read_status(store)
    if column not in table.column_names or column in ("status", "reason"):
        raise ValueError(f"label column {column!r} is not an ingest status column; choose from "
                         f"{[c for c in table.column_names if c not in ('status', 'reason')]}")
    rows = [(k, v) for k, v, s in zip(table.column("key").to_pylist(), table.column(column).to_pylist(),
                                      table.column("status").to_pylist()) if s == "stored"]
    values = sorted({str(v) for _, v in rows if v is not None})
    if values and all(v.isdigit() for v in values):
        mapping = {v: int(v) for v in values}
    else:
        mapping = {v: i for i, v in enumerate(values)}
    return {k: (mapping[str(v)] if v is not None else -1) for k, v in rows}, mapping


def publish(store_root: str | Store, token_stage: str, *, format: str = "packed",
            label_column: str | None = None, shards: list[int] | None = None,
            take_over_lock: bool = False, storage_options: dict | None = None) -> PublishSummary:
    """Write pre-tokenized webdataset shards of a token stage; resumable (committed shards skipped)."""
    if format not in PUBLISH_FORMATS:
        raise ValueError(f"format {format!r} not one of {PUBLISH_FORMATS}")
    store = as_store(store_root, storage_options)
    tokens = resolve_stage(store, token_stage, "tokens")
    lineage = lineage_of(store, tokens)
    layout = TokenLayout.from_dict(lineage["layout"])
    stage = published_stage(store, tokens)
    committed_tokens = store.commits(tokens)
    wanted = sorted(committed_tokens) if shards is None else sorted(set(shards))
    missing = [s for s in wanted if s not in committed_tokens]
    if missing:
        raise ValueError(f"shards {missing[:10]} are not committed in {tokens}")
    labels, mapping = label_map(store, label_column) if label_column else (None, None)
    info = {"format_version": PUBLISHED_VERSION, "format": format, "bits": layout.bits_per_id,
            "layout": layout.to_dict(), "positions": layout.positions, "token_stage": tokens,
            "label_column": label_column, "labels": mapping,
            "members": _members_doc(format, layout.bits_per_id)}
    summary = PublishSummary(stage=stage)
    run_id = new_run_id()
    with store.writer(take_over=take_over_lock, run_id=run_id):
        info_path = join(store.stage_dir(stage), INFO_NAME)
        if store.fs.exists(info_path):
            old = json.loads(store.fs.cat_file(info_path))
            if {k: old.get(k) for k in info} != info:
                raise ValueError(f"{stage} was published with other settings ({old.get('format')}, "
                                 f"labels {old.get('label_column')!r}); delete {store.stage_dir(stage)} "
                                 f"to publish with format={format!r}, label_column={label_column!r}")
        else:
            atomic_write_bytes(store.fs, info_path, json.dumps(info, indent=1).encode())
        store.record_run(stage, {"format": format, "label_column": label_column}, run_id=run_id,
                         lineage={**lineage, "token_stage": tokens, "format": format})
        captions = stored_captions(store)
        done = set(store.list_committed(stage))
        for s in wanted:
            if s in done:
                summary.shards_skipped.append(s)
                continue
            summary.samples += _publish_shard(store, tokens, stage, s, layout, format, captions, labels)
            summary.shards_written.append(s)
        store.finish_run(stage, run_id=run_id, result={"shards_written": len(summary.shards_written),
                                                       "samples": summary.samples})
    return summary


def _members_doc(format: str, bits: int) -> dict:
    ids = (f"ids{bits}: wintok.packing.pack_ids(uint16 (num_streams, positions), {bits}), LSB first"
           if format == "packed" else "ids.npy: np.save of uint16 (num_streams, positions)")
    return {"ids": ids, "txt": "caption (utf-8), when present", "cls": "integer label, when labelled"}


def _publish_shard(store: Store, tokens: str, stage: str, shard: int, layout: TokenLayout,
                   format: str, captions: dict[str, str], labels: dict[str, int] | None) -> int:
    """Write one shard's tar and index, then commit it; returns its sample count."""
    path = join(store.stage_dir(tokens), f"{shard_name(shard)}.parquet")
    with store.fs.open(path, "rb") as f:
        table = pq.read_table(io.BytesIO(f.read()), columns=["key", "index", "pixel_ids"])
    keys = table.column("key").to_pylist()
    n, n_ids = len(keys), layout.num_streams * layout.positions
    ids = table.column("pixel_ids").combine_chunks().flatten().to_numpy().astype(np.uint16).reshape(n, n_ids)
    payloads = _encode_ids(ids, layout, format)
    ext = f"ids{layout.bits_per_id}" if format == "packed" else "ids.npy"
    buf = io.BytesIO()
    offsets, caps, labs = [], [], []
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for key, payload in zip(keys, payloads):
            data_at, skip = _add(tar, f"{key}.{ext}", payload)
            offsets.append(data_at + skip)
            cap = captions.get(key)
            caps.append(cap)
            if cap is not None:
                _add(tar, f"{key}.txt", cap.encode("utf-8"))
            if labels is not None:
                labs.append(labels.get(key, -1))
                _add(tar, f"{key}.cls", str(labs[-1]).encode())
    tar_bytes = buf.getvalue()
    index = pa.table({"key": pa.array(keys, pa.string()),
                      "index": table.column("index"),
                      "caption": pa.array(caps, pa.string()),
                      "label": pa.array(labs if labels is not None else [None] * n, pa.int64()),
                      "ids_offset": pa.array(offsets, pa.int64())})
    ibuf = pa.BufferOutputStream()
    pq.write_table(index, ibuf, compression="zstd")
    index_bytes = ibuf.getvalue().to_pybytes()
    d = store.stage_dir(stage)
    names = {f"{shard_name(shard)}.tar": tar_bytes, f"{shard_name(shard)}.index.parquet": index_bytes}
    for name, data in names.items():
        atomic_write_bytes(store.fs, join(d, name), data)
    store.commit_shard(stage, shard, {k: hashlib.sha256(v).hexdigest() for k, v in names.items()},
                       {"samples": n}, extra={"format": format, "token_stage": tokens})
    return n


def _encode_ids(ids: np.ndarray, layout: TokenLayout, format: str) -> list[bytes]:
    """Per-sample ids payloads: bit-packed (wintok.packing) or .npy bytes."""
    n, n_ids = ids.shape
    shaped = ids.reshape(n, layout.num_streams, layout.positions)
    if format == "npy":
        out = []
        for a in shaped:
            b = io.BytesIO()
            np.save(b, a.astype("<u2"))
            out.append(b.getvalue())
        return out
    bits = layout.bits_per_id
    size = packed_size(n_ids, bits)
    if n and (n_ids * bits) % 8 == 0 and (bits != 12 or n_ids % 2 == 0):  # pack the shard at once
        flat = pack_ids(ids, bits)
        return [flat[i * size:(i + 1) * size] for i in range(n)]
    return [pack_ids(row, bits) for row in ids]


def npy_data_offset(payload: bytes) -> int:
    """Bytes of the .npy header before the array data."""
    f = io.BytesIO(payload)
    major, _ = np.lib.format.read_magic(f)
    read = np.lib.format.read_array_header_1_0 if major == 1 else np.lib.format.read_array_header_2_0
    read(f)  # advances past the header
    return f.tell()


def _add(tar: tarfile.TarFile, name: str, data: bytes) -> tuple[int, int]:
    """Add a member with fixed metadata (reproducible tars); (offset of its data, header skip)."""
    info = tarfile.TarInfo(name)
    info.size, info.mtime, info.mode = len(data), 0, 0o444
    tar.addfile(info, io.BytesIO(data))
    data_at = tar.offset - ((len(data) + 511) // 512) * 512
    skip = npy_data_offset(data) if name.endswith(".npy") else 0
    return data_at, skip
