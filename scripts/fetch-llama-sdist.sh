#!/usr/bin/env bash
# Unpacks the llama.cpp tree inside the PyPI sdist llama-cpp-python==0.3.36 into DIR (a fresh,
# unpatched copy). Idempotent: does nothing when DIR already holds it.
#   scripts/fetch-llama-sdist.sh DIR
set -euo pipefail
dest=${1:?usage: $0 DIR}
[ -f "$dest/ggml/include/ggml.h" ] && exit 0
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
python3 -m pip download --quiet --no-deps --no-binary llama-cpp-python --disable-pip-version-check \
  llama-cpp-python==0.3.36 -d "$tmp" >&2
tar -xzf "$tmp"/llama_cpp_python-0.3.36.tar.gz -C "$tmp"
mkdir -p "$(dirname "$dest")"
mv "$tmp"/llama_cpp_python-0.3.36/vendor/llama.cpp "$dest"
