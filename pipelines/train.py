"""`wintok train`: train a WinTok from image shards and stored teacher targets.

Objective (the official WinTok weights by default): l2 * MSE + l1 * L1 reconstruction, lq *
the quantizer's commitment term, le * its entropy term, and ldistill * mean(1 - cos) between
the pooled semantic vector and the stored teacher target (`pipelines.loader_distill`). The
teacher never runs.

Optional terms, off by default (they cost a lot on CPU), named as in the official training
config:
- perceptual, `lp` > 0: + lp * LPIPS(recon, image) (`pipelines.lpips`, VGG weights from disk:
  `lpips_weights` / `lpips_lin`; frozen, gradients flow to the reconstruction), computed only
  when the image resolution is >= `lpr`;
- adversarial, `ld` != 0: + w * g_adv against `pipelines.discriminator.PatchDiscriminator` (a
  small PatchGAN standing in for the official frozen-DINOv2 discriminator, which is not
  implemented). w ramps linearly from 0 over `disc_warmup` steps after `disc_start`, times
  ld * the VQGAN adaptive weight ||dR/dW|| / (||dG/dW|| + 1e-4) (clamped to [0, 1e4]; R the
  l1/l2/lpips reconstruction loss, G the adversarial one, W the decoder's last layer
  `conv_out.weight`) when ld > 0, or times abs(ld) when ld < 0. From step `disc_start` on the
  discriminator takes its own AdamW step (`disc_lr`, `disc_wd`, `disc_optim_beta`) each step
  on real images vs the detached reconstructions, with loss `dcrit` plus `llecam` * LeCAM.

Resumable: `<out>/train_state.pt` (model, optimizer, step, data-loader position; with the
adversarial term also the discriminator, its optimizer and the LeCAM EMAs) is written every
`ckpt_every` steps (temp file, then rename); a rerun continues from it and produces the same
next losses as a run that was never interrupted. Multi-GPU: launch with `torchrun`; each rank
reads its part of the data, gradients of the tokenizer and of the discriminator are averaged
by DDP, rank 0 writes checkpoints.
"""
from __future__ import annotations

