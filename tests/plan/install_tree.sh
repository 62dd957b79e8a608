#!/usr/bin/env bash
# SPDX-License-Identifier: MIT
# `cmake --install` of the build tree into a temporary prefix, then the prefix moved elsewhere: the
# installed binary must find its hardware tables, runtime configs and tokenizer under
# <prefix>/share/v4rt (not in the source or build tree it came from).
#   install_tree.sh <cmake> <build dir> <work dir>
set -euo pipefail
CMAKE=$1 BUILD=$2 WORK=$3
rm -rf "$WORK"
mkdir -p "$WORK"
WORK=$(cd "$WORK" && pwd)
"$CMAKE" --install "$BUILD" --prefix "$WORK/prefix" >"$WORK/install.log"
fail() { echo "FAILED: $*"; exit 1; }
for f in bin/v4rt share/v4rt/configs/hardware/h200.yaml share/v4rt/configs/flash_1x8_h200.yaml \
         share/v4rt/configs/pro_4x8_h200.yaml share/v4rt/configs/calibration/h200_1gpu.yaml \
         share/v4rt/scripts/slurm/serve.sbatch share/v4rt/scripts/slurm/rank_env.sh share/v4rt/examples/requests.jsonl; do
  [ -e "$WORK/prefix/$f" ] || fail "cmake --install did not install $f"
done
[ -x "$WORK/prefix/share/v4rt/scripts/slurm/rank_env.sh" ] || fail "rank_env.sh lost its execute bit"
echo "ok - cmake --install put the binary, configs, scripts and examples under the prefix"

# Move the whole prefix: nothing may point back at the old place.
mv "$WORK/prefix" "$WORK/moved"
V4RT="$WORK/moved/bin/v4rt"
help=$("$V4RT" plan --help)
grep -q -- "--config-dir TEXT=$WORK/moved/share/v4rt/configs" <<<"$help" ||
  fail "plan --config-dir default is not the installed configs: $(grep -- --config-dir <<<"$help")"
# A table that exists only in the installed tree proves where the tables are read from.
cp "$WORK/moved/share/v4rt/configs/hardware/h200.yaml" "$WORK/moved/share/v4rt/configs/hardware/installed-only.yaml"
out=$("$V4RT" plan --model flash --nodes 1 --gpus-per-node 8 --gpu installed-only --context 65536) ||
  fail "plan with the installed hardware table failed: $out"
grep -q "recommended: tp=" <<<"$out" || fail "no recommendation: $out"
echo "ok - the moved binary reads hardware tables from <prefix>/share/v4rt/configs"
out=$("$V4RT" plan --model flash --nodes 1 --gpus-per-node 8 --gpu h200 --context 65536 \
      --write-config "$WORK/deploy.yaml" --model-dir /models/flash)
grep -q "mpirun -np 8 $WORK/moved/bin/v4rt serve --config $WORK/deploy.yaml --backend cuda" <<<"$out" ||
  fail "mpirun line does not name the installed binary: $out"
echo "ok - plan --write-config prints the installed binary's mpirun line"

if [ -f "$WORK/moved/share/v4rt/tokenizer/tokenizer.json" ]; then
  ids=$(env -u V4RT_TOKENIZER "$V4RT" tokenize --text "hello")
  [ "$ids" = "$(env -u V4RT_TOKENIZER "$BUILD/launch/v4rt" tokenize --text "hello")" ] || fail "tokenize: $ids"
  # A broken installed tokenizer must be the one that fails (the source tree's is intact).
  echo '{}' >"$WORK/moved/share/v4rt/tokenizer/tokenizer.json"
  if err=$(env -u V4RT_TOKENIZER "$V4RT" tokenize --text "hello" 2>&1); then fail "tokenize read another tokenizer: $err"; fi
  grep -q "$WORK/moved/share/v4rt/tokenizer/tokenizer.json" <<<"$err" || fail "error does not name the installed tokenizer: $err"
  echo "ok - the moved binary reads <prefix>/share/v4rt/tokenizer/tokenizer.json"
else
  echo "note: data/tokenizer/tokenizer.json not fetched, tokenizer install not checked"
fi
