"""`wintok report`: one self-contained HTML page about a store, safe to mail.

Sections: samples by outcome with the top failure reasons, throughput per stage (the
manifest's run results), featurize outputs, codebook usage per codebook (from the token
Parquet files), originals next to images decoded from the stored tokens (the checkpoint
named in the lineage), and the lineage. Images are inline base64; charts are inline SVG.
"""
from __future__ import annotations

import base64
import html
import io
import json
import time
from pathlib import Path

import numpy as np

from flows.status import StoreStatus, stage_throughput, store_status

MAX_USAGE_ROWS = 200_000  # token rows read for codebook usage (a sample of big stores)
HIST_BINS = 64

_CSS = """body{font-family:system-ui,sans-serif;margin:2em auto;max-width:1100px;color:#222}
table{border-collapse:collapse;margin:.5em 0}td,th{border:1px solid #ccc;padding:3px 8px;
text-align:left}td.n{text-align:right}h2{border-bottom:1px solid #ddd;margin-top:1.6em}
.grid{display:flex;flex-wrap:wrap;gap:10px}.pair{text-align:center;font-size:12px}
.pair img{width:128px;height:128px;image-rendering:auto;border:1px solid #ccc}
.note{background:#fff6dd;padding:6px 10px;border-left:4px solid #e0b000}
pre{background:#f6f6f6;padding:8px;overflow:auto;font-size:12px}"""


def write_report(store_root: str, out: str | Path, *, samples: int = 8) -> Path:
    """Write the report of `store_root` to `out` (HTML); returns the path."""
    from pipelines.store import open_store

    store = open_store(store_root)
    st = store_status(store_root)
    manifest = store.manifest()
    parts = [f"<h1>wintok store report</h1><p>store <code>{_e(store_root)}</code>, written "
             f"{time.strftime('%Y-%m-%d %H:%M:%S')}, format version "
             f"{_e(manifest.get('format_version'))}</p>",
             _outcomes(st), _throughput(st), _outputs(st)]
    token_stages = [o.stage for o in st.outputs if o.stage.startswith("tokens/")]
    for stage in token_stages:
        parts.append(_codebooks(store, stage, st))
    parts.append(_grid(store, token_stages[0] if token_stages else None, st, samples))
    parts.append(_lineage(manifest))
    page = (f"<!doctype html><html><head><meta charset='utf-8'><title>wintok report: "
            f"{_e(store_root)}</title><style>{_CSS}</style></head><body>"
            + "\n".join(parts) + "</body></html>")
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(page, encoding="utf-8")
    return out


def _e(v) -> str:
    return html.escape(str(v))


