"""Deterministic FID-Inception weights and test images, shared by the FID tests and the script
that made their golden features (see tests/pipelines/test_fid.py)."""
from __future__ import annotations

import zlib

import numpy as np
import torch
from skimage import data


def deterministic_weights(shapes: dict[str, tuple[int, ...]]) -> dict[str, torch.Tensor]:
    """A full FID-Inception state dict whose every tensor is a function of its key alone:
    He-scaled convolutions and batch-norm statistics near identity, so activations stay O(1)
    through all 16 blocks (real weights are not available offline)."""
    out = {}
    for key, shape in shapes.items():
        rng = np.random.default_rng(zlib.crc32(key.encode()))
        if key.endswith("num_batches_tracked"):
            out[key] = torch.tensor(0, dtype=torch.long)
            continue
        if key.endswith("conv.weight"):
            fan_in = int(np.prod(shape[1:]))
            v = rng.standard_normal(shape) * np.sqrt(2.0 / fan_in)
        elif key.endswith("bn.weight"):
            v = 1.0 + 0.1 * rng.standard_normal(shape)
        elif key.endswith("bn.running_var"):
            v = rng.uniform(0.5, 1.5, shape)
        elif key.endswith(("bn.bias", "bn.running_mean")):
            v = 0.1 * rng.standard_normal(shape)
        elif key == "fc.weight":
            v = 0.01 * rng.standard_normal(shape)
        elif key == "fc.bias":
            v = np.zeros(shape)
        else:
            raise KeyError(f"no rule for {key}")
        out[key] = torch.from_numpy(np.asarray(v, np.float32))
    return out


def golden_images() -> dict[str, np.ndarray]:
    """uint8 (B,H,W,3) batches of real photos: two 256x256 (the tokenizer's size), one odd
    37x53 (upsampling, non-square) and one 299x299 (the network's own size: no resampling)."""
    return {
        "photos256": np.stack([data.chelsea()[20:276, 100:356], data.coffee()[100:356, 200:456]]),
        "odd37x53": data.rocket()[200:237, 300:353][None],
        "exact299": data.astronaut()[50:349, 100:399][None],
    }
