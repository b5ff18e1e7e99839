"""Export a token stage in LlamaGen's class-conditional code/label layout (one .npy per sample).

LlamaGen's `autoregressive/train/extract_codes_c2i.py` writes, per image index `idx`,
`{code_path}/{dataset}{image_size}_codes/{idx}.npy` (codes, int, shape (1, num_aug, H*W)) and
`{code_path}/{dataset}{image_size}_labels/{idx}.npy` (label, shape (1,)); its training dataset
picks one augmentation along axis 1 and trains on the (H*W) sequence with one codebook.

What we write (documented again in `export_info.json` beside the two folders):

- codes `{idx}.npy`: int64 of shape (1, 1, positions * num_streams) with `layout="interleaved"`
  (the default: the num_streams ids of position 0, then of position 1, ..., so position p,
  stream s is at p * num_streams + s), or (1, 1, num_streams * positions) with `layout="concat"`
  (stream-major). Axis 1 has size 1: LlamaGen treats it as augmentations (ten-crop/flip), so the
  streams must not go there. With `offset_streams=True` (default) stream s's ids are shifted by
  s * vocab_per_stream, so one joint vocabulary of num_streams * vocab_per_stream entries keeps
  the codebooks apart; set LlamaGen's `--vocab-size` to `vocab_size` in export_info.json and its
  sequence length (`(image_size // downsample_size) ** 2`) to `seq_len`.
- labels `{idx}.npy`: int64 of shape (1,), from `label_column` (an ingest status column such as
  'uid'; the value -> label mapping is in export_info.json), else 0.
- `export_info.json`: layout, vocab_size, seq_len, label mapping, and `keys` (idx -> sample key);
  written last, so a folder without it is an unfinished export.
"""
from __future__ import annotations

import io
import json
from dataclasses import dataclass

import numpy as np
import pyarrow.parquet as pq

from pipelines.fsutil import atomic_write_bytes, get_fs, join
from pipelines.loader_common import as_store, lineage_of, resolve_stage
from pipelines.manifest import shard_name
from pipelines.publish import label_map
from pipelines.store import Store
from wintok.tokenizer import TokenLayout

EXPORT_LAYOUTS = ("interleaved", "concat")


@dataclass
class ExportSummary:
    """Where an export went and how to point LlamaGen at it."""

    codes_dir: str
    labels_dir: str
    samples: int
    vocab_size: int
    seq_len: int


def export_llamagen(store_root: str | Store, token_stage: str, out_dir: str, *,
                    dataset: str = "imagenet", image_size: int | None = None,
                    label_column: str | None = None, layout: str = "interleaved",
                    offset_streams: bool = True, storage_options: dict | None = None) -> ExportSummary:
    """Write LlamaGen's `{dataset}{image_size}_codes/` and `_labels/` folders from a token stage."""
    if layout not in EXPORT_LAYOUTS:
        raise ValueError(f"layout {layout!r} not one of {EXPORT_LAYOUTS}")
    if not isinstance(dataset, str) or not dataset.isidentifier():
        raise ValueError(f"dataset must be a plain name like 'imagenet', got {dataset!r}")
    store = as_store(store_root, storage_options)
    tokens = resolve_stage(store, token_stage, "tokens")
    lineage = lineage_of(store, tokens)
    tl = TokenLayout.from_dict(lineage["layout"])
    size = image_size if image_size is not None else int(lineage["preprocess"]["size"])
    if isinstance(size, bool) or not isinstance(size, int) or size <= 0:
        raise ValueError(f"image_size must be a positive int, got {image_size!r}")
    labels, mapping = label_map(store, label_column) if label_column else (None, None)
    fs, out = get_fs(out_dir)
    codes_dir, labels_dir = join(out, f"{dataset}{size}_codes"), join(out, f"{dataset}{size}_labels")
    fs.makedirs(codes_dir, exist_ok=True)
    fs.makedirs(labels_dir, exist_ok=True)
    offsets = (np.arange(tl.num_streams, dtype=np.int64) * tl.vocab_per_stream if offset_streams
               else np.zeros(tl.num_streams, np.int64))
    keys: list[str] = []
    for shard in store.list_committed(tokens):
        path = join(store.stage_dir(tokens), f"{shard_name(shard)}.parquet")
        with store.fs.open(path, "rb") as f:
            table = pq.read_table(io.BytesIO(f.read()), columns=["key", "pixel_ids"])
        shard_keys = table.column("key").to_pylist()
        n = len(shard_keys)
        ids = table.column("pixel_ids").combine_chunks().flatten().to_numpy().astype(np.int64)
        ids = ids.reshape(n, tl.num_streams, tl.positions) + offsets[None, :, None]
        seqs = (ids.transpose(0, 2, 1) if layout == "interleaved" else ids).reshape(n, 1, 1, -1)
        for key, seq in zip(shard_keys, seqs):
            idx = len(keys)
            label = labels.get(key, -1) if labels is not None else 0
            _save(fs, join(codes_dir, f"{idx}.npy"), seq)
            _save(fs, join(labels_dir, f"{idx}.npy"), np.asarray([label], np.int64))
            keys.append(key)
    vocab = tl.num_streams * tl.vocab_per_stream if offset_streams else tl.vocab_per_stream
    seq_len = tl.num_streams * tl.positions
    info = {"format": "llamagen-c2i", "token_stage": tokens, "layout": layout,
            "offset_streams": offset_streams, "token_layout": tl.to_dict(),
            "codes_shape": [1, 1, seq_len], "vocab_size": vocab, "seq_len": seq_len,
            "label_column": label_column, "labels": mapping, "keys": keys}
    atomic_write_bytes(fs, join(out, "export_info.json"), json.dumps(info, indent=1).encode())
    return ExportSummary(codes_dir=codes_dir, labels_dir=labels_dir, samples=len(keys),
                         vocab_size=vocab, seq_len=seq_len)


def _save(fs, path: str, array: np.ndarray) -> None:
    """np.save to any fsspec path (no fsync per file: export_info.json, written last, marks done)."""
    with fs.open(path, "wb") as f:
        np.save(f, array)


__all__ = ["export_llamagen", "ExportSummary", "EXPORT_LAYOUTS"]