import json
import math
import os
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class TrainConfig:
    """Hyper-parameters of a training run (recorded in the checkpoint and the log)."""

    preset: str = "small-64"  # wintok.config preset of the model to train
    steps: int = 3000  # optimizer steps in total
    batch_size: int = 16  # images per step per rank
    lr: float = 4e-4  # peak AdamW learning rate
    min_lr_ratio: float = 0.1  # cosine schedule floor, as a fraction of lr
    warmup_steps: int = 100  # linear warm-up
    weight_decay: float = 0.02
    betas: tuple[float, float] = (0.9, 0.95)
    grad_clip: float = 10.0  # max gradient norm (<= 0: off)
    l1: float = 0.2  # L1 reconstruction weight
    l2: float = 1.0  # MSE reconstruction weight
    lq: float = 1.0  # quantizer commitment weight
    vq_beta: float = 0.25  # encoder-side commitment factor inside the quantizer term
    le: float = 0.1  # quantizer entropy weight
    entropy_temp: float = 0.01
    ldistill: float = 1.0  # distillation weight: mean(1 - cos(pooled, teacher target))
    precision: str = "fp32"  # fp32 | bf16 (networks; the quantizer path stays float32)
    seed: int = 0
    ckpt_every: int = 250  # steps between resumable checkpoints
    log_every: int = 10  # steps between log lines
    # perceptual term (off by default; the official lp is 1.0)
    lp: float = 0.0  # LPIPS weight; > 0 needs lpips_weights
    lpr: int = 48  # compute LPIPS only when the image resolution is >= this
    lpips_weights: str | None = None  # lpips_with_vgg.pth, or torchvision's VGG16 + lpips_lin
    lpips_lin: str | None = None  # the lpips package's vgg.pth (with a torchvision VGG16 only)
    # adversarial term (off by default; the official ld is 0.5)
    ld: float = 0.0  # > 0: ld * adaptive weight; < 0: fixed weight abs(ld); 0: off
    llecam: float = 0.05  # LeCAM regulariser weight in the discriminator loss
    dcrit: str = "hg"  # hg (hinge) | sp (softplus, non-saturating) | ln (linear)
    disc_lr: float = 1e-5  # discriminator AdamW learning rate (constant)
    disc_wd: float = 0.2  # discriminator weight decay (weights of dim >= 2)
    disc_optim_beta: tuple[float, float] = (0.5, 0.9)
    disc_start: int = 500  # step from which the discriminator trains and the term is on
    disc_warmup: int = 100  # steps of linear ramp of the generator's adversarial weight from 0
    disc_width: int = 64  # PatchDiscriminator: channels of its first conv
    disc_layers: int = 3  # PatchDiscriminator: stride-2 convs (patch logits at 1/2^layers)

    def __post_init__(self) -> None:
        from pipelines.discriminator import CRITERIA

        for name in ("steps", "batch_size", "ckpt_every", "log_every", "disc_width", "disc_layers"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        for name in ("lp", "lpr", "llecam", "disc_wd", "disc_start", "disc_warmup"):
            if not getattr(self, name) >= 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        if self.precision not in ("fp32", "bf16"):
            raise ValueError(f"precision must be fp32 or bf16, got {self.precision!r}")
        if not self.lr > 0:
            raise ValueError(f"lr must be > 0, got {self.lr}")
        if not self.disc_lr > 0:
            raise ValueError(f"disc_lr must be > 0, got {self.disc_lr}")
        if not math.isfinite(self.ld):
            raise ValueError(f"ld must be finite, got {self.ld}")
        if self.dcrit not in CRITERIA:
            raise ValueError(f"dcrit must be one of {', '.join(CRITERIA)} (hinge, softplus, "
                             f"linear), got {self.dcrit!r}")
        if len(self.disc_optim_beta) != 2 or not all(0 <= b < 1 for b in self.disc_optim_beta):
            raise ValueError(f"disc_optim_beta must be two numbers in [0, 1), got {self.disc_optim_beta}")
        if self.lp > 0 and not self.lpips_weights:
            raise ValueError(f"lp={self.lp} (perceptual loss) needs the LPIPS weights on disk: "
                             f"pass --lpips-weights lpips_with_vgg.pth (or --options "
                             f"'{{\"lpips_weights\": \"/path/lpips_with_vgg.pth\"}}'), or set lp to 0")
        if self.lpips_lin and not self.lpips_weights:
            raise ValueError("lpips_lin (the lpips package's vgg.pth) goes with lpips_weights "
                             "(torchvision's VGG16 file); lpips_weights is not set")

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "TrainConfig":
        from wintok.config import only_known_fields

        d = only_known_fields(cls, d, "training options")
        for name in ("betas", "disc_optim_beta"):
            if name in d:
                d[name] = tuple(d[name])
        return cls(**d)


@dataclass
class TrainSummary:
    out_dir: str
    steps_done: int
    resumed_from: int
    last: dict[str, float] = field(default_factory=dict)
    seconds: float = 0.0
    checkpoint: str = ""


def lr_at(step: int, cfg: TrainConfig) -> float:
    """Linear warm-up then cosine decay to min_lr_ratio * lr."""
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    t = (step - cfg.warmup_steps) / max(1, cfg.steps - cfg.warmup_steps)
    return cfg.lr * (cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * min(t, 1.0))))


def adv_ramp(step: int, cfg: TrainConfig) -> float:
    """Factor of the generator's adversarial weight at 0-based `step`: 0 before disc_start,
    then a linear ramp from 0 to 1 over disc_warmup steps."""
    if cfg.ld == 0 or step < cfg.disc_start:
        return 0.0
    if cfg.disc_warmup == 0:
        return 1.0
    return min(1.0, (step - cfg.disc_start) / cfg.disc_warmup)


