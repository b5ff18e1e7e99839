"""One interface for every tokenizer family the pipeline runs (WinTok, WeTok).

Featurize, publish, the loaders and the single-image tools talk to a `Tokenizer`, never to a
model class, so a corpus can be tokenized with either family chosen by a checkpoint path.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Protocol, runtime_checkable

import torch


@dataclass(frozen=True)
class TokenLayout:
    """How a tokenizer's discrete ids are laid out; recorded in every store and token file."""

    family: str  # "wintok" or "wetok"
    num_streams: int  # ids per position: WinTok codebooks (4), WeTok groups (4 or 8)
    grid: tuple[int, int]  # token grid (rows, cols); positions are row-major
    vocab_per_stream: int  # ids per stream: WinTok 4096, WeTok 256

    @property
    def positions(self) -> int:
        return self.grid[0] * self.grid[1]

    @property
    def bits_per_id(self) -> int:
        """Bits that one id needs on disk (12 for 4096-entry codebooks)."""
        return max(1, math.ceil(math.log2(self.vocab_per_stream)))

    @property
    def ids_shape(self) -> tuple[int, int]:
        """Shape of one sample's ids: (num_streams, positions)."""
        return (self.num_streams, self.positions)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["grid"] = list(self.grid)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "TokenLayout":
        try:
            return cls(
                family=str(d["family"]),
                num_streams=int(d["num_streams"]),
                grid=(int(d["grid"][0]), int(d["grid"][1])),
                vocab_per_stream=int(d["vocab_per_stream"]),
            )
        except (KeyError, TypeError, IndexError, ValueError) as e:
            raise ValueError(f"not a token layout: {d!r} ({e})") from e


@dataclass
class TokenizerOutput:
    """What `Tokenizer.encode` returns for a batch of B images."""

    ids: torch.Tensor  # (B, num_streams, positions), int64, values < vocab_per_stream
    semantic: torch.Tensor | None = None  # (B, N, D) continuous tokens, WinTok only
    pooled: torch.Tensor | None = None  # (B, D) mean of the semantic tokens, WinTok only


@runtime_checkable
class Tokenizer(Protocol):
    """The contract both families implement (see wintok.model.WinTok)."""

    family: str
    image_size: int  # the trained input resolution; only this size is accepted

    @property
    def layout(self) -> TokenLayout: ...

    @property
    def identity(self) -> str:
        """Stable id of the weights + architecture, e.g. 'wintok-3f2a9c1b0d4e'."""
        ...

    @property
    def semantic_shape(self) -> tuple[int, int] | None:
        """(N, D) of the continuous tokens, or None if the family has none."""
        ...

    def encode(self, images: torch.Tensor, *, precision: str = "fp32") -> TokenizerOutput:
        """Float images (B,3,S,S) in [-1,1] -> ids (and continuous outputs where present)."""
        ...

    def decode(self, ids: torch.Tensor, *, precision: str = "fp32") -> torch.Tensor:
        """ids (B, num_streams, positions) -> images (B,3,S,S) in about [-1,1]."""
        ...


PRECISIONS = ("fp32", "bf16")


def check_precision(precision: str) -> None:
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")


def autocast_for(device: torch.device, precision: str):
    """bf16 autocast for 'bf16'; an explicit fp32 region (autocast off) for 'fp32'."""
    if precision == "bf16":
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    if torch.is_autocast_enabled(device.type):
        return torch.autocast(device_type=device.type, enabled=False)
    return contextlib.nullcontext()


def state_dict_hash(state: dict[str, torch.Tensor], extra: str = "") -> str:
    """sha256 over `extra` and every tensor in sorted key order (name, dtype, shape, bytes)."""
    h = hashlib.sha256(extra.encode())
    for name in sorted(state):
        t = state[name].detach().cpu().contiguous()
        h.update(json.dumps([name, str(t.dtype), list(t.shape)]).encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def load_tokenizer(path: str | Path, **kwargs) -> Tokenizer:
    """Load any supported tokenizer checkpoint, recognising its family from its contents.

    Accepts our own format (a directory with config.json + model.safetensors) and the official
    checkpoints of each family. Raises `wintok.errors.CheckpointError` naming the problem.
    """
    from wintok.checkpoint import load_any

    return load_any(path, **kwargs)
