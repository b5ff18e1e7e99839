"""Ingest: URL list -> img2dataset -> committed webdataset image shards with exact per-row accounting.

Shard `s` of the input holds rows [s*shard_size, (s+1)*shard_size) (row_id = position in the
input file). Refused URLs never reach img2dataset. Each ingest run gives img2dataset one input
file per pending shard and commits shards strictly in order as img2dataset finishes them:
post-processing drops duplicates (same sha256 of the downloaded bytes as an earlier stored
sample, in commit order), rewrites the tar with keys `f"{row_id:010d}"`, writes our status
table and commits last. A rerun after a crash redoes only uncommitted shards.
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import os
import re
import shutil
import sys
import tarfile
import threading
import time
from collections import Counter
from dataclasses import asdict, dataclass, field

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from pipelines.fsutil import atomic_move, atomic_write_bytes, get_fs, is_local, join
from pipelines.manifest import shard_name
from pipelines.store import Store, new_run_id, open_store
from pipelines.urlsafety import UrlChecker
from schemas.base import check_schema_version, validate_table
from schemas.tables import INGEST_STATUS, STATUS_FAILED, STATUS_STORED, URL_LIST, is_retryable

STAGE = "images"
WORK_DIR = "_work"
RAW_DIR = "_raw"
KEY_DIGITS = 10

# Our resize modes -> img2dataset's. "squash" keeps the aspect ratio with the shorter side at
# image_size; the final squash to image_size x image_size happens at featurize (recorded).
RESIZE_MODES = {"center-crop": "center_crop", "pad": "border", "squash": "keep_ratio"}
INPUT_FORMATS = {".parquet": "parquet", ".csv": "csv", ".tsv": "tsv", ".jsonl": "jsonl", ".json": "jsonl"}

# Settings that change what is stored: a rerun on the same store must use the same values.
_OUTPUT_SETTINGS = ("input_sha256", "input_rows", "url_col", "caption_col", "uid_col", "image_size", "resize_mode",
                    "shard_size", "min_image_size", "max_pixels", "max_aspect_ratio", "encode_quality",
                    "allow_private_network")


def row_key(row_id: int) -> str:
    """webdataset __key__ of an input row (stable across runs and retries)."""
    return f"{row_id:0{KEY_DIGITS}d}"


# ---------------------------------------------------------------------------------------------
# configuration and results


@dataclass(frozen=True)
class IngestConfig:
    """Validated ingest settings (picklable, recorded in the manifest)."""

    url_col: str = "url"
    caption_col: str | None = None
    uid_col: str | None = None
    image_size: int = 256
    resize_mode: str = "center-crop"
    shard_size: int = 1000
    processes: int = 1
    threads: int = 32
    timeout: float = 10.0
    retries: int = 0
    min_image_size: int = 32
    max_pixels: int = 40_000_000  # decoded area limit; bigger (bombs) fail as too_large before decode
    max_aspect_ratio: float = 10.0
    encode_quality: int = 95
    allow_private_network: bool = False

    def __post_init__(self) -> None:
        def pos_int(name: str, lo: int = 1) -> None:
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < lo:
                raise ValueError(f"{name} must be an int >= {lo}, got {v!r}")

        for name in ("image_size", "shard_size", "processes", "threads", "max_pixels"):
            pos_int(name)
        pos_int("retries", 0)
        pos_int("min_image_size", 0)
        if self.resize_mode not in RESIZE_MODES:
            raise ValueError(f"resize_mode {self.resize_mode!r} not accepted; use one of {sorted(RESIZE_MODES)}")
        if not isinstance(self.timeout, (int, float)) or isinstance(self.timeout, bool) or self.timeout <= 0:
            raise ValueError(f"timeout must be a positive number of seconds, got {self.timeout!r}")
        if not isinstance(self.max_aspect_ratio, (int, float)) or self.max_aspect_ratio < 1:
            raise ValueError(f"max_aspect_ratio must be a number >= 1, got {self.max_aspect_ratio!r}")
        if not isinstance(self.encode_quality, int) or not 1 <= self.encode_quality <= 100:
            raise ValueError(f"encode_quality must be an int in [1, 100], got {self.encode_quality!r}")
        for name in ("url_col", "caption_col", "uid_col"):
            v = getattr(self, name)
            if v is not None and (not isinstance(v, str) or not v):
                raise ValueError(f"{name} must be a non-empty column name, got {v!r}")
        if not isinstance(self.allow_private_network, bool):
            raise ValueError(f"allow_private_network must be a bool, got {self.allow_private_network!r}")

    def resize_record(self) -> dict:
        """How images were resized, for the manifest (squash defers the aspect change to featurize)."""
        rec = {"mode": self.resize_mode, "image_size": self.image_size,
               "img2dataset_resize_mode": RESIZE_MODES[self.resize_mode]}
        if self.resize_mode == "squash":
            rec["deferred"] = (f"stored with aspect kept, shorter side {self.image_size}; featurize squashes "
                               f"to {self.image_size}x{self.image_size}")
        return rec


@dataclass
class IngestSummary:
    """Outcome of an ingest or retry run, with store-wide totals over every input row."""

    store: str
    run_id: str
    input_rows: int
    stored: int
    failed: int
    by_reason: dict[str, int]
    shards_total: int
    shards_done_this_run: int
    samples_this_run: int
    elapsed_s: float
    images_per_s: float
    retryable_failed: int = 0
    extra: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        assert self.stored + self.failed == self.input_rows, "accounting invariant broken"

    def as_dict(self) -> dict:
        """Plain-data view (for the manifest and logs)."""
        return asdict(self)


# ---------------------------------------------------------------------------------------------
# input


def read_url_list(path: str, *, url_col: str = "url", caption_col: str | None = None, uid_col: str | None = None,
                  storage_options: dict | None = None) -> tuple[pa.Table, str]:
    """Read a parquet/csv/tsv/jsonl URL list into the URL_LIST schema (row_id = position); also its sha256."""
    path = os.fspath(path)
    ext = next((e for e in INPUT_FORMATS if path.lower().endswith(e)), None)
    if ext is None:
        raise ValueError(f"URL list {path!r} has an unknown extension; accepted: {sorted(INPUT_FORMATS)}")
    fs, p = get_fs(path, **(storage_options or {}))
    if not fs.exists(p):
        raise FileNotFoundError(f"URL list {path!r} does not exist")
    raw = fs.cat_file(p)
    digest = hashlib.sha256(raw).hexdigest()
    wanted = [c for c in (url_col, caption_col, uid_col) if c]
    fmt = INPUT_FORMATS[ext]
    if fmt == "parquet":
        table = pq.read_table(io.BytesIO(raw))
    elif fmt in ("csv", "tsv"):
        import pyarrow.csv as pacsv

        table = pacsv.read_csv(io.BytesIO(raw),
                               parse_options=pacsv.ParseOptions(delimiter="\t" if fmt == "tsv" else ","),
                               convert_options=pacsv.ConvertOptions(column_types={c: pa.string() for c in wanted}))
    else:
        import pyarrow.json as pajson

        table = pajson.read_json(io.BytesIO(raw))
    missing = [c for c in wanted if c not in table.column_names]
    if missing:
        raise ValueError(f"URL list {path!r} lacks column(s) {missing}; it has {table.column_names}. "
                         "Set url_col/caption_col/uid_col to the right names")
    n = table.num_rows

    def col(name: str | None) -> pa.Array:
        if name is None:
            return pa.nulls(n, pa.string())
        return pc.cast(table.column(name), pa.string()).combine_chunks()

    out = pa.table({"row_id": pa.array(range(n), pa.int64()), "url": col(url_col), "caption": col(caption_col),
                    "uid": col(uid_col)})
    return validate_table(out, URL_LIST), digest


# ---------------------------------------------------------------------------------------------
# failure classification


_HTTP_RE = re.compile(r"HTTP Error (\d{3})")


def classify_download_error(message: str) -> tuple[str, int | None]:
    """Reason code and HTTP status of an img2dataset download error message."""
    m = _HTTP_RE.search(message or "")
    if m:
        return "http_error", int(m.group(1))
    low = (message or "").lower()
    if "timed out" in low or "timeout" in low:
        return "timeout", None
    if "x-robots-tag" in low:
        return "disallowed", None
    return "network_error", None


def classify_resize_error(message: str) -> str:
    """Reason code of an img2dataset resize/decode error message."""
    low = (message or "").lower()
    if "too small" in low:
        return "too_small"
    if "area too large" in low or "max_image_pixels" in low or "validateinputimagesize" in low:
        return "too_large"
    if "aspect ratio" in low:
        return "aspect_ratio"
    return "decode_error"


# ---------------------------------------------------------------------------------------------
# work units


@dataclass
class WorkShard:
    """One shard to produce: its id, attempt and input rows (URL_LIST columns)."""

    shard: int
    attempt: int
    rows: pa.Table  # URL_LIST columns, row_id ascending
    refused: dict[int, str]  # row_id -> refusal detail
    attempts: list[int] | None = None  # per-row attempt number (retries); None = `attempt` for all


def _read_status_file(fs, path: str) -> pa.Table:
    table = pq.read_table(io.BytesIO(fs.cat_file(path)))
    check_schema_version(table.schema, INGEST_STATUS, where=path)
    return table


def read_status(store_root: str | Store, *, final: bool = True) -> pa.Table:
    """All committed status rows of a store; `final` keeps each row_id's latest attempt only."""
    store = store_root if isinstance(store_root, Store) else open_store(store_root)
    stage = store.stage_dir(STAGE)
    tables = [_read_status_file(store.fs, join(stage, shard_name(s) + ".parquet"))
              for s in store.list_committed(STAGE)]
    if not tables:
        return INGEST_STATUS.tagged().empty_table()
    table = pa.concat_tables(tables)
    if final:
        idx = pc.sort_indices(table, [("row_id", "ascending"), ("attempt", "descending")])
        table = table.take(idx)
        row_ids = table.column("row_id").to_numpy()
        keep = [0] + [i for i in range(1, len(row_ids)) if row_ids[i] != row_ids[i - 1]] if len(row_ids) else []
        table = table.take(pa.array(keep, pa.int64()))
    return table


