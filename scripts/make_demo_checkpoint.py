"""Reproduce the shipped small WinTok checkpoint (wintok/assets/small-64/) from scratch, offline.

    .venv/bin/python scripts/make_demo_checkpoint.py --work /tmp/wintok-train --out wintok/assets/small-64

Steps: build a corpus of crops of scikit-image's sample photos (all but the held-out ones),
serve it on loopback and ingest it (img2dataset), featurize EfficientNet-Lite0 targets, then
`pipelines.train.train` the `small-64` preset with the WinTok objective. Resumable: rerunning
with the same --work continues where it stopped.
"""
from __future__ import annotations

import argparse
import shutil
from pathlib import Path

HELD_OUT = ("coffee", "rocket")  # never trained on: bench/quality.py evaluates on these


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", default="/tmp/wintok-train", help="working directory (resumable)")
    ap.add_argument("--out", default="wintok/assets/small-64", help="where the checkpoint goes")
    ap.add_argument("--images", type=int, default=1024)
    ap.add_argument("--steps", type=int, default=2000)
    ap.add_argument("--threads", type=int, default=1,
                    help="torch threads (1 avoids thread oversubscription on a busy 2-core box)")
    a = ap.parse_args()

    import torch

    torch.set_num_threads(a.threads)
    from pipelines.democorpus import PHOTO_SOURCES, build_demo_corpus
    from pipelines.executor import featurize
    from pipelines.featurize import FeaturizeSpec
    from pipelines.ingest import ingest
    from pipelines.loopback import serve_directory
    from pipelines.train import TrainConfig, train

    work = Path(a.work)
    corpus, store = work / "corpus", work / "store"
    if not (store / "_manifest.json").exists():
        corpus.mkdir(parents=True, exist_ok=True)
        with serve_directory(corpus, hostile=False) as base:
            urls = build_demo_corpus(corpus, base_url=base, n_images=a.images, seed=1,
                                     sources=tuple(s for s in PHOTO_SOURCES if s not in HELD_OUT))
            ingest(str(urls), str(store), shard_size=256, allow_private_network=True, processes=2,
                   threads=16)
    feats = featurize(str(store), FeaturizeSpec(tokenizer=None, teachers=("efficientnet-lite0",)),
                      threads_per_worker=a.threads)
    stage = next(iter(feats.outputs))
    cfg = TrainConfig(preset="small-64", steps=a.steps, batch_size=16, ckpt_every=100)
    result = train(str(store), stage, work / "run", cfg)
    print(result)
    from wintok import load_tokenizer, save_pretrained

    out = Path(a.out)
    if out.exists():
        shutil.rmtree(out)
    # float16 weights: half the size; the identity is that of the rounded model
    save_pretrained(load_tokenizer(result.checkpoint), out, dtype="float16")
    shutil.copy(work / "run" / "train_log.jsonl", out / "train_log.jsonl")
    print(f"checkpoint written to {out}")


if __name__ == "__main__":
    main()
