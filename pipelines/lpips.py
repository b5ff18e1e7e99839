"""LPIPS (Zhang et al. 2018, 'vgg' v0.1) from weights on the user's disk; nothing downloaded.

    d(x, y) = sum_l mean_hw( w_l . (n(f_l(x)) - n(f_l(y)))^2 )

f_l: VGG16 activations relu1_2, relu2_2, relu3_3, relu4_3, relu5_3 of the input scaled by
shift (-.030, -.088, -.188) and scale (.458, .448, .450); n: unit norm over channels; w_l: the
learned 1x1 "lin" weights. Weights load with `weights_only=True` from either
- one file in the layout the official WinTok/VAR code uses (`lpips_with_vgg.pth`:
  `net.slice{1..5}.{i}.weight/bias` + `lins.{0..4}.model.1.weight`), or
- torchvision's VGG16 file (`features.{i}.weight/bias`) plus the lpips package's `vgg.pth`
  (`lin{0..4}.model.1.weight`).
"""
from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from wintok.errors import CheckpointError

# torchvision VGG16 `features` indices of the convolutions, grouped by LPIPS slice
_SLICES = ((0, 2), (5, 7), (10, 12, 14), (17, 19, 21), (24, 26, 28))
_CHANNELS = ((3, 64, 64), (64, 128, 128), (128, 256, 256, 256), (256, 512, 512, 512),
             (512, 512, 512, 512))
_SLICE_START = (0, 4, 9, 16, 23)


class LPIPS(nn.Module):
    """Per-image LPIPS distance between two batches of images in [-1, 1]."""

    def __init__(self):
        super().__init__()
        self.convs = nn.ModuleList()
        for chans in _CHANNELS:
            self.convs.append(nn.ModuleList(nn.Conv2d(a, b, 3, padding=1) for a, b in zip(chans, chans[1:])))
        self.lins = nn.ModuleList(nn.Conv2d(c, 1, 1, bias=False) for c in (64, 128, 256, 512, 512))
        self.register_buffer("shift", torch.tensor([-.030, -.088, -.188]).view(1, 3, 1, 1))
        self.register_buffer("scale", torch.tensor([.458, .448, .450]).view(1, 3, 1, 1))
        self.requires_grad_(False).eval()

    def features(self, x: torch.Tensor) -> list[torch.Tensor]:
        h = (x - self.shift) / self.scale
        out = []
        for i, convs in enumerate(self.convs):
            if i:
                h = F.max_pool2d(h, 2, 2)
            for conv in convs:
                h = F.relu(conv(h))
            out.append(h)
        return out

    @torch.no_grad()
    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """(B,3,H,W) x2 in [-1, 1] -> (B,) distances (no gradients; for evaluation)."""
        return self.distance(x, y)

    def distance(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """`forward` that lets gradients flow to the images (a training loss); the network's
        own weights stay frozen."""
        if x.shape != y.shape or x.dim() != 4 or x.shape[1] != 3:
            raise ValueError(f"LPIPS needs two (B,3,H,W) batches of one shape, got "
                             f"{tuple(x.shape)} and {tuple(y.shape)}")
        total = torch.zeros(x.shape[0], device=x.device)
        for fx, fy, lin in zip(self.features(x), self.features(y), self.lins):
            d = (_unit(fx) - _unit(fy)).square()
            total += lin(d).mean(dim=(1, 2, 3))
        return total


def _unit(x: torch.Tensor, eps: float = 1e-10) -> torch.Tensor:
    return x / (x.square().sum(dim=1, keepdim=True).sqrt() + eps)


def _load(path: str | Path) -> dict[str, torch.Tensor]:
    from wintok.checkpoint import torch_load_safely

    obj = torch_load_safely(Path(path))
    if not isinstance(obj, dict):
        raise CheckpointError(f"{path}: expected a state dict, got {type(obj).__name__}")
    return obj


def load_lpips(vgg: str | Path, lin: str | Path | None = None) -> LPIPS:
    """LPIPS from `lpips_with_vgg.pth` alone, or from torchvision VGG16 + lpips `vgg.pth`."""
    src = _load(vgg)
    state: dict[str, torch.Tensor] = {}
    combined = any(k.startswith("net.slice") for k in src)
    for s, (start, idxs) in enumerate(zip(_SLICE_START, _SLICES)):
        for j, i in enumerate(idxs):
            for p in ("weight", "bias"):
                key = f"net.slice{s + 1}.{i - start}.{p}" if combined else f"features.{i}.{p}"
                if key not in src:
                    raise CheckpointError(f"{vgg}: no {key!r}; expected torchvision's VGG16 "
                                          f"(features.N.*) or lpips_with_vgg.pth (net.sliceN.*)")
                state[f"convs.{s}.{j}.{p}"] = src[key]
    lins = src if combined else (_load(lin) if lin is not None else None)
    if lins is None:
        raise CheckpointError(f"{vgg} holds only VGG16; pass the lpips linear weights (vgg.pth)")
    for k in range(5):
        key = f"lins.{k}.model.1.weight" if combined else f"lin{k}.model.1.weight"
        if key not in lins:
            raise CheckpointError(f"{lin or vgg}: no {key!r} (LPIPS linear layer {k})")
        state[f"lins.{k}.weight"] = lins[key]
    model = LPIPS()
    own = model.state_dict()
    from wintok.checkpoint import shape_mismatches

    bad = shape_mismatches(state, own)
    if bad:
        raise CheckpointError(f"LPIPS weights have the wrong shapes: {'; '.join(bad[:5])}")
    state.update({"shift": own["shift"], "scale": own["scale"]})
    model.load_state_dict({k: v.float() for k, v in state.items()}, strict=True)
    return model
