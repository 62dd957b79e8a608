# SPDX-License-Identifier: MIT
# shellcheck shell=bash
# Sourced by scripts/device/bench_serve.sh and scripts/device/mpi_jobs.sh (bash): run a command
# (one `v4rt` process, or `mpirun` and its ranks) in a session of its own, and end it leaving no
# process behind. Open MPI puts every rank in a process group of its own (setpgid in the launcher),
# so killing mpirun's group misses the ranks, and SIGKILL to mpirun orphans them; the session,
# which the ranks keep, names them all. Only /proc is read (no ps / pgrep on a bare machine).
#
#   job_start LOG CMD...   start CMD under setsid, stdout and stderr appended to LOG; sets JOB_PID
#                          (the launcher's pid, which is also the session id)
#   job_alive              0 while the launcher runs
#   job_rank_pid R         the pid of world rank R (OMPI_COMM_WORLD_RANK) in the session, if any
#   job_session_pids       the pids of the session but the launcher
#   job_wait SECONDS       wait for the launcher; its exit status, or 124 past SECONDS (it keeps
#                          running). Not from a $(...) subshell: `wait` needs the starting shell.
#   job_end GRACE [PID]    SIGTERM to PID (default the launcher; `v4rt serve` under mpirun: rank 0,
#                          whose clean shutdown releases the other ranks) and GRACE s for the
#                          launcher to exit; then SIGTERM to the launcher (mpirun ends its ranks)
#                          and 10 s; then SIGKILL to every process of the session. JOB_STATUS =
#                          the launcher's exit status (137: killed). Then the session must be
#                          empty: JOB_LEFT = the pids still alive (killed now), empty when nothing
#                          was left behind.
#   job_reap               after job_wait saw the launcher exit: JOB_LEFT as above (a rank that
#                          outlived mpirun), killed; clears JOB_PID.
# The Open MPI environment is exported on sourcing: allowed as root, the ob1 PML over
# self/vader/tcp and oversubscription (the variables tests/mpi_env.h gives every mpirun test; the
# device's `comm` step passed under them). A value already set is kept.
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
export OMPI_MCA_pml=${OMPI_MCA_pml:-ob1} OMPI_MCA_btl=${OMPI_MCA_btl:-self,vader,tcp}
export OMPI_MCA_rmaps_base_oversubscribe=${OMPI_MCA_rmaps_base_oversubscribe:-1}
JOB_PID=
JOB_STATUS=
JOB_LEFT=

job_start() {
  local log=$1
  shift
  # A background child of a non-interactive shell is no group leader, so setsid execs CMD in
  # place: $! is CMD's pid and the new session's id.
  setsid "$@" >> "$log" 2>&1 &
  JOB_PID=$!
}

job_alive() { [[ -n $JOB_PID ]] && kill -0 "$JOB_PID" 2>/dev/null; }

job_session_pids() {
  local f line pid
  local -a a
  [[ -n $JOB_PID ]] || return 0
  for f in /proc/[0-9]*/stat; do
    read -r line < "$f" 2>/dev/null || continue
    pid=${f#/proc/}; pid=${pid%/stat}
    read -ra a <<< "${line##*) }"  # state ppid pgrp session ...
    [[ ${a[3]:-} == "$JOB_PID" && $pid != "$JOB_PID" && ${a[0]} != Z ]] && echo "$pid"
  done
  return 0
}

job_rank_pid() {
  local p
  for p in $(job_session_pids); do
    if tr '\0' '\n' < "/proc/$p/environ" 2>/dev/null | grep -qx "OMPI_COMM_WORLD_RANK=$1"; then
      echo "$p"
      return 0
    fi
  done
  return 1
}

job_wait() {
  local deadline=$((SECONDS + $1)) line
  while job_alive; do
    # A launcher that exited but is not reaped yet (a zombie) still answers kill -0.
    read -r line < "/proc/$JOB_PID/stat" 2>/dev/null
    [[ ${line##*) } == Z* ]] && break
    ((SECONDS >= deadline)) && return 124
    sleep 0.2
  done
  wait "$JOB_PID" 2>/dev/null
}

job_end() {
  local grace=$1 first=${2:-$JOB_PID} p
  JOB_STATUS=0
  JOB_LEFT=
  [[ -n $JOB_PID ]] || return 0
  kill -TERM "$first" 2>/dev/null
  job_wait "$grace"
  JOB_STATUS=$?
  if ((JOB_STATUS == 124)) && [[ $first != "$JOB_PID" ]]; then
    kill -TERM "$JOB_PID" 2>/dev/null
    job_wait 10
    JOB_STATUS=$?
  fi
  if ((JOB_STATUS == 124)); then
    for p in $JOB_PID $(job_session_pids); do kill -KILL "$p" 2>/dev/null; done
    wait "$JOB_PID" 2>/dev/null
    JOB_STATUS=137
  fi
  job_reap
}

job_reap() {
  local p
  JOB_LEFT=
  [[ -n $JOB_PID ]] || return 0
  sleep 0.5  # ranks exit after mpirun when mpirun was killed
  for p in $(job_session_pids); do
    JOB_LEFT="$JOB_LEFT $p"
    kill -KILL "$p" 2>/dev/null
  done
  JOB_PID=
}
