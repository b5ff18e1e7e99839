"""Run featurize over a store's shards on Ray: a pool of actors, each holding the models once.

One actor per GPU when the cluster has GPUs (the actor asks for `num_gpus=1`; Ray pins it to
its device), CPU actors otherwise. Shards are handed out one at a time; an actor that dies
(killed, node lost) is replaced and its shard retried, up to `max_retries`, then the shard is
reported failed with the error. Embedded by default (a local Ray started in-process); a
cluster when given its address.
"""
from __future__ import annotations

import logging
import math
import os
import sys
import time
from dataclasses import dataclass, field
from typing import Any

from pipelines.featurize import (IMAGES_STAGE, FeaturizeSpec, ShardFeaturizer, ShardResult,
                                 create_output_arrays, plan_outputs)
from pipelines.store import Store, new_run_id, open_store

log = logging.getLogger(__name__)


# Why a shard failed: its worker process died every attempt (retryable later), no worker could
# be placed (cluster too small), or the shard itself raised (e.g. a truncated tar: fix the input).
FAILURE_KINDS = ("worker_died", "no_worker", "error")


@dataclass
class FeaturizeSummary:
    run_id: str
    outputs: dict[str, dict]  # stage -> lineage description
    shards_total: int = 0
    shards_done: int = 0
    shards_skipped: int = 0  # already committed before this run
    shards_failed: dict[int, str] = field(default_factory=dict)  # shard -> error
    failure_kinds: dict[int, str] = field(default_factory=dict)  # shard -> FAILURE_KINDS entry
    samples: int = 0
    featurized: int = 0
    decode_failed: int = 0
    retries: int = 0
    seconds: float = 0.0
    seconds_by_part: dict[str, float] = field(default_factory=dict)
    workers: dict[str, Any] = field(default_factory=dict)  # worker -> {device, gpu_ids, shards}

    @property
    def images_per_s(self) -> float:
        return self.featurized / self.seconds if self.seconds else 0.0

    @property
    def ok(self) -> bool:
        return not self.shards_failed


def _make_actor_class(num_gpus: float, num_cpus: float):
    import ray

    @ray.remote(num_gpus=num_gpus, num_cpus=num_cpus, max_restarts=0)
    class FeaturizeActor:
        def __init__(self, spec, store, capacity, name, threads):
            import torch

            if threads:
                torch.set_num_threads(threads)
            self.name = name
            self.inner = ShardFeaturizer(spec, store, capacity=capacity, worker=name)

        def process(self, shard: int) -> ShardResult:
            return self.inner.process(shard)

        def where(self) -> dict:
            """Answered once the models are loaded: where this worker runs."""
            return {"worker": self.name, "pid": os.getpid(),
                    "node_id": ray.get_runtime_context().get_node_id(),
                    "gpu_ids": [str(g) for g in ray.get_gpu_ids()]}

    return FeaturizeActor


def _ensure_ray(address: str | None) -> bool:
    """Start (or connect to) Ray; returns True when this call started it."""
    import ray

    if ray.is_initialized():
        return False
    kwargs: dict[str, Any] = {"include_dashboard": False, "log_to_driver": True,
                              "logging_level": logging.WARNING}
    if address:
        ray.init(address=address, **kwargs)
    else:
        ray.init(num_cpus=os.cpu_count(), **kwargs)
    return True


def plan_featurize(spec: FeaturizeSpec) -> list:
    """The output stages a spec writes (`pipelines.featurize.Output`), named by model identity:
    loads the models on CPU once to learn their identities."""
    from wintok.preprocess import Preprocess
    from wintok.teachers import build_teacher
    from wintok.tokenizer import load_tokenizer

    kw = {"image_size": spec.image_size} if spec.image_size else {}
    tok = load_tokenizer(spec.tokenizer, **kw) if spec.tokenizer else None
    teachers = {t: build_teacher(t) for t in spec.teachers}
    pre = Preprocess(size=tok.image_size if tok else spec.image_size or 256, resize=spec.resize)
    return plan_outputs(spec, tok, teachers, pre)


