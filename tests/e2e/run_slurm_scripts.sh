#!/usr/bin/env bash
# SPDX-License-Identifier: MIT
# scripts/slurm on a CPU machine without Slurm: bash syntax of every script, the launch lines they
# generate (DRY_RUN=1, with the environment Slurm would set), the refusal of a config made for
# another world size, the per-rank GPU binding of rank_env.sh, and one real run of the generated
# mpirun line (LAUNCHER=mpirun BACKEND=cpu: `v4rt batch` over examples/requests.jsonl with
# configs/tp2.yaml on 2 ranks).
#   run_slurm_scripts.sh <path/to/v4rt> <work dir>
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
V4RT=$(realpath "$1")
mkdir -p "$2"
WORK=$(cd "$2" && pwd)
S=$ROOT/scripts/slurm
fail() { echo "FAILED: $*"; exit 1; }
expect_in() { grep -qF -- "$1" <<<"$2" || fail "'$1' not in: $2"; }

for f in "$S"/serve.sbatch "$S"/batch.sbatch "$S"/launch_lib.sh "$S"/rank_env.sh; do
  bash -n "$f" || fail "bash -n $f"
done
echo "ok - bash -n of every script in scripts/slurm"

# What Slurm sets for `sbatch --nodes=2` on nodes of 8 GPUs (nothing inherited from the caller).
unset LAUNCHER NODES GPUS_PER_NODE BACKEND DRY_RUN PORT V4RT_API_KEY SLURM_JOB_NUM_NODES SLURM_GPUS_ON_NODE
slurm() { env SLURM_JOB_NUM_NODES=2 SLURM_GPUS_ON_NODE=8 SLURM_SUBMIT_DIR="$ROOT" V4RT=/opt/v4rt/bin/v4rt DRY_RUN=1 "$@"; }
out=$(slurm bash "$S/serve.sbatch" configs/flash_2x8_h200.yaml --model /models/DeepSeek-V4-Flash 2>&1)
expect_in "srun --mpi=pmix --nodes=2 --ntasks=16 --ntasks-per-node=8 --gpu-bind=none --kill-on-bad-exit=1 --label bash $S/rank_env.sh /opt/v4rt/bin/v4rt serve --config configs/flash_2x8_h200.yaml --backend cuda --host 0.0.0.0 --model /models/DeepSeek-V4-Flash" "$out"
expect_in "2 node(s) x 8 rank(s) = 16; config configs/flash_2x8_h200.yaml (world 16)" "$out"
out=$(slurm env PORT=9000 V4RT_API_KEY=k bash "$S/serve.sbatch" configs/pro_2x8_h200.yaml 2>&1)
expect_in "serve --config configs/pro_2x8_h200.yaml --backend cuda --host 0.0.0.0 --port 9000 --api-key k" "$out"
out=$(slurm env LAUNCHER=mpirun bash "$S/serve.sbatch" configs/flash_2x8_h200.yaml 2>&1)
expect_in "mpirun -np 16 --map-by ppr:8:node --bind-to none --tag-output bash $S/rank_env.sh /opt/v4rt/bin/v4rt serve --config configs/flash_2x8_h200.yaml --backend cuda" "$out"
echo "ok - serve.sbatch generates the srun --mpi=pmix and the mpirun launch lines"

out=$(slurm bash "$S/batch.sbatch" configs/flash_2x8_h200.yaml examples/requests.jsonl out.jsonl --ordered 2>&1)
expect_in "--ntasks=16 --ntasks-per-node=8 --gpu-bind=none --kill-on-bad-exit=1 --label bash $S/rank_env.sh /opt/v4rt/bin/v4rt batch --config configs/flash_2x8_h200.yaml --backend cuda --input examples/requests.jsonl --output out.jsonl --ordered" "$out"
echo "ok - batch.sbatch generates the launch line"

