"""SigLIP / SigLIP2 / DINOv2 / CLIP teachers loaded from a local `save_pretrained` directory.

transformers is an optional extra, imported only here and only when such a teacher is built.
Weights must already be on disk: we load with `local_files_only=True` and `HF_HUB_OFFLINE=1`,
and refuse hub ids, so a pipeline run never downloads anything.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from wintok.errors import CheckpointError
from wintok.teachers.base import Preprocess, Teacher

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
# PIL resample codes used by HF preprocessor_config.json.
PIL_RESAMPLE = {2: "bilinear", 3: "bicubic"}
DINOV2_DEFAULT_SIZE = 224


@dataclass(frozen=True)
class Family:
    """What differs between the transformers teacher families."""

    name: str  # spec prefix and teacher name
    model_types: tuple[str, ...]  # config.json `model_type` values this family loads
    mean: tuple[float, float, float]  # default when the directory has no preprocessor_config
    std: tuple[float, float, float]
    interpolation: str  # default resize mode when preprocessor_config has no `resample`


FAMILIES = {
    "siglip": Family("siglip", ("siglip", "siglip_vision_model"), (0.5,) * 3, (0.5,) * 3, "bilinear"),
    "siglip2": Family("siglip2", ("siglip", "siglip_vision_model"), (0.5,) * 3, (0.5,) * 3, "bilinear"),
    "dinov2": Family("dinov2", ("dinov2",), IMAGENET_MEAN, IMAGENET_STD, "bicubic"),
    "clip": Family("clip", ("clip", "clip_vision_model"), CLIP_MEAN, CLIP_STD, "bicubic"),
}


def import_transformers() -> Any:
    """Import transformers in offline mode, or say how to install it."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    try:
        import transformers
    except ImportError as err:
        raise ImportError(
            "SigLIP/DINOv2/CLIP teachers need transformers: pip install 'wintok-pipeline[hf]'"
        ) from err
    return transformers


def resolve_local_dir(path: str) -> Path:
    """Return the directory holding `config.json`; refuse hub ids and missing paths."""
    local = Path(path).expanduser()
    if local.is_dir() and (local / "config.json").is_file():
        return local.resolve()
    if local.is_dir():
        raise ValueError(f"{path!r} has no config.json; pass a directory written by save_pretrained")
    looks_like_hub_id = not path.startswith(("/", ".", "~")) and path.count("/") == 1
    hint = " (it looks like a Hugging Face hub id)" if looks_like_hub_id else ""
    raise ValueError(
        f"teacher weights must be local: {path!r} is not a directory{hint}. Download the model "
        "elsewhere, save it with save_pretrained, and pass that directory, e.g. siglip2:/models/x"
    )


def read_json(path: Path) -> dict[str, Any]:
    """A JSON file as a dict, or an empty dict when it is absent."""
    return json.loads(path.read_text()) if path.is_file() else {}


def checkpoint_keys(local_dir: Path) -> set[str] | None:
    """Tensor names stored in the directory's safetensors files, or None when there are none."""
    index = read_json(local_dir / "model.safetensors.index.json")
    if index:
        return set(index.get("weight_map", {}))
    single = local_dir / "model.safetensors"
    if not single.is_file():
        return None
    from safetensors import safe_open

    with safe_open(str(single), framework="pt") as handle:
        return set(handle.keys())


def clip_has_projection(local_dir: Path, config: dict[str, Any]) -> bool:
    """True for full CLIP dirs and CLIPVisionModelWithProjection dirs."""
    if config.get("model_type") == "clip":
        return True
    keys = checkpoint_keys(local_dir)
    if keys is not None:
        return any(key.endswith("visual_projection.weight") for key in keys)
    return "CLIPVisionModelWithProjection" in config.get("architectures", [])


def model_class_name(family: Family, local_dir: Path, config: dict[str, Any]) -> str:
    """The transformers class that loads this directory's vision tower."""
    model_type = config.get("model_type")
    if model_type in ("siglip2", "siglip2_vision_model"):
        raise CheckpointError(
            f"{local_dir} is a NaFlex SigLIP2 checkpoint (model_type {model_type!r}), which is not "
            "supported; use a fixed-resolution one (e.g. siglip2-so400m-patch16-256, model_type 'siglip')"
        )
    if model_type not in family.model_types:
        raise CheckpointError(
            f"{local_dir} holds model_type {model_type!r}; the {family.name} teacher accepts "
            f"{family.model_types}"
        )
    if family.name in ("siglip", "siglip2"):
        return "SiglipVisionModel"
    if family.name == "dinov2":
        return "Dinov2Model"
    return "CLIPVisionModelWithProjection" if clip_has_projection(local_dir, config) else "CLIPVisionModel"


def config_overrides(class_name: str, config: dict[str, Any]) -> dict[str, Any]:
    """Settings a vision-only class misses when reading a full two-tower config.

    A full CLIP config keeps `projection_dim` at the top level; CLIPVisionConfig would fall back
    to its default (512) and mis-shape `visual_projection`.
    """
    if class_name == "CLIPVisionModelWithProjection" and "projection_dim" in config:
        return {"projection_dim": config["projection_dim"]}
    return {}


