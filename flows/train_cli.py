"""`wintok train` and `wintok eval`: train a tokenizer from a store, measure reconstructions."""
from __future__ import annotations

import json
from pathlib import Path

import click


def _fail(msg: str) -> click.exceptions.Exit:
    click.secho(f"error: {msg}", fg="red", err=True)
    return click.exceptions.Exit(1)


@click.command()
@click.argument("store")
@click.option("--teacher-store", required=True,
              help="Teacher features of STORE to distil from: features/<name> or just <name> "
                   "(see `wintok status STORE`).")
@click.option("--config", "preset", default="small-64", show_default=True,
              help="WinTok preset to train (wintok.config.PRESETS); its semantic width must "
                   "equal the teacher's embedding width.")
@click.option("--out", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="Run directory: train_state.pt (resumable), train_log.jsonl, model/ at the end.")
@click.option("--steps", type=int, default=3000, show_default=True)
@click.option("--batch-size", type=int, default=16, show_default=True, help="Per rank.")
@click.option("--lr", type=float, default=4e-4, show_default=True)
@click.option("--precision", type=click.Choice(["fp32", "bf16"]), default="fp32", show_default=True)
@click.option("--ckpt-every", type=int, default=250, show_default=True)
@click.option("--perceptual-weight", "lp", type=float, default=None,
              help="LPIPS loss weight (TrainConfig lp; default 0: off). Needs --lpips-weights.")
@click.option("--adv-weight", "ld", type=float, default=None,
              help="Adversarial loss weight (TrainConfig ld; default 0: off): > 0 scales the "
                   "adaptive weight, < 0 is a fixed weight abs(ld). More in --options "
                   "(disc_start, disc_warmup, dcrit, llecam, disc_lr, ...).")
@click.option("--lpips-weights", type=click.Path(exists=True, dir_okay=False), default=None,
              help="For --perceptual-weight: lpips_with_vgg.pth (official WinTok layout) or "
                   "torchvision's VGG16 .pth.")
@click.option("--lpips-lin", type=click.Path(exists=True, dir_okay=False), default=None,
              help="LPIPS linear weights (the lpips package's vgg.pth) to go with a torchvision VGG16.")
@click.option("--options", default=None,
              help='More TrainConfig fields as JSON, e.g. \'{"le": 0.05, "warmup_steps": 50}\'.')
@click.option("--threads", type=int, default=None,
              help="torch CPU threads (1 avoids oversubscription on small shared machines).")
def train(store: str, teacher_store: str, preset: str, out: Path, steps: int, batch_size: int,
          lr: float, precision: str, ckpt_every: int, lp: float | None, ld: float | None,
          lpips_weights: str | None, lpips_lin: str | None, options: str | None,
          threads: int | None) -> None:
    """Train a WinTok on STORE's images with its stored teacher targets (resumes from --out).

    \b
    Multi-GPU:  torchrun --nproc_per_node 8 -m flows.cli train STORE --teacher-store ... --out ...
    """
    import torch

    from pipelines.train import TrainConfig
    from pipelines.train import train as run_train
    from wintok.errors import WinTokError

    if threads:
        torch.set_num_threads(threads)
    stage = teacher_store if teacher_store.startswith("features/") else f"features/{teacher_store}"
    try:
        extra = json.loads(options) if options else {}
        given = {k: v for k, v in (("lp", lp), ("ld", ld)) if v is not None}
        given.update({k: str(Path(v).resolve()) for k, v in (("lpips_weights", lpips_weights),
                                                            ("lpips_lin", lpips_lin)) if v})
        cfg = TrainConfig.from_dict({"preset": preset, "steps": steps, "batch_size": batch_size,
                                     "lr": lr, "precision": precision, "ckpt_every": ckpt_every,
                                     **given, **extra})
        res = run_train(store, stage, out, cfg)
    except (ValueError, FileNotFoundError, json.JSONDecodeError, WinTokError) as e:
        raise _fail(str(e))
    click.echo(f"steps {res.steps_done} (resumed from {res.resumed_from}) in {res.seconds:.0f}s; "
               f"last loss {res.last.get('loss', float('nan')):.4f}, distill "
               f"{res.last.get('distill', float('nan')):.4f}, codebook usage "
               f"{res.last.get('usage_pct', float('nan')):.1f}%")
    if res.checkpoint:
        click.echo(f"checkpoint: {res.checkpoint}")