# A config made for another world size is refused before anything starts.
out=$(env SLURM_JOB_NUM_NODES=1 SLURM_GPUS_ON_NODE=8 SLURM_SUBMIT_DIR="$ROOT" DRY_RUN=1 bash "$S/serve.sbatch" configs/flash_2x8_h200.yaml 2>&1) && fail "accepted: $out"
expect_in "configs/flash_2x8_h200.yaml is for 16 ranks, the allocation gives 1 node(s) x 8 = 8; sbatch --nodes=2" "$out"
out=$(slurm bash "$S/batch.sbatch" configs/flash_2x8_h200.yaml missing.jsonl out.jsonl 2>&1) && fail "accepted: $out"
expect_in "input 'missing.jsonl' does not exist" "$out"
out=$(slurm bash "$S/serve.sbatch" 2>&1) && fail "accepted: $out"
expect_in "usage: sbatch --nodes=N scripts/slurm/serve.sbatch CONFIG.yaml" "$out"
echo "ok - wrong world size, missing input and missing config are refused with the reason"

# rank_env.sh: the local rank's GPU under Open MPI, Slurm and PMIx variables.
out=$(env -u SLURM_LOCALID OMPI_COMM_WORLD_LOCAL_RANK=3 OMPI_COMM_WORLD_RANK=11 CUDA_VISIBLE_DEVICES=0,1,2,3,4,5,6,7 DRY_RUN=1 bash "$S/rank_env.sh" v4rt serve)
expect_in "rank 11 local rank 3 -> GPU 3: v4rt serve" "$out"
out=$(env -u OMPI_COMM_WORLD_LOCAL_RANK -u OMPI_COMM_WORLD_RANK SLURM_LOCALID=2 SLURM_PROCID=10 CUDA_VISIBLE_DEVICES=4,5,6,7 DRY_RUN=1 bash "$S/rank_env.sh" v4rt)
expect_in "rank 10 local rank 2 -> GPU 6: v4rt" "$out"
out=$(env -u OMPI_COMM_WORLD_LOCAL_RANK -u SLURM_LOCALID -u CUDA_VISIBLE_DEVICES PMIX_LOCAL_RANK=5 DRY_RUN=1 bash "$S/rank_env.sh" v4rt)
expect_in "local rank 5 -> GPU 5: v4rt" "$out"
out=$(env -u OMPI_COMM_WORLD_LOCAL_RANK SLURM_LOCALID=1 CUDA_VISIBLE_DEVICES=5 DRY_RUN=1 bash "$S/rank_env.sh" v4rt 2>&1) && fail "accepted: $out"
expect_in "local rank 1 on $(hostname) sees only 1 GPU(s) (CUDA_VISIBLE_DEVICES=5): launch with srun --gpu-bind=none" "$out"
out=$(env -u OMPI_COMM_WORLD_LOCAL_RANK -u SLURM_LOCALID -u PMIX_LOCAL_RANK bash "$S/rank_env.sh" v4rt 2>&1) && fail "accepted: $out"
expect_in "no local rank" "$out"
echo "ok - rank_env.sh binds the local rank's GPU and refuses a narrowed GPU list"

# The generated mpirun line, run for real on this machine's CPU ranks.
if [ ! -f "$WORK/tiny/model.safetensors.index.json" ]; then
  "$V4RT" init-model --preset tiny --mtp --out "$WORK/tiny" --seed 1 >/dev/null
fi
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OMPI_MCA_pml=ob1 OMPI_MCA_btl=self,vader,tcp
export OMPI_MCA_rmaps_base_oversubscribe=1
rm -f "$WORK/results.jsonl" "$WORK/results.jsonl.journal"
(cd "$ROOT" && env -u SLURM_JOB_NUM_NODES -u SLURM_GPUS_ON_NODE LAUNCHER=mpirun BACKEND=cpu NODES=1 GPUS_PER_NODE=2 \
   V4RT="$V4RT" timeout 300 bash scripts/slurm/batch.sbatch configs/tp2.yaml examples/requests.jsonl "$WORK/results.jsonl" \
   --model "$WORK/tiny" --progress log) >"$WORK/batch.out" 2>&1 || { tail -20 "$WORK/batch.out"; fail "batch.sbatch under mpirun"; }
[ "$(wc -l <"$WORK/results.jsonl")" = "$(grep -c . "$ROOT/examples/requests.jsonl")" ] || fail "not every request answered"
grep -q '"status_code": *200' "$WORK/results.jsonl" || fail "no answer: $(head -2 "$WORK/results.jsonl")"
grep -q "layout: tp 2, sp 1 .* over 2 ranks" "$WORK/batch.out" || fail "not a 2-rank tp2 job: $(tail -5 "$WORK/batch.out")"
echo "ok - batch.sbatch's mpirun line ran v4rt batch on 2 ranks (tp 2)"
