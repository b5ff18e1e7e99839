"""A store on S3: ingest, featurize (Ray workers), verify, publish and both loaders against a
loopback S3 (moto's server), through `storage_options` and through the standard AWS
environment variables (the CLI's way). Same tokens as the same images in a local store."""
from __future__ import annotations

import logging

import numpy as np
import pyarrow.parquet as pq
import pytest
import ray
from click.testing import CliRunner

from featurize_support import make_image_store, make_tokenizer
from pipelines.democorpus import build_demo_corpus
from pipelines.executor import featurize
from pipelines.featurize import FeaturizeSpec
from pipelines.ingest import ingest
from pipelines.loaders import StreamingTokenDataset, ZarrTokenDataset
from pipelines.loopback import serve_directory
from pipelines.publish import publish
from pipelines.store import open_store
from pipelines.verify import output_stages, verify_store

REGION = "eu-west-1"  # moto refuses a location constraint of us-east-1


@pytest.fixture(scope="module")
def s3():
    """A loopback S3 server for the module: (endpoint URL, storage_options)."""
    pytest.importorskip("s3fs")
    server_mod = pytest.importorskip("moto.server")
    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # one line per request otherwise
    server = server_mod.ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    url = f"http://{host}:{port}"
    opts = {"key": "testing", "secret": "testing",
            "client_kwargs": {"endpoint_url": url, "region_name": REGION}}
    import s3fs

    s3fs.S3FileSystem(**opts).mkdir("bucket", region_name=REGION)
    yield url, opts
    server.stop()


@pytest.fixture(scope="module")
def s3_store(s3, tmp_path_factory):
    """20 demo photos ingested straight into s3://bucket/store, then featurized there."""
    _, opts = s3
    root = tmp_path_factory.mktemp("s3")
    corpus = root / "corpus"
    corpus.mkdir()
    with serve_directory(corpus, hostile=False) as base:
        urls = build_demo_corpus(corpus, base_url=base, n_images=20, seed=0)
        r = ingest(str(urls), "s3://bucket/store", shard_size=8, allow_private_network=True,
                   progress=False, processes=1, threads=8, storage_options=opts)
    assert (r.stored, r.failed, r.shards_total) == (20, 0, 3)
    ckpt = make_tokenizer(root)
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        s = featurize("s3://bucket/store", FeaturizeSpec(tokenizer=str(ckpt), teachers=()),
                      progress=False, storage_options=opts)
        again = featurize("s3://bucket/store", FeaturizeSpec(tokenizer=str(ckpt), teachers=()),
                          progress=False, storage_options=opts)
    finally:
        ray.shutdown()
    assert (s.shards_done, s.featurized) == (3, 20)
    assert (again.shards_done, again.shards_skipped) == (0, 3)  # commit markers read back from S3
    return root, ckpt


def test_featurized_store_on_s3_verifies_and_matches_a_local_store(s3, s3_store, tmp_path):
    _, opts = s3
    root, ckpt = s3_store
    report = verify_store("s3://bucket/store", storage_options=opts)
    assert not report.problems and report.stages["images"]["shards"] == 3
    store = open_store("s3://bucket/store", storage_options=opts)
    [stage] = output_stages(store, ("tokens",))
    # the same photos in a local store give the same pixel ids, key by key
    local = make_image_store(tmp_path, n_images=20, shard_size=8)
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        featurize(str(local), FeaturizeSpec(tokenizer=str(ckpt), teachers=()), progress=False)
    finally:
        ray.shutdown()

    def ids_by_key(fs_open, base):
        out = {}
        for shard in range(3):
            with fs_open(f"{base}/{stage}/{shard:05d}.parquet", "rb") as f:
                t = pq.read_table(f, columns=["key", "pixel_ids"])
            out.update(zip(t.column("key").to_pylist(),
                           map(np.asarray, t.column("pixel_ids").to_numpy(zero_copy_only=False))))
        return out

    remote = ids_by_key(store.fs.open, store.path)
    here = ids_by_key(open, str(local))
    assert len(remote) == 20 and remote.keys() == here.keys()
    assert all(np.array_equal(remote[k], here[k]) for k in remote)


def test_publish_and_both_loaders_read_from_s3(s3, s3_store):
    _, opts = s3
    root, _ = s3_store
    store = open_store("s3://bucket/store", storage_options=opts)
    [stage] = output_stages(store, ("tokens",))
    assert publish(store, stage).samples == 20
    z = ZarrTokenDataset("s3://bucket/store", stage, batch_size=4, storage_options=opts,
                         cache_dir=str(root / "cache"))
    st = StreamingTokenDataset("s3://bucket/store", stage, batch_size=4, storage_options=opts)
    by_zarr = {k: i for b in z for k, i in zip(b["key"], b["ids"].numpy())}
    by_stream = {k: i for b in st for k, i in zip(b["key"], b["ids"].numpy())}
    assert len(by_zarr) == 20 and by_zarr.keys() == by_stream.keys()
    assert all(np.array_equal(by_zarr[k], by_stream[k]) for k in by_zarr)
    assert not verify_store("s3://bucket/store", storage_options=opts).problems


def test_cli_reaches_s3_through_the_aws_environment(s3, s3_store, monkeypatch):
    from flows.cli import cli

    url, _ = s3
    for k, v in {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                 "AWS_ENDPOINT_URL": url, "AWS_DEFAULT_REGION": REGION}.items():
        monkeypatch.setenv(k, v)
    r = CliRunner().invoke(cli, ["status", "s3://bucket/store"])
    assert r.exit_code == 0, r.output
    assert "20" in r.output
    r = CliRunner().invoke(cli, ["verify", "s3://bucket/store"])
    assert r.exit_code == 0, r.output