@click.command(name="eval")
@click.argument("source")
@click.option("-c", "--checkpoint", type=click.Path(exists=True, path_type=Path), default=None,
              help="Tokenizer for an image folder (a store's tokens name their own).")
@click.option("--tokens", default=None, help="Token store of SOURCE when it holds several.")
@click.option("--limit", type=int, default=None, help="Evaluate at most this many images.")
@click.option("--resize", type=click.Choice(["center-crop", "squash", "pad"]), default="center-crop",
              show_default=True, help="Image folders only.")
@click.option("-o", "--out", default=None, help="Per-image results (Parquet).")
@click.option("--lpips-weights", type=click.Path(exists=True, dir_okay=False), default=None,
              help="LPIPS: lpips_with_vgg.pth (official WinTok layout) or torchvision's VGG16 .pth.")
@click.option("--lpips-lin", type=click.Path(exists=True, dir_okay=False), default=None,
              help="LPIPS linear weights (the lpips package's vgg.pth) to go with a torchvision VGG16.")
@click.option("--fid-weights", type=click.Path(exists=True, dir_okay=False), default=None,
              help="rFID: the FID InceptionV3 weights, torch-fidelity's "
                   "weights-inception-2015-12-05-6726825d.pth or pytorch-fid's "
                   "pt_inception-2015-12-05-6726825d.pth.")
@click.option("--device", default="cpu", show_default=True)
def evaluate(source: str, checkpoint: Path | None, tokens: str | None, limit: int | None,
             resize: str, out: str | None, lpips_weights: str | None, lpips_lin: str | None,
             fid_weights: str | None, device: str) -> None:
    """PSNR / SSIM of reconstructions, plus LPIPS and rFID given their networks' weights:
    decode a store's tokens, or encode+decode an image folder (ImageNet-val class folders,
    COCO val2017, any tree of images)."""
    from pipelines.evaluate import evaluate_folder, evaluate_store
    from pipelines.fid import load_fid_inception
    from pipelines.lpips import load_lpips
    from wintok.errors import WinTokError

    src = Path(source)
    try:
        lp = load_lpips(lpips_weights, lpips_lin) if lpips_weights else None
        fid = load_fid_inception(fid_weights) if fid_weights else None
        if (src / "_manifest.json").exists():
            s = evaluate_store(source, tokens, limit=limit, out=out, device=device, lpips=lp,
                               fid=fid)
        else:
            if checkpoint is None:
                raise ValueError("an image folder needs --checkpoint")
            s = evaluate_folder(src, checkpoint, resize=resize, limit=limit, out=out,
                                device=device, lpips=lp, fid=fid)
    except (ValueError, FileNotFoundError, WinTokError) as e:
        raise _fail(str(e))
    extra = f"   LPIPS {s.lpips:.4f}" if s.lpips is not None else ""
    extra += f"   rFID {s.rfid:.3f}" if s.rfid is not None else ""
    click.echo(f"images {s.images}   PSNR {s.psnr:.2f} dB   SSIM {s.ssim:.4f}{extra}")
    if s.codebook_usage_pct:
        click.echo("codebook usage " + " ".join(f"{u:.1f}%" for u in s.codebook_usage_pct))
    if s.failed:
        click.echo(f"{len(s.failed)} images could not be read, e.g. {s.failed[0][0]}: {s.failed[0][1]}")
    if s.per_image:
        click.echo(f"per-image results: {s.per_image}")
    missing = [m for m, given in (("LPIPS: --lpips-weights", lpips_weights),
                                  ("rFID: --fid-weights", fid_weights)) if not given]
    if missing:
        click.echo("not measured (needs weights on disk): " + "; ".join(missing))
    if fid_weights and s.rfid is None:
        click.echo("rFID: needs at least 2 images")
    if s.rfid is not None and s.images < 10_000:
        click.echo(f"note: rFID over {s.images} images is biased upwards; published numbers use "
                   f"50,000 (ImageNet val)")
