"""`wintok eval`: reconstruction quality of a tokenizer, over a store or an image folder.

Store: decode the stored pixel ids and compare with the stored images (preprocessed as
featurize did). Folder (ImageNet-val class folders, COCO val2017 flat, or any tree of images):
encode then decode each image. PSNR and SSIM always (scikit-image's implementations: SSIM with
an 11x11 Gaussian window, sigma 1.5, on all three channels, data range 255); LPIPS when given
an `pipelines.lpips.LPIPS` built from weights on disk; rFID (`pipelines.fid`, torch-fidelity's
protocol) between all originals and all reconstructions when given the FID Inception network.
Per-image results go to Parquet; the summary is returned and printed by the CLI.
"""
from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".bmp", ".JPEG"}


@dataclass
class EvalSummary:
    images: int = 0
    psnr: float = float("nan")  # mean over images, dB
    ssim: float = float("nan")  # mean over images
    lpips: float | None = None  # mean over images, when LPIPS weights were given
    rfid: float | None = None  # over the whole set, when FID Inception weights were given
    failed: list[tuple[str, str]] = field(default_factory=list)  # (name, reason)
    codebook_usage_pct: list[float] = field(default_factory=list)  # per stream, % of ids used
    per_image: str | None = None  # Parquet path of per-image results


def image_metrics(original: np.ndarray, recon: np.ndarray) -> tuple[float, float]:
    """PSNR (dB) and SSIM of two uint8 (H, W, 3) images."""
    from skimage.metrics import peak_signal_noise_ratio, structural_similarity

    psnr = peak_signal_noise_ratio(original, recon, data_range=255)
    ssim = structural_similarity(original, recon, data_range=255, channel_axis=-1,
                                 gaussian_weights=True, sigma=1.5, use_sample_covariance=False)
    return float(min(psnr, 100.0)), float(ssim)


def _finish(rows: list[dict], ids_seen: list[np.ndarray], layout, failed, out: str | None,
            rfid=None) -> EvalSummary:
    s = EvalSummary(images=len(rows), failed=failed)
    if rfid is not None and rfid.real.n >= 2:
        s.rfid = rfid.value()
    if rows:
        s.psnr = float(np.mean([r["psnr"] for r in rows]))
        s.ssim = float(np.mean([r["ssim"] for r in rows]))
        if "lpips" in rows[0]:
            s.lpips = float(np.mean([r["lpips"] for r in rows]))
    if ids_seen:
        ids = np.concatenate(ids_seen)  # (N, streams, positions)
        s.codebook_usage_pct = [100.0 * len(np.unique(ids[:, k])) / layout.vocab_per_stream
                                for k in range(ids.shape[1])]
    if out:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(pa.Table.from_pylist(rows), out)
        s.per_image = str(out)
    return s


def _batched(it, n: int) -> Iterator[list]:
    chunk = []
    for x in it:
        chunk.append(x)
        if len(chunk) == n:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def _lpips_values(lpips, orig: np.ndarray, rec: np.ndarray, device: str) -> list[float | None]:
    """Per-image LPIPS of uint8 (B,H,W,3) pairs, or Nones without an LPIPS network."""
    if lpips is None:
        return [None] * len(orig)
    from wintok.preprocess import to_tensor

    return lpips.to(device)(to_tensor(list(orig)).to(device), to_tensor(list(rec)).to(device)).tolist()


def _rfid(fid, device: str):
    """An rFID accumulator around the FID Inception network, or None."""
    if fid is None:
        return None
    from pipelines.fid import RFID

    return RFID(fid, device=device)


def _row(base: dict, o: np.ndarray, r: np.ndarray, lp: float | None) -> dict:
    p_, s_ = image_metrics(o, r)
    row = {**base, "psnr": p_, "ssim": s_}
    if lp is not None:
        row["lpips"] = float(lp)
    return row


