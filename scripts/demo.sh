#!/usr/bin/env bash
# The demo's pieces, for any model: calibrate SRC with ApiQ's quick recipe at 4 bits in groups
# of 64 (stored exactly in stock Q4_1, with its LoRA adapter), answer PROMPT with the source and
# with the quantized model side by side, then a table of file sizes (adapter included) and
# perplexity on HELDOUT, text that calibration never sees.
#   scripts/demo.sh SRC OUT HELDOUT PROMPT CALIB_ARGS…
# SRC is a GGUF; OUT the quantized GGUF to write; CALIB_ARGS go to the calibration (e.g.
# --calib FILE… --calib-max-bytes N). The binary is $APIQ2GGUF (default target/release/apiq2gguf).
set -euo pipefail
src=$1 out=$2 heldout=$3 prompt=$4
shift 4
bin=${APIQ2GGUF:-target/release/apiq2gguf}
lora=${out%.gguf}.lora.gguf
"$bin" "$src" "$out" --quick --bits 4 "$@"
answer() {
  local text
  text=$("$bin" generate "$@" -n 32 -p "$prompt" 2>/dev/null)
  text=${text#"$prompt"}
  printf '%s' "${text%%$'\n'*}"
}
ppl() { "$bin" perplexity "$@" -f "$heldout" -c 512 --chunks 10 2>/dev/null | tail -1 | awk '{print $5}'; }
mib() { awk -v b="$(stat -c %s "$1")" 'BEGIN {printf "%.1f", b / 1048576}'; }
name=$(basename "${src%.gguf}")
question=${DEMO_QUESTION:-$prompt}
echo
echo "Q: $question"
echo "  source $name:   $(answer "$src")"
echo "  ApiQ 4-bit g64 (Q4_1) + LoRA adapter:   $(answer "$out" --lora "$lora")"
echo
echo "| model | file MiB | adapter MiB | PPL held-out (c 512, 10 chunks) |"
echo "|---|---:|---:|---:|"
echo "| source $name | $(mib "$src") | – | $(ppl "$src") |"
echo "| ApiQ 4-bit g64 Q4_1 + LoRA | $(mib "$out") | $(mib "$lora") | $(ppl "$out" --lora "$lora") |"
