#!/usr/bin/env bash
# The test command: installs missing dependencies, builds the CPU tree (and compiles the CUDA tree
# when nvcc is present), then runs every CPU test (unit, golden, mpi, fuzz smoke). GPU-labelled
# tests skip cleanly without a device.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-deps.sh
JOBS=${V4RT_JOBS:-$(nproc)}
cmake --preset cpu-release >/dev/null
cmake --build --preset cpu-release -j "$JOBS"
if command -v nvcc >/dev/null 2>&1 || [[ -x /usr/local/cuda/bin/nvcc ]]; then
  cmake --preset cuda-release >/dev/null
  cmake --build --preset cuda-release -j "$JOBS"
fi
ctest --test-dir build/cpu --output-on-failure -j "$JOBS" "$@"
