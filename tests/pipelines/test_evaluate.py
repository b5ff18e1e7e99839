"""Reconstruction metrics over a store (stored ids) and over an image folder (encode+decode)."""
from __future__ import annotations

import numpy as np
import pyarrow.parquet as pq
import pytest
import ray
import torch
from PIL import Image
from skimage import data

from featurize_support import make_image_store, make_tokenizer
from pipelines.evaluate import evaluate_folder, evaluate_store, image_metrics
from pipelines.executor import featurize
from pipelines.featurize import FeaturizeSpec
from wintok import load_tokenizer
from wintok.preprocess import Preprocess, load_for_tokenizer, to_uint8


def test_image_metrics_golden():
    a = np.zeros((32, 32, 3), np.uint8)
    b = a.copy()
    b[0, 0, 0] = 255  # one pixel off by 255: mse = 255^2 / 3072
    psnr, ssim = image_metrics(a, b)
    assert psnr == pytest.approx(10 * np.log10(3072), abs=1e-9)
    assert image_metrics(a, a) == (100.0, 1.0)
    assert 0 < ssim < 1


@pytest.fixture(scope="module")
def tokens_store(tmp_path_factory):
    root = tmp_path_factory.mktemp("eval")
    store, ckpt = make_image_store(root, n_images=20, shard_size=8), make_tokenizer(root)
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        featurize(str(store), FeaturizeSpec(tokenizer=str(ckpt), teachers=()), progress=False)
    finally:
        ray.shutdown()
    return store, ckpt


def test_evaluate_store_matches_decoding_by_hand(tokens_store, tmp_path):
    store, ckpt = tokens_store
    s = evaluate_store(str(store), out=str(tmp_path / "per_image.parquet"), progress=False)
    assert s.images == 20 and not s.failed and len(s.codebook_usage_pct) == 4
    rows = pq.read_table(tmp_path / "per_image.parquet").to_pylist()
    assert s.psnr == pytest.approx(np.mean([r["psnr"] for r in rows]))
    assert 0 < s.codebook_usage_pct[0] <= 100


def test_evaluate_folder_encodes_then_decodes(tokens_store, tmp_path):
    _, ckpt = tokens_store
    folder = tmp_path / "imagenet" / "n02123045"  # ImageNet-val layout: class folders
    folder.mkdir(parents=True)
    Image.fromarray(data.chelsea()).save(folder / "cat.JPEG")
    Image.fromarray(data.coffee()).save(tmp_path / "imagenet" / "coffee.png")
    (tmp_path / "imagenet" / "broken.jpg").write_bytes(b"nope")
    s = evaluate_folder(tmp_path / "imagenet", ckpt, progress=False)
    assert s.images == 2 and [f[0] for f in s.failed] == ["broken.jpg"]
    tok = load_tokenizer(ckpt)
    x, _ = load_for_tokenizer(folder / "cat.JPEG", Preprocess(size=tok.image_size))
    rec = to_uint8(tok.decode(tok.encode(x).ids))[0]
    want = image_metrics(to_uint8(x)[0], rec)
    assert s.per_image is None  # no --out: summary only
    evaluate_folder(tmp_path / "imagenet", ckpt, progress=False, out=str(tmp_path / "f.parquet"))
    cat = [r for r in pq.read_table(tmp_path / "f.parquet").to_pylist() if r["image"].endswith("cat.JPEG")][0]
    assert (cat["psnr"], cat["ssim"]) == pytest.approx(want)


def test_evaluate_store_rfid_is_over_stored_images_and_decoded_ids(tokens_store):
    """rFID of a store compares the stored images (preprocessed as featurize did) with the
    decoded stored ids; checked against the same pairs fed to RFID by hand."""
    from fid_support import deterministic_weights
    from pipelines.fid import RFID, InceptionFID
    from pipelines.loader_common import lineage_of
    from pipelines.shards import decode_one, iter_tar_samples
    from pipelines.store import open_store
    from pipelines.verify import output_stages

    store, ckpt = tokens_store
    net = InceptionFID()
    net.load_state_dict(deterministic_weights({k: tuple(v.shape) for k, v in net.state_dict().items()}))
    s = evaluate_store(str(store), limit=6, progress=False, fid=net)
    st = open_store(str(store))
    [stage] = output_stages(st, ("tokens",))
    table = pq.read_table(f"{store}/{stage}/00000.parquet", columns=["key", "pixel_ids"])
    lineage = lineage_of(st, stage)
    tok = load_tokenizer(ckpt)
    with open(f"{store}/images/00000.tar", "rb") as f:
        samples = {x.key: x for x in iter_tar_samples(f, where="00000.tar")}
    keys = table.column("key").to_pylist()[:6]
    ids = np.stack(table.column("pixel_ids").to_numpy(zero_copy_only=False)[:6]).reshape(6, 4, -1)
    orig = np.stack([decode_one(samples[k], Preprocess(**lineage["preprocess"])) for k in keys])
    by_hand = RFID(net)
    by_hand.add(orig, to_uint8(tok.decode(torch.from_numpy(ids.astype(np.int64)))))
    assert s.images == 6 and s.rfid == pytest.approx(by_hand.value(), rel=1e-6)
