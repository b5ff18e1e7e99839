"""Reading committed webdataset image shards: samples in tar order, decoded in batches.

Decoding runs in a small thread pool (PIL releases the GIL while decoding), so a worker's
reader keeps the model fed. A sample that does not decode is reported with its reason and the
rest of the shard goes on; a tar that is truncated or corrupt fails the shard with the cause.
"""
from __future__ import annotations

import tarfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Iterator

import numpy as np

from wintok.errors import ImageError
from wintok.preprocess import Preprocess, open_image, resize

IMAGE_EXTS = ("jpg", "jpeg", "png", "webp")


class ShardReadError(RuntimeError):
    """An image shard cannot be read as a tar (truncated or corrupt)."""


@dataclass
class Sample:
    key: str  # webdataset __key__
    index: int  # position in the shard (its Zarr slot)
    image: bytes | None  # encoded image, None when the sample has no image member
    caption: str | None = None


@dataclass
class Batch:
    """Decoded images of consecutive samples, plus the samples that failed to decode."""

    keys: list[str] = field(default_factory=list)
    indices: list[int] = field(default_factory=list)
    pixels: np.ndarray | None = None  # (B, S, S, 3) uint8
    failures: list[tuple[str, int, str]] = field(default_factory=list)  # (key, index, reason)
    samples: int = 0  # samples read into this batch (decoded + failed)


def iter_tar_samples(fileobj, *, where: str) -> Iterator[Sample]:
    """Group tar members by key (webdataset convention: `<key>.<ext>`), in tar order."""
    current: dict | None = None
    index = 0
    try:
        with tarfile.open(fileobj=fileobj, mode="r|") as tar:
            for member in tar:
                if not member.isfile():
                    continue
                base = member.name.rsplit("/", 1)[-1]
                key, _, ext = base.partition(".")
                if current is not None and key != current["key"]:
                    yield _to_sample(current, index)
                    index += 1
                    current = None
                if current is None:
                    current = {"key": key}
                f = tar.extractfile(member)
                current[ext.lower()] = f.read() if f is not None else b""
            if current is not None:
                yield _to_sample(current, index)
    except (tarfile.TarError, EOFError, OSError) as e:
        raise ShardReadError(f"{where}: cannot read the tar after {index} samples ({e}); the file "
                             f"is truncated or corrupt. Re-run ingest for this shard (delete its "
                             f"commit marker under images/_commits/) and featurize again.") from None


def _to_sample(members: dict, index: int) -> Sample:
    image = next((members[e] for e in IMAGE_EXTS if e in members), None)
    caption = members.get("txt")
    return Sample(key=members["key"], index=index, image=image,
                  caption=caption.decode("utf-8", "replace") if caption is not None else None)


def decode_one(sample: Sample, pre: Preprocess) -> np.ndarray:
    """Decode one sample to (S, S, 3) uint8, resizing only if it is not already S x S."""
    if sample.image is None:
        raise ImageError("sample has no image member (.jpg/.png/.webp)")
    img = open_image(sample.image)
    if img.size != (pre.size, pre.size):
        img = resize(img, pre)
    return np.asarray(img, dtype=np.uint8)


def iter_batches(samples: Iterator[Sample], pre: Preprocess, batch_size: int,
                 pool: ThreadPoolExecutor) -> Iterator[Batch]:
    """Decode samples in parallel, yielding batches of up to `batch_size` decoded images."""
    def flush(chunk: list[Sample]) -> Batch:
        batch = Batch(samples=len(chunk))
        futures = [pool.submit(decode_one, s, pre) for s in chunk]
        arrays = []
        for s, fut in zip(chunk, futures):
            try:
                arrays.append(fut.result())
            except ImageError as e:
                batch.failures.append((s.key, s.index, f"decode_error: {e}"))
                continue
            batch.keys.append(s.key)
            batch.indices.append(s.index)
        batch.pixels = (np.stack(arrays) if arrays
                        else np.zeros((0, pre.size, pre.size, 3), np.uint8))
        return batch

    chunk: list[Sample] = []
    for s in samples:
        chunk.append(s)
        if len(chunk) == batch_size:
            yield flush(chunk)
            chunk = []
    if chunk:
        yield flush(chunk)
