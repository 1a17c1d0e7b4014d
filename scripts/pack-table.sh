#!/usr/bin/env bash
# Size and perplexity of every output format on one model (not a test). Calibrates MODEL once
# per format with the given recipe flags (default --quick) and the F16 fake-quant twin, then
# prints bytes and bits per weight of base and adapter, and WT2-512x40 perplexity (with the
# adapter; APIQ2 through our patched runtime) of each file beside its twin's:
#   scripts/pack-table.sh MODEL WORK_DIR [RECIPE FLAGS…]
set -euo pipefail
cd "$(dirname "$0")/.."
model=$1 work=$2; shift 2
flags=("$@"); [ ${#flags[@]} -gt 0 ] || flags=(--quick)
bin=target/release/apiq2gguf
wt2=../shared/data/wikitext-2-raw/wiki.test.lf.raw
mkdir -p "$work"
scripts/fetch-calib.sh >/dev/null
# name | format flags
runs=(
  "apiq2|--format apiq2"
  "q2_0|--format q2_0"
  "q2_k|--format q2_k"
  "q4_1-4bit-g32|--format q4_1 --bits 4 --group-size 32"
)
# ppl CACHE MODEL [--lora ADAPTER]: WT2-512x40, remembered in CACHE (Q2_0 runs on ggml's scalar
# x86 kernel and takes minutes).
ppl() {
  local cache=$1; shift
  [ -s "$cache" ] || "$bin" perplexity "$@" -f "$wt2" -c 512 --chunks 40 2>/dev/null \
    | awk '/Final estimate/ {print $5}' > "$cache"
  cat "$cache"
}
weights() { "$bin" inspect "$1" | awk '/^total:/ {print $2}'; }
rows=()
for r in "${runs[@]}"; do
  name=${r%%|*}; fmt=${r#*|}
  out=$work/$name.gguf
  if [ ! -f "$out" ]; then
    # shellcheck disable=SC2086
    "$bin" -q "$model" "$out" "${flags[@]}" $fmt --f16-twin > "$work/$name.table" 2> "$work/$name.log"
  fi
  base=$(stat -c %s "$out"); lora=$(stat -c %s "${out%.gguf}.lora.gguf")
  n=$(weights "$out")
  bpw_base=$(awk -v b="$base" -v n="$n" 'BEGIN {printf "%.3f", b * 8 / n}')
  bpw_all=$(awk -v b="$base" -v l="$lora" -v n="$n" 'BEGIN {printf "%.3f", (b + l) * 8 / n}')
  p=$(ppl "$work/$name.ppl" "$out" --lora "${out%.gguf}.lora.gguf")
  twin=${out%.gguf}.f16.gguf; [ -f "$twin" ] || twin=$out
  t=$(ppl "$work/$name.twin.ppl" "$twin" --lora "${out%.gguf}.lora.gguf")
  added=$(grep -o 'relative [0-9.e+-]*' "$work/$name.log" || true)
  rows+=("$(printf '%-16s %10s %7s %10s %9s %10s %10s %s' "$name" "$base" "$bpw_base" "$lora" "$bpw_all" "$p" "$t" "${added:-exact}")")
  echo "${rows[-1]}" >&2
done
# The apiq2 calibration's adapter as Q8_0 (a plain conversion of the adapter GGUF), on its twin.
a=$work/apiq2
[ -f "$a.lora.q8_0.gguf" ] || "$bin" -q "$a.lora.gguf" "$a.lora.q8_0.gguf" --type q8_0 2>/dev/null
lq=$(stat -c %s "$a.lora.q8_0.gguf")
n=$(weights "$a.gguf")
rows+=("$(printf '%-16s %10s %7s %10s %9s %10s %10s %s' "apiq2+lora-q8_0" "$(stat -c %s "$a.gguf")" - "$lq" \
  "$(awk -v b="$(stat -c %s "$a.gguf")" -v l="$lq" -v n="$n" 'BEGIN {printf "%.3f", (b + l) * 8 / n}')" \
  "$(ppl "$a.q8lora.ppl" "$a.gguf" --lora "$a.lora.q8_0.gguf")" \
  "$(ppl "$a.q8lora.twin.ppl" "$a.f16.gguf" --lora "$a.lora.q8_0.gguf")" "adapter Q8_0")")
printf '%-16s %10s %7s %10s %9s %10s %10s %s\n' format base_B bpw lora_B bpw+lora ppl+lora twin+lora added_error
printf '%s\n' "${rows[@]}"
