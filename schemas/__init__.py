"""Versioned schemas of every table and array the pipeline writes (one definition each)."""

from schemas.base import (
    STORE_FORMAT_VERSION,
    SUPPORTED_STORE_FORMAT_VERSIONS,
    SchemaError,
    TableSpec,
    check_schema_version,
    check_store_format,
    validate_table,
)
from schemas.tables import (
    INGEST_STATUS,
    REASONS,
    SHARD_MANIFEST,
    STATUS_FAILED,
    STATUS_STORED,
    URL_LIST,
    is_retryable,
)
from schemas.vectors import (
    SEMANTIC_DTYPES,
    bits_to_float32,
    half_to_bits,
    teacher_features_schema,
    token_rows_schema,
)
from schemas.zarr_layout import ArraySpec, ZarrLayout, create_zarr, open_zarr, teacher_features_layout, token_layout

__all__ = [
    "STORE_FORMAT_VERSION", "SUPPORTED_STORE_FORMAT_VERSIONS", "SchemaError", "TableSpec",
    "check_schema_version", "check_store_format", "validate_table",
    "INGEST_STATUS", "REASONS", "SHARD_MANIFEST", "STATUS_FAILED", "STATUS_STORED", "URL_LIST", "is_retryable",
    "SEMANTIC_DTYPES", "bits_to_float32", "half_to_bits",
    "teacher_features_schema", "token_rows_schema",
    "ArraySpec", "ZarrLayout", "create_zarr", "open_zarr", "teacher_features_layout", "token_layout",
]
