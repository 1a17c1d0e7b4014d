#!/usr/bin/env bash
# The ggml-level APIQ2 test (vendor/tests/test-apiq2.c) on ARM: cross-compiles ggml from a
# llama.cpp tree already patched by scripts/llama-cpp-apiq2.sh for aarch64 (NEON + dotprod)
# and runs the test under qemu-aarch64, with the NEON kernels and with the generic ones.
#   scripts/test-ggml-neon.sh PATCHED_LLAMA_CPP_TREE [BUILD_DIR]
# Needs Debian's qemu-user, gcc-aarch64-linux-gnu and g++-aarch64-linux-gnu.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
tree=${1:?usage: $0 PATCHED_LLAMA_CPP_TREE [BUILD_DIR]}
build=${2:-$tree/build-apiq2-aarch64}
grep -q GGML_TYPE_APIQ2 "$tree/ggml/include/ggml.h" || { echo "error: $tree is not patched (run scripts/llama-cpp-apiq2.sh first)" >&2; exit 1; }
cmake -S "$tree" -B "$build" -DCMAKE_BUILD_TYPE=Release -DBUILD_SHARED_LIBS=OFF -DLLAMA_CURL=OFF \
  -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_TOOLS=OFF -DLLAMA_BUILD_SERVER=OFF \
  -DCMAKE_SYSTEM_NAME=Linux -DCMAKE_SYSTEM_PROCESSOR=aarch64 \
  -DCMAKE_C_COMPILER=aarch64-linux-gnu-gcc -DCMAKE_CXX_COMPILER=aarch64-linux-gnu-g++ \
  -DGGML_NATIVE=OFF -DGGML_CPU_ARM_ARCH=armv8.2-a+dotprod -DGGML_OPENMP=OFF >&2
cmake --build "$build" -j"$(nproc)" --target ggml-base ggml-cpu ggml >&2
libs=$(find "$build" -name 'libggml*.a' | sort)
aarch64-linux-gnu-g++ -O2 -march=armv8.2-a+dotprod -x c -std=c11 "$here/vendor/tests/test-apiq2.c" -x none \
  -I"$tree/ggml/include" -I"$tree/ggml/src" -Wl,--start-group $libs -Wl,--end-group -lm -lpthread \
  -o "$build/test-apiq2"
qemu-aarch64 -L /usr/aarch64-linux-gnu "$build/test-apiq2"
GGML_APIQ2_KERNEL=generic qemu-aarch64 -L /usr/aarch64-linux-gnu "$build/test-apiq2"