# ---------------------------------------------------------------------------------------------
# the shard processor (runs in the committer thread, in shard order)


class ShardCommitter:
    """Turns img2dataset output for one work shard into a committed store shard."""

    def __init__(self, store: Store, cfg: IngestConfig, seen: dict[str, str]) -> None:
        self.store = store
        self.cfg = cfg
        self.seen = seen  # sha256 -> key of the first stored copy (commit order)

    def commit(self, work: WorkShard, raw_parquet: str | None, raw_tar: str | None, raw_stats: str | None,
               run_id: str) -> dict[str, int]:
        """Write tar, status table and stats for `work`, then commit the shard; returns its counts."""
        fs = self.store.fs
        stage = self.store.stage_dir(STAGE)
        name = shard_name(work.shard)
        raw_rows: dict[int, dict] = {}
        if raw_parquet is not None:
            for r in pq.read_table(raw_parquet).to_pylist():
                raw_rows[int(r["row_id"])] = r
        images: dict[str, tuple[bytes, dict]] = {}
        if raw_tar is not None:
            images = _read_raw_tar(raw_tar)
        attempts = work.attempts or [work.attempt] * work.rows.num_rows
        status_rows, members = [], []
        for row, attempt in zip(work.rows.to_pylist(), attempts):
            rid = row["row_id"]
            key = row_key(rid)
            rec = {"key": key, "shard": work.shard, "row_id": rid, "attempt": attempt, "url": row["url"],
                   "uid": row["uid"], "caption": row["caption"], "status": STATUS_FAILED, "reason": None,
                   "detail": None, "http_status": None, "sha256": None, "duplicate_of": None, "width": None,
                   "height": None, "original_width": None, "original_height": None}
            raw = raw_rows.get(rid)
            if rid in work.refused:
                rec.update(reason="refused_url", detail=work.refused[rid])
            elif raw is None:
                rec.update(reason="downloader_error",
                           detail="img2dataset returned no record for this row (sample or shard failed)")
            elif raw["status"] == "failed_to_download":
                reason, http = classify_download_error(raw["error_message"])
                rec.update(reason=reason, http_status=http, detail=raw["error_message"])
            elif raw["status"] == "failed_to_resize":
                rec.update(reason=classify_resize_error(raw["error_message"]), detail=raw["error_message"])
            elif raw["status"] == "success":
                rec.update(sha256=raw["sha256"], width=raw["width"], height=raw["height"],
                           original_width=raw["original_width"], original_height=raw["original_height"])
                first = self.seen.get(raw["sha256"])
                if raw["key"] not in images:
                    rec.update(reason="downloader_error", detail="img2dataset reported success but wrote no image")
                elif first is not None:
                    rec.update(reason="duplicate", duplicate_of=first,
                               detail=f"same sha256 as stored sample {first}")
                else:
                    self.seen[raw["sha256"]] = key
                    rec["status"] = STATUS_STORED
                    members.append((key, images[raw["key"]], rec))
            else:
                rec.update(reason="downloader_error", detail=f"unknown img2dataset status {raw['status']!r}")
            status_rows.append(rec)

        tar_name, parquet_name, stats_name = f"{name}.tar", f"{name}.parquet", f"{name}_stats.json"
        tar_digest = _write_tar(fs, join(stage, tar_name), members, with_caption=self.cfg.caption_col is not None)
        table = validate_table(pa.Table.from_pylist(status_rows, schema=INGEST_STATUS.schema), INGEST_STATUS)
        buf = io.BytesIO()
        pq.write_table(table, buf)
        atomic_write_bytes(fs, join(stage, parquet_name), buf.getvalue())
        counts = Counter({"rows": len(status_rows)})
        for rec in status_rows:
            counts[rec["status"]] += 1
            if rec["reason"]:
                counts["reason:" + rec["reason"]] += 1
        stats = {"shard": work.shard, "attempt": work.attempt, "counts": dict(counts),
                 "img2dataset": json.loads(open(raw_stats).read()) if raw_stats else None}
        atomic_write_bytes(fs, join(stage, stats_name), json.dumps(stats, indent=1).encode())
        files = {tar_name: tar_digest, parquet_name: None, stats_name: None}
        if raw_parquet is not None:
            raw_dst = join(stage, RAW_DIR, parquet_name)
            fs.makedirs(join(stage, RAW_DIR), exist_ok=True)
            fs.put_file(raw_parquet, raw_dst) if not is_local(fs) else shutil.copyfile(raw_parquet, raw_dst)
            files[f"{RAW_DIR}/{parquet_name}"] = None
        rids = table.column("row_id")
        self.store.commit_shard(STAGE, work.shard, files, dict(counts),
                                extra={"attempt": work.attempt, "run_id": run_id,
                                       "row_id_min": pc.min(rids).as_py(), "row_id_max": pc.max(rids).as_py()})
        return dict(counts)


