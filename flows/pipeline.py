"""Prefect flows: one per stage (ingest, featurize, publish) and `wintok-run`, which runs them in order.

Each stage is one Prefect task with retries and exponential backoff on transient failures
(a dead Ray worker, a network or filesystem blip); configuration errors and a locked store
fail at once. Prefect's result cache is off on purpose: the store's commit records decide
what is done, so a rerun skips finished shards even after Prefect's database is gone, and a
store wiped by hand is rebuilt. Each flow records table and Markdown artifacts: counts by
outcome, throughput per stage, store location and lineage.

Import this module only after `flows.settings.configure_prefect_env()`.
"""
from __future__ import annotations

from typing import Any

from prefect import flow, task
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.cache_policies import NO_CACHE
from prefect.tasks import exponential_backoff

from flows import stages
from flows.settings import RunSettings
from flows.stages import StageResult, TransientStageError
from flows.tables import STAGE_COLUMNS, markdown_table, stage_rows


def is_transient(exc: BaseException) -> bool:
    """Errors a retry may fix; validation errors, a locked store or a missing file are not."""
    from pipelines.lock import StoreLockedError

    if isinstance(exc, (StoreLockedError, FileNotFoundError, PermissionError, ValueError)):
        return False
    if isinstance(exc, (TransientStageError, ConnectionError, TimeoutError)):
        return True
    try:
        from ray.exceptions import RaySystemError
    except ImportError:  # ray is a core dependency; this only guards odd installs
        return False
    return isinstance(exc, RaySystemError)


def _retry_transient(task_, task_run, state) -> bool:
    """Prefect retry_condition_fn: retry only when the failure is transient."""
    exc = state.data if isinstance(state.data, BaseException) else None
    if exc is None:
        try:
            state.result(raise_on_failure=True)
        except Exception as e:  # noqa: BLE001  classify whatever the failed state holds
            exc = e
    return exc is not None and is_transient(exc)


_TASK = dict(retries=2, retry_delay_seconds=exponential_backoff(backoff_factor=10),
             retry_jitter_factor=0.5, retry_condition_fn=_retry_transient, cache_policy=NO_CACHE,
             persist_result=False)


@task(name="ingest", **_TASK)
def ingest_task(urls: str, store: str, settings: dict) -> dict:
    """Download the URL list into image shards."""
    s = RunSettings.from_dict(settings)
    return stages.run_ingest(urls, store, s.ingest, s.runtime).to_dict()


@task(name="retry-failed", **_TASK)
def retry_failed_task(store: str, settings: dict) -> dict:
    """Download the retryable failures again."""
    s = RunSettings.from_dict(settings)
    return stages.run_retry_failed(store, s.ingest, s.runtime).to_dict()


@task(name="featurize", **_TASK)
def featurize_task(store: str, settings: dict) -> dict:
    """Tokenizer and teachers over every image shard not yet featurized."""
    s = RunSettings.from_dict(settings)
    return stages.run_featurize(store, s.featurize, s.runtime).to_dict()


@task(name="publish", **_TASK)
def publish_task(store: str, settings: dict) -> dict:
    """Training-ready views (a no-op until pipelines.publish exists)."""
    s = RunSettings.from_dict(settings)
    return stages.run_publish(store, s.publish, s.runtime).to_dict()


def _run_task(t, settings: dict, *args) -> dict:
    rt = RunSettings.from_dict(settings).runtime
    return t.with_options(retries=rt.stage_retries,
                          retry_delay_seconds=exponential_backoff(backoff_factor=rt.retry_delay_s)
                          )(*args, settings)


@flow(name="wintok-ingest")
def ingest_flow(urls: str, store: str, settings: dict) -> dict:
    """Ingest stage: URL list -> committed image shards."""
    res = _run_task(ingest_task, settings, urls, store)
    record_artifacts([StageResult.from_dict(res)], store, key="wintok-ingest")
    return res


@flow(name="wintok-retry-failed")
def retry_failed_flow(store: str, settings: dict) -> dict:
    """Retry the retryable ingest failures into new shards."""
    res = _run_task(retry_failed_task, settings, store)
    record_artifacts([StageResult.from_dict(res)], store, key="wintok-retry-failed")
    return res


@flow(name="wintok-featurize")
def featurize_flow(store: str, settings: dict) -> dict:
    """Featurize stage: image shards -> tokens and teacher features."""
    res = _run_task(featurize_task, settings, store)
    record_artifacts([StageResult.from_dict(res)], store, key="wintok-featurize")
    return res


@flow(name="wintok-publish")
def publish_flow(store: str, settings: dict) -> dict:
    """Publish stage: training-ready views of the tokens."""
    res = _run_task(publish_task, settings, store)
    record_artifacts([StageResult.from_dict(res)], store, key="wintok-publish")
    return res


@flow(name="wintok-run")
def run_flow(urls: str, store: str, settings: dict) -> list[dict]:
    """The whole job: ingest, featurize, publish, in order; each stage resumes from its commits."""
    results = [ingest_flow(urls, store, settings), featurize_flow(store, settings),
               publish_flow(store, settings)]
    record_artifacts([StageResult.from_dict(r) for r in results], store, key="wintok-run")
    return results


def record_artifacts(results: list[StageResult], store: str, *, key: str) -> None:
    """A table artifact (one row per stage) and a Markdown summary of the store."""
    create_table_artifact(stage_rows(results), key=f"{key}-stages",
                          description=f"wintok stages on {store}: counts and throughput")
    create_markdown_artifact(summary_markdown(results, store), key=f"{key}-summary",
                             description=f"wintok run summary for {store}")


def summary_markdown(results: list[StageResult], store: str) -> str:
    """Counts by outcome, failure reasons, throughput per stage, location and lineage."""
    from flows.status import store_status

    st = store_status(store)
    lines = [f"# wintok: {store}", "", f"Store: `{store}`", "",
             "## Samples by outcome", "",
             markdown_table([{"outcome": "stored", "samples": st.stored},
                             {"outcome": "failed", "samples": st.failed},
                             {"outcome": "input rows", "samples": st.input_rows}]), "",
             "## Failure reasons", "",
             markdown_table([{"reason": k, "samples": v} for k, v in st.by_reason.items()]), "",
             "## Stages (this run)", "", markdown_table(stage_rows(results), STAGE_COLUMNS), ""]
    notes = [f"- **{r.stage}**: {r.message}" for r in results if r.message]
    if notes:
        lines += ["## Notes", "", *notes, ""]
    lines += ["## Outputs and lineage", ""]
    for o in st.outputs:
        lines.append(f"- `{o.stage}`: {o.rows} rows in {o.shards_done} shards, "
                     f"{o.decode_failed} decode failures; lineage `{_short(o.lineage)}`")
    return "\n".join(lines) + "\n"


def _short(lineage: dict[str, Any]) -> str:
    keep = ("identity", "checkpoint", "teacher", "family", "semantic_dtype", "dim")
    return ", ".join(f"{k}={lineage[k]}" for k in keep if lineage.get(k) is not None)
