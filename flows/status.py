"""What a store holds: done, failed (by reason), remaining, per stage, read from commit records.

Used by `wintok status`, the run summary artifacts and `wintok report`.
"""
from __future__ import annotations

import math
from collections import Counter
from dataclasses import asdict, dataclass, field


@dataclass
class OutputStatus:
    """One featurize output (tokens/<lineage> or features/<lineage>)."""

    stage: str
    shards_done: int
    shards_missing: list[int]  # committed image shards this output lacks
    rows: int
    decode_failed: int
    lineage: dict = field(default_factory=dict)


@dataclass
class StoreStatus:
    """Store-wide accounting, from commit markers and the final ingest status rows."""

    store: str
    input_rows: int = 0
    stored: int = 0
    failed: int = 0
    retryable_failed: int = 0
    by_reason: dict[str, int] = field(default_factory=dict)  # most frequent first
    image_shards_expected: int = 0  # from the URL list and shard_size
    image_shards_done: int = 0  # committed, retry shards included
    image_shards_missing: list[int] = field(default_factory=list)
    outputs: list[OutputStatus] = field(default_factory=list)
    lock: dict | None = None  # the holder of _lock.json, when present
    runs: list[dict] = field(default_factory=list)  # manifest runs, oldest first
    ingest_settings: dict = field(default_factory=dict)

    @property
    def complete(self) -> bool:
        """Every input row accounted for and every output covers every image shard."""
        return (not self.image_shards_missing and self.image_shards_expected > 0
                and all(not o.shards_missing for o in self.outputs))

    def to_dict(self) -> dict:
        d = asdict(self)
        d["complete"] = self.complete
        return d


def store_status(store_root: str) -> StoreStatus:
    """Read a store's commit records and manifest into a StoreStatus."""
    from pipelines.featurize import IMAGES_STAGE
    from pipelines.ingest import read_status
    from pipelines.fsutil import join
    from pipelines.lock import StoreLock
    from pipelines.store import open_store
    from pipelines.verify import output_stages
    from schemas.tables import STATUS_FAILED, STATUS_STORED, is_retryable

    store = open_store(store_root)
    manifest = store.manifest()
    st = StoreStatus(store=store_root, runs=list(manifest.get("runs", [])))
    settings = manifest.get("stages", {}).get(IMAGES_STAGE, {}).get("settings") or {}
    st.ingest_settings = settings
    committed = store.list_committed(IMAGES_STAGE)
    if settings:
        st.input_rows = int(settings["input_rows"])
        st.image_shards_expected = math.ceil(st.input_rows / int(settings["shard_size"]))
        st.image_shards_missing = sorted(set(range(st.image_shards_expected)) - set(committed))
    st.image_shards_done = len(committed)
    final = read_status(store, final=True)
    statuses = final.column("status").to_pylist()
    reasons = final.column("reason").to_pylist()
    https = final.column("http_status").to_pylist()
    st.stored = statuses.count(STATUS_STORED)
    st.failed = statuses.count(STATUS_FAILED)
    st.by_reason = dict(Counter(r for r in reasons if r).most_common())
    st.retryable_failed = sum(1 for s, r, h in zip(statuses, reasons, https)
                              if s == STATUS_FAILED and is_retryable(r, h))
    stages_meta = manifest.get("stages", {})
    published = [f"published/{p.rstrip('/').rsplit('/', 1)[-1]}"
                 for p in (store.fs.ls(join(store.path, "published"), detail=False)
                           if store.fs.isdir(join(store.path, "published")) else [])
                 if store.fs.isdir(p)]
    for stage in output_stages(store) + sorted(published):
        commits = store.commits(stage)
        # published shards mirror the token shards, which cover the stored image shards
        wanted = committed if not stage.startswith("published/") else store.list_committed(
            "tokens/" + stage.split("/", 1)[1])
        st.outputs.append(OutputStatus(
            stage=stage, shards_done=len(commits),
            shards_missing=sorted(set(wanted) - set(commits)),
            rows=sum(r.counts.get("rows", r.counts.get("samples", 0)) for r in commits.values()),
            decode_failed=sum(r.counts.get("decode_failed", 0) for r in commits.values()),
            lineage=stages_meta.get(stage, {}).get("lineage", {})))
    holder = StoreLock(store.fs, join(store.path, "_lock.json")).read()
    if holder is not None:
        st.lock = {"host": holder.host, "pid": holder.pid, "run_id": holder.run_id,
                   "age_s": round(holder.age_s, 1)}
    return st


def stage_throughput(status: StoreStatus) -> list[dict]:
    """Per finished run in the manifest: stage, samples, seconds and samples/s (its result)."""
    rows = []
    for run in status.runs:
        res = run.get("result") or {}
        if not run.get("finished_at"):
            continue
        samples = res.get("samples_this_run", res.get("featurized", 0)) or 0
        secs = run["finished_at"] - run["started_at"]
        rate = res.get("images_per_s")
        rows.append({"run_id": run["run_id"], "stage": run["stage"], "samples": int(samples),
                     "seconds": round(secs, 2),
                     "images_per_s": round(rate if rate is not None else samples / max(secs, 1e-9), 2)})
    return rows
