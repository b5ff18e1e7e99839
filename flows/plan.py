"""`wintok run --dry-run`: shards, expected storage by artifact and GPU-hours, before any work.

Estimates are upper bounds that assume every input row is stored:
- images: JPEG bytes per stored image, BYTES_PER_IMAGE_256 at 256 px scaled by area
  (measured on the demo corpus of photo crops at quality 95: about 30 KB);
- tokens: num_streams * positions * 2 bytes (uint16 ids) + N * D * bytes of the semantic dtype;
- features: D * 4 bytes (float32 pooled) per teacher (+ patches * D * 2 with patches on);
- GPU-hours: samples / (images per second of one GPU) / 3600.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

from flows.settings import RunSettings

BYTES_PER_IMAGE_256 = 30_000
# The released WinTok (so400m/16 at 256 px): 4 codebooks x 16x16 positions, 32 x 1152 semantic.
OFFICIAL_LAYOUT = {"num_streams": 4, "positions": 256, "semantic": (32, 1152)}
SEMANTIC_BYTES = {"float16": 2, "bfloat16": 2, "int8": 1}


@dataclass
class Plan:
    """What a run would do and store."""

    urls: str
    store: str
    input_rows: int
    shard_size: int
    shards: int
    shards_committed: int
    storage: list[dict] = field(default_factory=list)  # artifact, per_sample, total, note
    gpu_images_per_s: float = 0.0
    gpu_hours: float = 0.0
    notes: list[str] = field(default_factory=list)


def make_plan(urls: str, store: str, s: RunSettings) -> Plan:
    """Read the URL list (and the store, if it exists) and estimate the run."""
    from pipelines.ingest import read_url_list

    table, _ = read_url_list(urls, url_col=s.ingest.url_col, caption_col=s.ingest.caption_col,
                             uid_col=s.ingest.uid_col)
    rows, size = table.num_rows, s.ingest.shard_size
    plan = Plan(urls=urls, store=store, input_rows=rows, shard_size=size,
                shards=math.ceil(rows / size), shards_committed=_committed_images(store),
                gpu_images_per_s=s.runtime.gpu_images_per_s)
    img = int(BYTES_PER_IMAGE_256 * (s.ingest.image_size / 256) ** 2)
    plan.storage.append(_row("images (JPEG, webdataset tars)", img, rows,
                             f"~{BYTES_PER_IMAGE_256 // 1000} KB per image at 256 px, by area"))
    plan.storage.append(_tokens_row(s, rows, plan.notes))
    for t in s.featurize.teachers:
        plan.storage.append(_teacher_row(t, s, rows, plan.notes))
    plan.gpu_hours = rows / s.runtime.gpu_images_per_s / 3600 if rows else 0.0
    return plan


def _row(artifact: str, per_sample: int, rows: int, note: str) -> dict:
    return {"artifact": artifact, "per_sample": per_sample, "total": per_sample * rows, "note": note}


def _committed_images(store: str) -> int:
    from pipelines.store import open_store

    try:
        return len(open_store(store).list_committed("images"))
    except FileNotFoundError:
        return 0


def _tokens_row(s: RunSettings, rows: int, notes: list[str]) -> dict:
    f = s.featurize
    if f.tokenizer:
        from wintok.tokenizer import load_tokenizer

        tok = load_tokenizer(f.tokenizer)
        streams, positions = tok.layout.num_streams, tok.layout.positions
        sem = tok.semantic_shape
        source = f"{tok.identity}"
    else:
        streams, positions = OFFICIAL_LAYOUT["num_streams"], OFFICIAL_LAYOUT["positions"]
        sem = OFFICIAL_LAYOUT["semantic"]
        source = "official WinTok layout assumed"
        notes.append("no --tokenizer: the run would store teacher features only; the tokens row "
                     "shows the released WinTok's size for reference")
    per = streams * positions * 2
    note = f"{streams}x{positions} uint16 ids"
    if sem:
        b = SEMANTIC_BYTES[f.semantic_dtype] + (4 / sem[1] if f.semantic_dtype == "int8" else 0)
        per += int(sem[0] * sem[1] * b)
        note += f" + semantic {sem[0]}x{sem[1]} {f.semantic_dtype}"
    return _row(f"tokens ({source})", per, rows, note + " (Parquet and Zarr each hold a copy)")


def _teacher_row(spec: str, s: RunSettings, rows: int, notes: list[str]) -> dict:
    from wintok.teachers import build_teacher

    try:
        t = build_teacher(spec)
    except (ValueError, OSError, ImportError) as e:
        notes.append(f"teacher {spec}: cannot load it to read its size ({e})")
        return {"artifact": f"features ({spec})", "per_sample": 0, "total": 0, "note": "unknown size"}
    per = t.dim * 4
    note = f"{t.dim} float32 pooled"
    if s.featurize.teacher_patches and t.patch_dim:
        notes.append(f"teacher {spec}: patch embeddings not counted (their number depends on input)")
    return _row(f"features ({spec})", per, rows, note)


def format_plan(p: Plan) -> str:
    """The plan as text for the terminal."""
    from flows.tables import text_table

    rows = [{"artifact": r["artifact"], "per sample": human_bytes(r["per_sample"]),
             "total": human_bytes(r["total"]), "how": r["note"]} for r in p.storage]
    total = sum(r["total"] for r in p.storage)
    lines = [f"plan for {p.urls} -> {p.store}",
             f"  input rows     {p.input_rows:,}",
             f"  shards         {p.shards:,} of {p.shard_size:,} rows"
             + (f" ({p.shards_committed} already committed in the store)" if p.shards_committed else ""),
             "", "expected storage (upper bound: every row stored)", text_table(rows),
             f"  total          {human_bytes(total)}", "",
             f"featurize compute  {p.gpu_hours:,.2f} GPU-hours at {p.gpu_images_per_s:,.0f} images/s "
             "per GPU (--gpu-images-per-s)"]
    lines += [f"note: {n}" for n in p.notes]
    lines.append("dry run: nothing was downloaded or written")
    return "\n".join(lines)


def human_bytes(n: float) -> str:
    """1234567 -> '1.2 MB' (powers of 1000)."""
    for unit in ("B", "KB", "MB", "GB", "TB", "PB"):
        if abs(n) < 1000 or unit == "PB":
            return f"{n:,.0f} {unit}" if unit == "B" else f"{n:,.1f} {unit}"
        n /= 1000
    return f"{n} PB"
