#!/usr/bin/env bash
# SPDX-License-Identifier: MIT
# End-to-end test of speculative decoding in `v4rt serve` (--mtp N) with the `openai` npm client:
#   run_serve_mtp.sh <path/to/v4rt> <work dir> [np]
# Writes the embedded tiny model with an MTP block, records greedy answers from a one-rank server
# without drafting, then checks that a one-rank server with --mtp 2 and (np > 1) an np-rank server
# under mpirun with --mtp 2 and the configs/tp<np>.yaml layout give the same tokens, and that their
# /metrics report the verify steps (tests/e2e/serve_mtp.cjs). LAYOUT=sp or ep picks configs/sp<np>.yaml
# or ep<np>.yaml instead. Exit code 77 when npm is missing.
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
NP=${3:-2}
source "$HERE/serve_lib.sh"
e2e_prepare "$1" "$2"
trap 'e2e_stop >/dev/null 2>&1 || true' EXIT
cd "$WORK"
[ -f "$WORK/mtp/tiny/model.safetensors.index.json" ] || "$V4RT" init-model --preset tiny --mtp --out "$WORK/mtp/tiny" >/dev/null
e2e_config "$WORK/mtp.yaml"
sed -i "s|^model: .*|model: $WORK/mtp/tiny|" "$WORK/mtp.yaml"

e2e_start 1 "$WORK/mtp.yaml" mtp_ref
BASE_URL=$BASE_URL API_KEY=$API_KEY REF_OUT="$WORK/mtp_ref.json" timeout 200 node serve_mtp.cjs
e2e_stop

E2E_SERVE_ARGS="--mtp 2" e2e_start 1 "$WORK/mtp.yaml" mtp_np1
BASE_URL=$BASE_URL API_KEY=$API_KEY REF_IN="$WORK/mtp_ref.json" EXPECT_DEPTH=2 timeout 200 node serve_mtp.cjs
e2e_stop || { echo "FAILED: the --mtp server did not exit cleanly"; exit 1; }

if [ "$NP" -gt 1 ]; then
  e2e_config "$WORK/mtp_np$NP.yaml" "$(grep '^parallel:' "$HERE/../../configs/${LAYOUT:-tp}$NP.yaml")"
  sed -i "s|^model: .*|model: $WORK/mtp/tiny|" "$WORK/mtp_np$NP.yaml"
  E2E_SERVE_ARGS="--mtp 2" e2e_start "$NP" "$WORK/mtp_np$NP.yaml" "mtp_np$NP"
  BASE_URL=$BASE_URL API_KEY=$API_KEY EXPECT_RANKS=$NP REF_IN="$WORK/mtp_ref.json" EXPECT_DEPTH=2 \
    timeout 300 node serve_mtp.cjs
  e2e_stop || { echo "FAILED: the $NP-rank --mtp server did not exit cleanly"; exit 1; }
fi
echo "ok - serve --mtp 2 equals plain greedy on 1 and $NP rank(s)"
