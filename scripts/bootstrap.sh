#!/usr/bin/env bash
# Create (or refresh) .venv/ in the repo root with everything the project needs.
# Idempotent and cheap when nothing changed: a stamp records what was installed.
#   TORCH_SPEC   torch requirement to install first (default torch==2.13.0, the CPU build
#                on this kind of machine; GPU users: install their CUDA build, see README)
#   PYTHON       interpreter used to create the venv (default python3)
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
TORCH_SPEC=${TORCH_SPEC:-torch==2.13.0}
if [ ! -x .venv/bin/python ]; then
  echo "[bootstrap] creating .venv with $($PYTHON --version)" >&2
  "$PYTHON" -m venv .venv
fi
stamp=.venv/.wintok-bootstrap
want=$(cat pyproject.toml scripts/bootstrap.sh | sha256sum | cut -c1-16)-$TORCH_SPEC
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  echo "[bootstrap] installing dependencies into .venv (first time: a few minutes)" >&2
  .venv/bin/python -m pip install -q --upgrade pip
  .venv/bin/python -m pip install -q "$TORCH_SPEC"
  .venv/bin/python -m pip install -q -e ".[dev,hf]" "$TORCH_SPEC"
  # img2dataset pulls the Python 3.6 `dataclasses` backport, which shadows the standard
  # library and kills Prefect's ephemeral API server (docs/dependencies.md).
  .venv/bin/python -m pip uninstall -q -y dataclasses >/dev/null 2>&1 || true
  echo "$want" > "$stamp"
fi
