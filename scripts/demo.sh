#!/usr/bin/env bash
# The demo's pieces, for any model: calibrate SRC with ApiQ's quick recipe at 4 bits in groups
# of 64 (stored exactly in stock Q4_1, with its LoRA adapter), answer PROMPT with the source and
# with the quantized model side by side, then a table of file sizes (adapter included) and
# perplexity on HELDOUT, text that calibration never sees.
#   scripts/demo.sh SRC OUT HELDOUT PROMPT CALIB_ARGS…
# SRC is a GGUF; OUT the quantized GGUF to write; CALIB_ARGS go to the calibration (e.g.
# --calib FILE… --calib-max-bytes N). The binary is $APIQ2GGUF (default target/release/apiq2gguf).
set -euo pipefail
shopt -s inherit_errexit
src=$1 out=$2 heldout=$3 prompt=$4
shift 4
bin=${APIQ2GGUF:-target/release/apiq2gguf}
lora=${out%.gguf}.lora.gguf
log=$(mktemp)
trap 'rm -f "$log"' EXIT
# A runtime step that dies (a signal, an error) stops the demo with its own message and a
# non-zero exit; no table with empty cells is printed in its place.
step() {
  local what=$1
  shift
  local rc=0
  "$@" 2>"$log" || rc=$?
  if [ "$rc" -ne 0 ]; then
    local how="exit $rc"
    [ "$rc" -gt 128 ] && how="killed by signal $((rc - 128))"
    echo "error: $what failed ($how):" >&2
    tail -n 20 "$log" >&2
    exit 1
  fi
}
"$bin" "$src" "$out" --quick --bits 4 "$@"
answer() {
  local text
  text=$(step "generate with $1" "$bin" generate "$@" -n 32 -p "$prompt")
  text=${text#"$prompt"}
  text=${text%%$'\n'*}
  [ -n "$text" ] || { echo "error: generate with $1 answered nothing" >&2; exit 1; }
  printf '%s' "$text"
}
ppl() {
  local value
  value=$(step "perplexity of $1" "$bin" perplexity "$@" -f "$heldout" -c 512 --chunks 10 | tail -1 | awk '{print $5}')
  [[ $value =~ ^[0-9]+(\.[0-9]+)?$ ]] || { echo "error: perplexity of $1 printed no estimate" >&2; exit 1; }
  printf '%s' "$value"
}
mib() { awk -v b="$(stat -c %s "$1")" 'BEGIN {printf "%.1f", b / 1048576}'; }
name=$(basename "${src%.gguf}")
question=${DEMO_QUESTION:-$prompt}
# Every value first, so a failure stops before any of the report is printed.
answer_src=$(answer "$src")
answer_ours=$(answer "$out" --lora "$lora")
ppl_src=$(ppl "$src")
ppl_ours=$(ppl "$out" --lora "$lora")
echo
echo "Q: $question"
echo "  source $name:   $answer_src"
echo "  ApiQ 4-bit g64 (Q4_1) + LoRA adapter:   $answer_ours"
echo
echo "| model | file MiB | adapter MiB | PPL held-out (c 512, 10 chunks) |"
echo "|---|---:|---:|---:|"
echo "| source $name | $(mib "$src") | – | $ppl_src |"
echo "| ApiQ 4-bit g64 Q4_1 + LoRA | $(mib "$out") | $(mib "$lora") | $ppl_ours |"
