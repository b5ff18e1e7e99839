"""Tokenizer distillation loader: (image, stored teacher target) batches joined by sample key.

A training step reads the teacher's pooled embedding from `features/<teacher>-<hash>/` instead
of running the teacher. Images are decoded from the image shards exactly as featurize decoded
them (`pipelines.shards.decode_one` + `wintok.preprocess.to_tensor`, the recorded preprocess),
so the stored target is the teacher's output for this very tensor.

Order: shards shuffled per epoch and dealt to ranks; samples shuffled inside each shard; whole
batches dealt to DataLoader workers (see `pipelines.loader_order`). A worker reads only the image
bytes of its own batches and decodes them.
"""
from __future__ import annotations

import io
from typing import Iterator

import numpy as np
import pyarrow.parquet as pq
import torch

from pipelines.fsutil import join
from pipelines.loader_common import as_store, lineage_of, resolve_stage
from pipelines.loader_order import BatchStream, epoch_rng, split_batches
from pipelines.manifest import shard_name
from pipelines.shards import decode_one, iter_tar_samples
from wintok.preprocess import Preprocess, to_tensor

IMAGES_STAGE = "images"


def distill_loss(student_pooled: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """WinTok's distillation loss: mean over the batch of 1 - cos(student, teacher target)."""
    if student_pooled.shape != target.shape or student_pooled.dim() != 2:
        raise ValueError(f"student_pooled and target must both be (B, D), got "
                         f"{tuple(student_pooled.shape)} and {tuple(target.shape)}")
    cos = torch.nn.functional.cosine_similarity(student_pooled.float(), target.float(), dim=-1)
    return (1.0 - cos).mean()


class DistillDataset(BatchStream):
    """Batches {image (B,3,S,S) float in [-1,1], target (B,D) float32, key} from a teacher store."""

    def __init__(self, store_root: str, teacher_stage: str, *, batch_size: int = 32, seed: int = 0,
                 shuffle: bool = True, drop_last: bool = False, rank: int | None = None,
                 world_size: int | None = None, storage_options: dict | None = None) -> None:
        super().__init__(batch_size=batch_size, seed=seed, shuffle=shuffle, drop_last=drop_last,
                         rank=rank, world_size=world_size)
        store = as_store(store_root, storage_options)
        self.store = store
        self.stage = resolve_stage(store, teacher_stage, "features")
        lineage = lineage_of(store, self.stage)
        self.dim = int(lineage["dim"])
        self.pre = Preprocess(**lineage["preprocess"])
        images = set(store.list_committed(IMAGES_STAGE))
        self.counts = {s: int(r.counts["rows"]) for s, r in store.commits(self.stage).items()
                       if s in images}

    def __len__(self) -> int:
        """Samples with a stored target (all ranks)."""
        return sum(self.counts.values())

    def _plan(self, epoch: int) -> list[list[tuple[int, np.ndarray]]]:
        o = self.order
        shards = np.asarray(sorted(self.counts), dtype=np.int64)
        if o.shuffle:
            shards = shards[epoch_rng(o.seed, epoch).permutation(len(shards))]
        seq = []
        for s in shards[o.rank::o.world_size]:
            n = self.counts[int(s)]
            pos = epoch_rng(o.seed, epoch, 1, int(s)).permutation(n) if o.shuffle else np.arange(n)
            seq.append(np.stack([np.full(n, s, np.int64), pos], axis=1))
        if not seq:
            return []
        plan = []
        for b in split_batches(np.concatenate(seq), o.batch_size, o.drop_last):
            cuts = np.flatnonzero(np.diff(b[:, 0])) + 1
            plan.append([(int(part[0, 0]), part[:, 1]) for part in np.split(b, cuts)])
        return plan

    def _load(self, items: list) -> Iterator[dict]:
        needed: dict[int, set[int]] = {}
        for segments in items:
            for shard, pos in segments:
                needed.setdefault(shard, set()).update(pos.tolist())
        current: tuple[int, dict] | None = None
        for segments in items:
            images, targets, keys = [], [], []
            for shard, pos in segments:
                if current is None or current[0] != shard:
                    current = (shard, self._read_shard(shard, needed[shard]))
                rows = current[1]
                for p in pos.tolist():
                    key, target, sample = rows[p]
                    images.append(decode_one(sample, self.pre))
                    targets.append(target)
                    keys.append(key)
            yield {"image": to_tensor(images), "target": torch.from_numpy(np.stack(targets)),
                   "key": keys}

    def _read_shard(self, shard: int, positions: set[int]) -> dict[int, tuple]:
        """Teacher rows at `positions` (of the shard's parquet) joined with their image samples."""
        d = self.store.stage_dir(self.stage)
        with self.store.fs.open(join(d, f"{shard_name(shard)}.parquet"), "rb") as f:
            table = pq.read_table(io.BytesIO(f.read()), columns=["key", "pooled"])
        keys = table.column("key").to_pylist()
        pooled = table.column("pooled").combine_chunks().flatten().to_numpy().reshape(len(keys), self.dim)
        want = {keys[p]: p for p in positions}
        found: dict[int, tuple] = {}
        tar = join(self.store.stage_dir(IMAGES_STAGE), f"{shard_name(shard)}.tar")
        with self.store.fs.open(tar, "rb") as f:
            for sample in iter_tar_samples(f, where=tar):
                p = want.get(sample.key)
                if p is not None:
                    found[p] = (sample.key, pooled[p].astype(np.float32), sample)
        missing = [keys[p] for p in positions if p not in found]
        if missing:
            raise ValueError(f"{self.stage} shard {shard}: keys {missing[:5]} have a teacher target "
                             f"but no image in {tar}; the stores do not match")
        return found
