"""Teachers: real EfficientNet-Lite0 weights behave semantically; HF teachers match transformers."""

from __future__ import annotations

import json
import os
import pickle
import re
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from wintok.errors import CheckpointError
from wintok.teachers import build_teacher, list_teachers, parse_spec
from wintok.teachers.efficientnet import EfficientNetLite0Teacher

os.environ.setdefault("HF_HUB_OFFLINE", "1")

PHOTOS = ("astronaut", "coffee", "chelsea", "rocket")
IMAGENET_CATS = range(281, 286)  # tabby, tiger cat, Persian, Siamese, Egyptian cat


def photo_crop(name: str, *, corner: float = 0.5, frac: float = 1.0, size: int = 256) -> torch.Tensor:
    """A square crop of a scikit-image sample photo as a (1, 3, size, size) tensor in [-1, 1].

    `corner` 0 takes the top-left square of side `frac * min(h, w)`, 1 the bottom-right.
    """
    from skimage import data

    pixels = np.ascontiguousarray(getattr(data, name)())
    image = torch.from_numpy(pixels).permute(2, 0, 1)[None].float() / 127.5 - 1.0
    height, width = image.shape[-2:]
    side = int(min(height, width) * frac)
    top, left = int((height - side) * corner), int((width - side) * corner)
    square = image[..., top : top + side, left : left + side]
    resized = F.interpolate(square, size=(size, size), mode="bicubic", antialias=True)
    return resized.clamp(-1.0, 1.0)