def last_layer(model) -> torch.Tensor:
    """The decoder's last layer weight (`conv_out`), through a DDP wrapper if there is one."""
    return getattr(model, "module", model).conv_out.weight


def adaptive_weight(rec_loss: torch.Tensor, g_loss: torch.Tensor, last: torch.Tensor) -> torch.Tensor:
    """VQGAN's balance: ||d rec_loss / d last|| / (||d g_loss / d last|| + 1e-4), in [0, 1e4],
    detached (both graphs are kept for the backward pass that follows)."""
    g_rec = torch.autograd.grad(rec_loss, last, retain_graph=True)[0]
    g_adv = torch.autograd.grad(g_loss, last, retain_graph=True)[0]
    return (g_rec.norm() / (g_adv.norm() + 1e-4)).clamp(0.0, 1e4).detach()


def losses(model, images: torch.Tensor, target: torch.Tensor, cfg: TrainConfig, *,
           lpips=None, disc=None, adv_scale: float = 1.0) -> dict[str, torch.Tensor]:
    """All loss terms of one batch and their weighted total (`loss`).

    `lpips` (a `pipelines.lpips.LPIPS`) adds lp * `lpips` when cfg.lp > 0 and the images are at
    least cfg.lpr pixels; `disc` (the discriminator) adds `adv_weight` * `g_adv` when cfg.ld != 0
    and `adv_scale` (the warm-up factor, `adv_ramp`) > 0; `adv_weight` is logged either way.
    """
    return _losses(model, images, target, cfg, lpips=lpips, disc=disc, adv_scale=adv_scale)[0]


def _losses(model, images, target, cfg, *, lpips, disc, adv_scale):
    """(`losses`' dict, the reconstruction) for the discriminator step that follows."""
    from pipelines.discriminator import g_loss
    from pipelines.loader_distill import distill_loss

    out = model(images, precision=cfg.precision, beta=cfg.vq_beta, entropy_temp=cfg.entropy_temp)
    l2 = F.mse_loss(out.recon, images)
    l1 = F.l1_loss(out.recon, images)
    distill = distill_loss(out.pooled, target)
    extra: dict[str, torch.Tensor] = {}
    rec = cfg.l2 * l2 + cfg.l1 * l1  # what the adaptive weight balances the adversarial term to
    if lpips is not None and cfg.lp > 0 and images.shape[-1] >= cfg.lpr:
        extra["lpips"] = lpips.distance(out.recon, images).mean()
        rec = rec + cfg.lp * extra["lpips"]
    total = (rec + cfg.lq * out.quant.commit_loss
             + cfg.le * out.quant.entropy_loss + cfg.ldistill * distill)
    if cfg.ld != 0:
        weight = torch.zeros((), device=images.device)
        if disc is not None and adv_scale > 0:
            d = getattr(disc, "module", disc)  # no DDP here: its own step syncs the discriminator
            d.requires_grad_(False)  # gradients go to the tokenizer only
            try:
                extra["g_adv"] = g_loss(d(out.recon), cfg.dcrit)
            finally:
                d.requires_grad_(True)
            if cfg.ld > 0:
                weight = (adaptive_weight(rec, extra["g_adv"], last_layer(model))
                          * (cfg.ld * adv_scale))
            else:
                weight = weight + abs(cfg.ld) * adv_scale
            total = total + weight * extra["g_adv"]
        extra["adv_weight"] = weight
    return {"loss": total, "l2": l2, "l1": l1, "commit": out.quant.commit_loss,
            "entropy": out.quant.entropy_loss, "distill": distill, "usage_pct": out.quant.usage_pct,
            **extra}, out.recon


