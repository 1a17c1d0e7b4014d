#!/usr/bin/env bash
# Quality run on the GPU machine (not a test). Calibrates SmolLM2-135M-Instruct with the given
# flags and the issue's recipe (128 windows x 2048 tokens x 5 epochs, seed 2, calibration text =
# the first 1,200,000 bytes of c4.utf8 + wiki.utf8), then scores WT2-512x40 with and without the
# adapter (the F16 fake-quant twin, and the packed file where the runtime loads its type).
# Runs under a time limit and resumes where the last call stopped:
#   [SEED=N] scripts/quality-gpu.sh BIN MODEL DATA_DIR WORK_DIR NAME LIMIT_S [FLAGS…]
set -uo pipefail
bin=$1 model=$2 data=$3 work=$4 name=$5 limit=$6; shift 6
mkdir -p "$work"
out=$work/$name.gguf
if [ ! -f "$out" ]; then
  start=$(date +%s.%N)
  timeout --signal=INT "$limit" "$bin" -q "$model" "$out" --device cuda \
    --nsamples 128 --seqlen 2048 --epochs 5 --seed "${SEED:-2}" \
    --calib "$data/c4.utf8" "$data/wiki.utf8" --calib-max-bytes 1200000 --f16-twin "$@" \
    >"$work/$name.table" 2>>"$work/$name.log"
  rc=$?
  end=$(date +%s.%N)
  echo "$name: calibration call $(awk -v a="$start" -v b="$end" 'BEGIN {printf "%.1f", b - a}') s, exit $rc" | tee -a "$work/$name.times"
  [ -f "$out" ] || { echo "$name: INCOMPLETE (run again to resume)"; tail -3 "$work/$name.log"; exit 0; }
fi
t=$(nproc)
ppl() { "$bin" perplexity "$@" -f "$data/wiki.test.lf.raw" -c 512 --chunks 40 -t "$t" 2>/dev/null | tail -1 | awk '{print $5}'; }
twin=$work/$name.f16.gguf
[ -f "$twin" ] || twin=$out
lora=$work/$name.lora.gguf
p0=$(ppl "$twin")
p1=- p2=-
[ -f "$lora" ] && p1=$(ppl "$twin" --lora "$lora")
# The packed file itself, where this runtime has its type (APIQ2 needs the patched ggml).
if [ "$twin" != "$out" ] && [ "${SCORE_PACKED:-1}" = 1 ]; then
  if [ -f "$lora" ]; then p2=$(ppl "$out" --lora "$lora"); else p2=$(ppl "$out"); fi
fi
total=$(awk '/calibration call/ {s += $4} END {print s}' "$work/$name.times")
echo "RESULT $name twin_ppl=$p0 twin_lora_ppl=$p1 packed_ppl=${p2:--} calib_wall_s=$total"