def load_vision_model(class_name: str, local_dir: Path, config: dict[str, Any]) -> torch.nn.Module:
    """Load a float32 vision model from disk only; refuse checkpoints with missing weights."""
    transformers = import_transformers()
    model_class = getattr(transformers, class_name)
    model, info = model_class.from_pretrained(
        str(local_dir),
        local_files_only=True,
        dtype=torch.float32,
        output_loading_info=True,
        **config_overrides(class_name, config),
    )
    bad = list(info.get("missing_keys", [])) + [str(k) for k in info.get("mismatched_keys", [])]
    if bad:
        raise CheckpointError(
            f"{local_dir} does not fully define a {class_name}: {len(bad)} missing or mismatched "
            f"weights, e.g. {bad[:5]}"
        )
    return model


def build_preprocess(family: Family, local_dir: Path, size: int) -> Preprocess:
    """Mean/std/resample from preprocessor_config.json when present, else the family defaults."""
    processor = read_json(local_dir / "preprocessor_config.json")
    interpolation = PIL_RESAMPLE.get(processor.get("resample"), family.interpolation)
    return Preprocess(
        size=size,
        interpolation=interpolation,
        antialias=True,
        mean=tuple(processor.get("image_mean", family.mean)),
        std=tuple(processor.get("image_std", family.std)),
    )


def _siglip_readout(output: Any, patches: bool) -> tuple[Tensor, Tensor | None]:
    return output.pooler_output, output.last_hidden_state if patches else None


def _dinov2_readout(output: Any, patches: bool) -> tuple[Tensor, Tensor | None]:
    return output.pooler_output, output.last_hidden_state[:, 1:] if patches else None


def _clip_projected_readout(output: Any, patches: bool) -> tuple[Tensor, Tensor | None]:
    return output.image_embeds, output.last_hidden_state[:, 1:] if patches else None


def _clip_readout(output: Any, patches: bool) -> tuple[Tensor, Tensor | None]:
    return output.pooler_output, output.last_hidden_state[:, 1:] if patches else None


PATCHES_AFTER_CLS = "last_hidden_state[:, 1:]"
# class name -> (readout function, its description recorded in the identity)
READOUTS: dict[str, tuple[Callable[[Any, bool], tuple[Tensor, Tensor | None]], dict[str, str]]] = {
    "SiglipVisionModel": (
        _siglip_readout,
        {"pooled": "pooler_output (MAP head)", "patches": "last_hidden_state"},
    ),
    "Dinov2Model": (
        _dinov2_readout,
        {"pooled": "pooler_output (CLS, layernorm)", "patches": PATCHES_AFTER_CLS},
    ),
    "CLIPVisionModelWithProjection": (
        _clip_projected_readout,
        {"pooled": "image_embeds", "patches": PATCHES_AFTER_CLS},
    ),
    "CLIPVisionModel": (_clip_readout, {"pooled": "pooler_output", "patches": PATCHES_AFTER_CLS}),
}


class HFVisionTeacher(Teacher):
    """A transformers vision model read out as pooled + patch embeddings."""

    def __init__(self, family_name: str, path: str, *, image_size: int | None = None) -> None:
        family = FAMILIES[family_name]
        local_dir = resolve_local_dir(path)
        config = read_json(local_dir / "config.json")
        class_name = model_class_name(family, local_dir, config)
        model = load_vision_model(class_name, local_dir, config)
        if not getattr(model.config, "vision_use_head", True):
            raise CheckpointError(f"{local_dir} has no MAP pooling head (vision_use_head=false)")
        size = self._input_size(family, model.config, image_size)
        readout, readout_description = READOUTS[class_name]
        self._readout = readout
        hidden = model.config.hidden_size
        dim = getattr(model.config, "projection_dim", hidden) if class_name.endswith("Projection") else hidden
        options = {} if image_size is None else {"image_size": image_size}
        super().__init__(
            name=family.name,
            spec=f"{family.name}:{local_dir}",
            options=options,
            module=model,
            preprocess=build_preprocess(family, local_dir, size),
            dim=dim,
            patch_dim=hidden,
            readout={"class": class_name, **readout_description},
        )

    @staticmethod
    def _input_size(family: Family, config: Any, image_size: int | None) -> int:
        """DINOv2 interpolates position embeddings, so its size is free; others keep their own."""
        if family.name == "dinov2":
            size = DINOV2_DEFAULT_SIZE if image_size is None else image_size
            if not isinstance(size, int) or size < config.patch_size:
                raise ValueError(f"image_size must be an int >= {config.patch_size}, got {size!r}")
            return size
        return int(config.image_size)

    def _forward(self, model_input: Tensor, patches: bool) -> tuple[Tensor, Tensor | None]:
        return self._readout(self.module(pixel_values=model_input), patches)
