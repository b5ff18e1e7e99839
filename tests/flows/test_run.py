"""`wintok run` end to end under Prefect's test harness: store, verify, status, rerun skips,
artifacts, report, dry-run, exit codes, config files, lock errors, the deployment."""
from __future__ import annotations

import json
import os
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner
from flow_support import commit_records

from flows.cli import cli

N_PHOTOS = 32


def invoke(*args: str):
    res = CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)
    return res


def run_args(urls: Path, store: Path, tokenizer: Path) -> list:
    return ["run", urls, "--store", store, "--tokenizer", tokenizer, "--shard-size", "16",
            "--threads", "8", "--allow-private-network", "--no-progress",
            "--workers", "1", "--threads-per-worker", "1"]


@pytest.fixture(scope="module")
def photos(served) -> Path:
    from pipelines.democorpus import build_demo_corpus

    d, base = served
    return build_demo_corpus(d / "photos32", base_url=f"{base}/photos32", n_images=N_PHOTOS, seed=0)


@pytest.fixture(scope="module")
def first_run(prefect_server, local_ray, photos, tokenizer, tmp_path_factory):
    """The first `wintok run` of the module: (store, CliRunner result)."""
    store = tmp_path_factory.mktemp("e2e") / "store"
    return store, invoke(*run_args(photos, store, tokenizer))


def test_run_builds_a_complete_verified_store(first_run):
    store, res = first_run
    assert res.exit_code == 0, res.output
    for stage in ("ingest", "featurize", "publish"):
        assert any(line.startswith(stage) and " done " in line for line in res.output.splitlines())
    assert len(list((store / "images").glob("0000[0-9].tar"))) == 2
    assert len(list(store.glob("tokens/*/_commits/*.json"))) == 2
    assert len(list(store.glob("features/efficientnet-lite0-*/_commits/*.json"))) == 2
    rows = pq.read_table(sorted(store.glob("tokens/*/0*.parquet"))).num_rows
    assert rows == N_PHOTOS

    ver = invoke("verify", store)
    assert ver.exit_code == 0, ver.output
    st = invoke("status", store)
    assert st.exit_code == 0 and "everything is done" in st.output, st.output
    assert f"{N_PHOTOS} stored, 0 failed" in st.output
    js = json.loads(invoke("status", store, "--json").output)
    assert js["complete"] and js["stored"] == N_PHOTOS and js["lock"] is None


def test_rerun_does_nothing_twice(first_run, photos, tokenizer):
    store, _ = first_run
    before = commit_records(store)
    res = invoke(*run_args(photos, store, tokenizer))
    assert res.exit_code == 0, res.output
    lines = res.output.splitlines()
    for stage in ("ingest", "featurize", "publish"):
        row = next(line for line in lines if line.startswith(stage))
        assert " skipped " in row, row
    assert commit_records(store) == before


def test_prefect_artifacts_hold_the_counts(first_run):
    from prefect.artifacts import Artifact
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowFilter, FlowFilterName

    store, _ = first_run
    table = Artifact.get("wintok-run-stages")
    assert table is not None and table.type == "table"
    rows = {r["stage"]: r for r in json.loads(table.data)}
    assert set(rows) == {"ingest", "featurize", "publish"}
    # the latest run is the rerun: everything skipped, store-wide counts unchanged
    assert rows["ingest"]["ok"] == N_PHOTOS and rows["ingest"]["failed"] == 0
    assert rows["featurize"]["ok"] == N_PHOTOS and rows["featurize"]["status"] == "skipped"
    md = Artifact.get("wintok-run-summary")
    assert md is not None and md.type == "markdown"
    assert f"| stored | {N_PHOTOS} |" in md.data and str(store) in md.data
    assert "tokens/wintok-" in md.data and "identity=" in md.data
    for key in ("wintok-ingest-stages", "wintok-featurize-summary", "wintok-publish-stages"):
        assert Artifact.get(key) is not None, key
    with get_client(sync_client=True) as client:
        runs = client.read_flow_runs(flow_filter=FlowFilter(name=FlowFilterName(any_=["wintok-run"])))
    assert len(runs) == 2 and all(r.state.is_completed() for r in runs)


def test_report_is_one_self_contained_page(first_run, tmp_path):
    store, _ = first_run
    out = tmp_path / "report.html"
    res = invoke("report", store, "-o", out)
    assert res.exit_code == 0, res.output
    page = out.read_text()
    assert "Samples by outcome" in page and f"<td class='n'>{N_PHOTOS}</td>" in page
    assert page.count("data:image/jpeg;base64,") >= 2  # an original and its decoded tokens
    assert "Codebook usage" in page and "% of 4096 entries used" in page
    assert "<img alt='decoded" in page
    assert "src='http" not in page and "href=" not in page  # nothing external


def test_report_says_when_the_checkpoint_is_missing(first_run, tmp_path):
    import shutil

    store, _ = first_run
    copy = shutil.copytree(store, tmp_path / "copy")
    manifest = json.loads((copy / "_manifest.json").read_text())
    for st in manifest["stages"].values():
        if st.get("lineage", {}).get("checkpoint"):
            st["lineage"]["checkpoint"] = str(tmp_path / "gone")
    (copy / "_manifest.json").write_text(json.dumps(manifest))
    res = invoke("report", copy, "-o", tmp_path / "r.html")
    assert res.exit_code == 0, res.output
    assert "is not on this machine" in (tmp_path / "r.html").read_text()


