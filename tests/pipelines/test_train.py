"""Training from a store: the loss goes down, and a run killed mid-way resumes exactly."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import ray
import torch

from featurize_support import make_image_store
from pipelines.executor import featurize
from pipelines.featurize import FeaturizeSpec
from pipelines.train import TrainConfig, lr_at, train
from wintok import load_tokenizer


@pytest.fixture(scope="module")
def teacher_store(tmp_path_factory):
    root = tmp_path_factory.mktemp("train")
    store = make_image_store(root, n_images=32, shard_size=16)
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        s = featurize(str(store), FeaturizeSpec(tokenizer=None), progress=False)
    finally:
        ray.shutdown()
    return store, next(iter(s.outputs))


def log(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]


def test_few_steps_lower_the_loss(teacher_store, tmp_path):
    store, stage = teacher_store
    cfg = TrainConfig(steps=16, batch_size=4, lr=2e-3, warmup_steps=1, log_every=1, ckpt_every=100)
    res = train(str(store), stage, tmp_path / "out", cfg, progress=False)
    losses = [r["loss"] for r in log(tmp_path / "out")]
    assert len(losses) == 16 and res.steps_done == 16
    assert sum(losses[-4:]) / 4 < 0.6 * sum(losses[:4]) / 4, losses
    model = load_tokenizer(res.checkpoint)  # a normal checkpoint: safetensors + config
    assert model.config.semantic_width == 1280 and model.image_size == 64


def test_schedule_and_config_validation():
    cfg = TrainConfig(steps=100, warmup_steps=10, lr=1.0, min_lr_ratio=0.1)
    assert lr_at(0, cfg) == pytest.approx(0.1) and lr_at(9, cfg) == pytest.approx(1.0)
    assert lr_at(99, cfg) == pytest.approx(0.1, abs=1e-3)
    with pytest.raises(ValueError, match="unknown training options"):
        TrainConfig.from_dict({"stepz": 3})
    with pytest.raises(ValueError, match="precision"):
        TrainConfig(precision="fp16")


def test_teacher_width_must_match_the_preset(teacher_store, tmp_path):
    store, stage = teacher_store
    with pytest.raises(ValueError, match="1280-d targets but preset 'tiny' has 192-d"):
        train(str(store), stage, tmp_path / "o", TrainConfig(preset="tiny", steps=1), progress=False)


RUNNER = """
import sys, torch
torch.set_num_threads(1)
from pipelines.train import TrainConfig, train
if __name__ == "__main__":
    cfg = TrainConfig(steps=8, batch_size=4, lr=2e-3, warmup_steps=1, log_every=1, ckpt_every=3)
    train(sys.argv[1], sys.argv[2], sys.argv[3], cfg, progress=False)
"""


def test_resume_after_kill_gives_the_same_next_losses(teacher_store, tmp_path):
    store, stage = teacher_store
    script = tmp_path / "run.py"
    script.write_text(RUNNER)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}

    def run(out: Path, **kw):
        return subprocess.Popen([sys.executable, str(script), str(store), stage, str(out)], env=env,
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, **kw)

    clean = run(tmp_path / "clean")
    assert clean.wait(timeout=300) == 0, clean.stdout.read().decode()[-2000:]
    proc = run(tmp_path / "killed", start_new_session=True)
    state = tmp_path / "killed" / "train_state.pt"
    deadline = time.time() + 240
    while not state.exists() and time.time() < deadline:
        assert proc.poll() is None, proc.stdout.read().decode()[-2000:]
        time.sleep(0.02)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
    saved = torch.load(state, weights_only=True)["step"]
    assert 3 <= saved < 8
    resumed = run(tmp_path / "killed")
    assert resumed.wait(timeout=300) == 0, resumed.stdout.read().decode()[-2000:]
    want = {r["step"]: r["loss"] for r in log(tmp_path / "clean")}
    got = {}
    for r in log(tmp_path / "killed"):  # steps logged after the kill were redone: keep the last
        got[r["step"]] = r["loss"]
    assert got == want  # every step's loss identical to the uninterrupted run, bit for bit


DDP_RUNNER = """
import os, sys, torch
torch.set_num_threads(1)
from pipelines.train import TrainConfig, train
if __name__ == "__main__":
    cfg = TrainConfig(steps=3, batch_size=2, warmup_steps=1, log_every=1, ckpt_every=3)
    res = train(sys.argv[1], sys.argv[2], sys.argv[3], cfg, progress=False)
    print("RANK", os.environ["RANK"], res.steps_done, bool(res.checkpoint), flush=True)
"""


@pytest.mark.slow
def test_torchrun_ddp_on_cpu(teacher_store, tmp_path):
    """Two ranks (gloo on CPU) train together; rank 0 alone writes the log and checkpoint."""
    store, stage = teacher_store
    script = tmp_path / "ddp.py"
    script.write_text(DDP_RUNNER)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path), "OMP_NUM_THREADS": "1"}
    out = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
                          "--master_addr", "127.0.0.1", "--master_port", "29533", str(script),
                          str(store), stage, str(tmp_path / "ddp")],
                         env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    ranks = sorted(line for line in out.stdout.splitlines() if line.startswith("RANK"))
    assert ranks == ["RANK 0 3 True", "RANK 1 3 False"]
    assert [r["step"] for r in log(tmp_path / "ddp")] == [1, 2, 3]
    assert load_tokenizer(tmp_path / "ddp" / "model").config.semantic_width == 1280
