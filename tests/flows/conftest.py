"""Fixtures for the flow tests: a Prefect test server, a local Ray, a served photo corpus."""
from __future__ import annotations

from pathlib import Path

import pytest

from flows.settings import configure_prefect_env

configure_prefect_env()  # before anything imports prefect: no telemetry, quiet logs


@pytest.fixture(scope="module")
def prefect_server():
    """One Prefect test server per module (its start takes ~15 s); yields its API URL."""
    from prefect.settings import PREFECT_API_URL
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=180):
        yield PREFECT_API_URL.value()


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """(corpus dir, base URL) of a loopback server with the hostile routes (/_hostile/status/404)."""
    from pipelines.loopback import serve_directory

    d = tmp_path_factory.mktemp("corpus")
    with serve_directory(d, hostile=True) as base:
        yield d, base


@pytest.fixture(scope="module")
def tokenizer() -> Path:
    """The demo tokenizer (the shipped small WinTok)."""
    from flows.demo import default_tokenizer_checkpoint

    return default_tokenizer_checkpoint()
