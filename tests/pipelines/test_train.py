"""Training from a store: the loss goes down, and a run killed mid-way resumes exactly."""
from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import ray
import torch
from click.testing import CliRunner

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
    # perceptual and adversarial terms off: the state and the log hold what they always did
    st = torch.load(tmp_path / "out" / "train_state.pt", weights_only=True)
    assert set(st) == {"model", "optimizer", "data", "step", "config"}
    assert set(log(tmp_path / "out")[0]) == {"step", "lr", "loss", "l2", "l1", "commit", "entropy",
                                             "distill", "usage_pct"}


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


def _torchrun(runner: str, script, port: int, *args) -> str:
    """Run `runner` as a script on two ranks (gloo, loopback); its stdout, after exit code 0."""
    script.write_text(runner)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path), "OMP_NUM_THREADS": "1"}
    out = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
                          "--master_addr", "127.0.0.1", "--master_port", str(port), str(script),
                          *map(str, args)],
                         env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    return out.stdout


@pytest.mark.slow
def test_torchrun_ddp_on_cpu(teacher_store, tmp_path):
    """Two ranks (gloo on CPU) train together; rank 0 alone writes the log and checkpoint."""
    store, stage = teacher_store
    stdout = _torchrun(DDP_RUNNER, tmp_path / "ddp.py", 29533, store, stage, tmp_path / "ddp")
    ranks = sorted(line for line in stdout.splitlines() if line.startswith("RANK"))
    assert ranks == ["RANK 0 3 True", "RANK 1 3 False"]
    assert [r["step"] for r in log(tmp_path / "ddp")] == [1, 2, 3]
    assert load_tokenizer(tmp_path / "ddp" / "model").config.semantic_width == 1280


# ---------------------------------------------------------------- perceptual and adversarial terms

# VGG16 convolutions of the LPIPS slices: (slice, index inside the slice, in, out channels)
LPIPS_CONVS = [(1, 0, 3, 64), (1, 2, 64, 64), (2, 1, 64, 128), (2, 3, 128, 128),
               (3, 1, 128, 256), (3, 3, 256, 256), (3, 5, 256, 256), (4, 1, 256, 512),
               (4, 3, 512, 512), (4, 5, 512, 512), (5, 1, 512, 512), (5, 3, 512, 512),
               (5, 5, 512, 512)]


@pytest.fixture(scope="module")
def lpips_file(tmp_path_factory) -> Path:
    """Random LPIPS weights in the official `lpips_with_vgg.pth` layout."""
    g = torch.Generator().manual_seed(1)
    state = {}
    for s, i, cin, cout in LPIPS_CONVS:
        state[f"net.slice{s}.{i}.weight"] = torch.randn(cout, cin, 3, 3, generator=g) * (2 / (9 * cin)) ** 0.5
        state[f"net.slice{s}.{i}.bias"] = torch.zeros(cout)
    for k, c in enumerate((64, 128, 256, 512, 512)):
        state[f"lins.{k}.model.1.weight"] = torch.rand(1, c, 1, 1, generator=g)
    path = tmp_path_factory.mktemp("lpips") / "lpips_with_vgg.pth"
    torch.save(state, path)
    return path


def gan_cfg(lpips_file: Path | None, **kw) -> TrainConfig:
    base = dict(steps=3, batch_size=2, lr=2e-3, warmup_steps=1, log_every=1, ckpt_every=100,
                ld=0.5, disc_start=0, disc_warmup=0, disc_lr=1e-3, disc_width=16, disc_layers=2)
    if lpips_file is not None:
        base.update(lp=1.0, lpips_weights=str(lpips_file))
    return TrainConfig(**{**base, **kw})


def disc_init(cfg: TrainConfig) -> dict[str, torch.Tensor]:
    from pipelines.discriminator import build_discriminator

    return build_discriminator(cfg.disc_width, cfg.disc_layers, cfg.seed + 1).state_dict()