def disc_step(disc, opt, real: torch.Tensor, fake: torch.Tensor, cfg: TrainConfig,
              lecam: dict[str, float], world: int = 1) -> torch.Tensor:
    """One discriminator update on real images vs (detached) reconstructions; updates the
    LeCAM EMAs in `lecam` (means over all ranks) in place; returns the loss."""
    from pipelines.discriminator import LECAM_DECAY, d_loss, lecam_reg

    logits = disc(torch.cat([real, fake.detach()]))
    lr_, lf = logits[:real.shape[0]], logits[real.shape[0]:]
    loss = d_loss(lr_, lf, cfg.dcrit)
    if cfg.llecam > 0:
        means = torch.stack([lr_.mean(), lf.mean()]).detach()
        if world > 1:
            torch.distributed.all_reduce(means)
            means = means / world
        r, f = means.tolist()
        lecam["real"] = LECAM_DECAY * lecam["real"] + (1 - LECAM_DECAY) * r
        lecam["fake"] = LECAM_DECAY * lecam["fake"] + (1 - LECAM_DECAY) * f
        loss = loss + cfg.llecam * lecam_reg(lr_, lf, lecam["real"], lecam["fake"])
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    return loss.detach()


def _adamw(module, lr: float, wd: float, betas) -> torch.optim.AdamW:
    """AdamW with weight decay on weights of dim >= 2 only."""
    params = [p for p in module.parameters() if p.requires_grad]
    return torch.optim.AdamW([{"params": [p for p in params if p.dim() >= 2], "weight_decay": wd},
                              {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0}],
                             lr=lr, betas=betas)


