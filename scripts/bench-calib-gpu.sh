#!/usr/bin/env bash
# GPU calibration benchmark (not a test), one call on the GPU machine, from the repository root:
#   scripts/bench-calib-gpu.sh BIN [STEPS]
# BIN is apiq2gguf built with --features cuda (a .gz is unpacked first). In order:
# 1. start-up: two processes of one tiny step each, from an empty driver cache (the first one
#    loads candle's PTX through the driver's JIT, the second finds it cached; ours is SASS);
# 2. check-kernels: the fused kernels against candle's ops on random data (fails the script);
# 3. one ApiQ-bw training step (2-bit g64, LoRA r64, aug loss, AdamW, 2048 tokens) on random
#    SmolLM2-135M and Llama-2-7B blocks: ours at each precision with the fused kernels, ours
#    with candle's ops in f32 (the engine before them), PyTorch f32 and fp16 autocast (the
#    released code's mode; scripts/bench_torch_step.py), with peak device memory;
# then a table with projected whole-model times (128 windows x 20 epochs x blocks).
set -uo pipefail
cd "$(dirname "$0")/.."
. scripts/gpu-env.sh
bin=${1:?usage: scripts/bench-calib-gpu.sh BIN [STEPS]}
steps=${2:-20}
bin=$(gpu_bin "$bin") || exit 1
now() { date +%s.%N; }
export CUDA_CACHE_PATH=$(mktemp -d)
startup=()
for run in first second; do
  t0=$(now)
  "$bin" bench-step --shape stories260k --seqlen 64 --warmup 0 --steps 1 --device cuda >/dev/null || exit 1
  startup+=("$(awk -v a="$t0" -v b="$(now)" 'BEGIN {printf "%.1f", b - a}')")
done
"$bin" check-kernels --device cuda || { echo "KERNEL CHECK FAILED"; exit 1; }
rows=()
for shape in smollm2-135m llama2-7b; do
  for p in f32 bf16 f16; do
    rows+=("$("$bin" bench-step --shape $shape --seqlen 2048 --warmup 3 --steps "$steps" --device cuda --precision $p 2>&1 | tail -1)")
  done
  rows+=("$("$bin" bench-step --shape $shape --seqlen 2048 --warmup 2 --steps 5 --device cuda --precision f32 --kernels candle 2>&1 | tail -1)")
  for mode in fp32 amp; do
    rows+=("$(python3 scripts/bench_torch_step.py $shape 2048 $mode "$steps" 2>&1 | tail -1)")
  done
done
echo
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader
echo "process start to first step done: ${startup[0]} s with an empty driver cache, ${startup[1]} s after"
echo
printf '%-44s %10s %10s %9s %18s\n' "step (2048 tokens)" "ms/step" "tokens/s" "peak GiB" "20-epoch model h"
for r in "${rows[@]}"; do
  echo "$r" | awk '
    { shape = ""; for (i = 1; i <= NF; i++) if ($i == "smollm2-135m" || $i == "llama2-7b") shape = $i }
    { ms = ""; tps = ""; peak = "-"
      for (i = 1; i <= NF; i++) {
        if ($i == "ms/step,") ms = $(i - 1)
        if ($i == "tokens/s" || $i == "tokens/s,") tps = $(i - 1)
        if ($i == "peak") { peak = $(i + 1); sub(/,/, "", peak) } } }
    { split($0, h, ":"); label = h[1]
      blocks = (shape == "llama2-7b") ? 32 : 30
      if (ms == "") { print "no result: " $0; next }
      printf "%-44s %10s %10s %9s %18.2f\n", label, ms, tps, peak, ms * 128 * 20 * blocks / 3.6e6 }'
done