def test_terms_are_off_by_default_and_validated():
    from pipelines.train import adv_ramp

    cfg = TrainConfig()
    assert cfg.lp == 0 and cfg.ld == 0 and adv_ramp(10_000, cfg) == 0
    with pytest.raises(ValueError, match=r"--lpips-weights .*--options '\{\"lpips_weights\": "):
        TrainConfig(lp=1.0)
    with pytest.raises(ValueError, match="dcrit must be one of hg, sp, ln"):
        TrainConfig(dcrit="wgan")
    with pytest.raises(ValueError, match="disc_start must be >= 0"):
        TrainConfig(disc_start=-1)
    with pytest.raises(ValueError, match="lpips_lin .* lpips_weights is not set"):
        TrainConfig(lpips_lin="vgg.pth")
    assert TrainConfig.from_dict({"disc_optim_beta": [0.0, 0.99]}).disc_optim_beta == (0.0, 0.99)
    ramp = TrainConfig(ld=0.5, disc_start=4, disc_warmup=4)
    assert [adv_ramp(s, ramp) for s in (0, 3, 4, 5, 7, 8, 100)] == [0, 0, 0, 0.25, 0.75, 1, 1]
    assert adv_ramp(4, TrainConfig(ld=0.5, disc_start=4, disc_warmup=0)) == 1


def test_losses_add_weighted_lpips_and_adaptive_adversarial_terms(lpips_file):
    """The total is the sum of the weighted parts, the adversarial weight is VQGAN's ratio of
    gradient norms at the decoder's last layer (computed here independently), and gradients
    reach the tokenizer through LPIPS and the discriminator but not their weights."""
    from pipelines.discriminator import build_discriminator
    from pipelines.loader_distill import distill_loss
    from pipelines.lpips import load_lpips
    from pipelines.train import losses
    from wintok import WinTok, preset

    torch.manual_seed(0)
    model = WinTok(preset("small-64")).train()
    lp, disc = load_lpips(lpips_file), build_discriminator(16, 2, 1)
    images = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(2)) * 2 - 1
    target = torch.randn(2, 1280, generator=torch.Generator().manual_seed(3))
    cfg = gan_cfg(lpips_file, lp=0.7, ld=0.3)
    parts = losses(model, images, target, cfg, lpips=lp, disc=disc, adv_scale=0.5)
    assert {"lpips", "g_adv", "adv_weight"} <= set(parts)
    assert parts["lpips"] > 0 and torch.isfinite(parts["g_adv"])
    want = (cfg.l2 * parts["l2"] + cfg.l1 * parts["l1"] + cfg.lq * parts["commit"]
            + cfg.le * parts["entropy"] + cfg.ldistill * parts["distill"]
            + cfg.lp * parts["lpips"] + parts["adv_weight"] * parts["g_adv"])
    torch.testing.assert_close(parts["loss"], want)
    assert abs(float(cfg.lp * parts["lpips"].detach())) > 1e-3
    assert abs(float(parts["adv_weight"] * parts["g_adv"].detach())) > 1e-4

    # the adaptive weight, by hand: same forward, gradients at conv_out.weight
    out = model(images, precision="fp32", beta=cfg.vq_beta, entropy_temp=cfg.entropy_temp)
    rec = (cfg.l2 * torch.nn.functional.mse_loss(out.recon, images)
           + cfg.l1 * (out.recon - images).abs().mean() + cfg.lp * lp.distance(out.recon, images).mean())
    g = -disc(out.recon).mean()  # hinge generator loss
    torch.testing.assert_close(g, parts["g_adv"])
    w = model.conv_out.weight
    (g_rec,) = torch.autograd.grad(rec, w, retain_graph=True)
    (g_adv,) = torch.autograd.grad(g, w)
    ratio = g_rec.norm() / (g_adv.norm() + 1e-4)
    assert 0 < ratio < 1e4
    torch.testing.assert_close(parts["adv_weight"], ratio * cfg.ld * 0.5, rtol=1e-5, atol=0)
    assert float(distill_loss(out.pooled, target).detach()) == pytest.approx(float(parts["distill"].detach()))

    # gradients: into the tokenizer, not into LPIPS or the discriminator
    parts["loss"].backward()
    assert model.conv_out.weight.grad is not None and model.conv_out.weight.grad.abs().sum() > 0
    assert all(p.grad is None for p in lp.parameters()) and not lp.training
    assert all(p.grad is None and p.requires_grad for p in disc.parameters())
    (g_lp,) = torch.autograd.grad(
        lp.distance(model(images).recon, images).mean(), model.conv_out.weight)
    assert g_lp.abs().sum() > 0  # LPIPS is differentiable w.r.t. the reconstruction

    # fixed weight (ld < 0), softplus criterion, and no term while the ramp is 0
    fixed = losses(model, images, target, gan_cfg(lpips_file, ld=-0.4, dcrit="sp"), lpips=lp,
                   disc=disc, adv_scale=0.25)
    assert float(fixed["adv_weight"]) == pytest.approx(0.1, abs=1e-7)
    out = model(images)
    torch.testing.assert_close(fixed["g_adv"], torch.nn.functional.softplus(-disc(out.recon)).mean())
    off = losses(model, images, target, cfg, lpips=lp, disc=disc, adv_scale=0.0)
    assert "g_adv" not in off and float(off["adv_weight"]) == 0
    assert float(off["loss"].detach()) == pytest.approx(
        float((parts["loss"] - parts["adv_weight"] * parts["g_adv"]).detach()), rel=1e-4)