def _read_raw_tar(path: str) -> dict[str, tuple[bytes, dict]]:
    """img2dataset tar -> {its key: (jpg bytes, its json meta)}."""
    out: dict[str, dict] = {}
    with tarfile.open(path, "r") as tf:
        for m in tf:
            if not m.isfile():
                continue
            key, _, ext = m.name.partition(".")
            out.setdefault(key, {})[ext] = tf.extractfile(m).read()
    return {k: (v["jpg"], json.loads(v.get("json", b"{}"))) for k, v in out.items() if "jpg" in v}


def _write_tar(fs, path: str, members: list, *, with_caption: bool) -> str:
    """Write a deterministic webdataset tar (fixed mtimes/owners) via a temp name; return its sha256."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.USTAR_FORMAT) as tf:
        for key, (jpg, meta), rec in members:
            meta_out = {k: rec[k] for k in ("key", "shard", "row_id", "url", "uid", "caption", "sha256", "width",
                                            "height", "original_width", "original_height")}
            meta_out["exif"] = meta.get("exif")
            parts = [("jpg", jpg)]
            if with_caption:
                parts.append(("txt", (rec["caption"] or "").encode()))
            parts.append(("json", json.dumps(meta_out, sort_keys=True).encode()))
            for ext, data in parts:
                info = tarfile.TarInfo(f"{key}.{ext}")
                info.size, info.mtime, info.mode = len(data), 0, 0o644
                tf.addfile(info, io.BytesIO(data))
    data = buf.getvalue()
    if is_local(fs):
        atomic_write_bytes(fs, path, data)
    else:  # object store: upload under a temp name, then move (the marker, written later, is what counts)
        tmp = path + ".tmp"
        with fs.open(tmp, "wb") as f:
            f.write(data)
        atomic_move(fs, tmp, path)
    return hashlib.sha256(data).hexdigest()


# ---------------------------------------------------------------------------------------------
# running img2dataset over a list of work shards


def _img2dataset_kwargs(cfg: IngestConfig, in_dir: str, out_dir: str, has_caption: bool) -> dict:
    return dict(url_list=in_dir, input_format="parquet", url_col="url",
                caption_col="caption" if has_caption else None, save_additional_columns=["row_id"],
                output_folder=out_dir, output_format="webdataset", image_size=cfg.image_size,
                resize_mode=RESIZE_MODES[cfg.resize_mode], resize_only_if_bigger=False,
                processes_count=cfg.processes, thread_count=cfg.threads, number_sample_per_shard=cfg.shard_size,
                timeout=cfg.timeout, retries=cfg.retries, compute_hash="sha256", min_image_size=cfg.min_image_size,
                max_image_area=cfg.max_pixels, max_aspect_ratio=cfg.max_aspect_ratio, encode_format="jpg",
                encode_quality=cfg.encode_quality, incremental_mode="incremental", enable_wandb=False,
                extract_exif=True, oom_shard_count=5, max_shard_retry=1)


def run_img2dataset(**kwargs) -> None:
    """Call img2dataset.download with OpenCV's pixel limit set, so bombs fail before they are decoded."""
    import img2dataset

    limit = str(int(kwargs["max_image_area"]))
    old = os.environ.get("OPENCV_IO_MAX_IMAGE_PIXELS")
    os.environ["OPENCV_IO_MAX_IMAGE_PIXELS"] = limit  # read by the spawned workers' OpenCV at import
    # albumentations (imported by img2dataset) otherwise checks PyPI for updates in every worker.
    os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
    try:
        img2dataset.download(**kwargs)
    finally:
        if old is None:
            os.environ.pop("OPENCV_IO_MAX_IMAGE_PIXELS", None)
        else:
            os.environ["OPENCV_IO_MAX_IMAGE_PIXELS"] = old


