#!/usr/bin/env bash
# SPDX-License-Identifier: MIT
# Remote-shell agent for mpirun (--mca plm_rsh_agent): "rsh.sh HOST command..." runs the command in
# the network namespace that plays HOST, under its own UTS namespace so gethostname() returns the
# host name. Hosts are the namespaces' veth addresses; the map comes from run.sh through
# V4RT_NETNS_HOSTS="ip=namespace ip=namespace".
set -eu
host=$1
shift
ns=""
for pair in ${V4RT_NETNS_HOSTS:-}; do
  if [[ "${pair%%=*}" == "$host" ]]; then ns=${pair#*=}; fi
done
if [[ -z "$ns" ]]; then
  echo "rsh.sh: unknown host '$host' (V4RT_NETNS_HOSTS='${V4RT_NETNS_HOSTS:-}')" >&2
  exit 255
fi
exec ip netns exec "$ns" unshare --uts sh -c "hostname '$ns' && $*"
