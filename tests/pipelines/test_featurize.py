"""Featurize on a local Ray: stored outputs equal the models' own outputs, once per sample."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
import zarr

from featurize_support import (copy_store, data_files, make_image_store, make_tokenizer,
                               read_parquet_rows, shard_images)
from pipelines.executor import featurize
from pipelines.featurize import FeaturizeSpec, dequantize_int8, quantize_int8
from pipelines.verify import verify_store
from schemas.vectors import bits_to_float32
from wintok import load_tokenizer
from wintok.preprocess import to_tensor
from wintok.teachers import build_teacher

BATCH = 8


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    root = tmp_path_factory.mktemp("feat")
    return make_image_store(root, n_images=40, shard_size=16), make_tokenizer(root)


@pytest.fixture(scope="module")
def done(base, local_ray, tmp_path_factory):
    """One featurize run (tokens as float16 + EfficientNet-Lite0 features) on a copy."""
    images, ckpt = base
    store = copy_store(images, tmp_path_factory.mktemp("run") / "store")
    spec = FeaturizeSpec(tokenizer=str(ckpt), batch_size=BATCH)
    summary = featurize(str(store), spec, progress=False)
    return store, ckpt, summary


def stage_of(summary, kind):
    return next(s for s in summary.outputs if s.startswith(kind + "/"))


def test_every_committed_image_appears_exactly_once(done):
    store, _, summary = done
    assert summary.ok and summary.shards_done == 3 and summary.featurized == 40
    status = pq.read_table(sorted(Path(store, "images").glob("0*.parquet"))).to_pandas()
    stored_keys = sorted(status[status.status == "stored"].key)
    for kind in ("tokens", "features"):
        rows = read_parquet_rows(store, stage_of(summary, kind))
        keys = rows.column("key").to_pylist()
        assert sorted(keys) == stored_keys and len(set(keys)) == len(keys)
        z = zarr.open_group(str(Path(store, stage_of(summary, kind), "zarr")), mode="r")
        valid = z["valid"][:]
        assert valid.sum() == 40 and sorted(k for k in z["key"][:] if k) == stored_keys


def test_stored_pixel_ids_equal_model_encode(done):
    store, ckpt, summary = done
    model = load_tokenizer(ckpt)
    stage = stage_of(summary, "tokens")
    rows = read_parquet_rows(store, stage).to_pandas().set_index("key")
    z = zarr.open_group(str(Path(store, stage, "zarr")), mode="r")
    cap = z.attrs["capacity"]
    for shard in range(3):
        keys, pixels = shard_images(store, shard)
        for start in range(0, len(keys), BATCH):
            out = model.encode(to_tensor(list(pixels[start:start + BATCH])))
            for j, key in enumerate(keys[start:start + BATCH]):
                want = out.ids[j].numpy().astype(np.uint16)
                got = np.asarray(rows.loc[key, "pixel_ids"], np.uint16).reshape(4, 256)
                assert np.array_equal(got, want), key
                slot = shard * cap + start + j
                assert z["key"][slot] == key
                assert np.array_equal(z["pixel_ids"][slot], want)
                sem = bits_to_float32(np.asarray(rows.loc[key, "semantic"], np.uint16), "float16")
                np.testing.assert_allclose(sem.reshape(out.semantic[j].shape),
                                           out.semantic[j].numpy(), rtol=1e-3, atol=1e-3)


def test_stored_teacher_embeddings_equal_teacher(done):
    store, _, summary = done
    teacher = build_teacher("efficientnet-lite0")
    rows = read_parquet_rows(store, stage_of(summary, "features")).to_pandas().set_index("key")
    keys, pixels = shard_images(store, 1)
    for start in range(0, len(keys), BATCH):
        want = teacher.embed(to_tensor(list(pixels[start:start + BATCH]))).pooled.numpy()
        got = np.stack([np.asarray(rows.loc[k, "pooled"], np.float32) for k in keys[start:start + BATCH]])
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_lineage_and_manifest(done):
    store, ckpt, summary = done
    tok = load_tokenizer(ckpt)
    stage = stage_of(summary, "tokens")
    assert stage.startswith(f"tokens/{tok.identity}-")
    assert stage_of(summary, "features").startswith("features/efficientnet-lite0-f21567de38e4-")
    manifest = json.loads(Path(store, "_manifest.json").read_text())
    lineage = manifest["stages"][stage]["lineage"]
    assert lineage["identity"] == tok.identity and lineage["layout"]["vocab_per_stream"] == 4096
    assert manifest["stages"][stage]["summary"]["counts"]["rows"] == 40
    assert any(r["stage"] == stage and r.get("versions") for r in manifest["runs"])


def test_rerun_skips_committed_and_other_checkpoint_writes_beside(done, base, tmp_path):
    store, ckpt, summary = done
    before = data_files(store, "tokens")
    again = featurize(str(store), FeaturizeSpec(tokenizer=str(ckpt), batch_size=BATCH), progress=False)
    assert again.shards_skipped == 3 and again.shards_done == 0 and data_files(store, "tokens") == before
    other = make_tokenizer(tmp_path, seed=1)
    res = featurize(str(store), FeaturizeSpec(tokenizer=str(other), teachers=(), batch_size=BATCH),
                    progress=False)
    assert res.shards_done == 3
    assert len(list(Path(store, "tokens").iterdir())) == 2  # beside, never over
    assert data_files(store, "tokens/" + stage_of(summary, "tokens").split("/")[1]) == \
        {k: v for k, v in before.items()}
    assert verify_store(str(store)).ok


def test_int8_semantic_tokens_keep_cosine(done, tmp_path):
    store, ckpt, summary = done
    s2 = copy_store(Path(store), tmp_path / "store")
    res = featurize(str(s2), FeaturizeSpec(tokenizer=str(ckpt), teachers=(), semantic_dtype="int8",
                                           batch_size=BATCH), progress=False)
    int8_stage = next(s for s in res.outputs if s.startswith("tokens/"))
    f16 = read_parquet_rows(store, stage_of(summary, "tokens")).to_pandas().set_index("key")
    i8 = read_parquet_rows(s2, int8_stage).to_pandas().set_index("key")
    model = load_tokenizer(ckpt)
    n, d = model.semantic_shape
    cos = []
    keys, pixels = shard_images(store, 0)
    ref = model.encode(to_tensor(list(pixels[:BATCH]))).semantic.numpy()
    for j, key in enumerate(keys[:BATCH]):
        q = np.asarray(i8.loc[key, "semantic"], np.int8).reshape(n, d)
        scale = np.asarray(i8.loc[key, "semantic_scale"], np.float32)
        x = dequantize_int8(q, scale)
        cos += list((x * ref[j]).sum(-1) / np.linalg.norm(x, axis=-1) / np.linalg.norm(ref[j], axis=-1))
        assert np.array_equal(np.asarray(i8.loc[key, "pixel_ids"]), np.asarray(f16.loc[key, "pixel_ids"]))
    assert min(cos) > 0.999, min(cos)


def test_quantize_int8_roundtrip_bounds():
    x = np.random.default_rng(0).normal(size=(5, 7, 64)).astype(np.float32)
    q, s = quantize_int8(x)
    assert q.dtype == np.int8 and s.shape == (5, 7)
    assert np.abs(dequantize_int8(q, s) - x).max() <= s.max() / 2 + 1e-7
    q0, s0 = quantize_int8(np.zeros((1, 3), np.float32))
    assert (q0 == 0).all() and (s0 == 0).all()


def test_verify_catches_a_flipped_byte_in_any_data_file(done, tmp_path):
    store, _, _ = done
    assert verify_store(str(store)).ok
    s2 = copy_store(Path(store), tmp_path / "store")
    files = [p for p in sorted(s2.rglob("*")) if p.is_file() and "_commits" not in p.parts
             and p.name not in ("_manifest.json", "zarr.json") and "_work" not in p.parts]
    assert any("tokens" in p.parts for p in files) and any(p.suffix == ".tar" for p in files)
    rng = np.random.default_rng(0)
    for p in files:  # every committed data file: tars, status tables, Parquet, Zarr chunks
        parts = p.relative_to(s2).parts
        n = 1 if parts[0] == "images" else 2
        stage, name = "/".join(parts[:n]), "/".join(parts[n:])
        blob = bytearray(p.read_bytes())
        i = int(rng.integers(len(blob)))
        blob[i] ^= 0x01
        p.write_bytes(bytes(blob))
        report = verify_store(str(s2))
        assert any(pr.startswith(stage + " shard ") and f" {name}: sha256" in pr
                   for pr in report.problems), (stage, name, report.problems)
        blob[i] ^= 0x01
        p.write_bytes(bytes(blob))
    assert verify_store(str(s2)).ok


def test_truncated_image_shard_fails_that_shard_only(base, local_ray, tmp_path):
    images, ckpt = base
    s2 = copy_store(images, tmp_path / "store")
    tar = s2 / "images" / "00001.tar"
    tar.write_bytes(tar.read_bytes()[: tar.stat().st_size // 2])
    res = featurize(str(s2), FeaturizeSpec(tokenizer=str(ckpt), teachers=(), batch_size=BATCH),
                    progress=False)
    assert res.shards_done == 2 and list(res.shards_failed) == [1]
    assert "truncated or corrupt" in res.shards_failed[1]


def rewrite_image_shard(store_root: Path, shard: int, corrupt) -> list[str]:
    """Re-commit an image shard whose selected members are replaced by non-image bytes."""
    import io
    import tarfile

    from pipelines.store import open_store

    path = Path(store_root, "images", f"{shard:05d}.tar")
    src = tarfile.open(path)
    members = [(m, src.extractfile(m).read()) for m in src.getmembers()]
    bad = []
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as out:
        for i, (m, data) in enumerate(members):
            key = m.name.split(".")[0]
            if m.name.endswith(".jpg") and corrupt(len({k.name.split('.')[0] for k, _ in members[:i + 1]}) - 1):
                data, bad = b"not a jpeg at all", bad + [key]
            m.size = len(data)
            out.addfile(m, io.BytesIO(data))
    path.write_bytes(buf.getvalue())
    store = open_store(str(store_root))
    rec = store.commits("images")[shard]
    store.commit_shard("images", shard, list(rec.files), rec.counts, extra=rec.extra)
    return bad


def test_undecodable_samples_are_recorded_and_the_rest_processed(base, local_ray, tmp_path):
    images, ckpt = base
    s2 = copy_store(images, tmp_path / "store")
    bad0 = rewrite_image_shard(s2, 0, corrupt=lambda i: i % 2 == 1)  # every other sample
    bad2 = rewrite_image_shard(s2, 2, corrupt=lambda i: True)  # the whole shard
    res = featurize(str(s2), FeaturizeSpec(tokenizer=str(ckpt), batch_size=BATCH, teacher_patches=True),
                    progress=False)
    assert res.ok and res.decode_failed == len(bad0) + len(bad2) == 8 + 8
    stage = next(s for s in res.outputs if s.startswith("tokens/"))
    commits = {int(p.stem): json.loads(p.read_text()) for p in Path(s2, stage, "_commits").glob("*.json")}
    assert commits[0]["counts"] == {"samples": 16, "rows": 8, "decode_failed": 8}
    assert commits[2]["counts"] == {"samples": 8, "rows": 0, "decode_failed": 8}
    assert sorted(f[0] for f in commits[0]["extra"]["failures"]) == sorted(bad0)
    assert all(f[2].startswith("decode_error:") for f in commits[0]["extra"]["failures"])
    rows = read_parquet_rows(s2, stage)
    assert not set(rows.column("key").to_pylist()) & set(bad0 + bad2)
    assert rows.num_rows == 40 - 16
    assert verify_store(str(s2)).ok
    # teacher patch embeddings (EfficientNet-Lite0: 7x7 x 1280) stored as float16
    feats = read_parquet_rows(s2, next(s for s in res.outputs if s.startswith("features/")))
    keys, pixels = shard_images(s2, 1)
    want = build_teacher("efficientnet-lite0").embed(to_tensor(list(pixels[:BATCH])), patches=True)
    got = feats.to_pandas().set_index("key")
    for j, key in enumerate(keys[:BATCH]):
        patch = bits_to_float32(np.asarray(got.loc[key, "patch"], np.uint16), "float16").reshape(49, 1280)
        np.testing.assert_allclose(patch, want.patches[j].numpy(), rtol=2e-3, atol=2e-3)
    z = zarr.open_group(str(Path(s2, next(s for s in res.outputs if s.startswith("features/")), "zarr")), mode="r")
    assert z["patch"].shape[1:] == (49, 1280)


def test_featurize_runs_unchanged_with_a_wetok_checkpoint(base, local_ray, tmp_path):
    from wintok.preprocess import Preprocess
    from wintok.wetok import WeTok, preset as wetok_preset
    from wintok import save_pretrained

    images, _ = base
    s2 = copy_store(images, tmp_path / "store")
    torch.manual_seed(0)
    wetok = WeTok(wetok_preset("tiny")).eval()
    ckpt = save_pretrained(wetok, tmp_path / "wetok")
    res = featurize(str(s2), FeaturizeSpec(tokenizer=str(ckpt), teachers=(), batch_size=BATCH),
                    progress=False)
    assert res.ok and res.featurized == 40
    stage = next(iter(res.outputs))
    assert stage.startswith(f"tokens/{wetok.identity}-")
    assert res.outputs[stage]["layout"] == wetok.layout.to_dict()
    rows = read_parquet_rows(s2, stage)
    assert "semantic" not in rows.column_names
    got = rows.to_pandas().set_index("key")
    keys, pixels = shard_images(s2, 0, size=wetok.image_size)  # resized as featurize does
    ids = wetok.encode(to_tensor(list(pixels))).ids.numpy()
    for j, key in enumerate(keys):
        assert np.array_equal(np.asarray(got.loc[key, "pixel_ids"]).reshape(ids[j].shape), ids[j])
    z = zarr.open_group(str(Path(s2, stage, "zarr")), mode="r")
    assert z["pixel_ids"].shape[1:] == wetok.layout.ids_shape and "semantic" not in z


def test_hflip_variant_is_stored_and_served_deterministically(base, local_ray, tmp_path):
    from pipelines.loaders import ResumableLoader, ZarrTokenDataset

    images, ckpt = base
    s2 = copy_store(images, tmp_path / "store")
    res = featurize(str(s2), FeaturizeSpec(tokenizer=str(ckpt), teachers=(), batch_size=BATCH,
                                           hflip=True), progress=False)
    stage = next(iter(res.outputs))
    assert res.outputs[stage]["hflip"] is True
    model = load_tokenizer(ckpt)
    rows = read_parquet_rows(s2, stage).to_pandas().set_index("key")
    keys, pixels = shard_images(s2, 0)
    x = to_tensor(list(pixels[:BATCH]))
    plain, mirrored = model.encode(x).ids.numpy(), model.encode(x.flip(-1)).ids.numpy()
    for j, key in enumerate(keys[:BATCH]):
        assert np.array_equal(np.asarray(rows.loc[key, "pixel_ids"]).reshape(4, 256), plain[j])
        assert np.array_equal(np.asarray(rows.loc[key, "pixel_ids_hflip"]).reshape(4, 256), mirrored[j])
    # the loader serves one stored variant per sample, the same for any number of workers
    want = {k: (plain[j], mirrored[j]) for j, k in enumerate(keys[:BATCH])}
    runs = []
    for workers in (0, 2):
        ds = ZarrTokenDataset(str(s2), stage, batch_size=8, seed=5, augment=("hflip",),
                              cache_dir=str(tmp_path / f"cache{workers}"), captions=False)
        runs.append([(b["key"], b["ids"].numpy()) for b in ResumableLoader(ds, num_workers=workers)])
    assert [k for k, _ in runs[0]] == [k for k, _ in runs[1]]
    assert all(np.array_equal(a, b) for (_, a), (_, b) in zip(runs[0], runs[1]))
    served = {k: ids for keys_, batch in runs[0] for k, ids in zip(keys_, batch)}
    variants = [next(v for v in (0, 1) if np.array_equal(served[k], want[k][v])) for k in want]
    assert 0 < sum(variants) < len(variants)  # both variants occur
    plain_stage = next(iter(featurize(str(s2), FeaturizeSpec(tokenizer=str(ckpt), teachers=(),
                                                             batch_size=BATCH), progress=False).outputs))
    assert plain_stage != stage  # hflip is part of the recipe: its own lineage
    with pytest.raises(ValueError, match="no stored hflip variant"):
        ZarrTokenDataset(str(s2), plain_stage, augment=("hflip",), cache_dir=str(tmp_path / "c"))