def _run_work(store: Store, cfg: IngestConfig, work: list[WorkShard], run_id: str, progress: bool) -> tuple[int, int]:
    """Download and commit `work` shards in order; returns (shards committed, samples handled)."""
    if not work:
        return 0, 0
    from tqdm import tqdm

    fs = store.fs
    stage = store.stage_dir(STAGE)
    # img2dataset works on local files; the committed shards go to the store (any fsspec URL).
    local_stage = stage if is_local(fs) else None
    if local_stage is None:
        import tempfile

        work_root = tempfile.mkdtemp(prefix="wintok-ingest-")
    else:
        work_root = join(stage, WORK_DIR, run_id)
    in_dir, out_dir = join(work_root, "in"), join(work_root, "out")
    os.makedirs(in_dir, exist_ok=True)
    has_caption = cfg.caption_col is not None
    feed: dict[int, int] = {}  # index in `work` -> img2dataset shard id
    for i, w in enumerate(work):
        mask = pa.array([rid not in w.refused for rid in w.rows.column("row_id").to_pylist()])
        rows = w.rows.filter(mask)
        if rows.num_rows == 0:
            continue
        cols = ["url", "row_id"] + (["caption"] if has_caption else [])
        feed[i] = len(feed)
        pq.write_table(rows.select(cols), join(in_dir, f"{feed[i]:05d}.parquet"))

    seen = _seen_hashes(store)
    committer = ShardCommitter(store, cfg, seen)
    done = threading.Event()
    errors: list[BaseException] = []
    bar = tqdm(total=len(work), unit="shard", desc="ingest", file=sys.stderr, disable=not progress)
    t0 = time.time()
    totals = Counter()

    def commit_in_order() -> None:
        try:
            for i, w in enumerate(work):
                raw = (None, None, None)
                if i in feed:
                    base = join(out_dir, f"{feed[i]:05d}")
                    while not os.path.exists(base + "_stats.json") and not done.is_set():
                        time.sleep(0.1)
                    if os.path.exists(base + "_stats.json"):
                        raw = (base + ".parquet", base + ".tar", base + "_stats.json")
                counts = committer.commit(w, *raw, run_id=run_id)
                totals.update(counts)
                bar.update(1)
                elapsed = max(time.time() - t0, 1e-9)
                bar.set_postfix(img_s=f"{totals[STATUS_STORED] / elapsed:.1f}",
                                fail=f"{totals[STATUS_FAILED] / max(totals['rows'], 1):.1%}")
        except BaseException as err:  # noqa: BLE001  re-raised in the caller's thread
            errors.append(err)

    thread = threading.Thread(target=commit_in_order, name="ingest-committer", daemon=True)
    thread.start()
    try:
        if feed:
            run_img2dataset(**_img2dataset_kwargs(cfg, in_dir, out_dir, has_caption))
    finally:
        done.set()
        thread.join()
        bar.close()
    if errors:
        raise RuntimeError(f"committing ingest shards failed: {errors[0]!r}") from errors[0]
    shutil.rmtree(work_root, ignore_errors=True)
    return len(work), totals["rows"]


