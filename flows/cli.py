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
    Try it (offline, ~1-2 min):  wintok demo
    The whole job:               wintok run urls.parquet --store ./store --tokenizer CKPT
    See the plan first:          wintok run urls.parquet --store ./store --dry-run
    One stage at a time:         wintok ingest | featurize | publish
    Look at a store:             wintok status STORE | verify STORE | report STORE
    Redo failed downloads:       wintok retry-failed STORE
    Single images:               wintok encode IMG -c CKPT -o tokens.json
                                 wintok decode tokens.json -c CKPT -o image.png

    \b
    Exit codes: 0 success, 1 failure, 2 usage error, 3 partial success (some
    samples failed; everything else is done).
    Settings: command-line options > --config FILE (YAML/TOML, see
    configs/example.yaml) > defaults. Set PREFECT_API_URL to record runs on a
    Prefect server and --ray-address to use a Ray cluster; by default both run
    embedded and stop with the command.
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
@click.option("--image-size", type=int, default=None,
              help="Input size for an official WeTok checkpoint (conv nets take any size; "
                   "default: its config's, else 256).")
@click.option("--device", default="cpu", show_default=True, help="cpu, cuda, cuda:1, ...")
@click.option("--precision", type=click.Choice(["fp32", "bf16"]), default="fp32",
              show_default=True, help="Network precision (the quantizer is always float32).")
def encode(image: Path, checkpoint: Path, output: Path, resize: str, semantic: bool,
           semantic_dtype: str, encoder_config: Path | None, image_size: int | None, device: str,
           precision: str) -> None:
    """Encode IMAGE into a token file."""
    from wintok.errors import WinTokError
    from wintok.tokenfile import TokenFile

    try:
        tok = _load(checkpoint, encoder_config, image_size)
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
@click.option("--image-size", type=int, default=None,
              help="Input size for an official WeTok checkpoint (conv nets take any size; "
                   "default: its config's, else 256).")
@click.option("--device", default="cpu", show_default=True)
@click.option("--precision", type=click.Choice(["fp32", "bf16"]), default="fp32", show_default=True)
def decode(tokens: Path, checkpoint: Path, output: Path, force: bool,
           encoder_config: Path | None, image_size: int | None, device: str, precision: str) -> None:
    """Decode a token file back into an image."""
    import torch
    from PIL import Image

    from wintok.errors import WinTokError
    from wintok.preprocess import to_uint8
    from wintok.tokenfile import read_token_file

    try:
        tf = read_token_file(tokens)
        tok = _load(checkpoint, encoder_config, image_size)
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


def _load(checkpoint: Path, encoder_config: Path | None, image_size: int | None = None):
    from wintok.tokenizer import load_tokenizer

    kwargs = {"encoder_config": encoder_config} if encoder_config else {}
    if image_size:
        kwargs["image_size"] = image_size
    return load_tokenizer(checkpoint, **kwargs).eval()


def _preprocess_for(tok, resize: str):
    from wintok.preprocess import Preprocess

    return Preprocess(size=tok.image_size, resize=resize)


from flows import commands  # noqa: E402,F401  (registers run, ingest, featurize, ...)
from flows.train_cli import evaluate, train  # noqa: E402

cli.add_command(train)
cli.add_command(evaluate)


def main() -> None:
    try:
        cli.main(standalone_mode=True)
    except KeyboardInterrupt:
        click.secho("interrupted", fg="red", err=True)
        sys.exit(130)


if __name__ == "__main__":
    main()
