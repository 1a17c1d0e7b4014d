#!/usr/bin/env bash
# The users' path, tested: applies vendor/ to the llama.cpp tree inside the PyPI sdist
# llama-cpp-python==0.3.36 (a fresh copy in .cache/llama-apiq2/), builds llama-cli,
# llama-server and llama-perplexity with it, and runs the ggml-level APIQ2 test there (SIMD and
# generic kernels), then on ARM NEON under qemu-aarch64.
set -euo pipefail
cd "$(dirname "$0")/.."
root=.cache/llama-apiq2
if [ ! -d "$root/src" ]; then
  mkdir -p "$root"
  python3 -m pip download --quiet --no-deps --no-binary :all: --disable-pip-version-check \
    llama-cpp-python==0.3.36 -d "$root"
  tar -xzf "$root"/llama_cpp_python-0.3.36.tar.gz -C "$root"
  mv "$root"/llama_cpp_python-0.3.36/vendor/llama.cpp "$root/src"
  rm -rf "$root"/llama_cpp_python-0.3.36 "$root"/*.tar.gz
fi
bin=$(scripts/llama-cpp-apiq2.sh "$root/src" "$root/build")
for tool in llama-cli llama-server llama-perplexity; do
  [ -x "$bin/$tool" ] || { echo "error: $tool was not built" >&2; exit 1; }
done
"$bin/test-apiq2"
GGML_APIQ2_KERNEL=generic "$bin/test-apiq2"
scripts/test-ggml-neon.sh "$root/src" "$root/build-aarch64"