def evaluate_folder(folder: str | Path, checkpoint: str | Path, *, resize: str = "center-crop",
                    batch_size: int = 16, limit: int | None = None, out: str | None = None,
                    device: str = "cpu", progress: bool = True, lpips=None, fid=None) -> EvalSummary:
    """Encode then decode every image under `folder` (recursively, sorted) and measure.

    `lpips`: a `pipelines.lpips.LPIPS`; `fid`: a `pipelines.fid.InceptionFID` (rFID)."""
    from tqdm import tqdm

    from wintok.errors import ImageError
    from wintok.preprocess import Preprocess, load_for_tokenizer, to_uint8
    from wintok.tokenizer import load_tokenizer

    folder = Path(folder)
    if not folder.is_dir():
        raise ValueError(f"{folder} is not a directory of images")
    paths = sorted(p for p in folder.rglob("*") if p.suffix in IMAGE_SUFFIXES or p.suffix.lower() in IMAGE_SUFFIXES)
    if limit is not None:
        paths = paths[:limit]
    if not paths:
        raise ValueError(f"no images ({', '.join(sorted(IMAGE_SUFFIXES))}) under {folder}")
    tok = load_tokenizer(checkpoint).eval().to(device)
    pre = Preprocess(size=tok.image_size, resize=resize)
    rows, ids_seen, failed = [], [], []
    rfid = _rfid(fid, device)
    bar = tqdm(total=len(paths), unit="img", desc="eval", disable=not progress, file=sys.stderr)
    for chunk in _batched(paths, batch_size):
        xs, names = [], []
        for p in chunk:
            try:
                xs.append(load_for_tokenizer(p, pre)[0])
                names.append(str(p.relative_to(folder)))
            except ImageError as e:
                failed.append((str(p.relative_to(folder)), str(e)))
        if xs:
            x = torch.cat(xs).to(device)
            ids = tok.encode(x).ids
            rec = to_uint8(tok.decode(ids))
            orig = to_uint8(x)
            ids_seen.append(ids.cpu().numpy())
            if rfid is not None:
                rfid.add(orig, rec)
            for name, o, r, lp in zip(names, orig, rec, _lpips_values(lpips, orig, rec, device)):
                rows.append(_row({"image": name}, o, r, lp))
        bar.update(len(chunk))
    bar.close()
    return _finish(rows, ids_seen, tok.layout, failed, out, rfid)


def evaluate_store(store_root: str, token_stage: str | None = None, *, limit: int | None = None,
                   out: str | None = None, batch_size: int = 32, device: str = "cpu",
                   progress: bool = True, lpips=None, fid=None) -> EvalSummary:
    """Decode a store's stored pixel ids and compare with its stored images (`lpips`, `fid`:
    as in `evaluate_folder`)."""
    from tqdm import tqdm

    from pipelines.fsutil import join
    from pipelines.loader_common import lineage_of, resolve_stage
    from pipelines.shards import decode_one, iter_tar_samples
    from pipelines.store import open_store
    from pipelines.verify import output_stages
    from wintok.preprocess import Preprocess, to_uint8
    from wintok.tokenizer import load_tokenizer

    store = open_store(store_root)
    if token_stage is None:
        stages = output_stages(store, ("tokens",))
        if len(stages) != 1:
            raise ValueError(f"{store_root} has token stores {stages}: name one with --tokens")
        token_stage = stages[0]
    token_stage = resolve_stage(store, token_stage, "tokens")
    lineage = lineage_of(store, token_stage)
    tok = load_tokenizer(lineage["checkpoint"]).eval().to(device)
    if tok.identity != lineage["identity"]:
        raise ValueError(f"the checkpoint at {lineage['checkpoint']} is now {tok.identity}, but "
                         f"the tokens were made by {lineage['identity']}")
    pre = Preprocess(**lineage["preprocess"])
    streams, positions = tok.layout.ids_shape
    rows, ids_seen, failed = [], [], []
    commits = store.commits(token_stage)
    rfid = _rfid(fid, device)
    total = sum(r.counts["rows"] for r in commits.values())
    total = min(total, limit) if limit else total
    bar = tqdm(total=total, unit="img", desc="eval", disable=not progress, file=sys.stderr)
    for shard in sorted(commits):
        if limit and len(rows) >= limit:
            break
        with store.fs.open(join(store.stage_dir(token_stage), f"{shard:05d}.parquet"), "rb") as f:
            table = pq.read_table(f, columns=["key", "pixel_ids"])
        want = dict(zip(table.column("key").to_pylist(),
                        np.stack(table.column("pixel_ids").to_numpy(zero_copy_only=False))
                        if table.num_rows else []))
        path = join(store.stage_dir("images"), f"{shard:05d}.tar")
        with store.fs.open(path, "rb") as f:
            samples = [s for s in iter_tar_samples(f, where=path) if s.key in want]
        for chunk in _batched(samples, batch_size):
            if limit:
                chunk = chunk[: max(0, limit - len(rows))]
            if not chunk:
                break
            ids = np.stack([want[s.key].reshape(streams, positions) for s in chunk]).astype(np.int64)
            rec = to_uint8(tok.decode(torch.from_numpy(ids).to(device)))
            ids_seen.append(ids)
            orig = np.stack([decode_one(s, pre) for s in chunk])
            if rfid is not None:
                rfid.add(orig, rec)
            for s, o, r, lp in zip(chunk, orig, rec, _lpips_values(lpips, orig, rec, device)):
                rows.append(_row({"key": s.key, "shard": shard}, o, r, lp))
            bar.update(len(chunk))
    bar.close()
    return _finish(rows, ids_seen, tok.layout, failed, out, rfid)