def test_dry_run_prints_the_plan(photos, tokenizer, tmp_path):
    res = invoke("run", photos, "--store", tmp_path / "new", "--tokenizer", tokenizer,
                 "--shard-size", "10", "--dry-run", "--gpu-images-per-s", "100")
    assert res.exit_code == 0, res.output
    assert f"input rows     {N_PHOTOS}" in res.output
    assert "shards         4 of 10 rows" in res.output
    # tiny WinTok: 4x256 uint16 ids + 8x192 float16 semantic = 2048 + 3072 bytes
    assert "5.1 KB" in res.output and "features (efficientnet-lite0)" in res.output
    assert "5.1 KB" in res.output and "GPU-hours at 100 images/s" in res.output
    assert not (tmp_path / "new").exists()


def test_config_file_and_its_errors(photos, tmp_path):
    cfg = tmp_path / "run.yaml"
    cfg.write_text(f"urls: {photos}\nstore: {tmp_path / 's'}\ningest:\n  shard_size: 8\n")
    res = invoke("run", "--config", cfg, "--dry-run")
    assert res.exit_code == 0, res.output
    assert "shards         4 of 8 rows" in res.output
    res = invoke("run", "--config", cfg, "--shard-size", "32", "--dry-run")  # option wins
    assert "shards         1 of 32 rows" in res.output
    toml = tmp_path / "run.toml"
    toml.write_text("[ingest]\nshard_sise = 8\n")
    res = CliRunner().invoke(cli, ["run", str(photos), "--store", "x", "--config", str(toml)])
    assert res.exit_code != 0 and "shard_sise" in res.output and "shard_size" in res.output


def test_failed_samples_give_exit_code_3_and_retry_failed_recovers(prefect_server, served,
                                                                      photos, tmp_path):
    d, base = served
    (d / "hostile").mkdir(exist_ok=True)
    first_photo = sorted((photos.parent / "photos").glob("*.jpg"))[0]
    (d / "hostile" / "flaky.jpg").write_bytes(first_photo.read_bytes() + b"x")  # new sha256
    table = pq.read_table(photos).select(["url"]).slice(0, 6)
    urls = pa.concat_tables([table, pa.table({"url": [f"{base}/_hostile/status/404",
                                                      f"{base}/_hostile/flaky/flaky.jpg"]})])
    path = tmp_path / "urls.parquet"
    pq.write_table(urls, path)
    store = tmp_path / "store"
    res = invoke("ingest", path, "--store", store, "--allow-private-network", "--no-progress",
                 "--threads", "4")
    assert res.exit_code == 3, res.output
    assert "http_error 2" in res.output and "1 failures are retryable" in res.output
    st = invoke("status", store)
    assert "6 stored, 2 failed (1 retryable" in st.output and "http_error 2" in st.output

    res = invoke("retry-failed", store, "--no-progress")
    assert res.exit_code == 3, res.output  # the 404 stays failed: it is final
    st = invoke("status", store)
    assert "7 stored, 1 failed" in st.output, st.output


def test_a_locked_store_names_the_holder_and_the_way_out(prefect_server, photos, tmp_path):
    store = tmp_path / "store"
    store.mkdir()
    from pipelines.store import open_store

    open_store(str(store), create=True)
    (store / "_lock.json").write_text(json.dumps({"host": os.uname().nodename, "pid": 999999,
                                                  "run_id": "dead-run", "acquired_at": 0}))
    res = CliRunner().invoke(cli, ["ingest", str(photos), "--store", str(store),
                                   "--allow-private-network", "--no-progress"])
    assert res.exit_code == 1
    assert "dead-run" in res.output and "--take-over-lock" in res.output
    assert "LOCKED" in invoke("status", store).output


def test_usage_errors_exit_2(tmp_path):
    assert CliRunner().invoke(cli, ["run", "--store", str(tmp_path)]).exit_code == 2
    assert CliRunner().invoke(cli, ["run", "u.parquet", "--semantic-dtype", "f8"]).exit_code == 2


def test_deployment_builds_without_a_server():
    from flows.deploy import build_deployment

    dep = build_deployment(urls="s3://bucket/urls.parquet", store="s3://bucket/store",
                           cron="0 3 * * *", settings_file=None)
    assert dep.name == "wintok-nightly"
    assert dep.parameters["urls"] == "s3://bucket/urls.parquet"
    assert dep.parameters["settings"]["ingest"]["shard_size"] == 1000


def test_example_config_loads_with_the_defaults():
    from flows.settings import RunSettings, load_settings

    root = Path(__file__).resolve().parents[2]
    s = load_settings(root / "configs" / "example.yaml")
    assert s.urls == "urls.parquet" and s.store == "./store"
    assert (s.ingest, s.featurize, s.publish, s.runtime) == (
        RunSettings().ingest, RunSettings().featurize, RunSettings().publish, RunSettings().runtime)


def test_a_transient_stage_failure_is_retried_and_a_bad_setting_is_not(prefect_server, first_run,
                                                                       monkeypatch):
    from flows import pipeline, stages
    from flows.settings import RunSettings
    from flows.stages import StageResult, TransientStageError

    store, _ = first_run
    calls = []

    def flaky(store_root, s, rt):
        calls.append(1)
        if len(calls) == 1:
            raise TransientStageError("a worker died")
        return StageResult(stage="publish", status="skipped", store=store_root)

    monkeypatch.setattr(stages, "run_publish", flaky)
    settings = RunSettings().merged({"runtime": {"stage_retries": 2, "retry_delay_s": 0.0}})
    assert pipeline.publish_flow(str(store), settings.to_dict())["status"] == "skipped"
    assert len(calls) == 2

    def bad(store_root, s, rt):
        calls.append(1)
        raise ValueError("format 'x' not one of ('packed', 'npy')")

    monkeypatch.setattr(stages, "run_publish", bad)
    calls.clear()
    with pytest.raises(ValueError, match="format 'x'"):
        pipeline.publish_flow(str(store), settings.to_dict())
    assert len(calls) == 1
