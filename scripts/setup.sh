#!/usr/bin/env bash
# Creates .venv (if missing) and installs recgen with every dependency and the TorchRec extra, pinned by
# constraints.txt.
# PYTHON picks the interpreter (default python3; the torch pin has a CPU wheel for 3.11 on these machines).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
.venv/bin/python -m pip install --quiet --disable-pip-version-check -c constraints.txt -e '.[dev]'
bash scripts/install_torchrec.sh
# The library that keeps the embedded server's admin key off its command line (generator/deploy/admin_key.py),
# compiled from source with the system's C compiler; without one it says so (serve then refuses, naming the fix).
.venv/bin/python -m generator.deploy.admin_key
