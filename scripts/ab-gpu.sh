#!/usr/bin/env bash
# Faithfulness A/B on the GPU machine (not a test), from the repository root:
#   scripts/ab-gpu.sh BIN MODEL DATA_DIR WORK_DIR [LAYER] [EPOCHS]
# One block of MODEL (default block 3; calibration text = the first 1,200,000 bytes of
# DATA_DIR/c4.utf8 + wiki.utf8, 128 windows x 2048 tokens, seed 2, 2-bit g64, LoRA r64, aug
# loss) trained from the same inputs, targets, γ = β = 4, B = 0 and A by our step (bf16 and f32)
# and by the released code's step in PyTorch (fp16 autocast + GradScaler, and f32). Prints both
# loss curves and the final block-output MSEs (scripts/ab_compare.py).
set -uo pipefail
cd "$(dirname "$0")/.."
. scripts/gpu-env.sh
bin=$1 model=$2 data=$3 work=$4 layer=${5:-3} epochs=${6:-5}
bin=$(gpu_bin "$bin") || exit 1
mkdir -p "$work"
for p in bf16 f32; do
  "$bin" trace-block "$model" "$work" --layer "$layer" --device cuda --precision $p \
    --nsamples 128 --seqlen 2048 --epochs "$epochs" --seed 2 \
    --calib "$data/c4.utf8" "$data/wiki.utf8" --calib-max-bytes 1200000 || exit 1
done
for mode in released fp32; do
  python3 scripts/ab_torch_step.py "$work" $mode || exit 1
done
python3 scripts/ab_compare.py "$work"
