"""Benchmark: images/s of our ingest vs img2dataset.download alone, same URL list, same loopback server.

Run: .venv/bin/python bench/ingest.py [--n 400] [--shard-size 100] [--processes 2] [--threads 32]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from pipelines.democorpus import build_demo_corpus  # noqa: E402
from pipelines.ingest import ingest, run_img2dataset  # noqa: E402
from pipelines.loopback import serve_directory  # noqa: E402


def main() -> None:
    """Time both paths and print images/s and our overhead ratio."""
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--n", type=int, default=400)
    ap.add_argument("--shard-size", type=int, default=100)
    ap.add_argument("--processes", type=int, default=2)
    ap.add_argument("--threads", type=int, default=32)
    args = ap.parse_args()
    work = tempfile.mkdtemp(prefix="bench-ingest-")
    with serve_directory(os.path.join(work, "corpus") if os.makedirs(os.path.join(work, "corpus")) is None
                         else None) as base:
        urls = str(build_demo_corpus(os.path.join(work, "corpus"), base_url=base, n_images=args.n, seed=0))

        t = time.perf_counter()
        run_img2dataset(url_list=urls, input_format="parquet", url_col="url", caption_col="caption",
                        output_folder=os.path.join(work, "plain"), output_format="webdataset", image_size=256,
                        resize_mode="center_crop", processes_count=args.processes, thread_count=args.threads,
                        number_sample_per_shard=args.shard_size, timeout=10, compute_hash="sha256",
                        min_image_size=32, max_image_area=40_000_000, max_aspect_ratio=10.0,
                        enable_wandb=False)
        plain_s = time.perf_counter() - t

        t = time.perf_counter()
        summary = ingest(urls, os.path.join(work, "store"), caption_col="caption", uid_col="uid",
                         shard_size=args.shard_size, processes=args.processes, threads=args.threads,
                         allow_private_network=True, progress=False)
        ours_s = time.perf_counter() - t
    assert summary.stored == args.n, summary
    print(f"images: {args.n}, shard_size {args.shard_size}, processes {args.processes}, threads {args.threads}")
    print(f"img2dataset.download alone: {plain_s:6.2f} s  {args.n / plain_s:7.1f} images/s")
    print(f"wintok ingest (same list):  {ours_s:6.2f} s  {args.n / ours_s:7.1f} images/s")
    print(f"overhead ratio (ours / img2dataset time): {ours_s / plain_s:.2f}")


if __name__ == "__main__":
    main()
