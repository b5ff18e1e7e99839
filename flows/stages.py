"""The stages as plain functions: settings in, a `StageResult` out. No Prefect here.

Each function lets the store's commit records decide what is left to do: a stage whose
shards are all committed is reported `skipped` without taking the lock or starting Ray.
"""
from __future__ import annotations

import contextlib
import importlib
import os
import sys
import time
from dataclasses import asdict, dataclass, field
from typing import Any

from flows.settings import FeaturizeSettings, IngestSettings, PublishSettings, RuntimeSettings

DONE, SKIPPED, FAILED, UNAVAILABLE = "done", "skipped", "failed", "unavailable"


class TransientStageError(RuntimeError):
    """A stage stopped for a reason a retry can fix (a worker died, a network blip)."""


@dataclass
class StageResult:
    """What one stage did in this run, plus store-wide totals for its outputs."""

    stage: str  # ingest | featurize | publish
    status: str  # done | skipped | failed | unavailable
    store: str
    run_id: str | None = None
    shards_total: int = 0  # shards of the stage in the store after this run
    shards_run: int = 0  # shards processed by this run
    shards_skipped: int = 0  # already committed before this run
    samples_run: int = 0  # samples processed by this run
    ok: int = 0  # store-wide: stored (ingest) / featurized rows (featurize)
    failed: int = 0  # store-wide samples that failed, with reasons below
    by_reason: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0
    items_per_s: float = 0.0  # samples per second of this run's work
    outputs: dict[str, dict] = field(default_factory=dict)  # stage dir -> lineage
    message: str = ""

    @property
    def partial(self) -> bool:
        """Some samples failed (the rest is done): exit code 3."""
        return self.failed > 0

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "StageResult":
        return cls(**d)


@contextlib.contextmanager
def stdout_to_stderr():
    """Send chatter (img2dataset's workers, model loaders, Ray worker logs) to stderr, so stdout
    holds only the command's results; works at the file-descriptor level for child processes."""
    sys.stdout.flush()
    try:
        saved = os.dup(1)
    except OSError:  # no fd 1 (embedded interpreters): redirect Python-level output only
        saved = None
    if saved is not None:
        os.dup2(2, 1)
    try:
        with contextlib.redirect_stdout(sys.stderr):
            yield
    finally:
        if saved is not None:
            os.dup2(saved, 1)
            os.close(saved)


def ingest_kwargs(s: IngestSettings) -> dict[str, Any]:
    """IngestSettings as pipelines.ingest.ingest keyword arguments."""
    return asdict(s)


def _ingest_result(stage: str, summary, store: str, t0: float, message: str) -> StageResult:
    """StageResult of a pipelines.ingest IngestSummary (ingest or retry-failed)."""
    ran = summary.shards_done_this_run
    return StageResult(
        stage=stage, status=DONE if ran else SKIPPED, store=store, run_id=summary.run_id,
        shards_total=summary.shards_total, shards_run=ran, shards_skipped=summary.shards_total - ran,
        samples_run=summary.samples_this_run, ok=summary.stored, failed=summary.failed,
        by_reason=dict(summary.by_reason), seconds=time.time() - t0,
        items_per_s=summary.images_per_s if ran else 0.0, message=message)


def run_ingest(urls: str, store: str, s: IngestSettings, rt: RuntimeSettings) -> StageResult:
    """Download the URL list into the store (resumes; committed shards are not redone)."""
    from pipelines.ingest import ingest

    t0 = time.time()
    with stdout_to_stderr():
        summary = ingest(urls, store, **ingest_kwargs(s), take_over=rt.take_over_lock,
                         progress=rt.progress)
    return _ingest_result("ingest", summary, store, t0,
                          f"{summary.retryable_failed} failures are retryable: "
                          f"`wintok retry-failed {store}`" if summary.retryable_failed else "")


def run_retry_failed(store: str, s: IngestSettings | None, rt: RuntimeSettings) -> StageResult:
    """Download again the retryable failures (timeouts, network errors, 5xx, 429)."""
    from pipelines.ingest import retry_failed

    t0 = time.time()
    kw = {"processes": s.processes, "threads": s.threads, "timeout": s.timeout} if s else {}
    with stdout_to_stderr():
        summary = retry_failed(store, **kw, take_over=rt.take_over_lock, progress=rt.progress)
    return _ingest_result("retry-failed", summary, store, t0,
                          "new image shards are featurized by the next `wintok featurize` or "
                          "`wintok run`" if summary.shards_done_this_run else "nothing retryable")


def featurize_spec(s: FeaturizeSettings):
    """FeaturizeSettings -> pipelines.featurize.FeaturizeSpec (validated there)."""
    from pipelines.featurize import FeaturizeSpec

    return FeaturizeSpec(tokenizer=s.tokenizer, teachers=tuple(s.teachers),
                         semantic_dtype=s.semantic_dtype, teacher_patches=s.teacher_patches,
                         hflip=s.hflip, batch_size=s.batch_size, precision=s.precision, resize=s.resize,
                         decode_threads=s.decode_threads)


def planned_outputs(spec) -> list:
    """The output stages (tokens/<lineage>, features/<lineage>) a spec writes."""
    from pipelines.executor import plan_featurize

    return plan_featurize(spec)


