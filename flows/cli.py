"""The `wintok` command line.

Exit codes: 0 success, 1 failure (the message says why and what to do), 2 usage error,
3 partial success (some samples failed; the work that could be done is done).
"""
from __future__ import annotations

import sys
from pathlib import Path

import click

EXIT_OK, EXIT_FAIL, EXIT_USAGE, EXIT_PARTIAL = 0, 1, 2, 3


def _fail(msg: str) -> "click.exceptions.Exit":
    click.secho(f"error: {msg}", fg="red", err=True)
    return click.exceptions.Exit(EXIT_FAIL)


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
def cli() -> None:
    """WinTok: turn image corpora into training data for visual tokenizers.

    \b
    Single images:   wintok encode IMG -c CKPT -o tokens.json
                     wintok decode tokens.json -c CKPT -o image.png
    Try it:          wintok demo
    """


@cli.command()
@click.argument("image", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("-c", "--checkpoint", required=True, type=click.Path(exists=True, path_type=Path),
              help="Tokenizer checkpoint: a save_pretrained directory, an official WinTok .pth "
                   "or an official WeTok .ckpt.")
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False, path_type=Path),
              help="Token file to write (JSON).")
@click.option("--resize", type=click.Choice(["center-crop", "squash", "pad"]),
              default="center-crop", show_default=True,
              help="How the image becomes a square input (recorded in the file).")
@click.option("--semantic/--no-semantic", default=False, show_default=True,
              help="Also store the continuous semantic tokens (WinTok).")
@click.option("--semantic-dtype", type=click.Choice(["float16", "float32"]), default="float16",
              show_default=True)
@click.option("--encoder-config", type=click.Path(exists=True, path_type=Path), default=None,
              help="Local SigLIP config (dir or config.json) for official checkpoints whose "
                   "encoder shape is not a released one.")
@click.option("--device", default="cpu", show_default=True, help="cpu, cuda, cuda:1, ...")
@click.option("--precision", type=click.Choice(["fp32", "bf16"]), default="fp32",
              show_default=True, help="Network precision (the quantizer is always float32).")
def encode(image: Path, checkpoint: Path, output: Path, resize: str, semantic: bool,
           semantic_dtype: str, encoder_config: Path | None, device: str, precision: str) -> None:
    """Encode IMAGE into a token file."""
    from wintok.errors import WinTokError
    from wintok.tokenfile import TokenFile

    try:
        tok = _load(checkpoint, encoder_config)
        pre = _preprocess_for(tok, resize)
        from wintok.preprocess import load_for_tokenizer

        x, orig = load_for_tokenizer(image, pre)
        tok.to(device)
        out = tok.encode(x.to(device), precision=precision)
        sem = out.semantic[0].cpu().numpy() if (semantic and out.semantic is not None) else None
        if semantic and out.semantic is None:
            click.echo(f"note: {tok.family} has no semantic tokens; none stored", err=True)
        tf = TokenFile(layout=tok.layout, identity=tok.identity, source=str(checkpoint),
                       preprocess=pre, original_size=orig,
                       ids=out.ids[0].cpu().numpy().astype("uint16"), semantic=sem)
        tf.save(output, semantic_dtype=semantic_dtype)
    except WinTokError as e:
        raise _fail(str(e))
    click.echo(f"{image} -> {output}: {tok.layout.num_streams}x{tok.layout.positions} ids "
               f"({tok.layout.bits_per_id} bits each), checkpoint {tok.identity}")


@cli.command()
@click.argument("tokens", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("-c", "--checkpoint", required=True, type=click.Path(exists=True, path_type=Path),
              help="The checkpoint that made the token file.")
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False, path_type=Path),
              help="Image to write (PNG or JPEG by extension).")
@click.option("--force", is_flag=True, help="Decode even if the file was made by another checkpoint.")
@click.option("--encoder-config", type=click.Path(exists=True, path_type=Path), default=None)
@click.option("--device", default="cpu", show_default=True)
@click.option("--precision", type=click.Choice(["fp32", "bf16"]), default="fp32", show_default=True)
def decode(tokens: Path, checkpoint: Path, output: Path, force: bool,
           encoder_config: Path | None, device: str, precision: str) -> None:
    """Decode a token file back into an image."""
    import torch
    from PIL import Image

    from wintok.errors import WinTokError
    from wintok.preprocess import to_uint8
    from wintok.tokenfile import read_token_file

    try:
        tf = read_token_file(tokens)
        tok = _load(checkpoint, encoder_config)
        if tf.layout != tok.layout:
            raise _fail(f"{tokens} has layout {tf.layout.to_dict()} but {checkpoint} produces "
                        f"{tok.layout.to_dict()}; use the checkpoint that made it")
        if tf.identity != tok.identity:
            msg = (f"{tokens} was made by checkpoint {tf.identity} ({tf.source}), not "
                   f"{tok.identity}: ids mean nothing to another checkpoint")
            if not force:
                raise _fail(msg + ". Pass --force to decode anyway.")
            click.secho(f"warning: {msg}; decoding anyway (--force)", fg="yellow", err=True)
        tok.to(device)
        ids = torch.from_numpy(tf.ids.astype("int64"))[None].to(device)
        img = to_uint8(tok.decode(ids, precision=precision))[0]
    except WinTokError as e:
        raise _fail(str(e))
    Image.fromarray(img).save(output)
    click.echo(f"{tokens} -> {output} ({img.shape[1]}x{img.shape[0]})")


def _load(checkpoint: Path, encoder_config: Path | None):
    from wintok.tokenizer import load_tokenizer

    kwargs = {"encoder_config": encoder_config} if encoder_config else {}
    return load_tokenizer(checkpoint, **kwargs).eval()


def _preprocess_for(tok, resize: str):
    from wintok.preprocess import Preprocess

    return Preprocess(size=tok.image_size, resize=resize)


@cli.command()
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), default=Path("demo-out"),
              show_default=True, help="Where the demo writes its files.")
def demo(out: Path) -> None:
    """Encode and decode a bundled photo with a tokenizer (runs offline, on CPU)."""
    from flows.demo import run_single_image_demo

    run_single_image_demo(out)


def main() -> None:
    try:
        cli.main(standalone_mode=True)
    except KeyboardInterrupt:
        click.secho("interrupted", fg="red", err=True)
        sys.exit(130)


if __name__ == "__main__":
    main()
