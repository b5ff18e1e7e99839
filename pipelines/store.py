"""A store: one root URL on any fsspec filesystem holding stage directories, commits and a manifest.

Later stages use: `open_store`, `Store.stage_dir`, `is_committed`, `commit_shard`,
`list_committed`, `verify`, and `atomic_write_bytes` (re-exported here).
"""

from __future__ import annotations

import os
import re
import time
import uuid
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Iterator, Mapping, Sequence

from pipelines.fsutil import atomic_write_bytes, get_fs, join, sha256_file
from pipelines.lock import StoreLock
from pipelines.manifest import (
    CommitRecord,
    marker_path,
    new_manifest,
    package_versions,
    read_manifest,
    read_markers,
    shard_name,
    write_manifest,
    write_marker,
)

__all__ = ["Store", "open_store", "atomic_write_bytes", "VerifyReport", "shard_name"]

_SEGMENT = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.+=-]*$")


@dataclass
class VerifyReport:
    """Result of re-reading a stage's committed files and comparing checksums."""

    stage: str
    shards_checked: int = 0
    files_checked: int = 0
    mismatches: list[tuple[int, str, str]] = field(default_factory=list)  # (shard, file, problem)

    @property
    def ok(self) -> bool:
        """True when every committed file exists with its recorded size and checksum."""
        return not self.mismatches


