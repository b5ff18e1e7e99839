"""Arrow schemas of the ingest tables: the input URL list, per-sample status, shard manifest."""

from __future__ import annotations

import pyarrow as pa

from schemas.base import TableSpec

# Normalised input: what ingest reads from the user's parquet/csv/tsv/jsonl, with a stable row_id
# (the row's 0-based position in the input file).
URL_LIST = TableSpec(
    name="url_list",
    version=1,
    schema=pa.schema(
        [
            pa.field("row_id", pa.int64(), nullable=False),
            pa.field("url", pa.string(), nullable=True),
            pa.field("caption", pa.string(), nullable=True),
            pa.field("uid", pa.string(), nullable=True),
        ]
    ),
)

# Outcome of one input row. status is "stored" or "failed"; reason is one of REASONS when failed.
INGEST_STATUS = TableSpec(
    name="ingest_status",
    version=1,
    schema=pa.schema(
        [
            pa.field("key", pa.string(), nullable=False),  # webdataset __key__ (= f"{row_id:010d}")
            pa.field("shard", pa.int32(), nullable=False),  # shard this row was attempted in
            pa.field("row_id", pa.int64(), nullable=False),
            pa.field("attempt", pa.int16(), nullable=False),  # 0 = first ingest, n = n-th retry_failed
            pa.field("url", pa.string(), nullable=True),
            pa.field("uid", pa.string(), nullable=True),
            pa.field("caption", pa.string(), nullable=True),
            pa.field("status", pa.string(), nullable=False),
            pa.field("reason", pa.string(), nullable=True),
            pa.field("detail", pa.string(), nullable=True),  # raw message (exception text, refusal cause)
            pa.field("http_status", pa.int16(), nullable=True),
            pa.field("sha256", pa.string(), nullable=True),  # of the downloaded bytes, when downloaded
            pa.field("duplicate_of", pa.string(), nullable=True),  # key of the first stored copy
            pa.field("width", pa.int32(), nullable=True),  # stored image
            pa.field("height", pa.int32(), nullable=True),
            pa.field("original_width", pa.int32(), nullable=True),
            pa.field("original_height", pa.int32(), nullable=True),
        ]
    ),
)

STATUS_STORED = "stored"
STATUS_FAILED = "failed"
STATUSES = (STATUS_STORED, STATUS_FAILED)

# Closed vocabulary of failure reasons; `retryable` says whether retry_failed tries again.
REASONS: dict[str, bool] = {
    "refused_url": False,  # not http(s), malformed, or host is loopback/private/link-local
    "http_error": False,  # 4xx (but see RETRYABLE_HTTP) -- retryable when 5xx or 429
    "timeout": True,
    "network_error": True,  # connection refused/reset, DNS failure, truncated transfer
    "disallowed": False,  # X-Robots-Tag noai/noimageai
    "decode_error": False,  # bytes are not a decodable image
    "too_small": False,  # shorter side < min_image_size
    "too_large": False,  # pixel area above max_image_area or a decompression bomb
    "aspect_ratio": False,  # longer/shorter side above max_aspect_ratio
    "duplicate": False,  # same sha256 as an earlier stored sample (duplicate_of names it)
    "downloader_error": True,  # img2dataset lost the sample or its shard; counted, never dropped
}


def is_retryable(reason: str | None, http_status: int | None) -> bool:
    """Whether a failure is worth downloading again (network trouble, 5xx, 429), not 404 or bad bytes."""
    if reason == "http_error":
        return http_status is not None and (http_status >= 500 or http_status == 429)
    return bool(reason is not None and REASONS.get(reason, False))


# One row per committed shard of a stage: a queryable summary of the _commits markers.
SHARD_MANIFEST = TableSpec(
    name="shard_manifest",
    version=1,
    schema=pa.schema(
        [
            pa.field("key", pa.string(), nullable=False),  # shard name, e.g. "00007" (tables carry a key)
            pa.field("shard", pa.int32(), nullable=False),
            pa.field("stage", pa.string(), nullable=False),
            pa.field("committed_at", pa.float64(), nullable=False),  # unix seconds
            pa.field("files", pa.list_(pa.string()), nullable=False),
            pa.field("counts_json", pa.string(), nullable=False),
        ]
    ),
)