def test_training_with_lpips_and_discriminator(teacher_store, lpips_file, tmp_path):
    store, stage = teacher_store
    cfg = gan_cfg(lpips_file)
    res = train(str(store), stage, tmp_path / "out", cfg, progress=False)
    rows = log(tmp_path / "out")
    assert [r["step"] for r in rows] == [1, 2, 3] and res.steps_done == 3
    for r in rows:
        for k in ("lpips", "g_adv", "d_loss", "adv_weight"):
            assert math.isfinite(r[k]), (k, r)
        assert r["lpips"] > 0 and r["adv_weight"] > 0
    st = torch.load(tmp_path / "out" / "train_state.pt", weights_only=True)
    assert {"disc", "disc_optimizer", "lecam"} <= set(st)
    init = disc_init(cfg)
    assert any(not torch.equal(init[k], v) for k, v in st["disc"].items())  # D was trained
    assert st["lecam"]["real"] != 0 and st["lecam"]["fake"] != 0
    assert load_tokenizer(res.checkpoint).image_size == 64  # the tokenizer alone is exported


def test_resume_with_both_terms_gives_the_same_losses(teacher_store, lpips_file, tmp_path):
    """An interrupted run (stopped after step 2, then rerun from train_state.pt) logs exactly
    what an uninterrupted one does, discriminator, LeCAM and warm-up included."""
    store, stage = teacher_store
    cfg = gan_cfg(lpips_file, steps=4, ckpt_every=2, disc_start=1, disc_warmup=2)
    train(str(store), stage, tmp_path / "clean", cfg, progress=False)
    first = train(str(store), stage, tmp_path / "cut", cfg, progress=False, stop_after=2)
    assert first.steps_done == 2 and not first.checkpoint
    resumed = train(str(store), stage, tmp_path / "cut", cfg, progress=False)
    assert resumed.resumed_from == 2 and resumed.steps_done == 4
    want, got = log(tmp_path / "clean"), log(tmp_path / "cut")
    assert got == want  # every logged number, bit for bit
    assert "d_loss" not in want[0] and all("d_loss" in r for r in want[1:])
    assert [r["adv_weight"] > 0 for r in want] == [False, False, True, True]
    a = torch.load(tmp_path / "clean" / "train_state.pt", weights_only=True)
    b = torch.load(tmp_path / "cut" / "train_state.pt", weights_only=True)
    assert a["lecam"] == b["lecam"]
    assert all(torch.equal(a["disc"][k], b["disc"][k]) for k in a["disc"])
    with pytest.raises(ValueError, match="other settings"):
        train(str(store), stage, tmp_path / "cut", gan_cfg(lpips_file, steps=4, ckpt_every=2,
                                                           disc_start=1, disc_warmup=3), progress=False)