class Store:
    """Handle on a store root; cheap to pickle (holds the URL, re-creates the filesystem)."""

    def __init__(self, root: str, storage_options: Mapping | None = None) -> None:
        self.root_url = os.fspath(root)
        self.storage_options = dict(storage_options or {})
        self._fs = None
        self._path = None

    def __getstate__(self) -> dict:
        return {"root_url": self.root_url, "storage_options": self.storage_options}

    def __setstate__(self, state: dict) -> None:
        self.__init__(state["root_url"], state["storage_options"])

    def __repr__(self) -> str:
        return f"Store({self.root_url!r})"

    @property
    def fs(self):
        """The fsspec filesystem of the root (imported lazily)."""
        if self._fs is None:
            self._fs, self._path = get_fs(self.root_url, **self.storage_options)
        return self._fs

    @property
    def path(self) -> str:
        """The root path on `fs`."""
        self.fs  # noqa: B018  (initialises _path)
        return self._path

    # ---- layout -------------------------------------------------------------------------------
    def stage_name(self, stage: str, lineage_name: str | None = None) -> str:
        """Canonical stage id: 'images' or 'features/<lineage_name>'."""
        parts = [stage] + ([lineage_name] if lineage_name else [])
        for p in parts:
            if not isinstance(p, str) or not _SEGMENT.match(p):
                raise ValueError(f"stage/lineage name {p!r} must match {_SEGMENT.pattern} (no '/', no '..')")
        return "/".join(parts)

    def stage_dir(self, stage: str, lineage_name: str | None = None) -> str:
        """Path of a stage's directory (created on first use), e.g. <root>/tokens/<tok>-<hash>."""
        if lineage_name is None and isinstance(stage, str) and "/" in stage:
            stage, lineage_name = stage.split("/", 1)
        name = self.stage_name(stage, lineage_name)
        path = join(self.path, name)
        self.fs.makedirs(path, exist_ok=True)
        return path

    def path_of(self, stage: str, name: str) -> str:
        """Path of a file inside a stage directory."""
        return join(self.stage_dir(stage), name)

    # ---- commits ------------------------------------------------------------------------------
    def is_committed(self, stage: str, shard: int) -> bool:
        """Whether `shard` of `stage` has a commit marker (a half-written shard never has one)."""
        return self.fs.exists(marker_path(self.stage_dir(stage), shard))

    def commit_shard(self, stage: str, shard: int, files: Sequence[str] | Mapping[str, str | None],
                     counts: Mapping[str, int], *, extra: Mapping | None = None) -> CommitRecord:
        """Record a finished shard: checksum its files (already in place), then write its marker last.

        `files` are names relative to the stage dir; a mapping may give known sha256 digests (the
        size is still read from the filesystem).
        """
        stage_path = self.stage_dir(stage)
        if isinstance(files, Mapping):
            items = list(files.items())
        else:
            items = [(f, None) for f in files]
        recorded = {}
        for name, digest in items:
            path = join(stage_path, name)
            if not self.fs.exists(path):
                raise FileNotFoundError(f"cannot commit shard {shard} of {stage}: file {path} does not exist; "
                                        "write the shard's files before committing it")
            if digest is None:
                digest, size = sha256_file(self.fs, path)
            else:
                size = self.fs.size(path)
            recorded[name] = {"sha256": digest, "size": int(size)}
        bad = {k: v for k, v in counts.items() if not isinstance(v, int) or isinstance(v, bool) or v < 0}
        if bad:
            raise ValueError(f"counts must be non-negative ints, got {bad}")
        record = CommitRecord(stage=stage, shard=shard, files=recorded, counts=dict(counts), extra=dict(extra or {}))
        write_marker(self.fs, stage_path, record)
        return record

    def list_committed(self, stage: str) -> list[int]:
        """Committed shard ids of a stage, ascending."""
        return sorted(self.commits(stage))

    def commits(self, stage: str) -> dict[int, CommitRecord]:
        """Commit records of a stage by shard id."""
        return read_markers(self.fs, self.stage_dir(stage))

    def verify(self, stage: str) -> VerifyReport:
        """Re-read every committed file of `stage` and compare size and sha256 with its marker."""
        report = VerifyReport(stage)
        stage_path = self.stage_dir(stage)
        for shard, rec in self.commits(stage).items():
            report.shards_checked += 1
            for name, info in rec.files.items():
                report.files_checked += 1
                path = join(stage_path, name)
                try:
                    digest, size = sha256_file(self.fs, path)
                except FileNotFoundError:
                    report.mismatches.append((shard, name, "missing"))
                    continue
                if size != info["size"]:
                    report.mismatches.append((shard, name, f"size {size} != recorded {info['size']}"))
                elif digest != info["sha256"]:
                    report.mismatches.append((shard, name, f"sha256 {digest[:12]}.. != recorded "
                                                           f"{info['sha256'][:12]}.."))
        return report

    # ---- manifest and lock --------------------------------------------------------------------
    def manifest(self) -> dict:
        """The version-checked manifest."""
        return read_manifest(self.fs, self.path)

    def write_manifest(self, data: dict) -> None:
        """Replace the manifest atomically (hold the lock)."""
        write_manifest(self.fs, self.path, data)

    @contextmanager
    def writer(self, *, take_over: bool = False, run_id: str | None = None) -> Iterator[StoreLock]:
        """Hold the store's writer lock for a run (refuses a concurrent second writer)."""
        lock = StoreLock(self.fs, join(self.path, "_lock.json"), run_id=run_id)
        lock.acquire(take_over=take_over)
        try:
            yield lock
        finally:
            lock.release()

    def record_run(self, stage: str, settings: Mapping, *, run_id: str, lineage: Mapping | None = None) -> None:
        """Append a run (stage, settings, versions, host) to the manifest."""
        data = self.manifest()
        st = data["stages"].setdefault(stage, {})
        st["settings"] = dict(settings)
        if lineage:
            st["lineage"] = dict(lineage)
        data["runs"].append({"run_id": run_id, "stage": stage, "started_at": time.time(), "finished_at": None,
                             "settings": dict(settings), "versions": package_versions(),
                             "host": os.uname().nodename, "pid": os.getpid()})
        self.write_manifest(data)

    def finish_run(self, stage: str, *, run_id: str, result: Mapping) -> None:
        """Mark a run finished and summarise the stage's commit markers in the manifest."""
        data = self.manifest()
        for run in data["runs"]:
            if run["run_id"] == run_id:
                run["finished_at"] = time.time()
                run["result"] = dict(result)
        commits = self.commits(stage)
        totals: dict[str, int] = {}
        for rec in commits.values():
            for k, v in rec.counts.items():
                totals[k] = totals.get(k, 0) + v
        data["stages"].setdefault(stage, {})["summary"] = {"committed_shards": sorted(commits), "counts": totals}
        self.write_manifest(data)


def open_store(root: str, *, create: bool = False, storage_options: Mapping | None = None) -> Store:
    """Open a store (checking its format version); with `create=True` make it when absent."""
    store = Store(root, storage_options)
    fs, path = store.fs, store.path
    if fs.exists(join(path, "_manifest.json")):
        store.manifest()  # raises on an incompatible version
        return store
    if not create:
        raise FileNotFoundError(f"{root} is not a wintok store (no _manifest.json); pass create=True to create one")
    fs.makedirs(path, exist_ok=True)
    write_manifest(fs, path, new_manifest())
    return store


def new_run_id() -> str:
    """A short unique id for a run."""
    return time.strftime("%Y%m%dT%H%M%S") + "-" + uuid.uuid4().hex[:6]