def random_images(batch: int, size: int, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.rand(batch, 3, size, size, generator=generator) * 2 - 1


@pytest.fixture(scope="module")
def lite0() -> EfficientNetLite0Teacher:
    teacher = build_teacher("efficientnet-lite0")
    assert isinstance(teacher, EfficientNetLite0Teacher)
    return teacher


# ---------------------------------------------------------------- EfficientNet-Lite0, real weights


def test_crops_of_one_photo_are_closer_than_other_photos(lite0: EfficientNetLite0Teacher) -> None:
    crops_a = torch.cat([photo_crop(n, corner=0.0, frac=0.6) for n in PHOTOS])
    crops_b = torch.cat([photo_crop(n, corner=1.0, frac=0.6) for n in PHOTOS])
    a = F.normalize(lite0.embed(crops_a).pooled, dim=1)
    b = F.normalize(lite0.embed(crops_b).pooled, dim=1)
    cross = a @ b.T  # [i, j]: crop A of photo i vs crop B of photo j
    same = cross.diagonal()
    for i, name in enumerate(PHOTOS):
        others = torch.cat([cross[i, :i], cross[i, i + 1 :], (a @ a.T)[i, :i], (a @ a.T)[i, i + 1 :]])
        assert same[i] > others.max() + 0.1, f"{name}: same-photo cos {same[i]:.3f} vs {others}"


def test_real_weights_classify_the_cat(lite0: EfficientNetLite0Teacher) -> None:
    if not hasattr(lite0.module, "_fc"):
        pytest.skip("the weights package ships no classifier head")
    logits = lite0.logits(photo_crop("chelsea"))
    assert logits.argmax().item() in IMAGENET_CATS


def test_lite0_shapes_and_patches(lite0: EfficientNetLite0Teacher) -> None:
    out = lite0.embed(random_images(2, 256), patches=True)
    assert out.pooled.shape == (2, 1280) and out.pooled.dtype == torch.float32
    assert out.patches is not None and out.patches.shape == (2, 49, 1280)
    torch.testing.assert_close(out.patches.mean(1), out.pooled)
    assert lite0.embed(random_images(2, 256)).patches is None
    assert (lite0.dim, lite0.input_size, lite0.patch_dim) == (1280, 224, 1280)


def test_lite0_preprocess_is_tflite_normalisation(lite0: EfficientNetLite0Teacher) -> None:
    x = random_images(2, 224)  # already at input size: no resize, just (pixel - 127) / 128
    expected = ((x + 1) * 127.5 - 127.0) / 128.0
    torch.testing.assert_close(lite0.prepare(x), expected, rtol=0, atol=1e-5)
    assert lite0.preprocess["size"] == 224 and lite0.preprocess["interpolation"] == "bicubic"
    assert lite0.preprocess["resize"] == "squash" and lite0.preprocess["antialias"] is True


def test_lite0_identity_is_stable(lite0: EfficientNetLite0Teacher) -> None:
    assert re.fullmatch(r"efficientnet-lite0-[0-9a-f]{12}", lite0.identity)
    assert build_teacher().identity == lite0.identity


def test_lite0_batch_equals_per_image(lite0: EfficientNetLite0Teacher) -> None:
    images = random_images(3, 256, seed=1)
    batched = lite0.embed(images).pooled
    single = torch.cat([lite0.embed(images[i : i + 1]).pooled for i in range(3)])
    torch.testing.assert_close(batched, single, rtol=1e-4, atol=1e-5)


def test_lite0_bf16_is_close_to_fp32(lite0: EfficientNetLite0Teacher) -> None:
    images = torch.cat([photo_crop(n) for n in PHOTOS[:2]])
    fp32 = lite0.embed(images).pooled
    bf16 = lite0.embed(images, precision="bf16").pooled
    assert bf16.dtype == torch.float32
    assert F.cosine_similarity(fp32, bf16).min() > 0.98


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_lite0_on_cuda_matches_cpu(lite0: EfficientNetLite0Teacher) -> None:
    images = torch.cat([photo_crop(n) for n in PHOTOS[:2]])
    cpu = lite0.embed(images).pooled
    gpu = build_teacher().to("cuda")
    assert gpu.identity == lite0.identity
    for precision, floor in (("fp32", 0.999), ("bf16", 0.98)):
        pooled = gpu.embed(images, precision=precision).pooled
        assert pooled.device.type == "cuda" and pooled.dtype == torch.float32
        assert F.cosine_similarity(pooled.cpu(), cpu).min() > floor


def test_pickle_ships_only_the_spec(lite0: EfficientNetLite0Teacher) -> None:
    payload = pickle.dumps(lite0)
    assert len(payload) < 2_000  # no tensors inside
    rebuilt = pickle.loads(payload)
    assert rebuilt.identity == lite0.identity
    images = random_images(1, 256)
    assert torch.equal(rebuilt.embed(images).pooled, lite0.embed(images).pooled)


@pytest.mark.parametrize(
    ("images", "message"),
    [
        (torch.zeros(2, 3, 8, 8, dtype=torch.uint8), "float"),
        (torch.full((1, 3, 8, 8), 255.0), r"\[-1, 1\]"),
        (torch.full((1, 3, 8, 8), float("nan")), r"\[-1, 1\]"),
        (torch.zeros(3, 8, 8), "shape"),
        (torch.zeros(1, 4, 8, 8), "shape"),
        (np.zeros((1, 3, 8, 8), dtype=np.float32), "torch.Tensor"),
    ],
)
def test_bad_images_are_refused(lite0: EfficientNetLite0Teacher, images: object, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        lite0.embed(images)  # type: ignore[arg-type]


def test_bad_precision_is_refused(lite0: EfficientNetLite0Teacher) -> None:
    with pytest.raises(ValueError, match="'fp16'.*fp32"):
        lite0.embed(random_images(1, 64), precision="fp16")


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("resnet50", "unknown teacher 'resnet50'"),
        ("efficientnet-lite0:/tmp/x", "takes no path"),
        ("siglip2", "needs a local directory"),
        ("dinov2:", "needs a local directory"),
        ("", "non-empty"),
    ],
)
def test_bad_specs_are_refused(spec: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        build_teacher(spec)


def test_registry_lists_every_family() -> None:
    forms = list_teachers()
    assert {"efficientnet-lite0", "siglip:<dir>", "siglip2:<dir>", "dinov2:<dir>", "clip:<dir>"} == set(forms)
    assert parse_spec("siglip2:/a:b") == ("siglip2", "/a:b")
    with pytest.raises(ValueError, match="does not take options"):
        build_teacher("efficientnet-lite0", image_size=256)


# ---------------------------------------------------------------- transformers teachers, tiny random


TINY = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 2}
TINY_TEXT = {**TINY, "num_hidden_layers": 1, "vocab_size": 100}
IMAGE, PATCH = 32, 8


