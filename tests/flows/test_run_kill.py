"""SIGKILL `wintok run` mid-featurize, rerun it with --take-over-lock: same bytes as a clean run.

The runs are real subprocesses (own process group) recording to the module's Prefect test
server through PREFECT_API_URL, each with its own embedded Ray.
"""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from flow_support import data_files

pytestmark = pytest.mark.fault

WINTOK = str(Path(sys.executable).parent / "wintok")
N_PHOTOS, SHARD = 64, 8


@pytest.fixture(scope="module")
def ingested(served, tmp_path_factory):
    """(urls, store) with every image shard committed (featurize is what gets killed)."""
    from pipelines.democorpus import build_demo_corpus
    from pipelines.ingest import ingest

    d, base = served
    urls = build_demo_corpus(d / "kill", base_url=f"{base}/kill", n_images=N_PHOTOS, seed=1)
    store = tmp_path_factory.mktemp("kill") / "base"
    ingest(str(urls), str(store), shard_size=SHARD, allow_private_network=True, threads=8,
           progress=False)
    return urls, store


def command(urls: Path, store: Path, tokenizer: Path, *extra: str) -> list[str]:
    return [WINTOK, "run", str(urls), "--store", str(store), "--tokenizer", str(tokenizer),
            "--shard-size", str(SHARD), "--allow-private-network", "--no-progress", "--no-publish",
            "--workers", "1", "--threads-per-worker", "1", "--batch-size", "8", *extra]


def env(api_url: str) -> dict[str, str]:
    return {**os.environ, "PREFECT_API_URL": api_url, "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
            "PREFECT_LOGGING_LEVEL": "WARNING"}


def test_kill_mid_featurize_then_resume_matches_a_clean_run(prefect_server, ingested, tokenizer,
                                                            tmp_path):
    urls, base = ingested
    clean, killed = tmp_path / "clean", tmp_path / "killed"
    shutil.copytree(base, clean)
    shutil.copytree(base, killed)

    done = subprocess.run(command(urls, clean, tokenizer), env=env(prefect_server),
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr

    proc = subprocess.Popen(command(urls, killed, tokenizer), env=env(prefect_server),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    deadline = time.monotonic() + 240
    try:
        while not list(killed.glob("tokens/*/_commits/*.json")):
            assert proc.poll() is None, "the run ended before its first token commit"
            assert time.monotonic() < deadline, "no token commit within 240 s"
            time.sleep(0.05)
        os.killpg(proc.pid, signal.SIGKILL)
    finally:
        proc.wait(timeout=60)
    committed = len(list(killed.glob("tokens/*/_commits/*.json")))
    assert 1 <= committed < N_PHOTOS // SHARD, f"{committed} shards: the kill came too late"
    assert (killed / "_lock.json").exists()  # the dead run still holds the store

    locked = subprocess.run(command(urls, killed, tokenizer), env=env(prefect_server),
                            capture_output=True, text=True, timeout=300)
    assert locked.returncode == 1 and "--take-over-lock" in locked.stderr, locked.stderr

    again = subprocess.run(command(urls, killed, tokenizer, "--take-over-lock"),
                           env=env(prefect_server), capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stdout + again.stderr
    assert not (killed / "_lock.json").exists()
    for prefix in ("tokens", "features"):
        a, b = data_files(clean, prefix), data_files(killed, prefix)
        assert a and a == b, prefix
    status = subprocess.run([WINTOK, "status", str(killed)], capture_output=True, text=True)
    assert "everything is done" in status.stdout, status.stdout
