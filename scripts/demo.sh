#!/usr/bin/env bash
# The demo's pieces, for any model: calibrate SRC with ApiQ's quick recipe at 4 bits in groups
# of 64 (stored exactly in stock Q4_1, with a LoRA adapter of rank 16 in Q8_0, which in
# docs/results.md scores as rank 64 F16 does at a fifth of the bytes), answer PROMPT with the
# source and with the quantized model side by side, then a table of file sizes (adapter
# included) and perplexity on HELDOUT, text that calibration never sees. Beside ApiQ the table
# has what a user gets otherwise: the same bits, groups and format by plain round-to-nearest
# (RTN, OUT.rtn.gguf), and ggml's own Q4_0 quantizer, what llama-quantize runs without an
# importance matrix (OUT.q4_0.gguf).
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
rtn=${out%.gguf}.rtn.gguf q40=${out%.gguf}.q4_0.gguf
echo "calibrating $src with ApiQ (4-bit g64, LoRA r16 Q8_0) into $out" >&2
"$bin" "$src" "$out" --quick --bits 4 --lora-rank 16 --lora-type q8_0 "$@"
echo "the same bits by round-to-nearest into $rtn, and ggml's Q4_0 into $q40" >&2
step "RTN quantization" "$bin" "$src" "$rtn" --quick --bits 4 --method rtn "$@"
step "Q4_0 conversion" "$bin" "$src" "$q40" --type q4_0
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
echo "held-out perplexity of the four files" >&2
ppl_src=$(ppl "$src")
ppl_q40=$(ppl "$q40")
ppl_rtn=$(ppl "$rtn")
ppl_ours=$(ppl "$out" --lora "$lora")
echo
echo "Q: $question"
echo "  source $name:   $answer_src"
echo "  ApiQ 4-bit g64 (Q4_1) + LoRA adapter:   $answer_ours"
echo
echo "| model | file MiB | adapter MiB | PPL held-out (c 512, 10 chunks) |"
echo "|---|---:|---:|---:|"
echo "| source $name | $(mib "$src") | – | $ppl_src |"
echo "| llama.cpp Q4_0 (ggml's quantizer, no imatrix) | $(mib "$q40") | – | $ppl_q40 |"
echo "| RTN 4-bit g64 Q4_1 | $(mib "$rtn") | – | $ppl_rtn |"
echo "| ApiQ 4-bit g64 Q4_1 + LoRA r16 Q8_0 | $(mib "$out") | $(mib "$lora") | $ppl_ours |"
