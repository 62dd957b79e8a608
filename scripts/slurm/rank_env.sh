#!/usr/bin/env bash
# SPDX-License-Identifier: MIT
# Per-rank wrapper of the Slurm scripts: finds this process's local rank (Open MPI's
# OMPI_COMM_WORLD_LOCAL_RANK, Slurm's SLURM_LOCALID, PMIx's PMIX_LOCAL_RANK, in that order) and
# checks that the GPU of that local rank is visible, then runs the command.
#   rank_env.sh <v4rt> <arguments...>
# v4rt binds local rank r of a node to CUDA device `--device` + r (the driver and the NCCL
# communicator both use the local rank), so every rank of a node must see the node's whole GPU list
# in the same order: the scripts launch with `srun --gpu-bind=none` (no per-task
# CUDA_VISIBLE_DEVICES) and CUDA_DEVICE_ORDER=PCI_BUS_ID, so device r is the r-th GPU by PCI bus,
# the order `nvidia-smi` shows. A narrowed CUDA_VISIBLE_DEVICES (srun --gpus-per-task or
# --gpu-bind=single) is an error here, naming the fix, rather than a wrong device later.
# With DRY_RUN=1 it prints the binding and the command instead of running it.
set -euo pipefail
local_rank=${OMPI_COMM_WORLD_LOCAL_RANK:-${SLURM_LOCALID:-${PMIX_LOCAL_RANK:-}}}
if [ -z "$local_rank" ]; then
  echo "rank_env.sh: no local rank (OMPI_COMM_WORLD_LOCAL_RANK, SLURM_LOCALID or PMIX_LOCAL_RANK); run under srun or mpirun" >&2
  exit 2
fi
export CUDA_DEVICE_ORDER=PCI_BUS_ID
gpu=$local_rank
if [ -n "${CUDA_VISIBLE_DEVICES:-}" ]; then
  IFS=, read -r -a gpus <<<"$CUDA_VISIBLE_DEVICES"
  if [ "$local_rank" -ge "${#gpus[@]}" ]; then
    echo "rank_env.sh: local rank $local_rank on $(hostname) sees only ${#gpus[@]} GPU(s)" \
         "(CUDA_VISIBLE_DEVICES=$CUDA_VISIBLE_DEVICES): launch with srun --gpu-bind=none and without" \
         "--gpus-per-task, one rank per GPU" >&2
    exit 2
  fi
  gpu=${gpus[$local_rank]}
fi
if [ "${DRY_RUN:-0}" = 1 ]; then
  echo "rank ${OMPI_COMM_WORLD_RANK:-${SLURM_PROCID:-?}} local rank $local_rank -> GPU $gpu: $*"
  exit 0
fi
exec "$@"