def _table(rows: list[dict], cols: list[str] | None = None) -> str:
    if not rows:
        return "<p><em>none</em></p>"
    cols = cols or list(rows[0])
    head = "".join(f"<th>{_e(c)}</th>" for c in cols)
    body = "".join("<tr>" + "".join(
        f"<td class='n'>{v:,}</td>" if isinstance(v, int) and not isinstance(v, bool) else
        f"<td class='n'>{v:,.2f}</td>" if isinstance(v, float) else f"<td>{_e(v)}</td>"
        for v in (r.get(c, "") for c in cols)) + "</tr>" for r in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def _outcomes(st: StoreStatus) -> str:
    rows = [{"outcome": "stored", "samples": st.stored}, {"outcome": "failed", "samples": st.failed},
            {"outcome": "input rows", "samples": st.input_rows}]
    reasons = [{"reason": k, "samples": v} for k, v in list(st.by_reason.items())[:10]]
    extra = (f"<p>{st.retryable_failed} failures are retryable (<code>wintok retry-failed</code>)."
             "</p>" if st.retryable_failed else "")
    return ("<h2>Samples by outcome</h2>" + _table(rows) + "<h3>Top failure reasons</h3>"
            + _table(reasons) + extra)


def _throughput(st: StoreStatus) -> str:
    return "<h2>Throughput per stage (runs)</h2>" + _table(stage_throughput(st))


def _outputs(st: StoreStatus) -> str:
    rows = [{"output": o.stage, "shards": o.shards_done, "missing shards": len(o.shards_missing),
             "rows": o.rows, "decode failed": o.decode_failed} for o in st.outputs]
    return "<h2>Featurize outputs</h2>" + _table(rows)


def read_token_ids(store, stage: str, layout: dict, *, max_rows: int = MAX_USAGE_ROWS):
    """(keys, ids as (n, num_streams, positions) uint16, shard per row) from a token stage."""
    import pyarrow.parquet as pq

    from pipelines.fsutil import join
    from pipelines.manifest import shard_name

    streams = int(layout["num_streams"])
    positions = int(layout["grid"][0]) * int(layout["grid"][1])
    keys, ids, shards = [], [], []
    n = 0
    for shard in store.list_committed(stage):
        with store.fs.open(join(store.stage_dir(stage), f"{shard_name(shard)}.parquet"), "rb") as f:
            t = pq.read_table(f, columns=["key", "pixel_ids"])
        flat = t.column("pixel_ids").combine_chunks().flatten().to_numpy()
        ids.append(flat.reshape(t.num_rows, streams, positions))
        keys += t.column("key").to_pylist()
        shards += [shard] * t.num_rows
        n += t.num_rows
        if n >= max_rows:
            break
    arr = np.concatenate(ids) if ids else np.zeros((0, streams, positions), np.uint16)
    return keys, arr, shards


def codebook_usage(ids: np.ndarray, vocab: int) -> list[dict]:
    """Per codebook: counts over its entries, share of entries used, perplexity."""
    out = []
    for s in range(ids.shape[1]):
        counts = np.bincount(ids[:, s].reshape(-1).astype(np.int64), minlength=vocab)[:vocab]
        total = counts.sum()
        p = counts[counts > 0] / max(total, 1)
        out.append({"codebook": s, "used": int((counts > 0).sum()), "size": vocab,
                    "usage_pct": 100.0 * float((counts > 0).mean()),
                    "perplexity": float(np.exp(-(p * np.log(p)).sum())) if total else 0.0,
                    "counts": counts})
    return out


def _svg_hist(counts: np.ndarray, *, width: int = 480, height: int = 120) -> str:
    """Rank-frequency bars: entries sorted by use, grouped into HIST_BINS bins (mean count)."""
    ranked = np.sort(counts)[::-1].astype(np.float64)
    bins = np.array_split(ranked, min(HIST_BINS, len(ranked)))
    vals = np.array([b.mean() if len(b) else 0.0 for b in bins])
    top = vals.max() if vals.size and vals.max() > 0 else 1.0
    bw = width / len(vals)
    bars = "".join(f"<rect x='{i * bw:.1f}' y='{height - h:.1f}' width='{max(bw - 1, 1):.1f}' "
                   f"height='{h:.1f}' fill='#4a7bd0'/>"
                   for i, h in enumerate(vals / top * (height - 12)))
    return (f"<svg xmlns='http://www.w3.org/2000/svg' width='{width}' height='{height + 14}'>"
            f"{bars}<text x='0' y='{height + 12}' font-size='10'>entries ranked by use "
            f"(most used left); bar = mean count of {len(ranked) // len(vals)} entries; "
            f"max {int(ranked[0]) if len(ranked) else 0}</text></svg>")


def _codebooks(store, stage: str, st: StoreStatus) -> str:
    lineage = next((o.lineage for o in st.outputs if o.stage == stage), {})
    layout = lineage.get("layout")
    if not layout:
        return f"<h2>Codebook usage: {_e(stage)}</h2><p class='note'>no layout in the lineage</p>"
    _, ids, _ = read_token_ids(store, stage, layout)
    usage = codebook_usage(ids, int(layout["vocab_per_stream"]))
    rows = [{k: u[k] for k in ("codebook", "used", "size", "usage_pct", "perplexity")}
            for u in usage]
    hists = "".join(f"<div><b>codebook {u['codebook']}</b>: {u['usage_pct']:.1f}% of "
                    f"{u['size']} entries used<br>{_svg_hist(u['counts'])}</div>" for u in usage)
    return (f"<h2>Codebook usage: {_e(stage)}</h2><p>over {ids.shape[0]:,} samples x "
            f"{ids.shape[2]} positions</p>" + _table(rows) + f"<div class='grid'>{hists}</div>")


def _png_b64(img: np.ndarray, fmt: str = "PNG") -> str:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format=fmt, **({"quality": 90} if fmt == "JPEG" else {}))
    mime = "image/png" if fmt == "PNG" else "image/jpeg"
    return f"data:{mime};base64," + base64.b64encode(buf.getvalue()).decode()


