#!/usr/bin/env bash
# Benchmark (not a test): one ApiQ-bw training step (2-bit g64, LoRA r64, aug loss, AdamW) on
# random blocks, on this machine's CPU. Prints a table last. The GPU side of the same
# benchmark is scripts/bench-calib-gpu.sh, run on the GPU machine.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
cargo build --release --quiet
bin=target/release/apiq2gguf
rows=()
for spec in "stories260k 512 3" "smollm2-135m 512 3" "smollm2-135m 2048 2"; do
  set -- $spec
  rows+=("$($bin bench-step --shape "$1" --seqlen "$2" --warmup 1 --steps "$3" --device cpu)")
done
echo
echo "ApiQ-bw training step, candle f32 on CPU ($(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs))"
printf '%s\n' "${rows[@]}"
