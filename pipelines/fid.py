"""rFID: the Frechet Inception Distance between originals and their reconstructions.

The network is the FID InceptionV3 (TensorFlow graph of 2015-12-05, pool3 = 2048 features), with
weights from the user's disk, loaded with `weights_only=True`; nothing is downloaded. Either
release of the converted weights works, they hold the same state dict:
- torch-fidelity's `weights-inception-2015-12-05-6726825d.pth` (the file the official WinTok
  evaluation points at), or
- pytorch-fid's `pt_inception-2015-12-05-6726825d.pth`.

The protocol is torch-fidelity's (what WinTok reports): uint8 RGB images, resized to 299x299
with TensorFlow 1.x bilinear sampling (no half-pixel offset, no antialiasing), scaled by
(x - 128) / 128; pool3 features in float32; mean and covariance (unbiased) per set; then

    FID = |mu1 - mu2|^2 + tr(S1) + tr(S2) - 2 * sum(sqrt(eig(S1 @ S2)))

Statistics accumulate in float64 sums, so any number of images fits in memory (two 2048x2048
matrices). FID is biased upwards for small sets: published rFID uses 50,000 ImageNet-val images;
a few hundred images give a number that is only comparable with itself.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from wintok.errors import CheckpointError

INPUT_SIZE = 299
FEATURE_DIM = 2048
WEIGHT_FILES = ("weights-inception-2015-12-05-6726825d.pth (torch-fidelity)",
                "pt_inception-2015-12-05-6726825d.pth (pytorch-fid)")


class _ConvBN(nn.Module):
    """Convolution without bias, batch norm (eps 1e-3, inference statistics), ReLU."""

    def __init__(self, cin: int, cout: int, kernel, stride: int = 1, padding=0):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, kernel, stride=stride, padding=padding, bias=False)
        self.bn = nn.BatchNorm2d(cout, eps=1e-3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.bn(self.conv(x)))


def _avg3(x: torch.Tensor) -> torch.Tensor:
    # TensorFlow's average pool leaves padded zeros out of the average
    return F.avg_pool2d(x, 3, stride=1, padding=1, count_include_pad=False)


def _chain(x: torch.Tensor, *layers: nn.Module) -> torch.Tensor:
    for layer in layers:
        x = layer(x)
    return x


class _MixedA(nn.Module):  # Mixed_5b/5c/5d: 35x35
    def __init__(self, cin: int, pool_features: int):
        super().__init__()
        self.branch1x1 = _ConvBN(cin, 64, 1)
        self.branch5x5_1, self.branch5x5_2 = _ConvBN(cin, 48, 1), _ConvBN(48, 64, 5, padding=2)
        self.branch3x3dbl_1 = _ConvBN(cin, 64, 1)
        self.branch3x3dbl_2 = _ConvBN(64, 96, 3, padding=1)
        self.branch3x3dbl_3 = _ConvBN(96, 96, 3, padding=1)
        self.branch_pool = _ConvBN(cin, pool_features, 1)

    def forward(self, x):
        return torch.cat([self.branch1x1(x),
                          _chain(x, self.branch5x5_1, self.branch5x5_2),
                          _chain(x, self.branch3x3dbl_1, self.branch3x3dbl_2, self.branch3x3dbl_3),
                          self.branch_pool(_avg3(x))], 1)


class _ReduceB(nn.Module):  # Mixed_6a: 35x35 -> 17x17
    def __init__(self, cin: int):
        super().__init__()
        self.branch3x3 = _ConvBN(cin, 384, 3, stride=2)
        self.branch3x3dbl_1 = _ConvBN(cin, 64, 1)
        self.branch3x3dbl_2 = _ConvBN(64, 96, 3, padding=1)
        self.branch3x3dbl_3 = _ConvBN(96, 96, 3, stride=2)

    def forward(self, x):
        return torch.cat([self.branch3x3(x),
                          _chain(x, self.branch3x3dbl_1, self.branch3x3dbl_2, self.branch3x3dbl_3),
                          F.max_pool2d(x, 3, stride=2)], 1)


class _MixedC(nn.Module):  # Mixed_6b..6e: 17x17, factorised 7x7
    def __init__(self, cin: int, c7: int):
        super().__init__()
        row, col = dict(kernel=(1, 7), padding=(0, 3)), dict(kernel=(7, 1), padding=(3, 0))
        self.branch1x1 = _ConvBN(cin, 192, 1)
        self.branch7x7_1 = _ConvBN(cin, c7, 1)
        self.branch7x7_2 = _ConvBN(c7, c7, **row)
        self.branch7x7_3 = _ConvBN(c7, 192, **col)
        self.branch7x7dbl_1 = _ConvBN(cin, c7, 1)
        self.branch7x7dbl_2 = _ConvBN(c7, c7, **col)
        self.branch7x7dbl_3 = _ConvBN(c7, c7, **row)
        self.branch7x7dbl_4 = _ConvBN(c7, c7, **col)
        self.branch7x7dbl_5 = _ConvBN(c7, 192, **row)
        self.branch_pool = _ConvBN(cin, 192, 1)

    def forward(self, x):
        return torch.cat([self.branch1x1(x),
                          _chain(x, self.branch7x7_1, self.branch7x7_2, self.branch7x7_3),
                          _chain(x, self.branch7x7dbl_1, self.branch7x7dbl_2, self.branch7x7dbl_3,
                                 self.branch7x7dbl_4, self.branch7x7dbl_5),
                          self.branch_pool(_avg3(x))], 1)


class _ReduceD(nn.Module):  # Mixed_7a: 17x17 -> 8x8
    def __init__(self, cin: int):
        super().__init__()
        self.branch3x3_1, self.branch3x3_2 = _ConvBN(cin, 192, 1), _ConvBN(192, 320, 3, stride=2)
        self.branch7x7x3_1 = _ConvBN(cin, 192, 1)
        self.branch7x7x3_2 = _ConvBN(192, 192, (1, 7), padding=(0, 3))
        self.branch7x7x3_3 = _ConvBN(192, 192, (7, 1), padding=(3, 0))
        self.branch7x7x3_4 = _ConvBN(192, 192, 3, stride=2)

    def forward(self, x):
        return torch.cat([_chain(x, self.branch3x3_1, self.branch3x3_2),
                          _chain(x, self.branch7x7x3_1, self.branch7x7x3_2, self.branch7x7x3_3,
                                 self.branch7x7x3_4),
                          F.max_pool2d(x, 3, stride=2)], 1)


class _MixedE(nn.Module):  # Mixed_7b/7c: 8x8, split 1x3 / 3x1 heads
    def __init__(self, cin: int, max_pool: bool):
        super().__init__()
        self.max_pool = max_pool  # the 2015 graph max-pools in its last block (7c)
        self.branch1x1 = _ConvBN(cin, 320, 1)
        self.branch3x3_1 = _ConvBN(cin, 384, 1)
        self.branch3x3_2a = _ConvBN(384, 384, (1, 3), padding=(0, 1))
        self.branch3x3_2b = _ConvBN(384, 384, (3, 1), padding=(1, 0))
        self.branch3x3dbl_1 = _ConvBN(cin, 448, 1)
        self.branch3x3dbl_2 = _ConvBN(448, 384, 3, padding=1)
        self.branch3x3dbl_3a = _ConvBN(384, 384, (1, 3), padding=(0, 1))
        self.branch3x3dbl_3b = _ConvBN(384, 384, (3, 1), padding=(1, 0))
        self.branch_pool = _ConvBN(cin, 192, 1)

    def forward(self, x):
        a = self.branch3x3_1(x)
        b = _chain(x, self.branch3x3dbl_1, self.branch3x3dbl_2)
        pooled = F.max_pool2d(x, 3, stride=1, padding=1) if self.max_pool else _avg3(x)
        return torch.cat([self.branch1x1(x), self.branch3x3_2a(a), self.branch3x3_2b(a),
                          self.branch3x3dbl_3a(b), self.branch3x3dbl_3b(b),
                          self.branch_pool(pooled)], 1)


def tf1_resize_matrix(n_in: int, n_out: int) -> torch.Tensor:
    """(n_out, n_in) weights of TensorFlow 1.x bilinear resizing, align_corners=False.

    Output pixel o samples the input at o * n_in / n_out (no half-pixel shift); the positions
    are computed in float32, as the graph does, so the same neighbours and fractions result.
    """
    pos = torch.arange(n_out, dtype=torch.float32) * torch.tensor(n_in / n_out, dtype=torch.float32)
    lo = pos.long()
    hi = (lo + 1).clamp_max(n_in - 1)
    frac = pos - lo.float()
    m = torch.zeros(n_out, n_in, dtype=torch.float64)
    rows = torch.arange(n_out)
    m.index_put_((rows, lo), (1 - frac).double(), accumulate=True)
    m.index_put_((rows, hi), frac.double(), accumulate=True)
    return m


class InceptionFID(nn.Module):
    """FID InceptionV3: uint8 (B,3,H,W) RGB -> (B, 2048) pool3 features, float32."""

    def __init__(self):
        super().__init__()
        self.Conv2d_1a_3x3 = _ConvBN(3, 32, 3, stride=2)
        self.Conv2d_2a_3x3 = _ConvBN(32, 32, 3)
        self.Conv2d_2b_3x3 = _ConvBN(32, 64, 3, padding=1)
        self.Conv2d_3b_1x1 = _ConvBN(64, 80, 1)
        self.Conv2d_4a_3x3 = _ConvBN(80, 192, 3)
        self.Mixed_5b = _MixedA(192, 32)
        self.Mixed_5c = _MixedA(256, 64)
        self.Mixed_5d = _MixedA(288, 64)
        self.Mixed_6a = _ReduceB(288)
        self.Mixed_6b = _MixedC(768, 128)
        self.Mixed_6c = _MixedC(768, 160)
        self.Mixed_6d = _MixedC(768, 160)
        self.Mixed_6e = _MixedC(768, 192)
        self.Mixed_7a = _ReduceD(768)
        self.Mixed_7b = _MixedE(1280, max_pool=False)
        self.Mixed_7c = _MixedE(2048, max_pool=True)
        self.fc = nn.Linear(FEATURE_DIM, 1008)  # the classifier: in the weight files, unused here
        self._resize: dict[tuple, tuple[torch.Tensor, torch.Tensor]] = {}
        self.requires_grad_(False).eval()

    def _to_input(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        key = (h, w, x.device)
        if key not in self._resize:
            self._resize[key] = (tf1_resize_matrix(h, INPUT_SIZE).float().to(x.device),
                                 tf1_resize_matrix(w, INPUT_SIZE).float().to(x.device))
        my, mx = self._resize[key]
        x = my @ x.float() @ mx.T  # separable bilinear: rows, then columns
        return (x - 128) / 128

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if images.dtype != torch.uint8 or images.dim() != 4 or images.shape[1] != 3:
            raise ValueError(f"FID Inception takes uint8 (B,3,H,W) RGB images, got "
                             f"{images.dtype} {tuple(images.shape)}")
        x = self._to_input(images)
        x = _chain(x, self.Conv2d_1a_3x3, self.Conv2d_2a_3x3, self.Conv2d_2b_3x3)
        x = F.max_pool2d(x, 3, stride=2)
        x = _chain(x, self.Conv2d_3b_1x1, self.Conv2d_4a_3x3)
        x = F.max_pool2d(x, 3, stride=2)
        x = _chain(x, self.Mixed_5b, self.Mixed_5c, self.Mixed_5d, self.Mixed_6a, self.Mixed_6b,
                   self.Mixed_6c, self.Mixed_6d, self.Mixed_6e, self.Mixed_7a, self.Mixed_7b,
                   self.Mixed_7c)
        return x.mean(dim=(2, 3)).float()


def load_fid_inception(path: str | Path) -> InceptionFID:
    """The FID network from a weight file on disk (see the module docstring for which)."""
    from wintok.checkpoint import shape_mismatches, torch_load_safely

    path = Path(path)
    obj = torch_load_safely(path)
    if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict):
        raise CheckpointError(f"{path}: expected a state dict, got {type(obj).__name__}")
    model = InceptionFID()
    own = model.state_dict()
    state = {k: v for k, v in obj.items() if not k.endswith("num_batches_tracked")}
    hint = f"expected one of {', '.join(WEIGHT_FILES)}"
    missing = [k for k in own if k not in state and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in state if k not in own]
    if missing or unexpected:
        raise CheckpointError(f"{path} is not the FID Inception ({hint}): missing "
                              f"{missing[:3]}{'...' if len(missing) > 3 else ''}, unexpected "
                              f"{unexpected[:3]}{'...' if len(unexpected) > 3 else ''}")
    bad = shape_mismatches(state, own)
    if bad:
        raise CheckpointError(f"{path}: wrong shapes for the FID Inception ({hint}): {'; '.join(bad[:3])}")
    model.load_state_dict({k: v.float() for k, v in state.items()}, strict=False)
    return model


class FeatureStats:
    """Running mean and covariance of feature vectors (float64 sums)."""

    def __init__(self, dim: int = FEATURE_DIM):
        self.n = 0
        self.sum = np.zeros(dim, np.float64)
        self.outer = np.zeros((dim, dim), np.float64)

    def add(self, features: np.ndarray | torch.Tensor) -> None:
        f = features.detach().cpu().numpy() if isinstance(features, torch.Tensor) else features
        f = np.asarray(f, np.float64)
        if f.ndim != 2 or f.shape[1] != self.sum.shape[0]:
            raise ValueError(f"expected (N, {self.sum.shape[0]}) features, got {f.shape}")
        self.n += f.shape[0]
        self.sum += f.sum(0)
        self.outer += f.T @ f

    @property
    def mean(self) -> np.ndarray:
        return self.sum / self.n

    @property
    def cov(self) -> np.ndarray:
        """Unbiased covariance (as numpy.cov)."""
        if self.n < 2:
            raise ValueError(f"a covariance needs at least 2 images, got {self.n}")
        mu = self.mean
        return (self.outer - self.n * np.outer(mu, mu)) / (self.n - 1)


def frechet_distance(mu1: np.ndarray, cov1: np.ndarray, mu2: np.ndarray, cov2: np.ndarray) -> float:
    """Frechet distance between two Gaussians; tr(sqrt(S1 S2)) via the eigenvalues of S1 S2
    (real and non-negative in exact arithmetic; round-off imaginary parts are dropped)."""
    diff = mu1 - mu2
    eig = np.linalg.eigvals(cov1 @ cov2).astype(np.complex128)
    tr_sqrt = float(np.sqrt(eig).real.sum())
    return float(diff @ diff + np.trace(cov1) + np.trace(cov2) - 2 * tr_sqrt)


class RFID:
    """Accumulates Inception features of originals and reconstructions, batch by batch."""

    def __init__(self, network: InceptionFID, device: str | torch.device = "cpu", batch_size: int = 50):
        self.net = network.to(device)
        self.device = device
        self.batch_size = batch_size
        self.real, self.fake = FeatureStats(), FeatureStats()

    def _features(self, images_hwc: np.ndarray) -> torch.Tensor:
        x = torch.from_numpy(np.ascontiguousarray(images_hwc)).permute(0, 3, 1, 2)
        return torch.cat([self.net(x[i:i + self.batch_size].to(self.device))
                          for i in range(0, len(x), self.batch_size)])

    def add(self, originals: np.ndarray, reconstructions: np.ndarray) -> None:
        """uint8 (B,H,W,3) originals and their reconstructions."""
        if originals.shape != reconstructions.shape:
            raise ValueError(f"{originals.shape} originals vs {reconstructions.shape} reconstructions")
        self.real.add(self._features(originals))
        self.fake.add(self._features(reconstructions))

    def value(self) -> float:
        return frechet_distance(self.real.mean, self.real.cov, self.fake.mean, self.fake.cov)
