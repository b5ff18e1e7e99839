"""Deterministic, resumable batch order shared by every loader (the part that must be exact).

One epoch is a list of global batches computed from (seed, epoch) alone. Ranks take disjoint
parts of it; inside a rank, DataLoader worker w yields the rank's batches w, w+N, w+2N, ... and
PyTorch's DataLoader, which asks its workers in turn, hands them back in the original order. So
the batches a rank sees are the same for 0, 1, 2 or 4 workers, and a run that restarts after k
batches skips exactly those k batches.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator

import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info


def epoch_rng(seed: int, epoch: int, *salt: int) -> np.random.Generator:
    """A generator that depends only on (seed, epoch, salt...), never on worker or rank."""
    return np.random.default_rng([int(seed) & 0xFFFFFFFF, int(epoch), *map(int, salt)])


def check_nonneg_int(name: str, value: object) -> int:
    """Validate a non-negative int argument; raise ValueError naming it."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 0:
        raise ValueError(f"{name} must be a non-negative int, got {value!r}")
    return int(value)


def check_pos_int(name: str, value: object) -> int:
    """Validate a positive int argument; raise ValueError naming it."""
    if check_nonneg_int(name, value) == 0:
        raise ValueError(f"{name} must be a positive int, got {value!r}")
    return int(value)


def resolve_rank(rank: int | None, world_size: int | None) -> tuple[int, int]:
    """(rank, world_size) from the arguments, else torch.distributed when initialised, else (0, 1)."""
    if rank is None or world_size is None:
        dist = torch.distributed
        if dist.is_available() and dist.is_initialized():
            rank = dist.get_rank() if rank is None else rank
            world_size = dist.get_world_size() if world_size is None else world_size
        else:
            rank = 0 if rank is None else rank
            world_size = 1 if world_size is None else world_size
    world_size = check_pos_int("world_size", world_size)
    rank = check_nonneg_int("rank", rank)
    if rank >= world_size:
        raise ValueError(f"rank must be in [0, world_size={world_size}), got {rank}")
    return rank, world_size


def split_batches(order: np.ndarray, batch_size: int, drop_last: bool) -> list[np.ndarray]:
    """Cut a sequence into consecutive batches (the last one short unless drop_last)."""
    n = len(order)
    stop = n - n % batch_size if drop_last else n
    return [order[i:i + batch_size] for i in range(0, stop, batch_size)]


@dataclass
class OrderConfig:
    """What fixes an epoch's order: seed, shuffle, batch size, rank split."""

    batch_size: int
    seed: int = 0
    shuffle: bool = True
    drop_last: bool = False
    rank: int = 0
    world_size: int = 1


