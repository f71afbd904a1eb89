#!/usr/bin/env bash
# Installs everything, then runs the linters, the type checker and the whole test suite (unit and real-server tiers).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/ruff check .
.venv/bin/ruff format --check .
.venv/bin/mypy
.venv/bin/python -m pytest "$@"
