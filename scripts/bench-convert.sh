#!/usr/bin/env bash
# Benchmark (not a test): converting SmolLM2-135M-Instruct from an F32 GGUF to F16, ours vs
# stock llama-quantize (built from the llama-cpp-python 0.3.36 sdist), in the same run:
# wall time and peak RSS, median of RUNS alternating runs. Prints a table last.
set -euo pipefail
cd "$(dirname "$0")/.."
runs=${RUNS:-5}
scripts/setup.sh
src=$(scripts/fetch-smollm2.sh)
stock=$(scripts/build-stock-llama.sh)
cargo build --release --quiet
bin=target/release/apiq2gguf
work=.cache/bench-convert
mkdir -p "$work"
[ -f "$work/f32.gguf" ] || $bin -q "$src" "$work/f32.gguf" --type f32
threads=$(nproc)
ours=(); theirs=()
for i in $(seq "$runs"); do
  rm -f "$work/ours.gguf" "$work/stock.gguf"
  /usr/bin/time -o "$work/t" -f '%e %M' $bin -q "$work/f32.gguf" "$work/ours.gguf" --type f16 >/dev/null 2>&1
  ours+=("$(cat "$work/t")")
  /usr/bin/time -o "$work/t" -f '%e %M' "$stock/llama-quantize" "$work/f32.gguf" "$work/stock.gguf" F16 "$threads" >/dev/null 2>&1
  theirs+=("$(cat "$work/t")")
done
median() { sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
ow=$(printf '%s\n' "${ours[@]}" | awk '{print $1}' | median)
om=$(printf '%s\n' "${ours[@]}" | awk '{print $2}' | median)
sw=$(printf '%s\n' "${theirs[@]}" | awk '{print $1}' | median)
sm=$(printf '%s\n' "${theirs[@]}" | awk '{print $2}' | median)
in_mb=$(( $(stat -c %s "$work/f32.gguf") / 1048576 ))
out_mb=$(( $(stat -c %s "$work/ours.gguf") / 1048576 ))
echo
echo "SmolLM2-135M F32 GGUF (${in_mb} MiB) -> F16 (${out_mb} MiB), median of $runs runs, $(nproc) cores"
printf '%-22s %10s %14s\n' tool "wall (s)" "peak RSS (MiB)"
printf '%-22s %10s %14s\n' "apiq2gguf" "$ow" "$((om / 1024))"
printf '%-22s %10s %14s\n' "llama-quantize (stock)" "$sw" "$((sm / 1024))"
awk -v a="$ow" -v b="$sw" -v c="$om" -v d="$sm" 'BEGIN { printf "ratio ours/stock: wall %.2f, peak RSS %.2f\n", a/b, c/d }'
