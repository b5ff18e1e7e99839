"""Prefect flows that run the pipeline stages, and the `wintok` command line.

    settings.py   run settings (dataclasses, YAML/TOML files)
    stages.py     each stage as a plain function -> StageResult (the store decides what is done)
    pipeline.py   Prefect tasks and flows (retries, artifacts): wintok-ingest/-featurize/-publish/-run
    status.py     what a store holds, read from its commit records
    plan.py       `run --dry-run`: shards, storage, GPU-hours
    report.py     `wintok report`: one self-contained HTML page
    demo.py       `wintok demo`: the whole pipeline offline on real photos
    deploy.py     a scheduled Prefect deployment of wintok-run
    cli.py, commands.py   the command line
"""
