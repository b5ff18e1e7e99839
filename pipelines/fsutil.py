"""fsspec helpers: lazy filesystem lookup with install hints, atomic writes, checksums."""

from __future__ import annotations

import hashlib
import os
import uuid

import fsspec

# Protocol -> pip package providing it (for the error message when missing).
_FS_PACKAGES = {"s3": "s3fs", "s3a": "s3fs", "gs": "gcsfs", "gcs": "gcsfs", "az": "adlfs", "abfs": "adlfs",
                "hf": "huggingface_hub", "sftp": "paramiko", "hdfs": "pyarrow"}


# object-store backends whose directory listings fsspec caches per process
_LISTING_CACHED = ("s3", "s3a", "gs", "gcs", "az", "abfs", "abfss")


def get_fs(url: str, **storage_options) -> tuple[fsspec.AbstractFileSystem, str]:
    """Filesystem and path for `url`; a missing backend package raises ImportError with its pip command."""
    if not isinstance(url, (str, os.PathLike)) or not str(url):
        raise ValueError(f"store/file URL must be a non-empty string or path, got {url!r}")
    url = os.fspath(url)
    protocol = url.split("://", 1)[0] if "://" in url else "file"
    if protocol in _LISTING_CACHED:
        # other processes (Ray workers, a resumed run) add files all the time: a cached listing
        # would make fresh files look missing (seen with s3fs: verify after featurize)
        storage_options = {"use_listings_cache": False, **storage_options}
    try:
        fs, path = fsspec.core.url_to_fs(url, **storage_options)
    except ImportError as err:
        package = _FS_PACKAGES.get(protocol, f"the fsspec backend for {protocol}://")
        raise ImportError(f"cannot open {url!r}: the {protocol}:// filesystem needs `pip install {package}` "
                          f"({err})") from err
    if is_local(fs):
        path = os.path.abspath(path)
    return fs, path


def is_local(fs: fsspec.AbstractFileSystem) -> bool:
    """True for the local filesystem (where rename is atomic)."""
    protocol = fs.protocol if isinstance(fs.protocol, str) else fs.protocol[0]
    return protocol in ("file", "local")


def join(*parts: str) -> str:
    """Join path parts with '/' (fsspec paths use '/' on every filesystem)."""
    return "/".join(p.rstrip("/") if i == 0 else p.strip("/") for i, p in enumerate(parts) if p)


def atomic_write_bytes(fs: fsspec.AbstractFileSystem, path: str, data: bytes) -> None:
    """Write `data` so readers see the old file or the whole new one, never a half-written one.

    Local: write a unique temporary name beside it, fsync, then rename over. Object stores: a
    single PUT is already all-or-nothing.
    """
    parent = path.rsplit("/", 1)[0]
    if is_local(fs):
        os.makedirs(parent, exist_ok=True)
        tmp = f"{path}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    else:
        with fs.open(path, "wb") as f:
            f.write(data)


def atomic_move(fs: fsspec.AbstractFileSystem, src: str, dst: str) -> None:
    """Move a finished temporary file to its final name (rename locally, copy+delete elsewhere)."""
    if is_local(fs):
        os.makedirs(dst.rsplit("/", 1)[0], exist_ok=True)
        os.replace(src, dst)
    else:
        fs.mv(src, dst)


def sha256_file(fs: fsspec.AbstractFileSystem, path: str, *, block: int = 1 << 20) -> tuple[str, int]:
    """sha256 hex digest and size of a file, read in blocks."""
    h = hashlib.sha256()
    size = 0
    with fs.open(path, "rb") as f:
        while True:
            chunk = f.read(block)
            if not chunk:
                break
            h.update(chunk)
            size += len(chunk)
    return h.hexdigest(), size
