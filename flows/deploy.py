"""A scheduled deployment of the `wintok-run` flow on a Prefect server.

    export PREFECT_API_URL=http://prefect-host:4200/api
    python -m flows.deploy --urls s3://bucket/urls.parquet --store s3://bucket/store \\
        --config configs/example.yaml --cron "0 3 * * *"

This process then serves the deployment: the server schedules runs and this process executes
them (Prefect's `serve`, no work pool needed). Each scheduled run resumes the same store, so
only new or unfinished shards are processed. Set `runtime.ray_address` in the config to run
featurize on a Ray cluster.
"""
from __future__ import annotations

import argparse

from flows.settings import RunSettings, configure_prefect_env, load_settings

DEPLOYMENT_NAME = "wintok-nightly"


def build_deployment(*, urls: str, store: str, cron: str | None = "0 3 * * *",
                     settings_file: str | None = None, name: str = DEPLOYMENT_NAME):
    """The deployment object (no server contacted until it is served or applied)."""
    configure_prefect_env()
    from flows.pipeline import run_flow

    settings = load_settings(settings_file) if settings_file else RunSettings()
    settings = settings.merged({"runtime": {"progress": False}})
    return run_flow.to_deployment(
        name=name, cron=cron, parameters={"urls": urls, "store": store, "settings": settings.to_dict()},
        description=f"wintok: ingest {urls}, featurize and publish into {store}",
        tags=["wintok"])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--urls", required=True, help="URL list (local path or fsspec URL)")
    ap.add_argument("--store", required=True, help="store root")
    ap.add_argument("--config", default=None, help="YAML/TOML settings (configs/example.yaml)")
    ap.add_argument("--cron", default="0 3 * * *", help="schedule (cron syntax, server time zone)")
    ap.add_argument("--name", default=DEPLOYMENT_NAME)
    a = ap.parse_args()
    dep = build_deployment(urls=a.urls, store=a.store, cron=a.cron, settings_file=a.config, name=a.name)
    from prefect import serve

    serve(dep)


if __name__ == "__main__":
    main()
