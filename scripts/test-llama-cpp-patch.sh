#!/usr/bin/env bash
# The users' path, tested: applies vendor/ to the llama.cpp tree inside the PyPI sdist
# llama-cpp-python==0.3.36 (a fresh copy in .cache/llama-apiq2/), builds llama-cli,
# llama-server and llama-perplexity with it, and runs the ggml-level APIQ2 test there (SIMD and
# generic kernels), then on ARM NEON under qemu-aarch64.
set -euo pipefail
cd "$(dirname "$0")/.."
root=.cache/llama-apiq2
scripts/fetch-llama-sdist.sh "$root/src"
bin=$(scripts/llama-cpp-apiq2.sh "$root/src" "$root/build")
for tool in llama-cli llama-server llama-perplexity; do
  [ -x "$bin/$tool" ] || { echo "error: $tool was not built" >&2; exit 1; }
done
"$bin/test-apiq2"
GGML_APIQ2_KERNEL=generic "$bin/test-apiq2"
scripts/test-ggml-neon.sh "$root/src" "$root/build-aarch64"