def featurize(store_root: str, spec: FeaturizeSpec, *, ray_address: str | None = None,
              num_workers: int | None = None, threads_per_worker: int | None = None,
              max_retries: int = 2, shards: list[int] | None = None, progress: bool = True,
              take_over_lock: bool = False, storage_options: dict | None = None,
              on_dispatch=None) -> FeaturizeSummary:
    """Featurize every committed image shard of a store that is not yet done; resumable.

    `num_workers`: actors (default: one per GPU, else 1). `max_retries`: attempts after an
    actor dies mid-shard. `on_dispatch(shard, attempt, worker_info)` is called as each shard
    is handed to a worker (`worker_info`: worker, pid, node_id, gpu_ids), for monitoring.
    Returns a summary; failed shards are listed with their error.
    """
    import ray

    if max_retries < 0:
        raise ValueError(f"max_retries must be >= 0, got {max_retries}")
    store = open_store(store_root, storage_options=storage_options)
    images = store.commits(IMAGES_STAGE)
    if not images:
        raise RuntimeError(f"{store_root} has no committed image shards: run ingest first")
    settings = store.manifest().get("stages", {}).get(IMAGES_STAGE, {}).get("settings", {})
    capacity = int(settings.get("shard_size") or max(r.counts.get("stored", 0) for r in images.values()))
    capacity = max(capacity, max(r.counts.get("stored", 0) for r in images.values()))
    num_shards = max(images) + 1
    wanted = sorted(images) if shards is None else sorted(set(shards))
    missing = [s for s in wanted if s not in images]
    if missing:
        raise ValueError(f"shards {missing[:10]} have no committed images in {store_root}")

    outputs = plan_featurize(spec)
    run_id = new_run_id()
    summary = FeaturizeSummary(run_id=run_id, outputs={o.stage: o.description for o in outputs})
    t0 = time.perf_counter()
    with store.writer(take_over=take_over_lock, run_id=run_id):
        for o in outputs:
            create_output_arrays(store, o, num_shards=num_shards, capacity=capacity)
            store.record_run(o.stage, {**spec.to_dict(), "capacity": capacity}, run_id=run_id,
                             lineage=o.description)
        committed = {o.stage: set(store.list_committed(o.stage)) for o in outputs}
        todo = [s for s in wanted if not all(s in committed[o.stage] for o in outputs)]
        summary.shards_total = len(wanted)
        summary.shards_skipped = len(wanted) - len(todo)
        if todo:
            started = _ensure_ray(ray_address)
            try:
                _run_pool(store, spec, todo, capacity, summary, num_workers,
                          threads_per_worker, max_retries, progress, on_dispatch)
            finally:
                if started:
                    ray.shutdown()
        summary.seconds = time.perf_counter() - t0
        result = {"shards_done": summary.shards_done, "shards_failed": summary.shards_failed,
                  "featurized": summary.featurized, "decode_failed": summary.decode_failed,
                  "images_per_s": round(summary.images_per_s, 3)}
        for o in outputs:
            store.finish_run(o.stage, run_id=run_id, result=result)
    return summary


