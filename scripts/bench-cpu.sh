#!/usr/bin/env bash
# CPU speed of APIQ2 against stock Q4_0, Q2_K (pure) and Q2_0, all run by apiq2gguf's runtime
# (llama.cpp with vendor/ applied; the stock types run on their unchanged kernels), in one run:
# SmolLM2-135M (APIQ2 by an RTN calibration, the others by llama-quantize from its F16 twin, all
# with Q8_0 embeddings) and a Llama-2-7B-shaped model with random weights
# (scripts/make-random-model.py). Prints pp512/tg128 tokens per second and the ratios to Q4_0.
#   scripts/bench-cpu.sh [THREADS] [WORK_DIR]
# Needs ~12 GB of disk for the 7B files. Stock x86 Q2_0 has no SIMD kernel; it is measured on
# pp64/tg16 once on the 7B shape (minutes otherwise). Last, the kernels alone: MUL_MAT of APIQ2
# and Q4_0 (vendor/tests/bench-apiq2.c, built with scripts/llama-cpp-apiq2.sh on the
# llama-cpp-python sdist tree) on 7B shapes and one that fits in the caches.
set -euo pipefail
cd "$(dirname "$0")/.."
threads=${1:-$(nproc)}
work=${2:-.cache/bench-cpu}
mkdir -p "$work"
cargo build --release >&2
bin=target/release/apiq2gguf
stock=$(scripts/build-stock-llama.sh)
scripts/fetch-llama-sdist.sh .cache/llama-apiq2/src
patched=$(scripts/llama-cpp-apiq2.sh .cache/llama-apiq2/src .cache/llama-apiq2/build)
smol=$(scripts/fetch-smollm2.sh)
scripts/fetch-calib.sh >/dev/null
python3 -c 'import gguf, numpy' 2>/dev/null || python3 -m pip install --quiet gguf numpy >&2

if [ ! -f "$work/smol-apiq2.gguf" ]; then
  "$bin" -q "$smol" "$work/smol-apiq2.gguf" --method rtn --no-lora --quick --f16-twin >/dev/null
fi
for ty in Q4_0 Q2_K Q2_0; do
  f=$work/smol-$(echo "$ty" | tr 'A-Z' 'a-z').gguf
  [ -f "$f" ] || "$stock/llama-quantize" --allow-requantize --pure --token-embedding-type q8_0 \
    --output-tensor-type q8_0 "$work/smol-apiq2.f16.gguf" "$f" "$ty" >/dev/null 2>&1
done
for ty in apiq2 q4_0 q2_k q2_0; do
  [ -f "$work/r7-$ty.gguf" ] || python3 scripts/make-random-model.py "$smol" "$work/r7-$ty.gguf" "$ty" >/dev/null
done

rows=()
bench() { # MODEL_LABEL TYPE FILE [bench flags]
  local label=$1 ty=$2 f=$3; shift 3
  local out pp tg
  out=$("$bin" bench "$f" -t "$threads" "$@")
  echo "$out" | grep -q "AVX2 = 1" || echo "warning: ggml without AVX2" >&2
  pp=$(echo "$out" | awk -F'|' '$6 ~ /pp/ {gsub(/ /, "", $6); split($7, v, "±"); printf "%s %.2f", $6, v[1]}')
  tg=$(echo "$out" | awk -F'|' '$6 ~ /tg/ {gsub(/ /, "", $6); split($7, v, "±"); printf "%s %.2f", $6, v[1]}')
  rows+=("$label|$ty|$(stat -c %s "$f")|$pp|$tg")
}
for ty in apiq2 q4_0 q2_k q2_0; do bench SmolLM2-135M "$ty" "$work/smol-$ty.gguf" -r 3; done
for ty in apiq2 q4_0 q2_k; do bench llama2-7b-shape "$ty" "$work/r7-$ty.gguf" -r 3; done
bench llama2-7b-shape q2_0 "$work/r7-q2_0.gguf" -p 64 -n 16 -r 1

echo
echo "threads: $threads"; "$bin" bench "$work/smol-apiq2.gguf" -p 0 -n 1 -r 1 | head -2
echo "| model | type | file MiB | pp test | pp t/s | pp / Q4_0 | tg test | tg t/s | tg / Q4_0 |"
echo "|---|---|---:|---|---:|---:|---|---:|---:|"
for r in "${rows[@]}"; do
  IFS='|' read -r label ty size pp tg <<<"$r"
  ref=$(printf '%s\n' "${rows[@]}" | awk -F'|' -v l="$label" '$1 == l && $2 == "q4_0"')
  IFS='|' read -r _ _ _ rpp rtg <<<"$ref"
  awk -v l="$label" -v t="$ty" -v s="$size" -v pp="$pp" -v tg="$tg" -v rpp="$rpp" -v rtg="$rtg" 'BEGIN {
    split(pp, a, " "); split(tg, b, " "); split(rpp, c, " "); split(rtg, d, " ");
    rp = (a[1] == c[1]) ? sprintf("%.2f", a[2] / c[2]) : "-";
    rt = (b[1] == d[1]) ? sprintf("%.2f", b[2] / d[2]) : "-";
    printf "| %s | %s | %.1f | %s | %.2f | %s | %s | %.2f | %s |\n", l, t, s / 1048576, a[1], a[2], rp, b[1], b[2], rt }'
done
echo
"$patched/bench-apiq2" "$threads"
