"""Frozen teacher models whose pooled embeddings WinTok's semantic tokens are distilled towards.

    teacher = build_teacher("efficientnet-lite0")   # or "siglip2:/models/siglip2-so400m-patch16-256"
    out = teacher.to("cuda").embed(images, patches=True, precision="bf16")  # images in [-1, 1]
    out.pooled  # (B, teacher.dim) float32; teacher.identity names weights + preprocessing
"""

from wintok.teachers.base import PRECISIONS, Preprocess, Teacher, TeacherOutput, weights_digest
from wintok.teachers.registry import DEFAULT_TEACHER, build_teacher, list_teachers, parse_spec

__all__ = [
    "DEFAULT_TEACHER",
    "PRECISIONS",
    "Preprocess",
    "Teacher",
    "TeacherOutput",
    "build_teacher",
    "list_teachers",
    "parse_spec",
    "weights_digest",
]
