"""Shared by the loader/publish/export tests: ONE featurized store per pytest process."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from featurize_support import make_tokenizer
from pipelines.democorpus import build_demo_corpus
from pipelines.executor import featurize
from pipelines.ingest import ingest
from pipelines.loopback import serve_directory
from pipelines.featurize import FeaturizeSpec
from pipelines.publish import publish

N_IMAGES, SHARD_SIZE = 48, 16


@dataclass(frozen=True)
class Built:
    store: Path  # images + tokens + features + published (packed)
    tokens: str  # 'tokens/<lineage>'
    features: str  # 'features/<lineage>'
    ckpt: Path


_BUILT: dict[str, Built] = {}


def make_captioned_store(root: Path) -> Path:
    """Like featurize_support.make_image_store, but keeping the caption and uid columns."""
    corpus = root / "corpus"
    corpus.mkdir(parents=True)
    with serve_directory(corpus, hostile=False) as base:
        urls = build_demo_corpus(corpus, base_url=base, n_images=N_IMAGES, seed=0)
        ingest(str(urls), str(root / "store"), caption_col="caption", uid_col="uid",
               shard_size=SHARD_SIZE, allow_private_network=True, progress=False, processes=1, threads=8)
    return root / "store"


def built_store(tmp_path_factory) -> Built:
    """Ingest 48 demo images (3 shards), featurize (tiny WinTok + EfficientNet-Lite0), publish."""
    if "store" not in _BUILT:
        root = tmp_path_factory.mktemp("loaders")
        store = make_captioned_store(root)
        ckpt = make_tokenizer(root)
        summary = featurize(str(store), FeaturizeSpec(tokenizer=str(ckpt), batch_size=16),
                            progress=False, num_workers=1)
        assert summary.ok, summary
        tokens = next(s for s in summary.outputs if s.startswith("tokens/"))
        features = next(s for s in summary.outputs if s.startswith("features/"))
        publish(str(store), tokens)
        _BUILT["store"] = Built(store, tokens, features, ckpt)
    return _BUILT["store"]


def drain(loader) -> list[dict]:
    """All batches of one pass (keys and ids as plain lists, comparable with ==)."""
    return [{"key": b["key"], "ids": b["ids"].tolist()} for b in loader]
