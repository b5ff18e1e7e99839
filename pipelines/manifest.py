"""The store manifest (`_manifest.json`) and per-shard commit markers (`<stage>/_commits/<shard>.json`).

Workers write one small marker per committed shard (no shared file rewritten by many writers);
the lock holder rewrites the manifest, which records runs (versions, settings) and summarises
the markers.
"""

from __future__ import annotations

import json
import platform
import time
from dataclasses import asdict, dataclass, field
from importlib import metadata

import fsspec

from pipelines.fsutil import atomic_write_bytes, join
from schemas.base import STORE_FORMAT_VERSION, check_store_format

MANIFEST_NAME = "_manifest.json"
COMMITS_DIR = "_commits"
COMMIT_VERSION = 1


def shard_name(shard: int) -> str:
    """File stem of a shard id: 5 digits, more when needed."""
    if not isinstance(shard, int) or isinstance(shard, bool) or shard < 0:
        raise ValueError(f"shard must be a non-negative int, got {shard!r}")
    return f"{shard:05d}"


def package_versions() -> dict[str, str]:
    """Versions of the packages whose behaviour shapes the stored data."""
    out = {"python": platform.python_version()}
    for pkg in ("wintok-pipeline", "img2dataset", "pyarrow", "numpy", "opencv-python-headless", "webdataset",
                "fsspec", "torch"):
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            out[pkg] = "absent"
    return out


def new_manifest() -> dict:
    """An empty manifest of the current format version."""
    return {"format_version": STORE_FORMAT_VERSION, "created_at": time.time(),
            "created_with": package_versions(), "stages": {}, "runs": []}


def read_manifest(fs: fsspec.AbstractFileSystem, root: str) -> dict:
    """Read and version-check a store's manifest (SchemaError for a future/unknown format)."""
    path = join(root, MANIFEST_NAME)
    try:
        raw = fs.cat_file(path)
    except FileNotFoundError as err:
        raise FileNotFoundError(f"{root} is not a wintok store (no {MANIFEST_NAME}); create it with "
                                "open_store(root, create=True)") from err
    try:
        data = json.loads(raw)
    except ValueError as err:
        raise ValueError(f"{path} is not valid JSON ({err}); restore it from a backup or recreate the store") from err
    if not isinstance(data, dict):
        raise ValueError(f"{path} does not hold a JSON object")
    check_store_format(data.get("format_version"), where=path)
    return data


def write_manifest(fs: fsspec.AbstractFileSystem, root: str, data: dict) -> None:
    """Write the manifest atomically (only the lock holder calls this)."""
    check_store_format(data.get("format_version"), where="manifest to write")
    atomic_write_bytes(fs, join(root, MANIFEST_NAME), json.dumps(data, indent=1, sort_keys=True).encode())


@dataclass
class CommitRecord:
    """What one committed shard of a stage holds: its files with checksums and its counts."""

    stage: str
    shard: int
    files: dict[str, dict]  # name relative to the stage dir -> {"sha256": hex, "size": bytes}
    counts: dict[str, int]
    committed_at: float = field(default_factory=time.time)
    extra: dict = field(default_factory=dict)
    version: int = COMMIT_VERSION

    def to_json(self) -> bytes:
        """Serialise for the marker file."""
        return json.dumps(asdict(self), sort_keys=True).encode()

    @classmethod
    def from_json(cls, raw: bytes, *, where: str) -> "CommitRecord":
        """Parse a marker, refusing a newer marker version."""
        d = json.loads(raw)
        if d.get("version", 0) > COMMIT_VERSION:
            raise ValueError(f"{where}: commit marker version {d.get('version')} is newer than {COMMIT_VERSION}; "
                             "upgrade wintok-pipeline")
        return cls(stage=d["stage"], shard=int(d["shard"]), files=d["files"], counts=d["counts"],
                   committed_at=d["committed_at"], extra=d.get("extra", {}), version=d.get("version", 1))


def marker_path(stage_path: str, shard: int) -> str:
    """Path of a shard's commit marker inside a stage directory."""
    return join(stage_path, COMMITS_DIR, shard_name(shard) + ".json")


def write_marker(fs: fsspec.AbstractFileSystem, stage_path: str, record: CommitRecord) -> None:
    """Write a commit marker atomically: the shard counts as done from this moment."""
    atomic_write_bytes(fs, marker_path(stage_path, record.shard), record.to_json())


def read_markers(fs: fsspec.AbstractFileSystem, stage_path: str) -> dict[int, CommitRecord]:
    """All commit markers of a stage, by shard id."""
    pattern = join(stage_path, COMMITS_DIR, "*.json")
    out = {}
    for path in fs.glob(pattern):
        stem = path.rsplit("/", 1)[-1][: -len(".json")]
        if not stem.isdigit():
            continue
        out[int(stem)] = CommitRecord.from_json(fs.cat_file(path), where=path)
    return dict(sorted(out.items()))
