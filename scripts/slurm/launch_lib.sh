# SPDX-License-Identifier: MIT
# Shared part of serve.sbatch and batch.sbatch (sourced, not run). Builds the launch command of a
# multi-node v4rt job under a Slurm allocation and runs it, or prints it with DRY_RUN=1.
#
#   v4rt_slurm_launch <subcommand> <config> [v4rt arguments...]
#
# Environment (all optional):
#   V4RT            the v4rt binary (default: the installed <prefix>/bin/v4rt beside these scripts,
#                   else build/cuda/launch/v4rt of the repository)
#   LAUNCHER        srun (default: `srun --mpi=pmix`) | mpirun (Open MPI's mpirun inside the
#                   allocation, hosts from the allocation)
#   GPUS_PER_NODE   ranks (= GPUs) per node (default: SLURM_GPUS_ON_NODE, else 8)
#   NODES           nodes (default: SLURM_JOB_NUM_NODES, else 1)
#   BACKEND         cuda (default) | cpu
#   DRY_RUN=1       print the checks and the launch line instead of running it
#
# Every rank runs scripts/slurm/rank_env.sh, which checks that the GPU of its local rank is
# visible (v4rt binds local rank r to device r).
V4RT_SLURM_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)

v4rt_slurm_default_binary() {
  local installed="$V4RT_SLURM_DIR/../../../../bin/v4rt"   # <prefix>/share/v4rt/scripts/slurm
  if [ -x "$installed" ]; then (cd "$(dirname "$installed")" && echo "$(pwd)/v4rt"); return; fi
  echo "$(cd "$V4RT_SLURM_DIR/../.." && pwd)/build/cuda/launch/v4rt"
}

# The world size a runtime YAML is meant for: its `# deploy: world=N` line, else dp*sp*tp of a
# one-line `parallel: {tp: .., sp: .., dp: ..}`; empty when neither can be read.
v4rt_config_world() {
  local world
  world=$(sed -n 's/^# deploy:.*world=\([0-9][0-9]*\).*/\1/p' "$1" | head -1)
  if [ -z "$world" ]; then
    local line tp sp dp
    line=$(grep -m1 '^parallel:' "$1" || true)
    tp=$(sed -n 's/.*tp: *\([0-9][0-9]*\).*/\1/p' <<<"$line"); sp=$(sed -n 's/.*sp: *\([0-9][0-9]*\).*/\1/p' <<<"$line")
    dp=$(sed -n 's/.*dp: *\([0-9][0-9]*\).*/\1/p' <<<"$line")
    [ -n "$line" ] && world=$(( ${tp:-1} * ${sp:-1} * ${dp:-1} ))
  fi
  echo "$world"
}

v4rt_slurm_launch() {
  local sub=$1 config=$2
  shift 2
  [ -f "$config" ] || { echo "v4rt-slurm: config '$config' does not exist" >&2; return 2; }
  local v4rt=${V4RT:-$(v4rt_slurm_default_binary)}
  local nodes=${NODES:-${SLURM_JOB_NUM_NODES:-1}}
  local per_node=${GPUS_PER_NODE:-${SLURM_GPUS_ON_NODE:-8}}
  local ranks=$((nodes * per_node))
  local world
  world=$(v4rt_config_world "$config")
  if [ -n "$world" ] && [ "$world" != "$ranks" ]; then
    echo "v4rt-slurm: $config is for $world ranks, the allocation gives $nodes node(s) x $per_node = $ranks;" \
         "sbatch --nodes=$((world / per_node)) or pick another config" >&2
    return 2
  fi
  local launcher=${LAUNCHER:-srun}
  local -a cmd
  case "$launcher" in
    srun)
      # One task per GPU; every task sees all GPUs of its node (--gpu-bind=none) and rank_env.sh
      # picks the one of its local rank.
      cmd=(srun --mpi=pmix --nodes="$nodes" --ntasks="$ranks" --ntasks-per-node="$per_node"
           --gpu-bind=none --kill-on-bad-exit=1 --label)
      ;;
    mpirun)
      cmd=(mpirun -np "$ranks" --map-by "ppr:$per_node:node" --bind-to none --tag-output)
      ;;
    *)
      echo "v4rt-slurm: LAUNCHER must be srun or mpirun, got '$launcher'" >&2
      return 2
      ;;
  esac
  cmd+=(bash "$V4RT_SLURM_DIR/rank_env.sh" "$v4rt" "$sub" --config "$config")
  if [ "${BACKEND:-cuda}" != cpu ]; then cmd+=(--backend "${BACKEND:-cuda}"); fi
  cmd+=("$@")
  echo "v4rt-slurm: $nodes node(s) x $per_node rank(s) = $ranks; config $config (world ${world:-?})" >&2
  if [ "${DRY_RUN:-0}" = 1 ]; then
    printf '%q ' "${cmd[@]}"
    echo
    return 0
  fi
  exec "${cmd[@]}"
}
