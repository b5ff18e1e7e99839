"""Shared by the featurize tests: a real ingested image store and a tiny tokenizer checkpoint."""
from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import torch

from pipelines.democorpus import build_demo_corpus
from pipelines.fsutil import join
from pipelines.ingest import ingest
from pipelines.loopback import serve_directory
from pipelines.shards import iter_tar_samples, decode_one
from pipelines.store import open_store
from wintok import WinTok, preset, save_pretrained
from wintok.preprocess import Preprocess


def make_image_store(root: Path, *, n_images: int = 40, shard_size: int = 16) -> Path:
    """Ingest `n_images` demo photos (real img2dataset, loopback server) into `root/store`."""
    corpus = root / "corpus"
    corpus.mkdir(parents=True)
    with serve_directory(corpus, hostile=False) as base:
        urls = build_demo_corpus(corpus, base_url=base, n_images=n_images, seed=0)
        ingest(str(urls), str(root / "store"), shard_size=shard_size, allow_private_network=True,
               progress=False, processes=1, threads=8)
    return root / "store"


def make_tokenizer(root: Path, seed: int = 0) -> Path:
    torch.manual_seed(seed)
    return save_pretrained(WinTok(preset("tiny")), root / f"wintok-tiny-{seed}")


def copy_store(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def shard_images(store_root: Path, shard: int, size: int = 256) -> tuple[list[str], np.ndarray]:
    """Keys and decoded uint8 images of a committed image shard, in tar order."""
    store = open_store(str(store_root))
    path = join(store.stage_dir("images"), f"{shard:05d}.tar")
    keys, arrays = [], []
    with open(path, "rb") as f:
        for s in iter_tar_samples(f, where=path):
            keys.append(s.key)
            arrays.append(decode_one(s, Preprocess(size=size)))
    return keys, np.stack(arrays)


def data_files(store_root: Path, prefix: str) -> dict[str, str]:
    """sha256 of every data file under a stage prefix (commit markers and manifest excluded)."""
    base = Path(store_root)
    return {str(p.relative_to(base)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(base.glob(f"{prefix}/**/*"))
            if p.is_file() and "_commits" not in p.parts}


def read_parquet_rows(store_root: Path, stage: str):
    return pq.read_table(sorted(Path(store_root, stage).glob("*.parquet")))
