#!/usr/bin/env bash
# Installs everything, then runs the linters, the type checker and the whole test suite (unit and real-server tiers).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/ruff check .
.venv/bin/ruff format --check .
.venv/bin/mypy
# Two workers by default (CI has 2 cores; RECGEN_TEST_WORKERS changes it); each test file stays on one worker, so
# the servers a module shares are started once.
.venv/bin/python -m pytest -n "${RECGEN_TEST_WORKERS:-2}" --dist loadfile "$@"
