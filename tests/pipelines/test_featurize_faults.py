"""Featurize under faults: a worker killed mid-shard, a Ray node removed mid-job, the whole
run killed with SIGKILL. After each the job completes and every data file is identical to a
run without faults with the same settings (one torch thread per worker: float reductions,
hence teacher embeddings' last bits, depend on the thread count). What may differ, by design: commit markers' `committed_at`, `worker` and
`device` fields, and the manifest's run records (timestamps, run ids, retries)."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import ray

from featurize_support import copy_store, data_files, make_image_store, make_tokenizer
from pipelines.executor import featurize
from pipelines.featurize import FeaturizeSpec
from pipelines.verify import verify_store

pytestmark = [pytest.mark.fault, pytest.mark.slow]
BATCH = 4
THREADS = 1


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    root = tmp_path_factory.mktemp("faults")
    return make_image_store(root, n_images=48, shard_size=12), make_tokenizer(root)


def spec_for(ckpt) -> FeaturizeSpec:
    return FeaturizeSpec(tokenizer=str(ckpt), batch_size=BATCH)


@pytest.fixture(scope="module")
def clean(base, tmp_path_factory):
    images, ckpt = base
    store = copy_store(images, tmp_path_factory.mktemp("clean") / "store")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        s = featurize(str(store), spec_for(ckpt), progress=False, threads_per_worker=THREADS)
    finally:
        ray.shutdown()
    assert s.ok and s.featurized == 48
    return store


def commits_sans_times(store: Path) -> dict:
    out = {}
    for p in sorted(store.glob("*/*/_commits/*.json")):
        rec = json.loads(p.read_text())
        out[str(p.relative_to(store))] = (rec["files"], rec["counts"], rec["extra"]["failures"])
    return out


def assert_same_as_clean(store: Path, clean: Path) -> None:
    for prefix in ("tokens", "features"):
        assert data_files(store, prefix) == data_files(clean, prefix)
    assert commits_sans_times(store) == commits_sans_times(clean)
    assert verify_store(str(store)).ok


def test_worker_process_killed_mid_shard(base, clean, tmp_path):
    images, ckpt = base
    store = copy_store(images, tmp_path / "store")
    killed = []

    def on_dispatch(shard, attempt, info):
        if shard == 1 and attempt == 0:
            def kill():
                os.kill(info["pid"], signal.SIGKILL)
                killed.append(info["pid"])
            threading.Timer(0.2, kill).start()

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        s = featurize(str(store), spec_for(ckpt), progress=False, on_dispatch=on_dispatch,
                      threads_per_worker=THREADS)
    finally:
        ray.shutdown()
    assert killed and s.retries == 1 and s.ok and s.shards_done == 4
    assert "worker-2" in s.workers  # the replacement finished the job
    assert sorted(sh for w in s.workers.values() for sh in w["shards"]) == [0, 1, 2, 3]
    assert_same_as_clean(store, clean)


def test_ray_node_removed_mid_job(base, clean, tmp_path):
    from ray.cluster_utils import Cluster

    images, ckpt = base
    store = copy_store(images, tmp_path / "store")
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False})
    node2 = cluster.add_node(num_cpus=1)
    removed = []

    def on_dispatch(shard, attempt, info):
        if info["node_id"] == node2.node_id and not removed:
            removed.append(shard)
            threading.Timer(0.5, cluster.remove_node, args=(node2,)).start()

    try:
        s = featurize(str(store), spec_for(ckpt), progress=False, ray_address=cluster.address,
                      num_workers=2, on_dispatch=on_dispatch, threads_per_worker=THREADS)
    finally:
        if ray.is_initialized():
            ray.shutdown()
        cluster.shutdown()
    assert removed and s.retries >= 1 and s.ok and s.shards_done == 4
    assert_same_as_clean(store, clean)


RUNNER = """
import sys
from pipelines.executor import featurize
from pipelines.featurize import FeaturizeSpec
if __name__ == "__main__":
    s = featurize(sys.argv[1], FeaturizeSpec(tokenizer=sys.argv[2], batch_size=4), progress=False,
                  take_over_lock=sys.argv[3] == "1", threads_per_worker=1)
    print("DONE", s.shards_done, s.shards_skipped, flush=True)
"""


def test_whole_run_sigkilled_and_restarted(base, clean, tmp_path):
    images, ckpt = base
    store = copy_store(images, tmp_path / "store")
    script = tmp_path / "run.py"
    script.write_text(RUNNER)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    proc = subprocess.Popen([sys.executable, str(script), str(store), str(ckpt), "0"], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.time() + 240
    while time.time() < deadline and not list(store.glob("tokens/*/_commits/*.json")):
        assert proc.poll() is None, proc.stdout.read().decode()[-3000:]
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)  # the driver and everything it started
    proc.wait(timeout=30)
    done_before = len(list(store.glob("tokens/*/_commits/*.json")))
    assert 1 <= done_before < 4
    out = subprocess.run([sys.executable, str(script), str(store), str(ckpt), "1"], env=env,
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    line = [ln for ln in out.stdout.splitlines() if ln.startswith("DONE")][-1].split()
    assert int(line[1]) + int(line[2]) == 4 and int(line[2]) >= done_before - 1
    assert_same_as_clean(store, clean)


def test_one_actor_per_declared_gpu(base, tmp_path):
    images, ckpt = base
    store = copy_store(images, tmp_path / "store")
    ray.init(num_cpus=2, num_gpus=2, include_dashboard=False, log_to_driver=False)
    try:
        s = featurize(str(store), FeaturizeSpec(tokenizer=str(ckpt), teachers=(), batch_size=BATCH),
                      progress=False)
    finally:
        ray.shutdown()
    assert s.ok and len(s.workers) == 2
    gpu_sets = sorted(tuple(w["gpu_ids"]) for w in s.workers.values())
    assert gpu_sets == [("0",), ("1",)]  # one actor pinned to each GPU
    assert sorted(sh for w in s.workers.values() for sh in w["shards"]) == [0, 1, 2, 3]
