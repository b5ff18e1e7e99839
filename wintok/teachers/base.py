"""The teacher contract: float images in [-1, 1] -> pooled (and optionally patch) embeddings.

Every teacher receives the tensor the tokenizer receives, `(B, 3, S, S)` RGB in `[-1, 1]`, and
does its own preprocessing from there. That preprocessing is data (`Preprocess`), applied by one
function for all teachers and hashed into the teacher's `identity`, so an embedding file can say
exactly which weights and which pixels produced it.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

PRECISIONS = ("fp32", "bf16")
INTERPOLATIONS = ("bicubic", "bilinear")
# Inputs may overshoot [-1, 1] by this much (resampling ringing) before we refuse them.
RANGE_TOLERANCE = 1e-3


@dataclass(frozen=True)
class Preprocess:
    """How a teacher turns our `[-1, 1]` images into its model input.

    Steps, in order: pixel = (x + 1) * 127.5; clamp pixel to [0, 255] (when `clamp`); squash-resize
    to `size` x `size` with `F.interpolate(mode=interpolation, antialias=antialias)` (skipped when
    already that size; clamped again after, as a decoded 8-bit image would be); v = pixel / 255;
    out = (v - mean) / std. `mean`/`std` are in [0, 1] units, as in HF `preprocessor_config.json`.
    """

    size: int  # side of the square model input, in pixels
    interpolation: str = "bicubic"  # F.interpolate mode: "bicubic" or "bilinear"
    antialias: bool = True  # antialiased resampling, like PIL's resize when downsizing
    clamp: bool = True  # keep pixels in [0, 255], before and after the resize
    mean: tuple[float, float, float] = (0.5, 0.5, 0.5)  # per-channel, [0, 1] units
    std: tuple[float, float, float] = (0.5, 0.5, 0.5)  # per-channel, [0, 1] units
    resize: str = field(default="squash", init=False)  # whole image to size x size, no crop

    def __post_init__(self) -> None:
        if self.size < 1:
            raise ValueError(f"preprocess size must be a positive int, got {self.size!r}")
        if self.interpolation not in INTERPOLATIONS:
            raise ValueError(
                f"interpolation {self.interpolation!r} is not supported; use one of {INTERPOLATIONS}"
            )
        if len(self.mean) != 3 or len(self.std) != 3 or min(self.std) <= 0:
            raise ValueError(f"mean/std must be 3 values with std > 0, got {self.mean}, {self.std}")

    def as_dict(self) -> dict[str, Any]:
        """Plain JSON-able description, recorded next to the embeddings."""
        out = asdict(self)
        out["mean"], out["std"] = list(self.mean), list(self.std)
        out["input_range"] = [-1.0, 1.0]
        return out


def apply_preprocess(images: Tensor, prep: Preprocess) -> Tensor:
    """Map validated `[-1, 1]` float images to the model input described by `prep` (float32)."""
    pixels = (images.float() + 1.0) * 127.5
    if prep.clamp:
        pixels = pixels.clamp(0.0, 255.0)
    if tuple(pixels.shape[-2:]) != (prep.size, prep.size):
        pixels = F.interpolate(
            pixels,
            size=(prep.size, prep.size),
            mode=prep.interpolation,
            align_corners=False,
            antialias=prep.antialias,
        )
        if prep.clamp:
            pixels = pixels.clamp(0.0, 255.0)
    mean = torch.tensor(prep.mean, dtype=torch.float32, device=pixels.device).view(1, 3, 1, 1)
    std = torch.tensor(prep.std, dtype=torch.float32, device=pixels.device).view(1, 3, 1, 1)
    return (pixels / 255.0 - mean) / std


def check_images(images: Tensor) -> None:
    """Refuse anything but float `(B, 3, H, W)` images in `[-1, 1]` (e.g. uint8 or [0, 255])."""
    if not isinstance(images, Tensor):
        raise ValueError(f"images must be a torch.Tensor, got {type(images).__name__}")
    if images.ndim != 4 or images.shape[1] != 3 or images.shape[0] == 0:
        raise ValueError(f"images must have shape (B>0, 3, H, W), got {tuple(images.shape)}")
    if not images.is_floating_point():
        raise ValueError(f"images must be a float tensor in [-1, 1], got dtype {images.dtype}")
    low, high = (v.item() for v in torch.aminmax(images.detach()))
    if not (-1.0 - RANGE_TOLERANCE <= low and high <= 1.0 + RANGE_TOLERANCE):  # NaN fails too
        raise ValueError(f"images must lie in [-1, 1], got values in [{low:.4g}, {high:.4g}]")


def weights_digest(state_dict: Mapping[str, Tensor]) -> str:
    """SHA-256 over tensors in sorted key order: key, dtype, shape, then raw bytes."""
    digest = hashlib.sha256()
    for key in sorted(state_dict):
        tensor = state_dict[key].detach().to("cpu").contiguous()
        header = json.dumps([key, str(tensor.dtype), list(tensor.shape)])
        digest.update(header.encode() + b"\0")
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy())
    return digest.hexdigest()


def make_identity(name: str, weights_sha256: str, description: Mapping[str, Any]) -> str:
    """`name-<12 hex>`: a stable id from weights digest + preprocessing + readout description."""
    payload = json.dumps({"weights": weights_sha256, **description}, sort_keys=True)
    return f"{name}-{hashlib.sha256(payload.encode()).hexdigest()[:12]}"


@dataclass(frozen=True)
class TeacherOutput:
    """Embeddings of one batch, always float32: pooled `(B, D)`, patches `(B, P, D')` or None."""

    pooled: Tensor
    patches: Tensor | None = None


class Teacher:
    """A frozen image model with recorded preprocessing; subclasses implement `_forward`.

    Pickling ships only `(spec, options)`; the receiver rebuilds the teacher from local weights
    (on CPU: call `.to(device)` there), so Ray workers never receive tensors.
    """

    name: str  # family name, e.g. "efficientnet-lite0", "siglip2"
    dim: int  # width D of the pooled embedding
    patch_dim: int | None  # width D' of patch embeddings, None when the model has none

    def __init__(
        self,
        *,
        name: str,
        spec: str,
        options: Mapping[str, Any],
        module: nn.Module,
        preprocess: Preprocess,
        dim: int,
        patch_dim: int | None,
        readout: Mapping[str, Any],
    ) -> None:
        self.name = name
        self.spec = spec
        self.options = dict(options)
        self.dim = dim
        self.patch_dim = patch_dim
        self.readout = dict(readout)
        self._preprocess = preprocess
        self.module = module.eval().requires_grad_(False)
        self.weights_sha256 = weights_digest(module.state_dict())
        description = {"preprocess": preprocess.as_dict(), "readout": self.readout}
        self.identity = make_identity(name, self.weights_sha256, description)

    @property
    def input_size(self) -> int:
        """Side of the square image the underlying model sees."""
        return self._preprocess.size

    @property
    def preprocess(self) -> dict[str, Any]:
        """Preprocessing as data: size, resize, interpolation, antialias, clamp, mean, std."""
        return self._preprocess.as_dict()

    @property
    def device(self) -> torch.device:
        """Device holding the weights."""
        return next(self.module.parameters()).device

    def to(self, device: str | torch.device) -> Teacher:
        """Move the weights (kept float32; use `precision='bf16'` for bf16 compute); returns self."""
        self.module.to(device)
        return self

    def prepare(self, images: Tensor) -> Tensor:
        """Validate `[-1, 1]` images, move them to the teacher's device and preprocess them."""
        check_images(images)
        return apply_preprocess(images.to(self.device, non_blocking=True), self._preprocess)

    @torch.no_grad()
    def embed(self, images: Tensor, *, patches: bool = False, precision: str = "fp32") -> TeacherOutput:
        """Embed `(B, 3, H, W)` images in `[-1, 1]`; `bf16` runs the model under autocast."""
        if precision not in PRECISIONS:
            raise ValueError(f"precision {precision!r} is not supported; use one of {PRECISIONS}")
        model_input = self.prepare(images)
        enabled = precision == "bf16"
        with torch.autocast(model_input.device.type, dtype=torch.bfloat16, enabled=enabled):
            pooled, patch_tokens = self._forward(model_input, patches)
        patch_tokens = patch_tokens.float() if patches and patch_tokens is not None else None
        return TeacherOutput(pooled=pooled.float(), patches=patch_tokens)

    def _forward(self, model_input: Tensor, patches: bool) -> tuple[Tensor, Tensor | None]:
        """Run the model on preprocessed input; return pooled and (if asked) patch embeddings."""
        raise NotImplementedError

    def __reduce__(self) -> tuple[Any, tuple[str, dict[str, Any]]]:
        return (_rebuild_teacher, (self.spec, self.options))

    def __repr__(self) -> str:
        return f"{type(self).__name__}(identity={self.identity!r}, dim={self.dim}, spec={self.spec!r})"


def _rebuild_teacher(spec: str, options: dict[str, Any]) -> Teacher:
    """Unpickling hook: rebuild a teacher from its spec on the receiving process."""
    from wintok.teachers.registry import build_teacher

    return build_teacher(spec, **options)