def _seen_hashes(store: Store) -> dict[str, str]:
    """sha256 -> key of every stored sample already committed (dedup index, rebuilt on resume)."""
    seen: dict[str, str] = {}
    table = read_status(store, final=False)
    stored = table.filter(pc.equal(table.column("status"), STATUS_STORED)).select(["sha256", "key", "shard"])
    order = pc.sort_indices(stored, [("shard", "ascending"), ("key", "ascending")])
    for sha, key in zip(*(stored.take(order).column(c).to_pylist() for c in ("sha256", "key"))):
        seen.setdefault(sha, key)
    return seen


def _summary(store: Store, run_id: str, input_rows: int, shards_done: int, samples: int, t0: float) -> IngestSummary:
    final = read_status(store, final=True)
    if final.num_rows != input_rows:
        raise RuntimeError(f"store {store.root_url} accounts for {final.num_rows} rows but the input has "
                           f"{input_rows}; rerun ingest on this store to finish the missing shards")
    statuses = Counter(final.column("status").to_pylist())
    reasons = Counter(r for r in final.column("reason").to_pylist() if r)
    retryable = sum(is_retryable(r, h) for r, h in zip(final.column("reason").to_pylist(),
                                                       final.column("http_status").to_pylist()))
    elapsed = time.time() - t0
    return IngestSummary(store=store.root_url, run_id=run_id, input_rows=input_rows,
                         stored=statuses.get(STATUS_STORED, 0), failed=statuses.get(STATUS_FAILED, 0),
                         by_reason=dict(sorted(reasons.items())), shards_total=len(store.list_committed(STAGE)),
                         shards_done_this_run=shards_done, samples_this_run=samples, elapsed_s=elapsed,
                         images_per_s=samples / elapsed if elapsed > 0 else 0.0, retryable_failed=retryable)


