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
# --no-compile: byte-compiling every installed file (torch alone has thousands) takes about a minute; Python
# compiles what is imported on first use instead.
.venv/bin/python -m pip install --quiet --no-compile --disable-pip-version-check -c constraints.txt -e '.[dev]'
bash scripts/install_torchrec.sh
# The library that keeps the embedded server's admin key off its command line (generator/deploy/admin_key.py),
# compiled from source with the system's C compiler; without one it says so (serve then refuses, naming the fix).
.venv/bin/python -m generator.deploy.admin_key
# The native Triton backend (generator/native): C++17 built with CMake (from PyPI, above) and the system's g++,
# against RapidJSON's headers (Debian's rapidjson-dev). Without them it says why and recgen keeps the Python models.
if [ ! -f /usr/include/rapidjson/document.h ] && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
  (apt-get install -y -qq rapidjson-dev || (apt-get update -qq && apt-get install -y -qq rapidjson-dev)) >/dev/null \
    || echo "warning: apt-get install rapidjson-dev failed; the native backend will not build"
fi
.venv/bin/python -m generator.native
# perf_analyzer (tritonclient 2.51) needs libb64 to start (scripts/perf_analyzer.sh finds the CUDA runtime it links).
if ! ldconfig -p | grep -q 'libb64\.so\.0d'; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    (apt-get update -qq && apt-get install -y -qq libb64-0d) >/dev/null || echo "warning: apt-get install libb64-0d failed; perf_analyzer will not start"
  else
    echo "note: perf_analyzer needs libb64 (as root: apt-get install libb64-0d); nothing else does"
  fi
fi
