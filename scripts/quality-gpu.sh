#!/usr/bin/env bash
# Quality run on the GPU machine (not a test). Calibrates SmolLM2-135M-Instruct with the given
# flags and the issue's recipe (128 windows x 2048 tokens x 5 epochs, seed 2, calibration text =
# the first 1,200,000 bytes of c4.utf8 + wiki.utf8), then scores WT2-512x40 with and without the
# adapter. Runs under a time limit and resumes where the last call stopped:
#   scripts/quality-gpu.sh BIN MODEL DATA_DIR WORK_DIR NAME LIMIT_S [FLAGS…]
set -uo pipefail
bin=$1 model=$2 data=$3 work=$4 name=$5 limit=$6; shift 6
mkdir -p "$work"
out=$work/$name.gguf
if [ ! -f "$out" ]; then
  start=$(date +%s.%N)
  timeout --signal=INT "$limit" "$bin" -q "$model" "$out" --device cuda \
    --nsamples 128 --seqlen 2048 --epochs 5 --seed 2 \
    --calib "$data/c4.utf8" "$data/wiki.utf8" --calib-max-bytes 1200000 "$@" \
    >"$work/$name.table" 2>>"$work/$name.log"
  rc=$?
  end=$(date +%s.%N)
  echo "$name: calibration call $(awk -v a="$start" -v b="$end" 'BEGIN {printf "%.1f", b - a}') s, exit $rc" | tee -a "$work/$name.times"
  [ -f "$out" ] || { echo "$name: INCOMPLETE (run again to resume)"; tail -3 "$work/$name.log"; exit 0; }
fi
t=$(nproc)
ppl() { "$bin" perplexity "$@" -f "$data/wiki.test.lf.raw" -c 512 --chunks 40 -t "$t" 2>/dev/null | tail -1 | awk '{print $5}'; }
p0=$(ppl "$out")
p1=-
[ -f "$work/$name.lora.gguf" ] && p1=$(ppl "$out" --lora "$work/$name.lora.gguf")
total=$(awk '/calibration call/ {s += $4} END {print s}' "$work/$name.times")
echo "RESULT $name base_ppl=$p0 with_lora_ppl=$p1 calib_wall_s=$total"