def _clean_work_dirs(store: Store) -> None:
    """Remove temp dirs of dead runs (we hold the lock, so nobody else is writing)."""
    work = join(store.stage_dir(STAGE), WORK_DIR)
    if store.fs.exists(work):
        store.fs.rm(work, recursive=True)


# ---------------------------------------------------------------------------------------------
# public entry points


def ingest(urls_path: str, store_root: str, *, url_col: str = "url", caption_col: str | None = None,
           uid_col: str | None = None, image_size: int = 256, resize_mode: str = "center-crop",
           shard_size: int = 1000, processes: int = 1, threads: int = 32, timeout: float = 10.0,
           retries: int = 0, min_image_size: int = 32, max_pixels: int = 40_000_000,
           max_aspect_ratio: float = 10.0, encode_quality: int = 95, allow_private_network: bool = False,
           take_over: bool = False, progress: bool = True, storage_options: dict | None = None) -> IngestSummary:
    """Download a URL list into `<store>/images/` shards, resuming committed work; returns the totals.

    Call from an `if __name__ == "__main__":` guarded script: img2dataset starts spawn workers.
    """
    cfg = IngestConfig(url_col=url_col, caption_col=caption_col, uid_col=uid_col, image_size=image_size,
                       resize_mode=resize_mode, shard_size=shard_size, processes=processes, threads=threads,
                       timeout=timeout, retries=retries, min_image_size=min_image_size, max_pixels=max_pixels,
                       max_aspect_ratio=max_aspect_ratio, encode_quality=encode_quality,
                       allow_private_network=allow_private_network)
    t0 = time.time()
    table, digest = read_url_list(urls_path, url_col=url_col, caption_col=caption_col, uid_col=uid_col)
    store = open_store(store_root, create=True, storage_options=storage_options)
    run_id = new_run_id()
    with store.writer(take_over=take_over, run_id=run_id):
        settings = {**asdict(cfg), "input_path": os.fspath(urls_path), "input_sha256": digest,
                    "input_rows": table.num_rows, "resize": cfg.resize_record()}
        previous = store.manifest()["stages"].get(STAGE, {}).get("settings")
        if previous:
            changed = {k: (previous.get(k), settings[k]) for k in _OUTPUT_SETTINGS if previous.get(k) != settings[k]}
            if changed:
                raise ValueError(f"store {store_root} was ingested with other settings {changed} (old, new); "
                                 "use a new store, or rerun with the same input and settings to resume")
        store.record_run(STAGE, settings, run_id=run_id)
        _clean_work_dirs(store)
        n_shards = math.ceil(table.num_rows / cfg.shard_size)
        committed = set(store.list_committed(STAGE))
        checker = UrlChecker(allow_private_network=cfg.allow_private_network)
        work = []
        for s in range(n_shards):
            if s in committed:
                continue
            rows = table.slice(s * cfg.shard_size, cfg.shard_size)
            verdicts = checker.check_many(rows.column("url").to_pylist())
            refused = {rid: v for rid, v in zip(rows.column("row_id").to_pylist(), verdicts) if v is not None}
            work.append(WorkShard(shard=s, attempt=0, rows=rows, refused=refused))
        shards_done, samples = _run_work(store, cfg, work, run_id, progress)
        _clean_work_dirs(store)
        summary = _summary(store, run_id, table.num_rows, shards_done, samples, t0)
        store.finish_run(STAGE, run_id=run_id, result=summary.as_dict())
    if progress:
        print(_format_summary(summary), file=sys.stderr)
    return summary


