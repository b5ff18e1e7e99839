"""Store, manifest and lock: reopen, version refusal, commits + verify, a second writer refused, take-over."""

import json
import os
import pickle
import subprocess
import sys

import pytest

from pipelines.fsutil import atomic_write_bytes, get_fs
from pipelines.lock import StoreLockedError
from pipelines.store import open_store
from schemas import SchemaError


def _commit(store, stage, shard, payload=b"data"):
    d = store.stage_dir(stage)
    with open(os.path.join(d, f"{shard:05d}.bin"), "wb") as f:
        f.write(payload)
    return store.commit_shard(stage, shard, [f"{shard:05d}.bin"], {"rows": 2, "stored": 1})


def test_store_created_reopens_and_is_picklable(tmp_path):
    root = str(tmp_path / "s")
    with pytest.raises(FileNotFoundError, match="create=True"):
        open_store(root)
    store = open_store(root, create=True)
    _commit(store, "images", 0)
    again = pickle.loads(pickle.dumps(open_store(root)))
    assert again.list_committed("images") == [0]
    assert again.is_committed("images", 0) and not again.is_committed("images", 1)
    assert again.manifest()["format_version"] == 1


def test_future_manifest_version_is_refused_with_clear_message(tmp_path):
    root = tmp_path / "s"
    open_store(str(root), create=True)
    m = json.loads((root / "_manifest.json").read_text())
    m["format_version"] = 99
    (root / "_manifest.json").write_text(json.dumps(m))
    with pytest.raises(SchemaError, match="format version 99 was written by a newer wintok-pipeline.*Upgrade"):
        open_store(str(root))


def test_commit_verify_reports_mismatch_by_file(tmp_path):
    store = open_store(str(tmp_path / "s"), create=True)
    stage = store.stage_name("features", "effnet-abc123")
    _commit(store, stage, 0)
    _commit(store, stage, 1)
    assert store.verify(stage).ok
    path = os.path.join(store.stage_dir("features", "effnet-abc123"), "00001.bin")
    with open(path, "wb") as f:
        f.write(b"dat4")  # same size, other bytes
    os.remove(os.path.join(store.stage_dir(stage), "00000.bin"))
    report = store.verify(stage)
    assert not report.ok
    assert sorted((s, f) for s, f, _ in report.mismatches) == [(0, "00000.bin"), (1, "00001.bin")]
    assert "missing" in report.mismatches[0][2] and "sha256" in report.mismatches[1][2]


def test_commit_needs_files_first_and_valid_names(tmp_path):
    store = open_store(str(tmp_path / "s"), create=True)
    with pytest.raises(FileNotFoundError, match="write the shard's files before committing"):
        store.commit_shard("images", 3, ["00003.tar"], {"rows": 1})
    assert not store.is_committed("images", 3)
    with pytest.raises(ValueError, match="must match"):
        store.stage_dir("../evil")


def test_second_writer_refused_then_take_over(tmp_path):
    store = open_store(str(tmp_path / "s"), create=True)
    with store.writer(run_id="first"):
        with pytest.raises(StoreLockedError, match=r"held by host=.* pid=%d run=first.*still running.*take_over=True"
                           % os.getpid()):
            with store.writer(run_id="second"):
                pass
        with store.writer(take_over=True, run_id="third") as lock:
            assert lock.read().run_id == "third"
    # the first writer's release leaves the third's lock alone; third released its own
    assert not os.path.exists(tmp_path / "s" / "_lock.json")


def test_stale_lock_of_dead_process_is_named(tmp_path):
    root = str(tmp_path / "s")
    code = ("import os; from pipelines.store import open_store; s = open_store(%r, create=True); "
            "cm = s.writer(run_id='crashed'); cm.__enter__(); os._exit(0)") % root
    subprocess.run([sys.executable, "-c", code], check=True, cwd=os.getcwd())
    store = open_store(root)
    with pytest.raises(StoreLockedError, match="no longer exists on this host: the lock is stale"):
        with store.writer():
            pass
    with store.writer(take_over=True):
        pass


def test_atomic_write_and_missing_filesystem_hint(tmp_path):
    fs, path = get_fs(str(tmp_path / "a" / "f.json"))
    atomic_write_bytes(fs, path, b"1")
    atomic_write_bytes(fs, path, b"22")
    assert open(path, "rb").read() == b"22"
    assert os.listdir(tmp_path / "a") == ["f.json"]  # no temp leftovers
    try:
        import s3fs  # noqa: F401
    except ImportError:
        with pytest.raises(ImportError, match="pip install s3fs"):
            open_store("s3://bucket/store")
