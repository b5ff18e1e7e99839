"""`wintok demo`: the whole pipeline, offline, on real photos served from a loopback server.

    <out>/corpus/       photos + urls.parquet (pipelines.democorpus)
    <out>/store/        the store: images/, features/, tokens/, published/
    <out>/report.html   the report (flows.report)
"""
from __future__ import annotations

import shutil
import time
from pathlib import Path

import click

DEMO_SHARD_SIZE = 16


SHIPPED_CHECKPOINT = Path(__file__).resolve().parents[1] / "wintok" / "assets" / "small-64"


def default_tokenizer_checkpoint() -> Path:
    """The tokenizer the demo uses: the shipped small WinTok (wintok/assets/small-64, trained
    by scripts/make_demo_checkpoint.py on photos the demo corpus is cut from)."""
    from wintok.tokenizer import load_tokenizer

    load_tokenizer(SHIPPED_CHECKPOINT)  # a missing or corrupt file fails here, naming itself
    return SHIPPED_CHECKPOINT


def _images_complete(store: Path, n_rows: int) -> bool:
    """Whether the store's ingest finished for a URL list of n_rows rows."""
    from flows.status import store_status

    if not (store / "_manifest.json").is_file():
        return False
    st = store_status(str(store))
    return st.input_rows == n_rows and st.image_shards_expected > 0 and not st.image_shards_missing


def _prepare_corpus(out: Path, base_url: str, n_images: int) -> Path:
    """The URL list: reused when the store already holds its images (so ingest is skipped),
    otherwise rebuilt for this server (and any half-ingested demo store is cleared)."""
    from pipelines.democorpus import build_demo_corpus

    urls, store = out / "corpus" / "urls.parquet", out / "store"
    if urls.is_file() and _images_complete(store, n_images):
        return urls
    if store.exists():
        click.echo(f"demo: {store} holds an unfinished or different demo ingest; starting it again",
                   err=True)
        shutil.rmtree(store)
    return build_demo_corpus(out / "corpus", base_url=base_url, n_images=n_images, seed=0)


def run_demo(out: Path, *, n_images: int = 48, fresh: bool = False, verbose: bool = False) -> int:
    """Build/serve the corpus, run the `wintok-run` flow, write the report; returns the exit code."""
    from flows.settings import RunSettings, configure_prefect_env

    from flows.commands import exit_code, print_summary, run_flow_cli

    if n_images < 1:
        raise click.BadParameter(f"--images must be >= 1, got {n_images}")
    out = Path(out).resolve()
    if fresh and out.exists():
        for sub in ("store", "corpus", "report.html"):
            p = out / sub
            shutil.rmtree(p) if p.is_dir() else p.unlink(missing_ok=True)
    (out / "corpus").mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    ckpt = default_tokenizer_checkpoint()
    store = out / "store"
    settings = RunSettings().merged({
        "ingest": {"shard_size": DEMO_SHARD_SIZE, "allow_private_network": True, "threads": 8},
        "featurize": {"tokenizer": str(ckpt), "batch_size": 16},
    })
    configure_prefect_env(settings.runtime, verbose=verbose)
    from pipelines.loopback import serve_directory

    with serve_directory(out / "corpus", hostile=False) as base_url:
        urls = _prepare_corpus(out, base_url, n_images)
        click.echo(f"demo: {n_images} photos served from {base_url}; store {store}", err=True)
        results = run_flow_cli("run_flow", str(urls), str(store), settings=settings,
                               verbose=verbose)
    print_summary(results, str(store))
    from flows.report import write_report

    report = out / "report.html"
    write_report(str(store), report)
    click.echo("\n" + describe_store(store))
    click.echo(f"\nreport:    {report}")
    click.echo(f"tokenizer: {ckpt} (the shipped small-64 WinTok: 64 px, 8x8x4 ids, trained "
               "on CPU; see README)")
    click.echo(f"demo took {time.time() - t0:.0f}s; rerun reuses the store, --fresh starts clean")
    return exit_code(results)


def describe_store(store: Path) -> str:
    """Each stage directory of a local store with its committed shards and size on disk."""
    lines = [f"store {store}:"]
    for kind in ("images", "features", "tokens", "published"):
        base = store / kind
        if not base.is_dir():
            continue
        dirs = [base] if kind == "images" else sorted(p for p in base.iterdir() if p.is_dir())
        for d in dirs:
            shards = len(list((d / "_commits").glob("*.json")))
            size = sum(f.stat().st_size for f in d.rglob("*") if f.is_file())
            lines.append(f"  {str(d.relative_to(store)):<52} {shards:>3} shards  "
                         f"{size / 1e6:8.2f} MB")
    return "\n".join(lines)