class BatchStream(IterableDataset):
    """Base of the loaders: yields whole batches in a fixed order; knows its position.

    Subclasses implement `_plan(epoch) -> list` (this rank's batches, each an opaque plan item)
    and `_load(plan_items) -> iterator of batches` (materialise the given items, in order).
    """

    def __init__(self, *, batch_size: int, seed: int, shuffle: bool, drop_last: bool,
                 rank: int | None, world_size: int | None) -> None:
        rank, world_size = resolve_rank(rank, world_size)
        if not isinstance(shuffle, bool):
            raise ValueError(f"shuffle must be a bool, got {shuffle!r}")
        self.order = OrderConfig(batch_size=check_pos_int("batch_size", batch_size),
                                 seed=check_nonneg_int("seed", seed), shuffle=shuffle,
                                 drop_last=bool(drop_last), rank=rank, world_size=world_size)
        self.epoch = 0
        self.start_batch = 0  # batches of `epoch` already consumed (skipped on the next pass)

    # ---- subclass hooks -----------------------------------------------------------------------
    def _plan(self, epoch: int) -> list:
        raise NotImplementedError

    def _load(self, items: list) -> Iterator[dict]:
        raise NotImplementedError

    # ---- order and state ----------------------------------------------------------------------
    def num_batches(self, epoch: int | None = None) -> int:
        """Batches this rank yields in a whole epoch."""
        return len(self._plan(self.epoch if epoch is None else epoch))

    def set_epoch(self, epoch: int) -> None:
        """Start `epoch` from its first batch."""
        self.epoch, self.start_batch = check_nonneg_int("epoch", epoch), 0

    def state_dict(self) -> dict:
        """Position to resume from: epoch and batches of it already consumed."""
        return {"epoch": self.epoch, "batch": self.start_batch}

    def load_state_dict(self, state: dict) -> None:
        """Resume at a position from `state_dict()` (of this loader or a ResumableLoader)."""
        try:
            epoch, batch = state["epoch"], state["batch"]
        except (KeyError, TypeError) as e:
            raise ValueError(f"not a loader state: {state!r}") from e
        self.epoch = check_nonneg_int("epoch", epoch)
        self.start_batch = check_nonneg_int("batch", batch)

    def __iter__(self) -> Iterator[dict]:
        plan = self._plan(self.epoch)
        info = get_worker_info()
        wid, nworkers = (0, 1) if info is None else (info.id, info.num_workers)
        mine = list(range(self.start_batch + wid, len(plan), nworkers))
        if info is not None:  # a worker: the main process counts what it hands out
            yield from self._load([plan[i] for i in mine])
            return
        for batch in self._load([plan[i] for i in mine]):
            self.start_batch += 1
            yield batch
        self.epoch, self.start_batch = self.epoch + 1, 0


class ResumableLoader:
    """A DataLoader over a BatchStream that counts the batches it hands out (for checkpoints).

    Iterating it runs the rest of the current epoch; the next iteration starts the next epoch.
    `state_dict()` taken after k batches and loaded into a fresh loader resumes with batch k+1.
    """

    def __init__(self, dataset: BatchStream, *, num_workers: int = 0, pin_memory: bool = False,
                 prefetch_factor: int | None = None, multiprocessing_context: str | None = None) -> None:
        if not isinstance(dataset, BatchStream):
            raise ValueError(f"dataset must be a BatchStream (a loader from pipelines.loaders), got "
                             f"{type(dataset).__name__}")
        self.dataset = dataset
        self.num_workers = check_nonneg_int("num_workers", num_workers)
        # forkserver by default: workers fork from a clean server process, not from a trainer
        # that already runs threads (CUDA, Ray, Prefect), which forked children can inherit
        # in a broken state (seen: workers exiting with code 1 after Prefect ran in-process).
        ctx = multiprocessing_context or ("forkserver" if self.num_workers else None)
        self.kwargs = {"pin_memory": pin_memory, "multiprocessing_context": ctx}
        if self.num_workers:
            self.kwargs["prefetch_factor"] = check_pos_int("prefetch_factor", prefetch_factor or 2)
        self.epoch, self.batch = dataset.epoch, dataset.start_batch

    def __iter__(self) -> Iterator[dict]:
        self.dataset.epoch, self.dataset.start_batch = self.epoch, self.batch
        if self.num_workers == 0:
            for b in self.dataset:
                self.batch += 1
                yield b
        else:
            loader = DataLoader(self.dataset, batch_size=None, num_workers=self.num_workers,
                                **self.kwargs)
            for b in loader:
                self.batch += 1
                yield b
        self.epoch, self.batch = self.epoch + 1, 0

    def __len__(self) -> int:
        return self.dataset.num_batches(self.epoch) - self.batch

    def state_dict(self) -> dict:
        """Epoch and batches of it consumed by the caller (prefetched batches do not count)."""
        return {"epoch": self.epoch, "batch": self.batch}

    def load_state_dict(self, state: dict) -> None:
        """Resume from `state_dict()`."""
        self.dataset.load_state_dict(state)
        self.epoch, self.batch = self.dataset.epoch, self.dataset.start_batch
