#!/usr/bin/env bash
# Every stock-type format (K grids, LoRA over frozen IQ bases) on a real model whose rows hold
# whole super-blocks: Qwen2.5-Coder-1.5B-Instruct
# (scripts/fetch-qwen-coder.sh), calibrated with a tiny recipe on the CPU, written, loaded by
# stock llama.cpp (scripts/build-stock-llama.sh) with its adapter and scored beside the source
# and llama-quantize's own file of the same type (IQ types with llama-imatrix's importance
# matrix from the same calibration text). A smoke benchmark, not a quality result (the
# recipe is far too small for that; the GPU recipe is docs/results-*.md's job). Not in CI.
#   scripts/bench-qwen-formats.sh [WORK]  (default .cache/bench-qwen; finished files are reused)
# Environment: FORMATS ("q2_k:2 q4_k:4 q5_k:5 iq2_xs:2"), NSAMPLES (2), SEQLEN (64), EPOCHS (1),
#   CHUNKS (4, of 512 tokens of WikiText-2 test), THREADS (all cores), FLAGS (more calibration
#   flags, e.g. "--k-init lwc" or "--pure"; give each its own WORK).
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
cd "$here"
work=${1:-.cache/bench-qwen}
formats=${FORMATS:-q2_k:2 q4_k:4 q5_k:5 iq2_xs:2}
chunks=${CHUNKS:-4} threads=${THREADS:-$(nproc)}
shared=${APIQ_SHARED:-$here/../shared}
text=$shared/data/wikitext-2-raw/wiki.test.raw
calib=$shared/data/calib/c4.utf8
mkdir -p "$work"
echo "fetching the model, building ours and stock llama.cpp (first run only)" >&2
src=$(scripts/fetch-qwen-coder.sh)
cargo build --release --quiet
stock=$(scripts/build-stock-llama.sh)
bin=target/release/apiq2gguf

ppl() { # MODEL [ARGS...]: llama-perplexity's final estimate
  local m=$1; shift
  "$stock/llama-perplexity" -m "$m" -f "$text" -c 512 --chunks "$chunks" -t "$threads" "$@" \
    >"$m.ppl.log" 2>&1 || { echo "error: llama-perplexity failed on $m:" >&2; tail -5 "$m.ppl.log" >&2; exit 1; }
  grep -o 'Final estimate: PPL = [0-9.]*' "$m.ppl.log" | awk '{print $5}'
}
mib() { awk -v b="$(stat -c %s "$1")" 'BEGIN { printf "%.1f", b / 1048576 }'; }

rows=("| source Q4_K_M | $(mib "$src") | – | $(ppl "$src") | – |")
for f in $formats; do
  fmt=${f%%:*} bits=${f##*:} out=$work/apiq-$fmt.gguf
  if [ ! -f "$out" ]; then
    echo "calibrating $fmt (${NSAMPLES:-2} × ${SEQLEN:-64} tokens, ${EPOCHS:-1} epoch)" >&2
    t0=$SECONDS
    "$bin" "$src" "$out" --format "$fmt" --bits "$bits" --calib "$calib" \
      --nsamples "${NSAMPLES:-2}" --seqlen "${SEQLEN:-64}" --epochs "${EPOCHS:-1}" \
      --lora-rank 16 --lora-type q8_0 ${FLAGS:-} >"$out.log" 2>&1 ||
      { echo "error: calibration $fmt failed:" >&2; tail -5 "$out.log" >&2; exit 1; }
    echo "$((SECONDS - t0))" >"$out.seconds"
  fi
  lora=${out%.gguf}.lora.gguf
  # llama-quantize's file type with the same mixture (its Q4_K alone means Q4_K_M, its IQ2_S
  # is IQ2_XS linears: ours follow Q4_K_S and IQ2_M).
  case $fmt in
    q3_k | q4_k | q5_k) ty=$(echo "${fmt}_s" | tr a-z A-Z) ;;
    iq2_s) ty=IQ2_M ;;
    *) ty=$(echo "$fmt" | tr a-z A-Z) ;;
  esac
  theirs=$work/llama-$fmt.gguf qflags=() how="no imatrix" ours="ApiQ through $ty"
  if [[ $fmt == iq* ]]; then
    im=$work/imatrix.gguf
    [ -f "$im" ] || "$stock/llama-imatrix" -m "$src" -f "$calib" -c 512 --chunks "${IM_CHUNKS:-16}" \
      -t "$threads" -o "$im" >"$im.log" 2>&1 || { echo "error: llama-imatrix failed" >&2; exit 1; }
    qflags=(--imatrix "$im") how="imatrix of ${IM_CHUNKS:-16} × 512 calibration tokens"
    ours="LoRA over frozen $ty"
  fi
  [ -f "$theirs" ] || "$stock/llama-quantize" --allow-requantize "${qflags[@]}" "$src" "$theirs" "$ty" \
    >"$theirs.log" 2>&1 || { echo "error: llama-quantize $ty failed" >&2; exit 1; }
  rows+=("| $ours + r16 Q8_0 adapter ($(cat "$out.seconds") s) | $(mib "$out") | $(mib "$lora") | $(ppl "$out" --lora "$lora") | $(ppl "$out") |")
  rows+=("| llama-quantize $ty (from the Q4_K_M source, $how) | $(mib "$theirs") | – | $(ppl "$theirs") | – |")
done
{
  echo "Qwen2.5-Coder-1.5B-Instruct, WikiText-2 test, $chunks × 512 tokens, stock llama.cpp, $threads threads"
  echo "on $(grep -m1 'model name' /proc/cpuinfo | sed 's/.*: //')"
  echo
  echo "| row | model MiB | adapter MiB | PPL | PPL without adapter |"
  echo "|---|---:|---:|---:|---:|"
  printf '%s\n' "${rows[@]}"
} | tee "$work/table.md"