def test_no_discriminator_update_before_disc_start(teacher_store, tmp_path):
    store, stage = teacher_store
    cfg = gan_cfg(None, ld=-0.5, steps=4, disc_start=2, disc_warmup=2, ckpt_every=2)
    train(str(store), stage, tmp_path / "out", cfg, progress=False, stop_after=2)
    st = torch.load(tmp_path / "out" / "train_state.pt", weights_only=True)
    init = disc_init(cfg)
    assert all(torch.equal(init[k], v) for k, v in st["disc"].items())
    assert st["lecam"] == {"real": 0.0, "fake": 0.0}
    assert all(len(s["state"]) == 0 for s in [st["disc_optimizer"]])  # Adam never stepped
    train(str(store), stage, tmp_path / "out", cfg, progress=False)
    rows = log(tmp_path / "out")
    assert [r["adv_weight"] for r in rows] == [0.0, 0.0, 0.0, 0.25]  # ramp from disc_start
    assert ["d_loss" in r for r in rows] == [False, False, True, True]
    assert ["g_adv" in r for r in rows] == [False, False, False, True]
    st = torch.load(tmp_path / "out" / "train_state.pt", weights_only=True)
    assert any(not torch.equal(init[k], v) for k, v in st["disc"].items())


def test_train_cli_perceptual_and_adversarial_options(teacher_store, lpips_file, tmp_path):
    from flows.cli import cli

    store, stage = teacher_store
    r = CliRunner().invoke(cli, ["train", str(store), "--teacher-store", stage, "--out",
                                 str(tmp_path / "x"), "--perceptual-weight", "1"])
    assert r.exit_code == 1 and "--lpips-weights" in r.output, r.output
    r = CliRunner().invoke(cli, ["train", str(store), "--teacher-store", stage, "--out",
                                 str(tmp_path / "o"), "--steps", "1", "--batch-size", "2",
                                 "--perceptual-weight", "0.5", "--adv-weight", "0.5",
                                 "--lpips-weights", str(lpips_file), "--options",
                                 '{"disc_start": 0, "disc_warmup": 0, "disc_width": 8, "log_every": 1}'])
    assert r.exit_code == 0, r.output
    (row,) = log(tmp_path / "o")
    assert {"lpips", "g_adv", "d_loss", "adv_weight"} <= set(row)
    cfg = torch.load(tmp_path / "o" / "train_state.pt", weights_only=True)["config"]
    assert cfg["lp"] == 0.5 and cfg["ld"] == 0.5 and cfg["lpips_weights"] == str(lpips_file.resolve())


DDP_GAN_RUNNER = """
import os, sys, torch
torch.set_num_threads(1)
import pipelines.discriminator as D
from pipelines.train import TrainConfig, train
made = []
def build(*a):
    made.append(BUILD(*a))
    return made[-1]
BUILD, D.build_discriminator = D.build_discriminator, build
if __name__ == "__main__":
    cfg = TrainConfig(steps=3, batch_size=2, warmup_steps=1, log_every=1, ckpt_every=3, lp=1.0,
                      lpips_weights=sys.argv[4], ld=0.5, disc_start=0, disc_warmup=0, disc_lr=1e-3,
                      disc_width=16, disc_layers=2)
    res = train(sys.argv[1], sys.argv[2], sys.argv[3], cfg, progress=False)
    digest = sum(float(p.double().sum()) for p in made[0].state_dict().values())
    print("RANK", os.environ["RANK"], res.steps_done, repr(digest), flush=True)
"""


@pytest.mark.slow
def test_torchrun_ddp_with_both_terms(teacher_store, lpips_file, tmp_path):
    """Two ranks with LPIPS and the discriminator: the discriminator is trained through DDP, so
    both ranks end with the same discriminator weights, and they differ from its init."""
    store, stage = teacher_store
    stdout = _torchrun(DDP_GAN_RUNNER, tmp_path / "ddp_gan.py", 29534, store, stage,
                       tmp_path / "ddp", lpips_file)
    ranks = sorted(line.split() for line in stdout.splitlines() if line.startswith("RANK"))
    assert [r[:3] for r in ranks] == [["RANK", "0", "3"], ["RANK", "1", "3"]]
    assert ranks[0][3] == ranks[1][3]  # discriminator weights agree across ranks
    init = disc_init(TrainConfig(disc_width=16, disc_layers=2))
    assert float(ranks[0][3]) != sum(float(v.double().sum()) for v in init.values())
    rows = log(tmp_path / "ddp")
    assert [r["step"] for r in rows] == [1, 2, 3]
    assert all(math.isfinite(r[k]) for r in rows for k in ("lpips", "g_adv", "d_loss", "adv_weight"))
