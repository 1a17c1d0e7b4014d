#!/usr/bin/env bash
# Runs the quality table configurations side by side on one GPU (the training step is
# launch-bound, so they share the card well), each under LIMIT_S and resumable:
#   scripts/quality-gpu-all.sh BIN MODEL DATA_DIR WORK_DIR LIMIT_S
set -uo pipefail
bin=$1 model=$2 data=$3 work=$4 limit=$5
q=scripts/quality-gpu.sh
$q "$bin" "$model" "$data" "$work" rtn2 "$limit" --method rtn > "$work.rtn2.out" 2>&1 &
$q "$bin" "$model" "$data" "$work" lwc2 "$limit" --no-lora > "$work.lwc2.out" 2>&1 &
$q "$bin" "$model" "$data" "$work" bw2 "$limit" > "$work.bw2.out" 2>&1 &
$q "$bin" "$model" "$data" "$work" lw2 "$limit" --method apiq-lw > "$work.lw2.out" 2>&1 &
$q "$bin" "$model" "$data" "$work" bw3 "$limit" --bits 3 > "$work.bw3.out" 2>&1 &
wait
cat "$work".*.out
for n in rtn2 lwc2 bw2 lw2 bw3; do echo "== $n"; cat "$work/$n.log" 2>/dev/null | tail -2; done
