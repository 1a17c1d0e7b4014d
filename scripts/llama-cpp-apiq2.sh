#!/usr/bin/env bash
# Adds the APIQ2 type (vendor/) to a llama.cpp source tree and builds llama-cli, llama-server,
# llama-perplexity, llama-quantize and llama-imatrix with it (or the targets in $LLAMA_TARGETS),
# plus vendor/tests/test-apiq2 (the ggml-level check), vendor/tests/bench-apiq2 (kernel speed
# against Q4_0) and, in a CUDA build, vendor/tests/test-apiq2-cuda (GPU against CPU):
#   scripts/llama-cpp-apiq2.sh LLAMA_CPP_TREE [BUILD_DIR] [-- extra cmake options]
# With the CUDA kernels: `-- -DGGML_CUDA=ON -DCMAKE_CUDA_ARCHITECTURES=90` (90: Hopper).
# The tree is patched in place (once; a second run sees the patch and skips it). Tested against
# the llama.cpp inside the PyPI sdist llama-cpp-python==0.3.36 and the one in llama-cpp-sys-2
# 0.1.161. Afterwards: BUILD_DIR/bin/test-apiq2 must print OK.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
tree=${1:?usage: $0 LLAMA_CPP_TREE [BUILD_DIR] [-- cmake options]}
shift
build=$tree/build-apiq2
if [ $# -gt 0 ] && [ "$1" != "--" ]; then build=$1; shift; fi
[ "${1:-}" = "--" ] && shift
[ -f "$tree/ggml/include/ggml.h" ] || { echo "error: $tree is not a llama.cpp tree (no ggml/include/ggml.h)" >&2; exit 1; }

mkdir -p "$tree/ggml/src/ggml-apiq2"
# only files that changed, so an unchanged header does not rebuild every CUDA file
for f in "$here"/vendor/ggml-apiq2/*; do
  cmp -s "$f" "$tree/ggml/src/ggml-apiq2/$(basename "$f")" || cp "$f" "$tree/ggml/src/ggml-apiq2/"
done
if grep -q GGML_TYPE_APIQ2 "$tree/ggml/include/ggml.h"; then
  echo "llama.cpp tree already patched" >&2
else
  patch -p1 --forward --no-backup-if-mismatch -d "$tree" < "$here/vendor/llama.cpp.patch" >&2
fi

jobs=$(nproc 2>/dev/null || echo 2)
generator=()
if [ ! -f "$build/CMakeCache.txt" ] && command -v ninja >/dev/null; then generator=(-G Ninja); fi
cmake -S "$tree" -B "$build" "${generator[@]}" -DCMAKE_BUILD_TYPE=Release -DGGML_NATIVE=ON \
  -DLLAMA_CURL=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF "$@" >&2
# shellcheck disable=SC2086 # a list of targets
cmake --build "$build" -j"$jobs" --target ${LLAMA_TARGETS:-llama-cli llama-server llama-perplexity \
  llama-quantize llama-imatrix} >&2

# The ggml-level test and kernel benchmark link the libraries just built (shared by default in
# a llama.cpp build).
libdir=$(dirname "$(find "$build" -name 'libggml-base.*' | head -1)")
for prog in test-apiq2 bench-apiq2; do
  cc -O2 -std=c11 -o "$build/bin/$prog" "$here/vendor/tests/$prog.c" \
    -I"$tree/ggml/include" -I"$tree/ggml/src" -L"$libdir" -Wl,-rpath,"$libdir" \
    -lggml-cpu -lggml-base -lm
done
if find "$build" -name 'libggml-cuda.*' | grep -q .; then
  cc -O2 -std=c11 -o "$build/bin/test-apiq2-cuda" "$here/vendor/tests/test-apiq2-cuda.c" \
    -I"$tree/ggml/include" -I"$tree/ggml/src" -L"$libdir" -Wl,-rpath,"$libdir" \
    -lggml -lggml-cpu -lggml-base -lm
fi
echo "$build/bin"
