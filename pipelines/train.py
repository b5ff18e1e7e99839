"""`wintok train`: train a WinTok from image shards and stored teacher targets.

Objective (the official WinTok weights by default): l2 * MSE + l1 * L1 reconstruction, lq *
the quantizer's commitment term, le * its entropy term, and ldistill * mean(1 - cos) between
the pooled semantic vector and the stored teacher target (`pipelines.loader_distill`). The
teacher never runs. Perceptual and adversarial terms are not implemented (see README).

Resumable: `<out>/train_state.pt` (model, optimizer, step, data-loader position) is written
every `ckpt_every` steps (temp file, then rename); a rerun continues from it and produces the
same next losses as a run that was never interrupted. Multi-GPU: launch with `torchrun`; each
rank reads its part of the data, gradients are averaged by DDP, rank 0 writes checkpoints.
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

    def __post_init__(self) -> None:
        for name in ("steps", "batch_size", "ckpt_every", "log_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.precision not in ("fp32", "bf16"):
            raise ValueError(f"precision must be fp32 or bf16, got {self.precision!r}")
        if not self.lr > 0:
            raise ValueError(f"lr must be > 0, got {self.lr}")

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "TrainConfig":
        from wintok.config import only_known_fields

        d = only_known_fields(cls, d, "training options")
        if "betas" in d:
            d["betas"] = tuple(d["betas"])
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


def losses(model, images: torch.Tensor, target: torch.Tensor, cfg: TrainConfig) -> dict[str, torch.Tensor]:
    """All loss terms of one batch and their weighted total (`loss`)."""
    from pipelines.loader_distill import distill_loss

    out = model(images, precision=cfg.precision, beta=cfg.vq_beta, entropy_temp=cfg.entropy_temp)
    l2 = F.mse_loss(out.recon, images)
    l1 = F.l1_loss(out.recon, images)
    distill = distill_loss(out.pooled, target)
    total = (cfg.l2 * l2 + cfg.l1 * l1 + cfg.lq * out.quant.commit_loss
             + cfg.le * out.quant.entropy_loss + cfg.ldistill * distill)
    return {"loss": total, "l2": l2, "l1": l1, "commit": out.quant.commit_loss,
            "entropy": out.quant.entropy_loss, "distill": distill, "usage_pct": out.quant.usage_pct}


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

    from pipelines.loader_distill import DistillDataset
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
    params = [p for p in model.parameters() if p.requires_grad]
    decay = [p for p in params if p.dim() >= 2]
    no_decay = [p for p in params if p.dim() < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": cfg.weight_decay},
                             {"params": no_decay, "weight_decay": 0.0}], lr=cfg.lr, betas=cfg.betas)
    state_path = out / "train_state.pt"
    start = 0
    if state_path.exists():
        st = torch.load(state_path, map_location="cpu", weights_only=True)
        if st["config"] != _jsonable(cfg):
            raise ValueError(f"{state_path} was written with other settings ({st['config']}); "
                             f"use another --out or the same settings to resume")
        model.load_state_dict(st["model"])
        opt.load_state_dict(st["optimizer"])
        data.load_state_dict(st["data"])
        start = int(st["step"])
    net = model
    if world > 1:
        net = torch.nn.parallel.DistributedDataParallel(model, device_ids=[device] if device.startswith("cuda") else None)
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
        parts = losses(net, images, batch["target"].to(device), cfg)
        opt.zero_grad(set_to_none=True)
        parts["loss"].backward()
        if cfg.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
        opt.step()
        step += 1
        last = {k: float(v) for k, v in parts.items()}
        if rank == 0 and (step % cfg.log_every == 0 or step == end):
            with open(log_path, "a") as f:
                f.write(json.dumps({"step": step, "lr": lr_at(step - 1, cfg), **last}) + "\n")
            bar.set_postfix(loss=f"{last['loss']:.4f}", distill=f"{last['distill']:.3f}",
                            usage=f"{last['usage_pct']:.0f}%")
        bar.update(1)
        if rank == 0 and (step % cfg.ckpt_every == 0 or step == end):
            _save_state(state_path, model, opt, data, step, cfg)
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


def _save_state(path: Path, model, opt, data, step: int, cfg: TrainConfig) -> None:
    tmp = path.with_name(path.name + ".tmp")
    torch.save({"model": model.state_dict(), "optimizer": opt.state_dict(), "data": data.state_dict(),
                "step": step, "config": _jsonable(cfg)}, tmp)
    os.replace(tmp, path)