def _run_pool(store: Store, spec: FeaturizeSpec, todo: list[int], capacity: int,
              summary: FeaturizeSummary, num_workers: int | None,
              threads: int | None, max_retries: int, progress: bool, on_dispatch,
              startup_timeout: float = 600.0) -> None:
    import ray
    from ray.exceptions import RayError, RayTaskError
    from tqdm import tqdm

    gpus = int(ray.cluster_resources().get("GPU", 0))
    cpus = ray.cluster_resources().get("CPU", 1)
    n = num_workers or (gpus or 1)
    n = min(n, len(todo))
    per_gpu = 1 if gpus else 0
    per_cpu = max(1, math.floor(cpus / n)) if not gpus else (1 if cpus >= n else 0)
    actor_cls = _make_actor_class(per_gpu, per_cpu)
    threads = threads or (per_cpu if not gpus else None)
    serial = 0
    # An actor is "starting" until it answers where() (models loaded, resources granted); only
    # then does it get work, so a replacement that can never be placed (its node is gone) does
    # not swallow a shard.
    starting: dict[Any, tuple[str, Any, float]] = {}
    idle: list[tuple[str, Any]] = []
    placement: dict[str, dict] = {}  # worker -> {pid, node_id, gpu_ids}
    running: dict[Any, tuple[int, int, str, Any]] = {}  # future -> (shard, attempt, name, actor)

    def start_actor() -> None:
        nonlocal serial
        serial += 1
        name = f"worker-{serial}"
        actor = actor_cls.remote(spec, store, capacity, name, threads)
        starting[actor.where.remote()] = (name, actor, time.monotonic())

    for _ in range(n):
        start_actor()
    queue = [(s, 0) for s in todo]
    bar = tqdm(total=len(todo), unit="shard", desc="featurize", disable=not progress,
               file=sys.stderr, dynamic_ncols=True)
    try:
        while queue or running:
            while queue and idle:
                shard, attempt = queue.pop(0)
                name, actor = idle.pop(0)
                running[actor.process.remote(shard)] = (shard, attempt, name, actor)
                if on_dispatch is not None:
                    on_dispatch(shard, attempt, placement[name])
            if not running and not idle and starting:
                oldest = min(t for _, _, t in starting.values())
                if time.monotonic() - oldest > startup_timeout:
                    for shard, _ in queue:
                        summary.failure_kinds[shard] = "no_worker"
                        summary.shards_failed[shard] = (
                            f"no featurize worker could start within {startup_timeout:.0f}s "
                            f"(not enough {'GPUs' if gpus else 'CPUs'} left in the cluster?)")
                    queue.clear()
                    break
            done, _ = ray.wait(list(running) + list(starting), num_returns=1, timeout=10.0)
            if not done:
                continue
            fut = done[0]
            if fut in starting:
                name, actor, _ = starting.pop(fut)
                try:
                    placement[name] = ray.get(fut)
                    idle.append((name, actor))
                except RayTaskError as e:  # the models failed to load: a configuration error
                    raise RuntimeError(f"featurize worker {name} could not start: "
                                       f"{_cause(e)}") from None
                except RayError as e:
                    if getattr(e, "actor_init_failed", False):  # its __init__ raised: config error
                        raise RuntimeError(f"featurize worker {name} could not start: "
                                           f"{_cause(e)}") from None
                    log.warning("worker %s died while starting (%s); starting another",
                                name, type(e).__name__)
                    if queue:
                        start_actor()
                continue
            shard, attempt, name, actor = running.pop(fut)
            try:
                res: ShardResult = ray.get(fut)
            except RayTaskError as e:
                # A Python error inside the shard (e.g. a truncated tar): retrying won't fix it.
                summary.shards_failed[shard] = _cause(e)
                summary.failure_kinds[shard] = "error"
                idle.append((name, actor))
                bar.update(1)
                continue
            except RayError as e:
                # The actor process is gone (killed, OOM, node removed): replace it, retry.
                reason = f"worker {name} died while featurizing shard {shard} ({type(e).__name__})"
                log.warning(reason)
                start_actor()
                if attempt < max_retries:
                    summary.retries += 1
                    queue.append((shard, attempt + 1))
                else:
                    summary.shards_failed[shard] = reason + f", {attempt + 1} attempts"
                    summary.failure_kinds[shard] = "worker_died"
                    bar.update(1)
                continue
            idle.append((name, actor))
            summary.shards_done += 1
            summary.samples += res.samples
            summary.featurized += res.featurized
            summary.decode_failed += len(res.failures)
            for k, v in res.seconds.items():
                summary.seconds_by_part[k] = summary.seconds_by_part.get(k, 0.0) + v
            w = summary.workers.setdefault(res.worker, {"device": res.device, "shards": [],
                                                        **placement.get(res.worker, {})})
            w["shards"].append(shard)
            bar.update(1)
            bar.set_postfix(img_s=f"{summary.featurized / max(bar.format_dict['elapsed'], 1e-9):.1f}",
                            failed=len(summary.shards_failed))
    finally:
        bar.close()
        for _, actor in idle:
            ray.kill(actor)
        for _, actor, _ in starting.values():
            ray.kill(actor)
        for _, _, _, actor in running.values():
            ray.kill(actor)


def _cause(e: Exception) -> str:
    """The last line of the original Python error inside a Ray task, trimmed."""
    cause = getattr(e, "cause", None)
    if cause is not None:
        return f"{type(cause).__name__}: {str(cause).strip()}"[:1000]
    lines = str(e).strip().splitlines()
    return lines[-1][:1000] if lines else repr(e)
