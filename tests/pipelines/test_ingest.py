"""Ingest with real img2dataset against a loopback server: exact accounting of every hostile case."""

import io
import json
import os
import shutil
from collections import Counter

import pyarrow.parquet as pq
import pytest
import webdataset as wds
from PIL import Image

from pipelines.ingest import ingest, read_status, read_url_list, retry_failed
from pipelines.store import open_store

# What each hostile case ends as: (status, reason, http_status). Decided by img2dataset/OpenCV 4.14.
EXPECTED = {
    "http_404": ("failed", "http_error", 404),
    "http_500": ("failed", "http_error", 500),
    "stall": ("failed", "timeout", None),
    "flaky_503": ("failed", "http_error", 503),
    "truncated_jpeg": ("failed", "decode_error", None),  # OpenCV refuses a JPEG cut at 60%
    "header_only_jpeg": ("failed", "decode_error", None),
    "not_an_image": ("failed", "decode_error", None),
    "bomb_png": ("failed", "too_large", None),  # refused by OPENCV_IO_MAX_IMAGE_PIXELS before decoding
    "tiny_1x1": ("failed", "too_small", None),
    "grayscale": ("stored", None, None),
    "cmyk_jpeg": ("stored", None, None),  # converted to BGR by libjpeg
    "alpha_png": ("stored", None, None),  # composited on white by img2dataset
    "png_16bit": ("stored", None, None),
    "animated_gif": ("stored", None, None),  # first frame
    "exif_rotated": ("stored", None, None),  # stored as encoded (orientation NOT applied; exif kept in .json)
    "duplicate_a": ("stored", None, None),
    "duplicate_b": ("failed", "duplicate", None),
    "refused_scheme": ("failed", "refused_url", None),
    "refused_malformed": ("failed", "refused_url", None),
}
KW = dict(caption_col="caption", uid_col="uid", shard_size=25, processes=1, threads=16, timeout=1.5,
          allow_private_network=True, progress=False)


@pytest.fixture(scope="module")
def ingested(hostile_corpus, tmp_path_factory):
    _, urls, _ = hostile_corpus
    root = str(tmp_path_factory.mktemp("store") / "store")
    summary = ingest(str(urls), root, **KW)
    return summary, root, urls


def _final_with_cases(root, urls):
    status = read_status(root).to_pylist()
    cases = pq.read_table(urls).column("case").to_pylist()
    assert [r["row_id"] for r in status] == list(range(len(cases)))
    return [dict(r, case=c) for r, c in zip(status, cases)]


def test_every_hostile_case_ends_exactly_as_expected(ingested):
    summary, root, urls = ingested
    rows = _final_with_cases(root, urls)
    got = {r["case"]: (r["status"], r["reason"], r["http_status"]) for r in rows if r["case"] != "photo"}
    assert got == EXPECTED
    photos = [r for r in rows if r["case"] == "photo"]
    assert len(photos) == 150 and all(r["status"] == "stored" for r in photos)
    by_case = {r["case"]: r for r in rows}
    assert by_case["duplicate_b"]["duplicate_of"] == by_case["duplicate_a"]["key"]
    assert by_case["duplicate_b"]["sha256"] == by_case["duplicate_a"]["sha256"]
    assert "CV_IO_MAX_IMAGE_PIXELS" in by_case["bomb_png"]["detail"]
    assert "scheme 'file' not allowed" in by_case["refused_scheme"]["detail"]
    # totals add up for the store and the summary
    n = len(rows)
    assert summary.input_rows == n == summary.stored + summary.failed
    assert summary.stored == 150 + 7
    assert summary.by_reason == dict(Counter(r["reason"] for r in rows if r["reason"]))
    assert summary.retryable_failed == 3  # 500, 503, timeout (not 404, decode, duplicate, refused)


def test_per_shard_counts_add_up_and_verify(ingested):
    summary, root, _ = ingested
    store = open_store(root)
    commits = store.commits("images")
    assert list(commits) == list(range(summary.shards_total)) and summary.shards_total == 7
    for shard, rec in commits.items():
        c = rec.counts
        assert c["rows"] == c.get("stored", 0) + c.get("failed", 0)
        assert c.get("failed", 0) == sum(v for k, v in c.items() if k.startswith("reason:"))
        assert set(rec.files) == {f"{shard:05d}.tar", f"{shard:05d}.parquet", f"{shard:05d}_stats.json",
                                  f"_raw/{shard:05d}.parquet"}
    assert sum(r.counts["rows"] for r in commits.values()) == summary.input_rows
    assert store.verify("images").ok
    settings = store.manifest()["stages"]["images"]["settings"]
    assert settings["resize"]["mode"] == "center-crop" and settings["resize"]["img2dataset_resize_mode"] == "center_crop"
    assert not os.path.exists(os.path.join(root, "images", "_work", ))


