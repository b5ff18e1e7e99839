"""`wintok demo`: what the project can do, end to end, offline on a CPU."""
from __future__ import annotations

from pathlib import Path

import click


def demo_tokenizer(out: Path):
    """The tokenizer the demo uses: the `tiny` preset, random-initialised from seed 0 and
    saved to out/checkpoint. Until a trained small checkpoint ships (issue 7) its
    reconstructions are noise; the point is the mechanics: ids, files, lineage."""
    import torch

    from wintok import WinTok, preset, save_pretrained

    torch.manual_seed(0)
    model = WinTok(preset("tiny")).eval()
    return save_pretrained(model, out / "checkpoint"), model


def run_single_image_demo(out: Path) -> None:
    """Encode a bundled photo (scikit-image's astronaut) to a token file and decode it back."""
    import numpy as np
    from click.testing import CliRunner
    from PIL import Image
    from skimage import data

    from flows.cli import cli

    out.mkdir(parents=True, exist_ok=True)
    src = out / "astronaut.png"
    Image.fromarray(data.astronaut()).save(src)
    ckpt, model = demo_tokenizer(out)
    runner = CliRunner()
    for args in (["encode", str(src), "-c", str(ckpt), "-o", str(out / "tokens.json"), "--semantic"],
                 ["decode", str(out / "tokens.json"), "-c", str(ckpt), "-o", str(out / "decoded.png")]):
        res = runner.invoke(cli, args)
        click.echo(res.output.rstrip())
        if res.exit_code != 0:
            raise click.exceptions.Exit(res.exit_code)
    size = (out / "tokens.json").stat().st_size
    dec = np.asarray(Image.open(out / "decoded.png"))
    click.echo(f"\ncheckpoint  {ckpt} ({model.identity}, tiny preset, UNTRAINED: random init)")
    click.echo(f"tokens      {out / 'tokens.json'} ({size} bytes, {model.layout.num_streams} "
               f"codebooks x {model.layout.positions} positions x {model.layout.bits_per_id} bits)")
    click.echo(f"decoded     {out / 'decoded.png'} {dec.shape[1]}x{dec.shape[0]}")