def retry_failed(store_root: str, *, processes: int | None = None, threads: int | None = None,
                 timeout: float | None = None, take_over: bool = False, progress: bool = True,
                 storage_options: dict | None = None) -> IngestSummary:
    """Download again only retryable failures (timeouts, network errors, 5xx, 429) into new shards."""
    t0 = time.time()
    store = open_store(store_root, storage_options=storage_options)
    run_id = new_run_id()
    with store.writer(take_over=take_over, run_id=run_id):
        settings = store.manifest()["stages"].get(STAGE, {}).get("settings")
        if not settings:
            raise ValueError(f"store {store_root} has no ingest settings; run ingest() on it first")
        base = {k: settings[k] for k in IngestConfig.__dataclass_fields__}
        overrides = {k: v for k, v in (("processes", processes), ("threads", threads), ("timeout", timeout))
                     if v is not None}
        cfg = IngestConfig(**{**base, **overrides})
        input_rows = settings["input_rows"]
        n_initial = math.ceil(input_rows / cfg.shard_size)
        committed = store.list_committed(STAGE)
        missing = sorted(set(range(n_initial)) - set(committed))
        if missing:
            raise ValueError(f"store {store_root} has unfinished ingest shards {missing[:10]}; rerun ingest() "
                             "with the same arguments to finish them before retry_failed")
        _clean_work_dirs(store)
        store.record_run(STAGE + ":retry", {**base, **overrides}, run_id=run_id)
        final = read_status(store, final=True)
        mask = [r == STATUS_FAILED and is_retryable(reason, http) for r, reason, http in
                zip(final.column("status").to_pylist(), final.column("reason").to_pylist(),
                    final.column("http_status").to_pylist())]
        todo = final.filter(pa.array(mask, pa.bool_()))
        next_shard = max(committed) + 1 if committed else 0
        work = []
        for start in range(0, todo.num_rows, cfg.shard_size):
            part = todo.slice(start, cfg.shard_size)
            rows = validate_table(part.select(["row_id", "url", "caption", "uid"]), URL_LIST)
            attempts = [a + 1 for a in part.column("attempt").to_pylist()]
            work.append(WorkShard(shard=next_shard, attempt=max(attempts), rows=rows, refused={},
                                  attempts=attempts))
            next_shard += 1
        shards_done, samples = _run_work(store, cfg, work, run_id, progress)
        _clean_work_dirs(store)
        summary = _summary(store, run_id, input_rows, shards_done, samples, t0)
        store.finish_run(STAGE, run_id=run_id, result=summary.as_dict())
    if progress:
        print(_format_summary(summary), file=sys.stderr)
    return summary


def _format_summary(s: IngestSummary) -> str:
    reasons = ", ".join(f"{k}={v}" for k, v in s.by_reason.items()) or "none"
    return (f"ingest {s.run_id}: {s.input_rows} rows -> stored {s.stored}, failed {s.failed} ({reasons}); "
            f"{s.shards_done_this_run} shards this run in {s.elapsed_s:.1f}s ({s.images_per_s:.1f} rows/s); "
            f"{s.retryable_failed} retryable")