def test_tars_are_plain_webdataset_with_only_stored_samples(ingested):
    _, root, urls = ingested
    store = open_store(root)
    tars = [os.path.join(root, "images", f"{s:05d}.tar") for s in store.list_committed("images")]
    samples = list(wds.WebDataset(tars, shardshuffle=False))
    modes = {}
    status = read_status(root).to_pylist()
    stored = {r["key"]: r for r in status if r["status"] == "stored"}
    assert [s["__key__"] for s in samples] == sorted(stored)
    for s in samples:
        assert set(k for k in s if not k.startswith("__")) == {"jpg", "txt", "json"}
        meta = json.loads(s["json"])
        assert meta["key"] == s["__key__"] and meta["sha256"] == stored[s["__key__"]]["sha256"]
        assert s["txt"].decode() == stored[s["__key__"]]["caption"]
        img = Image.open(io.BytesIO(s["jpg"]))
        assert img.size == (256, 256) and img.mode in ("RGB", "L")
        modes[meta["uid"]] = img.mode
    # img2dataset decodes with IMREAD_UNCHANGED: gray inputs stay 1-channel JPEGs (featurize converts)
    assert modes["hostile-grayscale"] == modes["hostile-png_16bit"] == "L"
    assert modes["hostile-cmyk_jpeg"] == modes["hostile-alpha_png"] == modes["hostile-animated_gif"] == "RGB"
    exif = next(json.loads(s["json"]) for s in samples if json.loads(s["json"])["uid"] == "hostile-exif_rotated")
    assert "Image Orientation" in (exif["exif"] or "")


def test_rerun_is_a_noop_and_changed_settings_are_refused(ingested):
    summary, root, urls = ingested
    again = ingest(str(urls), root, **KW)
    assert again.shards_done_this_run == 0
    assert (again.stored, again.failed, again.by_reason) == (summary.stored, summary.failed, summary.by_reason)
    with pytest.raises(ValueError, match="other settings.*image_size"):
        ingest(str(urls), root, **{**KW, "image_size": 128})


def test_retry_failed_brings_in_the_flaky_url_only(ingested, tmp_path):
    summary, root, urls = ingested
    copy = str(tmp_path / "store")
    shutil.copytree(root, copy)
    after = retry_failed(copy, progress=False)
    rows = _final_with_cases(copy, urls)
    by_case = {r["case"]: r for r in rows}
    flaky = by_case["flaky_503"]
    assert (flaky["status"], flaky["attempt"], flaky["shard"]) == ("stored", 1, summary.shards_total)
    assert (by_case["http_500"]["reason"], by_case["http_500"]["attempt"]) == ("http_error", 1)
    assert (by_case["stall"]["reason"], by_case["stall"]["attempt"]) == ("timeout", 1)
    assert by_case["http_404"]["attempt"] == 0  # not retryable: never re-downloaded
    assert after.stored == summary.stored + 1 and after.failed == summary.failed - 1
    assert after.stored + after.failed == after.input_rows == summary.input_rows
    assert after.shards_total == summary.shards_total + 1 and after.shards_done_this_run == 1
    store = open_store(copy)
    assert store.verify("images").ok
    new_tar = os.path.join(copy, "images", f"{summary.shards_total:05d}.tar")
    assert [s["__key__"] for s in wds.WebDataset(new_tar, shardshuffle=False)] == [flaky["key"]]


def test_private_network_urls_are_refused_before_img2dataset(tmp_path):
    from pipelines.democorpus import build_demo_corpus
    from pipelines.loopback import serve_directory

    with serve_directory(tmp_path / "c" if (tmp_path / "c").mkdir() is None else None) as base:
        urls = build_demo_corpus(tmp_path / "c", base_url=base, n_images=5)
        s = ingest(str(urls), str(tmp_path / "store"), shard_size=2, progress=False)
    assert (s.stored, s.failed, s.by_reason) == (0, 5, {"refused_url": 5})
    details = set(read_status(str(tmp_path / "store")).column("detail").to_pylist())
    assert details == {"host 127.0.0.1 is a loopback address; pass allow_private_network=True to allow it"}
    assert not os.path.exists(tmp_path / "store" / "images" / "_raw")  # img2dataset never ran


@pytest.mark.parametrize("bad,match", [
    (dict(resize_mode="stretch"), "resize_mode 'stretch' not accepted; use one of"),
    (dict(shard_size=0), "shard_size must be an int >= 1, got 0"),
    (dict(timeout=-1), "timeout must be a positive number"),
])
def test_bad_arguments_are_named(tmp_path, hostile_corpus, bad, match):
    with pytest.raises(ValueError, match=match):
        ingest(str(hostile_corpus[1]), str(tmp_path / "s"), **bad)


def test_url_list_formats(tmp_path):
    (tmp_path / "a.csv").write_text("link,text,id\nhttp://x/1.jpg,one,7\nhttp://x/2.jpg,,8\n")
    (tmp_path / "a.tsv").write_text("link\ttext\tid\nhttp://x/1.jpg\tone\t7\nhttp://x/2.jpg\t\t8\n")
    (tmp_path / "a.jsonl").write_text('{"link": "http://x/1.jpg", "text": "one", "id": 7}\n'
                                      '{"link": "http://x/2.jpg", "id": 8}\n')
    for name in ("a.csv", "a.tsv", "a.jsonl"):
        t, digest = read_url_list(str(tmp_path / name), url_col="link", caption_col="text", uid_col="id")
        assert t.column("row_id").to_pylist() == [0, 1]
        assert t.column("uid").to_pylist() == ["7", "8"]
        assert t.column("caption").to_pylist()[0] == "one" and len(digest) == 64
    with pytest.raises(ValueError, match=r"lacks column\(s\) \['url'\]"):
        read_url_list(str(tmp_path / "a.csv"))
    with pytest.raises(ValueError, match="unknown extension"):
        read_url_list(str(tmp_path / "a.txt"))
