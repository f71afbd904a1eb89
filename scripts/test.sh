#!/usr/bin/env bash
# Installs everything, then runs the linters, the type checker and the whole test suite (unit and real-server tiers).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
# The native tier (tests/native) serves the AddressSanitizer and UBSan build of the native backend, so a memory or
# undefined-behaviour error in it fails the run; RECGEN_NATIVE_SANITIZE=0 serves the plain build instead. It
# compiles on the second core while the linters run on the first.
export RECGEN_NATIVE_SANITIZE="${RECGEN_NATIVE_SANITIZE:-1}"
sanitized=""
if [ "$RECGEN_NATIVE_SANITIZE" = 1 ]; then
  .venv/bin/python -m generator.native --sanitize > /dev/null &
  sanitized=$!
fi
.venv/bin/ruff check .
.venv/bin/ruff format --check .
.venv/bin/mypy
if [ -n "$sanitized" ]; then
  wait "$sanitized"
fi
# Two workers by default (CI has 2 cores; RECGEN_TEST_WORKERS changes it); each test file stays on one worker, so
# the servers a module shares are started once.
.venv/bin/python -m pytest -n "${RECGEN_TEST_WORKERS:-2}" --dist loadfile "$@"
