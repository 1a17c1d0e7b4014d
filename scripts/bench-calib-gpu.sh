#!/usr/bin/env bash
# GPU benchmark (not a test), run on the GPU machine from the repository root:
#   scripts/bench-calib-gpu.sh BIN
# BIN is apiq2gguf built with --features cuda. Times one ApiQ-bw training step on random
# SmolLM2-135M and Llama-2-7B shaped blocks at 2048 tokens: ours (candle, f32) beside PyTorch
# running the same recipe in f32 and in ApiQ's own fp16 autocast. Prints a table last.
set -uo pipefail
bin=${1:?usage: scripts/bench-calib-gpu.sh BIN}
rows=()
for shape in smollm2-135m llama2-7b; do
  rows+=("$("$bin" bench-step --shape $shape --seqlen 2048 --warmup 2 --steps 10 --device cuda 2>&1 | tail -1)")
  for mode in fp32 amp; do
    rows+=("$(python3 scripts/bench_torch_step.py $shape 2048 $mode 10 2>&1 | tail -1)")
  done
done
echo
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader
printf '%s\n' "${rows[@]}"
