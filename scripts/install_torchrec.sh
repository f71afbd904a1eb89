#!/usr/bin/env bash
# The TorchRec extra, into .venv: what torchrec imports (recgen[torchrec]), then torchrec and the CPU fbgemm that
# pair with torch 2.13 with --no-deps (a plain `pip install torchrec` pulls the CUDA fbgemm-gpu or another torch).
set -euo pipefail
cd "$(dirname "$0")/.."
PIP=(.venv/bin/python -m pip install --quiet --disable-pip-version-check -c constraints.txt)
"${PIP[@]}" -e '.[torchrec]'
"${PIP[@]}" --no-deps torchrec fbgemm-gpu-cpu