def _originals(store, shard: int, keys: set[str], size: int, resize: str) -> dict[str, np.ndarray]:
    """key -> decoded (size, size, 3) uint8 of the wanted keys of an image shard."""
    from pipelines.fsutil import join
    from pipelines.manifest import shard_name
    from pipelines.shards import decode_one, iter_tar_samples
    from wintok.errors import ImageError
    from wintok.preprocess import Preprocess

    pre = Preprocess(size=size, resize=resize)
    path = join(store.stage_dir("images"), f"{shard_name(shard)}.tar")
    out = {}
    with store.fs.open(path, "rb") as f:
        for s in iter_tar_samples(f, where=path):
            if s.key in keys:
                try:
                    out[s.key] = decode_one(s, pre)
                except ImageError:
                    continue
    return out


def _grid(store, stage: str | None, st: StoreStatus, samples: int) -> str:
    head = "<h2>Originals and their tokens decoded</h2>"
    if stage is None or samples <= 0:
        return head + "<p class='note'>no token stage in this store: nothing to decode</p>"
    lineage = next(o.lineage for o in st.outputs if o.stage == stage)
    keys, ids, shards = read_token_ids(store, stage, lineage["layout"], max_rows=samples)
    keys, ids, shards = keys[:samples], ids[:samples], shards[:samples]
    pre = lineage.get("preprocess") or {}
    size, resize = int(pre.get("size", 256)), pre.get("resize", "center-crop")
    originals: dict[str, np.ndarray] = {}
    for shard in sorted(set(shards)):
        originals.update(_originals(store, shard, set(keys), size, resize))
    decoded, note = _decode(lineage, ids)
    cells = []
    for i, key in enumerate(keys):
        orig = (f"<img alt='original {key}' src='{_png_b64(originals[key], 'JPEG')}'>"
                if key in originals else "<em>missing</em>")
        dec = (f"<img alt='decoded {key}' src='{_png_b64(decoded[i], 'JPEG')}'>"
               if decoded is not None else "")
        cells.append(f"<div class='pair'>{orig}{dec}<br>{_e(key)}</div>")
    note_html = f"<p class='note'>{_e(note)}</p>" if note else ""
    return (head + f"<p>left: stored image (as fed to the tokenizer); right: decoded from the "
            f"stored ids of <code>{_e(stage)}</code></p>" + note_html
            + f"<div class='grid'>{''.join(cells)}</div>")


def _decode(lineage: dict, ids: np.ndarray) -> tuple[np.ndarray | None, str]:
    """Decode ids with the lineage's checkpoint; (images or None, a note for the page)."""
    import torch

    from wintok.errors import WinTokError
    from wintok.preprocess import to_uint8
    from wintok.tokenizer import load_tokenizer

    ckpt = lineage.get("checkpoint")
    if not ckpt or not Path(ckpt).exists():
        return None, (f"tokenizer checkpoint {ckpt!r} recorded in the lineage is not on this "
                      "machine: decoded images are not shown")
    try:
        tok = load_tokenizer(ckpt).eval()
    except (WinTokError, OSError, ValueError) as e:
        return None, f"cannot load the lineage's checkpoint {ckpt}: {e}"
    if tok.identity != lineage.get("identity"):
        return None, (f"checkpoint {ckpt} is now {tok.identity}, but the tokens were made by "
                      f"{lineage.get('identity')}: decoded images are not shown")
    with torch.no_grad():
        x = tok.decode(torch.from_numpy(ids.astype(np.int64)))
    return to_uint8(x), ""


def _lineage(manifest: dict) -> str:
    stages = {k: {"lineage": v.get("lineage"), "settings": v.get("settings"),
                  "summary": v.get("summary")} for k, v in manifest.get("stages", {}).items()}
    runs = [{"run_id": r.get("run_id"), "stage": r.get("stage"), "host": r.get("host"),
             "started": time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(r.get("started_at", 0))),
             "finished": "yes" if r.get("finished_at") else "no"} for r in manifest.get("runs", [])]
    return ("<h2>Lineage</h2><h3>Runs</h3>" + _table(runs)
            + "<h3>Stages (settings, lineage, committed counts)</h3><pre>"
            + _e(json.dumps(stages, indent=1, default=str)) + "</pre><h3>Created with</h3><pre>"
            + _e(json.dumps(manifest.get("created_with", {}), indent=1)) + "</pre>")