def _featurize_totals(store, stages: list[str]) -> tuple[int, int, int]:
    """(shards committed in every output, rows, decode failures) summed over one output."""
    from pipelines.featurize import IMAGES_STAGE

    images = set(store.list_committed(IMAGES_STAGE))
    commits = {st: store.commits(st) for st in stages}
    done = [s for s in images if all(s in c for c in commits.values())]
    first = commits[stages[0]] if stages else {}
    rows = sum(r.counts.get("rows", 0) for r in first.values())
    failed = sum(r.counts.get("decode_failed", 0) for r in first.values())
    return len(done), rows, failed


def run_featurize(store_root: str, s: FeaturizeSettings, rt: RuntimeSettings) -> StageResult:
    """Run the tokenizer and teachers over every committed image shard not yet featurized."""
    from pipelines.executor import featurize
    from pipelines.featurize import IMAGES_STAGE
    from pipelines.store import open_store

    t0 = time.time()
    spec = featurize_spec(s)
    store = open_store(store_root)
    images = store.list_committed(IMAGES_STAGE)
    if not images:
        raise RuntimeError(f"{store_root} has no committed image shards: run `wintok ingest` first")
    with stdout_to_stderr():
        outputs = planned_outputs(spec)
    stages = [o.stage for o in outputs]
    lineage = {o.stage: o.description for o in outputs}
    done_before, _, _ = _featurize_totals(store, stages)
    if done_before == len(images):
        _, rows, failed = _featurize_totals(store, stages)
        return StageResult(stage="featurize", status=SKIPPED, store=store_root,
                           shards_total=len(images), shards_skipped=len(images), ok=rows,
                           failed=failed, by_reason={"decode_error": failed} if failed else {},
                           seconds=time.time() - t0, outputs=lineage)
    with stdout_to_stderr():
        summary = featurize(store_root, spec, ray_address=rt.ray_address, num_workers=s.workers,
                            threads_per_worker=s.threads_per_worker, max_retries=s.max_retries,
                            progress=rt.progress, take_over_lock=rt.take_over_lock)
    if summary.shards_failed:
        listing = "; ".join(f"shard {k}: {v}" for k, v in sorted(summary.shards_failed.items())[:5])
        transient = all(k in ("worker_died", "no_worker") for k in summary.failure_kinds.values())
        msg = (f"featurize left {len(summary.shards_failed)} shard(s) unfinished ({listing}). "
               "Committed shards are kept; rerun the same command to redo only these.")
        if transient:
            raise TransientStageError(msg)
        raise RuntimeError(msg)
    _, rows, failed = _featurize_totals(store, stages)
    return StageResult(
        stage="featurize", status=DONE, store=store_root, run_id=summary.run_id,
        shards_total=summary.shards_total, shards_run=summary.shards_done,
        shards_skipped=summary.shards_skipped, samples_run=summary.samples, ok=rows, failed=failed,
        by_reason={"decode_error": failed} if failed else {}, seconds=time.time() - t0,
        items_per_s=summary.images_per_s, outputs=lineage,
        message=f"{summary.retries} shard retries after worker deaths" if summary.retries else "")


def publish_available() -> bool:
    """Whether pipelines.publish provides `publish()` (built by another workstream)."""
    try:
        mod = importlib.import_module("pipelines.publish")
    except ModuleNotFoundError:
        return False
    return callable(getattr(mod, "publish", None))


def run_publish(store_root: str, s: PublishSettings, rt: RuntimeSettings) -> StageResult:
    """Publish every token stage as pre-tokenized webdataset shards (pipelines.publish)."""
    from pipelines.store import open_store
    from pipelines.verify import output_stages

    t0 = time.time()
    if not s.enabled:
        return StageResult(stage="publish", status=SKIPPED, store=store_root,
                           message="publish disabled in the settings ([publish] enabled: false)")
    if not publish_available():
        # Deliberate no-op: pipelines/publish.py is not in this checkout.
        return StageResult(stage="publish", status=UNAVAILABLE, store=store_root,
                           message="publish is not available in this install (pipelines/publish.py "
                                   "has no publish()); tokens and features are in the store")
    from pipelines.publish import publish, published_stage

    store = open_store(store_root)
    token_stages = ([s.token_stage if s.token_stage.startswith("tokens/") else f"tokens/{s.token_stage}"]
                    if s.token_stage else
                    [st for st in output_stages(store) if st.startswith("tokens/")])
    res = StageResult(stage="publish", status=SKIPPED, store=store_root)
    if not token_stages:
        res.message = "no token stage to publish (featurize ran without --tokenizer)"
        return res
    for tokens in token_stages:
        target = published_stage(store, tokens)
        have = set(store.list_committed(tokens))
        todo = have - set(store.list_committed(target))
        res.shards_total += len(have)
        res.shards_skipped += len(have) - len(todo)
        if todo:
            t1 = time.time()
            out = publish(store_root, tokens, format=s.format, label_column=s.label_column,
                          take_over_lock=rt.take_over_lock)
            res.shards_run += len(out.shards_written)
            res.samples_run += out.samples
            res.status = DONE
            res.items_per_s = out.samples / max(time.time() - t1, 1e-9)
        commits = store.commits(target)
        res.ok += sum(r.counts.get("samples", 0) for r in commits.values())
        res.outputs[target] = {"token_stage": tokens, "format": s.format,
                               "label_column": s.label_column}
    res.seconds = time.time() - t0
    return res