def _dist() -> tuple[int, int]:
    """(rank, world_size), initialising torch.distributed when launched by torchrun."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1 and not torch.distributed.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        torch.distributed.init_process_group(backend)
    if world > 1:
        return torch.distributed.get_rank(), world
    return 0, 1


def train(store_root: str, teacher_stage: str, out_dir: str | Path, cfg: TrainConfig, *,
          device: str | None = None, progress: bool = True, stop_after: int | None = None) -> TrainSummary:
    """Train (or resume training) a WinTok; returns where the final checkpoint is.

    `stop_after`: end this call after that many steps in total (the run stays resumable).
    """
    from tqdm import tqdm

    from pipelines.discriminator import build_discriminator
    from pipelines.loader_distill import DistillDataset
    from pipelines.lpips import load_lpips
    from wintok import WinTok, preset
    from wintok.checkpoint import save_pretrained

    rank, world = _dist()
    device = device or (f"cuda:{int(os.environ.get('LOCAL_RANK', 0))}" if torch.cuda.is_available() else "cpu")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(cfg.seed)
    model = WinTok(preset(cfg.preset)).to(device)
    data = DistillDataset(store_root, teacher_stage, batch_size=cfg.batch_size, seed=cfg.seed,
                          rank=rank, world_size=world, drop_last=True)
    if data.dim != model.config.semantic_width:
        raise ValueError(f"the teacher store {teacher_stage} holds {data.dim}-d targets but preset "
                         f"{cfg.preset!r} has {model.config.semantic_width}-d semantic tokens: "
                         f"choose a preset whose semantic_dim matches the teacher")
    lpips = None
    if cfg.lp > 0:
        lpips = load_lpips(cfg.lpips_weights, cfg.lpips_lin).to(device)  # frozen, eval mode
    disc = opt_d = None
    lecam = {"real": 0.0, "fake": 0.0}
    if cfg.ld != 0:
        disc = build_discriminator(cfg.disc_width, cfg.disc_layers, cfg.seed + 1).to(device)
        opt_d = _adamw(disc, cfg.disc_lr, cfg.disc_wd, cfg.disc_optim_beta)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = _adamw(model, cfg.lr, cfg.weight_decay, cfg.betas)
    state_path = out / "train_state.pt"
    start = 0
    if state_path.exists():
        st = torch.load(state_path, map_location="cpu", weights_only=True)
        # fields added since the state was written take their defaults (terms off)
        if {**_jsonable(TrainConfig()), **st["config"]} != _jsonable(cfg):
            raise ValueError(f"{state_path} was written with other settings ({st['config']}); "
                             f"use another --out or the same settings to resume")
        model.load_state_dict(st["model"])
        opt.load_state_dict(st["optimizer"])
        data.load_state_dict(st["data"])
        if disc is not None:
            disc.load_state_dict(st["disc"])
            opt_d.load_state_dict(st["disc_optimizer"])
            lecam = dict(st["lecam"])
        start = int(st["step"])
    net, disc_net = model, disc
    if world > 1:
        ids = [device] if device.startswith("cuda") else None
        net = torch.nn.parallel.DistributedDataParallel(model, device_ids=ids)
        if disc is not None:
            disc_net = torch.nn.parallel.DistributedDataParallel(disc, device_ids=ids)
    end = min(cfg.steps, stop_after) if stop_after else cfg.steps
    log_path = out / "train_log.jsonl"
    bar = tqdm(total=cfg.steps, initial=start, unit="step", desc="train", disable=not progress or rank,
               file=sys.stderr, dynamic_ncols=True)
    t0, step, last = time.perf_counter(), start, {}
    batches = _forever(data)
    model.train()
    while step < end:
        batch = next(batches)
        images = batch["image"].to(device, non_blocking=True)
        if images.shape[-1] != model.image_size:  # stored at the featurize size
            images = F.interpolate(images, size=(model.image_size,) * 2, mode="bicubic",
                                   antialias=True, align_corners=False).clamp(-1, 1)
        for g in opt.param_groups:
            g["lr"] = lr_at(step, cfg)
        parts, recon = _losses(net, images, batch["target"].to(device), cfg, lpips=lpips,
                               disc=disc, adv_scale=adv_ramp(step, cfg))
        opt.zero_grad(set_to_none=True)
        parts["loss"].backward()
        if cfg.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
        opt.step()
        if disc is not None and step >= cfg.disc_start:
            parts["d_loss"] = disc_step(disc_net, opt_d, images, recon, cfg, lecam, world)
        step += 1
        last = {k: float(v.detach()) for k, v in parts.items()}
        if rank == 0 and (step % cfg.log_every == 0 or step == end):
            with open(log_path, "a") as f:
                f.write(json.dumps({"step": step, "lr": lr_at(step - 1, cfg), **last}) + "\n")
            more = {k: f"{last[k]:.3f}" for k in ("lpips", "g_adv", "d_loss") if k in last}
            bar.set_postfix(loss=f"{last['loss']:.4f}", distill=f"{last['distill']:.3f}",
                            usage=f"{last['usage_pct']:.0f}%", **more)
        bar.update(1)
        if rank == 0 and (step % cfg.ckpt_every == 0 or step == end):
            _save_state(state_path, model, opt, data, step, cfg, disc, opt_d, lecam)
    bar.close()
    final = ""
    if rank == 0 and step >= cfg.steps:
        model.eval()
        final = str(save_pretrained(model, out / "model"))
    return TrainSummary(out_dir=str(out), steps_done=step, resumed_from=start, last=last,
                        seconds=time.perf_counter() - t0, checkpoint=final)


def _forever(data):
    """Epoch after epoch; the dataset's own state says which epoch and batch come next."""
    while True:
        yield from data


def _jsonable(cfg: TrainConfig) -> dict:
    return json.loads(json.dumps(asdict(cfg)))


def _save_state(path: Path, model, opt, data, step: int, cfg: TrainConfig, disc=None, opt_d=None,
                lecam: dict[str, float] | None = None) -> None:
    tmp = path.with_name(path.name + ".tmp")
    state = {"model": model.state_dict(), "optimizer": opt.state_dict(), "data": data.state_dict(),
             "step": step, "config": _jsonable(cfg)}
    if disc is not None:  # the adversarial term's state; absent when it is off
        state.update(disc=disc.state_dict(), disc_optimizer=opt_d.state_dict(), lecam=dict(lecam))
    torch.save(state, tmp)
    os.replace(tmp, path)
