#!/usr/bin/env bash
# The main job on the embedded default: SmolLM2-135M-Instruct (from PyPI) calibrated with
# ApiQ's quick recipe on the CPU into stock Q2_0 (2.25 bpw, so the stock runtime runs it), then
# run with its adapter. Writes out/SmolLM2-135M-Instruct-q2_0.gguf, its adapter
# out/SmolLM2-135M-Instruct-q2_0.lora.gguf and an Ollama Modelfile.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
src=$(scripts/fetch-smollm2.sh)
scripts/fetch-calib.sh >/dev/null
cargo build --release --quiet
mkdir -p out
bin=target/release/apiq2gguf
out=out/SmolLM2-135M-Instruct-q2_0.gguf
$bin "$src" "$out" --quick --format q2_0
$bin generate "$out" --lora "${out%.gguf}.lora.gguf" -n 48 \
  -p $'<|im_start|>user\nWhat is the capital of France?<|im_end|>\n<|im_start|>assistant\n'
