"""Crash safety: SIGKILL the ingest process mid-run, resume in a new process, get a clean run's samples."""

import glob
import os
import signal
import subprocess
import sys
import time

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipelines.democorpus import build_demo_corpus
from pipelines.ingest import ingest, read_status
from pipelines.lock import StoreLockedError
from pipelines.loopback import serve_directory
from pipelines.store import open_store

KW = dict(caption_col="caption", uid_col="uid", shard_size=20, processes=1, threads=2, timeout=5,
          allow_private_network=True, progress=False)

SCRIPT = """
import sys
from pipelines.ingest import ingest
if __name__ == "__main__":
    ingest(sys.argv[1], sys.argv[2], caption_col="caption", uid_col="uid", shard_size=20, processes=1,
           threads=2, timeout=5, allow_private_network=True, progress=False)
"""


def _fingerprint(root):
    store = open_store(root)
    rows = read_status(root).select(["key", "status", "reason", "sha256", "duplicate_of"]).to_pylist()
    tars = {s: rec.files[f"{s:05d}.tar"]["sha256"] for s, rec in store.commits("images").items()}
    return rows, tars


@pytest.mark.fault
@pytest.mark.slow
def test_sigkill_mid_run_then_resume_equals_clean_run(tmp_path):
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    with serve_directory(corpus, hostile=False) as base:
        urls = build_demo_corpus(corpus, base_url=base, n_images=200, seed=3)
        t = pq.read_table(urls)
        # later rows repeat earlier URLs: duplicates that must resolve the same way after resume
        t = pa.concat_tables([t, t.slice(5, 1), t.slice(70, 1), t.slice(150, 1)])
        pq.write_table(t, urls)

        clean = str(tmp_path / "clean")
        ingest(str(urls), clean, **KW)

        crashed = str(tmp_path / "crashed")
        script = tmp_path / "run_ingest.py"
        script.write_text(SCRIPT)
        proc = subprocess.Popen([sys.executable, str(script), str(urls), crashed], cwd=os.getcwd(),
                                start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.time() + 120
        while not glob.glob(os.path.join(crashed, "images", "_commits", "*.json")) and time.time() < deadline:
            assert proc.poll() is None, "ingest subprocess ended before its first commit"
            time.sleep(0.05)
        time.sleep(0.3)  # kill somewhere inside the next shard
        os.killpg(proc.pid, signal.SIGKILL)  # the process and its img2dataset workers, like a crash
        proc.wait()
        n_before = len(open_store(crashed).list_committed("images"))
        assert 1 <= n_before < 11, f"kill came too late to test resume ({n_before} shards committed)"

        with pytest.raises(StoreLockedError, match="no longer exists on this host"):
            ingest(str(urls), crashed, **KW)
        summary = ingest(str(urls), crashed, take_over=True, **KW)
        assert summary.shards_done_this_run == 11 - n_before

    clean_rows, clean_tars = _fingerprint(clean)
    got_rows, got_tars = _fingerprint(crashed)
    assert got_rows == clean_rows  # same keys, outcomes, content hashes, duplicate links
    assert got_tars == clean_tars  # byte-identical committed tars
    assert sum(r["reason"] == "duplicate" for r in got_rows) == 3
    assert open_store(crashed).verify("images").ok
    assert summary.stored + summary.failed == 203
