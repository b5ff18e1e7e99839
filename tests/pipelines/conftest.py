"""Fixtures: a demo corpus (real photos + hostile files) served over loopback HTTP."""

import pytest

from pipelines.democorpus import build_demo_corpus
from pipelines.loopback import serve_directory


@pytest.fixture(scope="module")
def hostile_corpus(tmp_path_factory):
    """(base_url, urls.parquet, corpus dir) with 150 photos and every hostile case; server lives per module."""
    d = tmp_path_factory.mktemp("corpus")
    with serve_directory(d, stall_s=3.0) as base_url:
        urls = build_demo_corpus(d, base_url=base_url, n_images=150, seed=0, hostile=True)
        yield base_url, urls, d
