"""`verify`: re-read a store and check it against what was recorded at commit time.

Checks, per stage (images, tokens, features, published): every committed file exists with its
recorded size and sha256 (a flipped byte anywhere is caught); featurize outputs' Parquet files carry the schema their stage writes and as many rows
as the commit recorded; featurize outputs have one row per decodable stored image.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import pyarrow.parquet as pq

from pipelines.featurize import IMAGES_STAGE
from pipelines.fsutil import join
from pipelines.store import open_store


@dataclass
class StoreReport:
    stages: dict[str, dict] = field(default_factory=dict)  # stage -> {shards, files}
    problems: list[str] = field(default_factory=list)  # "stage shard file: what is wrong"

    @property
    def ok(self) -> bool:
        return not self.problems


def output_stages(store, kinds: tuple[str, ...] = ("tokens", "features")) -> list[str]:
    """Output stages present in a store, e.g. tokens/<lineage>, features/<lineage>."""
    found = []
    for kind in kinds:
        base = join(store.path, kind)
        if store.fs.isdir(base):
            found += [f"{kind}/{p.rstrip('/').rsplit('/', 1)[-1]}"
                      for p in store.fs.ls(base, detail=False) if store.fs.isdir(p)]
    return sorted(found)


def verify_store(store_root: str, *, storage_options: dict | None = None) -> StoreReport:
    """Verify every stage of a store; the report lists each mismatch by stage, shard and file."""
    store = open_store(store_root, storage_options=storage_options)
    report = StoreReport()
    images = store.commits(IMAGES_STAGE)
    for stage in [IMAGES_STAGE] + output_stages(store, ("tokens", "features", "published")):
        r = store.verify(stage)
        report.stages[stage] = {"shards": r.shards_checked, "files": r.files_checked}
        report.problems += [f"{stage} shard {s} {f}: {why}" for s, f, why in r.mismatches]
        if not stage.startswith(("tokens/", "features/")):
            continue  # images and published shards: checksums and sizes only
        bad_files = {(s, f) for s, f, _ in r.mismatches}
        for shard, rec in store.commits(stage).items():
            if shard not in images:
                report.problems.append(f"{stage} shard {shard}: no committed image shard")
                continue
            stored = images[shard].counts.get("stored")
            if stored is not None and rec.counts.get("samples") != stored:
                report.problems.append(f"{stage} shard {shard}: featurized {rec.counts.get('samples')} "
                                       f"samples but the image shard holds {stored}")
            if rec.counts.get("rows", 0) + rec.counts.get("decode_failed", 0) != rec.counts.get("samples"):
                report.problems.append(f"{stage} shard {shard}: rows + decode_failed != samples "
                                       f"({rec.counts})")
            for name in rec.files:
                if not name.endswith(".parquet") or (shard, name) in bad_files:
                    continue
                with store.fs.open(join(store.stage_dir(stage), name), "rb") as f:
                    meta = pq.ParquetFile(f).metadata
                if meta.num_rows != rec.counts.get("rows"):
                    report.problems.append(f"{stage} shard {shard} {name}: {meta.num_rows} rows, "
                                           f"commit recorded {rec.counts.get('rows')}")
    return report