def _save(model: torch.nn.Module, directory: Path) -> Path:
    model.save_pretrained(directory)
    return directory


@pytest.fixture(scope="module")
def hf_dirs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Tiny random checkpoints of every supported layout, written by save_pretrained."""
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    root = tmp_path_factory.mktemp("hf")
    vision = {**TINY, "image_size": IMAGE, "patch_size": PATCH}
    siglip_full = transformers.SiglipModel(
        transformers.SiglipConfig(vision_config=vision, text_config=TINY_TEXT)
    )
    clip_full = transformers.CLIPModel(
        transformers.CLIPConfig(vision_config=vision, text_config=TINY_TEXT, projection_dim=16)
    )
    return {
        "siglip_vision": _save(transformers.SiglipVisionModel(transformers.SiglipVisionConfig(**vision)), root / "sv"),
        "siglip_full": _save(siglip_full, root / "sf"),
        "dinov2": _save(transformers.Dinov2Model(transformers.Dinov2Config(**vision)), root / "d2"),
        "clip_full": _save(clip_full, root / "cf"),
        "clip_vision": _save(transformers.CLIPVisionModel(transformers.CLIPVisionConfig(**vision)), root / "cv"),
    }


# layout -> the transformers class saved there
REFERENCE_CLASSES = {
    "siglip_vision": "SiglipVisionModel",
    "siglip_full": "SiglipModel",
    "dinov2": "Dinov2Model",
    "clip_full": "CLIPModel",
    "clip_vision": "CLIPVisionModel",
}


def _reference_pooled(layout: str, directory: Path, pixels: torch.Tensor) -> torch.Tensor:
    """Pooled output computed by transformers itself, from a separately loaded, frozen model.

    Frozen matters for bit-equality: torch's MultiheadAttention (SigLIP's MAP head) takes another
    kernel path when no parameter requires grad, which differs in the last float32 bit.
    """
    import transformers

    model_class = getattr(transformers, REFERENCE_CLASSES[layout])
    model = model_class.from_pretrained(directory, local_files_only=True, dtype=torch.float32)
    model.eval().requires_grad_(False)
    with torch.no_grad():
        if layout == "siglip_full":
            return model.vision_model(pixel_values=pixels).pooler_output
        if layout == "clip_full":
            return model.visual_projection(model.vision_model(pixel_values=pixels).pooler_output)
        return model(pixel_values=pixels).pooler_output


# layout -> (family, options, pooled dim, patch count at IMAGE px)
HF_CASES = {
    "siglip_vision": ("siglip", {}, 32, (IMAGE // PATCH) ** 2),
    "siglip_full": ("siglip2", {}, 32, (IMAGE // PATCH) ** 2),
    "dinov2": ("dinov2", {"image_size": IMAGE}, 32, (IMAGE // PATCH) ** 2),
    "clip_full": ("clip", {}, 16, (IMAGE // PATCH) ** 2),
    "clip_vision": ("clip", {}, 32, (IMAGE // PATCH) ** 2),
}


@pytest.mark.parametrize("layout", list(HF_CASES))
def test_hf_teacher_matches_transformers(hf_dirs: dict[str, Path], layout: str) -> None:
    family, options, dim, n_patches = HF_CASES[layout]
    teacher = build_teacher(f"{family}:{hf_dirs[layout]}", **options)
    images = random_images(3, 64, seed=2)
    out = teacher.embed(images, patches=True)
    assert out.pooled.shape == (3, dim) and teacher.dim == dim
    assert out.patches is not None and out.patches.shape == (3, n_patches, 32)
    assert torch.equal(out.pooled, _reference_pooled(layout, hf_dirs[layout], teacher.prepare(images)))
    single = torch.cat([teacher.embed(images[i : i + 1]).pooled for i in range(3)])
    torch.testing.assert_close(out.pooled, single, rtol=1e-4, atol=1e-5)
    assert re.fullmatch(rf"{family}-[0-9a-f]{{12}}", teacher.identity)
    assert build_teacher(f"{family}:{hf_dirs[layout]}", **options).identity == teacher.identity
    bf16 = teacher.embed(images, precision="bf16").pooled
    assert F.cosine_similarity(bf16, out.pooled).min() > 0.95


def test_siglip_preprocess_is_the_wintok_scaling_layer(hf_dirs: dict[str, Path]) -> None:
    teacher = build_teacher(f"siglip2:{hf_dirs['siglip_full']}")
    x = random_images(2, IMAGE) * 1.0005  # slightly out of range: the scaling layer clamps
    official = ((x + 1) * 127.5).clamp(0, 255) / 255
    torch.testing.assert_close(teacher.prepare(x), (official - 0.5) / 0.5, rtol=0, atol=1e-6)
    assert teacher.preprocess["mean"] == [0.5] * 3 and teacher.preprocess["size"] == IMAGE


def test_identity_tracks_weights_not_paths(hf_dirs: dict[str, Path], tmp_path: Path) -> None:
    import transformers

    source = hf_dirs["siglip_vision"]
    identity = build_teacher(f"siglip:{source}").identity
    assert build_teacher(f"siglip:{shutil.copytree(source, tmp_path / 'copy')}").identity == identity
    model = transformers.SiglipVisionModel.from_pretrained(source, local_files_only=True)
    with torch.no_grad():
        model.post_layernorm.bias[0] += 1e-3
    model.save_pretrained(tmp_path / "changed")
    assert build_teacher(f"siglip:{tmp_path / 'changed'}").identity != identity
    # the same weights read out with a different family name are a different teacher
    assert build_teacher(f"siglip2:{source}").identity != identity


def test_preprocessor_config_sets_mean_std(hf_dirs: dict[str, Path], tmp_path: Path) -> None:
    directory = shutil.copytree(hf_dirs["clip_vision"], tmp_path / "clip")
    default = build_teacher(f"clip:{directory}")
    assert default.preprocess["mean"][0] == pytest.approx(0.48145466)
    config = {"image_mean": [0.1, 0.2, 0.3], "image_std": [0.4, 0.5, 0.6], "resample": 2}
    (directory / "preprocessor_config.json").write_text(json.dumps(config))
    custom = build_teacher(f"clip:{directory}")
    assert custom.preprocess["mean"] == [0.1, 0.2, 0.3] and custom.preprocess["std"] == [0.4, 0.5, 0.6]
    assert custom.preprocess["interpolation"] == "bilinear"
    assert custom.identity != default.identity


def test_hf_pickle_rebuilds_from_spec(hf_dirs: dict[str, Path]) -> None:
    teacher = build_teacher(f"dinov2:{hf_dirs['dinov2']}", image_size=IMAGE)
    rebuilt = pickle.loads(pickle.dumps(teacher))
    assert rebuilt.identity == teacher.identity and rebuilt.input_size == IMAGE


@pytest.mark.parametrize(
    ("path", "message"),
    [
        ("google/siglip2-so400m-patch16-256", "must be local.*hub id"),
        ("/nonexistent/siglip2", "must be local.*not a directory"),
    ],
)
def test_weights_must_be_local(path: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        build_teacher(f"siglip2:{path}")


def test_directory_without_config_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="no config.json"):
        build_teacher(f"clip:{tmp_path}")


def test_wrong_family_for_checkpoint_is_refused(hf_dirs: dict[str, Path]) -> None:
    with pytest.raises(CheckpointError, match="model_type 'siglip_vision_model'"):
        build_teacher(f"dinov2:{hf_dirs['siglip_vision']}")


def test_fixed_size_teachers_refuse_other_sizes(hf_dirs: dict[str, Path]) -> None:
    with pytest.raises(ValueError, match="does not take options"):
        build_teacher(f"siglip:{hf_dirs['siglip_vision']}", image_size=64)


def test_missing_transformers_names_the_extra(hf_dirs: dict[str, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "transformers", None)
    with pytest.raises(ImportError, match=r"pip install 'wintok-pipeline\[hf\]'"):
        build_teacher(f"siglip:{hf_dirs['siglip_vision']}")
