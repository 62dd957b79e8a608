#!/usr/bin/env bash
# SPDX-License-Identifier: MIT
# Multi-node on one machine: runs an MPI program across two "hosts" that are private network
# namespaces joined by a veth pair (10.77.0.1/24 <-> 10.77.0.2/24, addresses that exist only
# inside these namespaces). mpirun runs in the first namespace; rsh.sh starts the remote daemon in
# the second; all MPI traffic is TCP over the veth. Namespaces are removed on exit.
#
#   scripts/netns/run.sh [--np N] [--expect-nodes 2] PROGRAM [ARGS...]
#
# Exit codes: the program's; 77 when namespaces cannot be created (not root, no `ip`), for CTest's
# SKIP_RETURN_CODE; 1 when the world does not span the expected number of nodes.
set -u
here=$(cd "$(dirname "$0")" && pwd)
np=4
expect_nodes=2
limit_s=${V4RT_NETNS_TIMEOUT:-60}
while [[ $# -gt 0 ]]; do
  case "$1" in
    --np) np=$2; shift 2 ;;
    --expect-nodes) expect_nodes=$2; shift 2 ;;
    *) break ;;
  esac
done
if [[ $# -lt 1 ]]; then echo "usage: $0 [--np N] [--expect-nodes K] PROGRAM [ARGS...]" >&2; exit 2; fi

skip() { echo "SKIP: $*"; exit 77; }
[[ $(id -u) -eq 0 ]] || skip "network namespaces need root"
command -v ip >/dev/null || skip "no 'ip' command (iproute2)"
command -v unshare >/dev/null || skip "no 'unshare' command"
command -v mpirun >/dev/null || skip "no mpirun"

tag=$$
ns_a=v4rt-a-$tag
ns_b=v4rt-b-$tag
ip_a=10.77.0.1
ip_b=10.77.0.2
workdir=$(mktemp -d)
cleanup() {
  ip netns del "$ns_a" 2>/dev/null
  ip netns del "$ns_b" 2>/dev/null
  rm -rf "$workdir"
}
trap cleanup EXIT INT TERM

ip netns add "$ns_a" 2>/dev/null || skip "cannot create network namespaces (ip netns add failed)"
ip netns add "$ns_b" || skip "cannot create a second network namespace"
ip link add "va$tag" netns "$ns_a" type veth peer name "vb$tag" netns "$ns_b" ||
  skip "cannot create a veth pair"
ip -n "$ns_a" addr add "$ip_a/24" dev "va$tag"
ip -n "$ns_b" addr add "$ip_b/24" dev "vb$tag"
for ns in "$ns_a" "$ns_b"; do
  ip -n "$ns" link set lo up
done
ip -n "$ns_a" link set "va$tag" up
ip -n "$ns_b" link set "vb$tag" up

slots=$(( (np + 1) / 2 ))
printf '%s slots=%d\n%s slots=%d\n' "$ip_a" "$slots" "$ip_b" "$slots" >"$workdir/hostfile"
export V4RT_NETNS_HOSTS="$ip_a=$ns_a $ip_b=$ns_b"
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1

# mpirun in namespace A (its own UTS name too); both hosts are started through rsh.sh, so each
# daemon lives in its namespace and reaches mpirun over the veth.
timeout --kill-after=5 "$limit_s" \
  ip netns exec "$ns_a" unshare --uts sh -c "hostname $ns_a && exec \"\$@\"" sh \
  mpirun --hostfile "$workdir/hostfile" -np "$np" --map-by slot \
    --mca plm_rsh_agent "$here/rsh.sh" \
    --mca plm_rsh_no_tree_spawn 1 \
    --mca pml ob1 --mca btl tcp,self \
    --mca btl_tcp_if_include 10.77.0.0/24 --mca oob_tcp_if_include 10.77.0.0/24 \
    -x OMPI_ALLOW_RUN_AS_ROOT -x OMPI_ALLOW_RUN_AS_ROOT_CONFIRM \
    "$@" 2>&1 | tee "$workdir/out"
rc=${PIPESTATUS[0]}
if [[ $rc -eq 124 || $rc -eq 137 ]]; then echo "FAIL: timed out after ${limit_s} s"; exit 1; fi
if [[ $rc -ne 0 ]]; then exit "$rc"; fi
if ! grep -q "ranks on ${expect_nodes} node(s)" "$workdir/out"; then
  echo "FAIL: the world did not span ${expect_nodes} nodes (no 'ranks on ${expect_nodes} node(s)' line)"
  exit 1
fi
echo "PASS: $np ranks over $expect_nodes network namespaces"
