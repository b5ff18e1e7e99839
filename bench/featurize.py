"""Featurize throughput, side by side in one process on the same images and model.

    .venv/bin/python bench/featurize.py [--images 256] [--preset tiny] [--batch 32] [--repeat 3]

(a) pipeline efficiency: our shard step (read tar + decode + model + write Parquet/Zarr +
    commit) vs the model's forward alone on pre-decoded tensors, same batch size;
(b) host CPU per image for read + decode + write, the model replaced by a no-op (tells how
    many CPU cores one accelerator needs; target <= 2 ms/image);
(c) our step vs a LlamaGen-style extraction loop (batch size 1, one .npy file per image).
Runs are interleaved (a, model, c, a, model, c, ...) and the median of each is reported.
The store is built by real ingest from a loopback server. Tokenizer only (no teacher), so
(a) and (c) measure the tokenization path alone.
"""
from __future__ import annotations

import argparse
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch


def build_store(root: Path, n: int) -> Path:
    from pipelines.democorpus import build_demo_corpus
    from pipelines.ingest import ingest
    from pipelines.loopback import serve_directory

    (root / "corpus").mkdir(parents=True)
    with serve_directory(root / "corpus", hostile=False) as base:
        urls = build_demo_corpus(root / "corpus", base_url=base, n_images=n, seed=0)
        ingest(str(urls), str(root / "store"), shard_size=64, allow_private_network=True,
               progress=False, processes=2, threads=16)
    return root / "store"


def fresh_featurizer(store_root: Path, spec, capacity: int, num_shards: int):
    from pipelines.featurize import ShardFeaturizer, create_output_arrays
    from pipelines.store import open_store

    store = open_store(str(store_root))
    for d in ("tokens", "features"):
        shutil.rmtree(store_root / d, ignore_errors=True)
    feat = ShardFeaturizer(spec, store, capacity=capacity, device="cpu")
    for o in feat.outputs:
        create_output_arrays(store, o, num_shards=num_shards, capacity=capacity)
    return feat, store


def run_pipeline(store_root, spec, shards, capacity, noop: bool = False) -> tuple[float, float, int]:
    """(wall seconds, process CPU seconds, images) for featurizing all shards."""
    feat, _ = fresh_featurizer(store_root, spec, capacity, max(shards) + 1)
    if noop:  # the model replaced by a no-op of the same output shapes
        tok = feat.tokenizer
        from wintok.tokenizer import TokenizerOutput

        def encode(x, precision="fp32"):
            b = x.shape[0]
            n, d = tok.semantic_shape
            return TokenizerOutput(ids=torch.zeros(b, *tok.layout.ids_shape, dtype=torch.long),
                                   semantic=torch.zeros(b, n, d), pooled=torch.zeros(b, d))
        tok.encode = encode
    t0, c0, n = time.perf_counter(), time.process_time(), 0
    for s in shards:
        n += feat.process(s).featurized
    return time.perf_counter() - t0, time.process_time() - c0, n


def decoded_tensors(store_root: Path, shards) -> torch.Tensor:
    from pipelines.shards import decode_one, iter_tar_samples
    from wintok.preprocess import Preprocess, to_tensor

    arrays = []
    for s in shards:
        p = store_root / "images" / f"{s:05d}.tar"
        with open(p, "rb") as f:
            arrays += [decode_one(x, Preprocess()) for x in iter_tar_samples(f, where=str(p))]
    return to_tensor(arrays)


def run_model_only(model, x: torch.Tensor, batch: int) -> float:
    t0 = time.perf_counter()
    for i in range(0, x.shape[0], batch):
        model.encode(x[i:i + batch])
    return time.perf_counter() - t0


def run_llamagen_loop(store_root: Path, shards, model, out_dir: Path) -> tuple[float, int]:
    """LlamaGen extract_codes style: one image at a time, np.save per image."""
    from PIL import Image

    from pipelines.shards import iter_tar_samples
    import io

    shutil.rmtree(out_dir, ignore_errors=True)
    out_dir.mkdir(parents=True)
    t0, n = time.perf_counter(), 0
    for s in shards:
        p = store_root / "images" / f"{s:05d}.tar"
        with open(p, "rb") as f:
            for sample in iter_tar_samples(f, where=str(p)):
                img = Image.open(io.BytesIO(sample.image)).convert("RGB")
                x = torch.from_numpy(np.asarray(img)).permute(2, 0, 1)[None].float() / 127.5 - 1
                out = model.encode(x)
                np.save(out_dir / f"{n}.npy", out.ids.cpu().numpy())
                np.save(out_dir / f"{n}_sem.npy", out.semantic.cpu().numpy())
                n += 1
    return time.perf_counter() - t0, n


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=256)
    ap.add_argument("--preset", default="tiny")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--workdir", default=None)
    a = ap.parse_args()

    from pipelines.featurize import FeaturizeSpec
    from pipelines.store import open_store
    from wintok import WinTok, load_tokenizer, preset, save_pretrained

    root = Path(a.workdir or tempfile.mkdtemp(prefix="bench-featurize-"))
    store_root = root / "store"
    if not store_root.exists():
        build_store(root, a.images)
    torch.manual_seed(0)
    ckpt = save_pretrained(WinTok(preset(a.preset)), root / f"ckpt-{a.preset}")
    spec = FeaturizeSpec(tokenizer=str(ckpt), teachers=(), batch_size=a.batch, decode_threads=2)
    store = open_store(str(store_root))
    shards = store.list_committed("images")
    capacity = 64
    model = load_tokenizer(ckpt).eval()
    x = decoded_tensors(store_root, shards)
    n = x.shape[0]
    print(f"{n} images in {len(shards)} shards, preset {a.preset}, batch {a.batch}, "
          f"torch threads {torch.get_num_threads()}, CPU, float32")

    ours, model_only, llama, host_cpu = [], [], [], []
    for _ in range(a.repeat):
        wall, _, k = run_pipeline(store_root, spec, shards, capacity)
        assert k == n
        ours.append(n / wall)
        model_only.append(n / run_model_only(model, x, a.batch))
        wall, k = run_llamagen_loop(store_root, shards, model, root / "llamagen")
        llama.append(k / wall)
        _, cpu, k = run_pipeline(store_root, spec, shards, capacity, noop=True)
        host_cpu.append(cpu / k * 1000)
    med = statistics.median
    print(f"\n{'measure':<52}{'value':>12}{'target':>12}")
    rows = [
        ("(a) our stage, images/s", f"{med(ours):.1f}", ""),
        ("    model forward alone on decoded tensors, images/s", f"{med(model_only):.1f}", ""),
        ("    pipeline efficiency (stage / model alone)", f"{med(ours) / med(model_only):.2f}x", ">= 0.95x"),
        ("(b) host CPU, read+decode+write, ms/image (no-op model)", f"{med(host_cpu):.2f}", "<= 2.00"),
        ("(c) LlamaGen-style loop (batch 1, .npy per image), img/s", f"{med(llama):.1f}", ""),
        ("    our stage / LlamaGen-style loop", f"{med(ours) / med(llama):.2f}x", ">= 5x"),
    ]
    for name, v, t in rows:
        print(f"{name:<52}{v:>12}{t:>12}")
    print(f"\nraw runs: ours {[round(v, 1) for v in ours]}, model {[round(v, 1) for v in model_only]}, "
          f"llamagen {[round(v, 1) for v in llama]}, host ms {[round(v, 2) for v in host_cpu]}")
    print(f"workdir {root}")


if __name__ == "__main__":
    main()
