#!/usr/bin/env bash
# Builds stock llama.cpp (the reference we compare against, never a dependency of the product)
# from the llama.cpp tree inside the PyPI sdist llama-cpp-python==0.3.36, into
# .cache/llama-stock/. Prints the bin directory. Idempotent.
set -euo pipefail
cd "$(dirname "$0")/.."
root=.cache/llama-stock
bin=$root/build/bin
if [ -x "$bin/llama-quantize" ] && [ -x "$bin/llama-perplexity" ] && [ -x "$bin/llama-imatrix" ]; then
  echo "$bin"; exit 0
fi
mkdir -p "$root"
scripts/fetch-llama-sdist.sh "$root/src"
# Stock ggml's AMX kernels crash when GCC builds them (it drops the tile configuration; see
# docs/cpu-paths.md), so on x86 the reference is built without AMX. Elsewhere nothing changes.
flags=()
if [ "$(uname -m)" = x86_64 ]; then
  noamx="-mno-amx-tile -mno-amx-int8 -mno-amx-bf16"
  flags=(-DCMAKE_C_FLAGS="$noamx" -DCMAKE_CXX_FLAGS="$noamx")
fi
cmake -S "$root/src" -B "$root/build" -DCMAKE_BUILD_TYPE=Release -DGGML_NATIVE=ON "${flags[@]}" \
  -DLLAMA_CURL=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_SERVER=OFF >&2
cmake --build "$root/build" -j"$(nproc)" --target llama-quantize llama-imatrix llama-perplexity llama-tokenize llama-completion \
  llama-bench >&2
echo "$bin"
