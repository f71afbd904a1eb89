#!/usr/bin/env bash
# Triton's perf_analyzer (shipped by tritonclient 2.51 in .venv/bin) with what it needs to start on any machine:
# it links libcudart.so.12 even without a GPU (the nvidia-cuda-runtime-cu12 wheel, installed by scripts/setup.sh)
# and libb64 (Debian's libb64-0d, installed by scripts/setup.sh when it runs as root). Arguments pass through:
#   bash scripts/perf_analyzer.sh -m dlrm -i grpc -u 127.0.0.1:8001 --input-data ensembles/perf_input_dlrm.json -b 16
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
LIB="$("$ROOT/.venv/bin/python" -c 'import nvidia.cuda_runtime as m; print(list(m.__path__)[0] + "/lib")')"
LD_LIBRARY_PATH="$LIB${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}" exec "$ROOT/.venv/bin/perf_analyzer" "$@"
