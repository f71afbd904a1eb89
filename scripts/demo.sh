#!/usr/bin/env bash
# Installs everything, then runs the main job end to end on the embedded tritonserver:
# example DLRM -> sharded repository + ensemble -> tritonserver -> requests over HTTP and gRPC -> compare -> stop.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/recgen demo "$@"
