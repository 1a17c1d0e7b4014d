#!/usr/bin/env bash
# Data-parallel calibration on the GPUs of one host (not a test), one call on the GPU machine,
# from the repository root:
#   scripts/bench-calib-multi-gpu.sh BIN MODEL CALIB TEXT
# BIN: apiq2gguf built with --features nccl (a .gz is unpacked first); MODEL: a small model
# (HF dir or GGUF) for the equality check, CALIB its calibration text, TEXT an evaluation text.
# 1. one ApiQ-bw step on a random Llama-2-7B block (bf16, fused kernels, 2048 tokens, one
#    window per GPU and step): on one GPU without the parallel path, then through NCCL on 1, 2,
#    4 and 8 GPUs (as many as the machine has);
# 2. equality: MODEL calibrated --quick with --batch-size G (every GPU, one window each per
#    step) on one GPU and on G GPUs: file bytes compared, perplexity of each on TEXT (c 256,
#    20 chunks, all layers on the GPU);
# then a table.
set -uo pipefail
cd "$(dirname "$0")/.."
. scripts/gpu-env.sh
bin=${1:?usage: $0 BIN MODEL CALIB TEXT}
model=${2:?usage: $0 BIN MODEL CALIB TEXT}
calib=${3:?usage: $0 BIN MODEL CALIB TEXT}
text=${4:?usage: $0 BIN MODEL CALIB TEXT}
bin=$(gpu_bin "$bin") || exit 1
gpus=$(nvidia-smi --list-gpus | wc -l)
work=$(mktemp -d)
step() { "$bin" bench-step --shape llama2-7b --seqlen 2048 --warmup 3 --steps "${STEPS:-20}" --precision bf16 "$@" 2>&1 | tail -1; }
rows=("$(step --device cuda)")
for g in 1 2 4 8; do
  [ "$g" -le "$gpus" ] || break
  rows+=("$(step --devices "$(seq -s, 0 $((g - 1)))")")
done
ppl() { "$bin" perplexity "$1" --lora "${1%.gguf}.lora.gguf" -f "$text" -c 256 --chunks 20 --gpu-layers 99 2>/dev/null |
  sed -n 's/.*Final estimate: PPL = \([0-9.]*\).*/\1/p'; }
eq=()
if [ "$gpus" -ge 2 ]; then
  all=$(seq -s, 0 $((gpus - 1)))
  "$bin" "$model" "$work/one.gguf" --quick --calib "$calib" --batch-size "$gpus" --device cuda -q >/dev/null 2>"$work/one.log" || tail -3 "$work/one.log"
  "$bin" "$model" "$work/all.gguf" --quick --calib "$calib" --batch-size "$gpus" --devices "$all" -q >/dev/null 2>"$work/all.log" || tail -3 "$work/all.log"
  for f in .gguf .lora.gguf; do
    if cmp -s "$work/one$f" "$work/all$f"; then eq+=("$f identical"); else eq+=("$f differs"); fi
  done
  eq+=("PPL one GPU $(ppl "$work/one.gguf"), $gpus GPUs $(ppl "$work/all.gguf")")
fi
echo
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader | sort | uniq -c
printf '%-58s %10s %10s %9s\n' "Llama-2-7B block step (2048 tokens a GPU)" "ms/step" "tokens/s" "speed-up"
base=""
for r in "${rows[@]}"; do
  echo "$r" | awk -v base="$base" '
    { ms = ""; tps = ""
      for (i = 1; i <= NF; i++) { if ($i == "ms/step,") ms = $(i - 1); if ($i == "tokens/s" || $i == "tokens/s,") tps = $(i - 1) } }
    { split($0, h, ":"); if (ms == "") { print "no result: " $0; next }
      printf "%-58s %10s %10s %9s\n", h[1], ms, tps, base == "" ? "1.00" : sprintf("%.2f", tps / base) }'
  [ -n "$base" ] || base=$(echo "$r" | awk '{ for (i = 1; i <= NF; i++) if ($i == "tokens/s" || $i == "tokens/s,") print $(i - 1) }')
done
[ ${#eq[@]} -eq 0 ] || echo "equality, --quick --batch-size $gpus, one GPU against $gpus: ${eq[*]}"
