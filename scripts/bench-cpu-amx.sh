#!/usr/bin/env bash
# ggml's AMX path on a CPU that has it (Intel Xeon Sapphire Rapids and newer): whether each build
# runs, and how fast, in one run. Four builds of one llama.cpp tree, each with -march=native:
#   stock        unpatched, AMX on     (GCC drops the tile configuration: expected to crash)
#   stock-noamx  unpatched, -mno-amx-* (how scripts/build-stock-llama.sh builds the reference)
#   ours         vendor/ applied, AMX on (the patch carries the tile-configuration fix)
#   ours-noamx   vendor/ applied, -mno-amx-*
# On Llama-2-7B-wide random models of LAYERS blocks (scripts/make-random-model.py; Q4_0, Q4_1,
# Q8_0, APIQ2; embeddings and output Q8_0) each build scores TEXT with llama-perplexity (does it
# finish, and to what), and the two of ours run llama-bench pp512 / tg128. Prints a markdown
# table (also WORK/amx.md).
#   scripts/bench-cpu-amx.sh LLAMA_TREE VOCAB_GGUF TEXT WORK
# LLAMA_TREE: an unpatched llama.cpp tree (scripts/fetch-llama-sdist.sh), copied, never changed.
# VOCAB_GGUF: any llama GGUF (its tokenizer keys are copied; stories260K's is 1 MB).
# Environment: LAYERS (4), THREADS (all cores), REPS (3), STAGES ("build run"), VARIANTS (all
# four; a subset builds in parts when one call has too little time for four builds).
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
tree=$(cd "${1:?usage: $0 LLAMA_TREE VOCAB_GGUF TEXT WORK}" && pwd)
vocab=${2:?VOCAB_GGUF} text=${3:?TEXT} work=${4:?WORK}
layers=${LAYERS:-4} threads=${THREADS:-$(nproc)} reps=${REPS:-3} stages=${STAGES:-build run}
if ! grep -qw amx_int8 /proc/cpuinfo; then
  echo "this CPU has no AMX (no amx_int8 in /proc/cpuinfo): nothing to measure"
  exit 0
fi
mkdir -p "$work"
noamx="-mno-amx-tile -mno-amx-int8 -mno-amx-bf16"
variants=${VARIANTS:-stock stock-noamx ours ours-noamx}
targets="llama-bench llama-perplexity"

build() { # NAME
  local name=$1 src=$work/src-$1 bld=$work/build-$1 flags=""
  case $name in *-noamx) flags=$noamx ;; esac
  rm -rf "$src" && cp -r "$tree" "$src"
  local t0=$SECONDS
  case $name in
    ours*) LLAMA_TARGETS=$targets "$here/scripts/llama-cpp-apiq2.sh" "$src" "$bld" -- \
             -DCMAKE_C_FLAGS="$flags" -DCMAKE_CXX_FLAGS="$flags" >"$work/build-$name.log" 2>&1 ;;
    *) { cmake -S "$src" -B "$bld" -G Ninja -DCMAKE_BUILD_TYPE=Release -DGGML_NATIVE=ON \
           -DLLAMA_CURL=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF \
           -DCMAKE_C_FLAGS="$flags" -DCMAKE_CXX_FLAGS="$flags" &&
         cmake --build "$bld" -j"$(nproc)" --target $targets; } >"$work/build-$name.log" 2>&1 ;;
  esac || { echo "error: build $name failed:" >&2; tail -20 "$work/build-$name.log" >&2; exit 1; }
  echo "built $name in $((SECONDS - t0)) s" >&2
}

if [[ " $stages " == *" build "* ]]; then
  for v in $variants; do build "$v"; done
  for ty in q4_0 q4_1 q8_0 apiq2; do
    [ -f "$work/r7-$ty.gguf" ] || python3 "$here/scripts/make-random-model.py" "$vocab" \
      "$work/r7-$ty.gguf" "$ty" --layers "$layers" >/dev/null
  done
fi

[[ " $stages " == *" run "* ]] || exit 0
speed() { # CSV COLUMN: mean ± sd tokens/s of llama-bench's row whose COLUMN is not 0
  python3 - "$1" "$2" <<'PY'
import csv, sys
for r in csv.DictReader(open(sys.argv[1])):
    if r[sys.argv[2]] != "0":
        print(f'{float(r["avg_ts"]):.2f} ± {float(r["stddev_ts"]):.2f}')
PY
}
{
  grep -m1 'model name' /proc/cpuinfo | sed 's/.*: /CPU: /'
  echo "AMX flags: $(grep -o 'amx[a-z0-9_]*' /proc/cpuinfo | sort -u | tr '\n' ' ')"
  echo "compiler: $(${CC:-cc} --version | head -1); threads $threads; models: Llama-2-7B widths, $layers blocks, random weights"
  echo
  echo "| build | type | perplexity (c 128, 4 chunks) | weights in | pp512 t/s | tg128 t/s |"
  echo "|---|---|---|---|---:|---:|"
} | tee "$work/amx.md"
for v in $variants; do
  bin=$work/build-$v/bin
  for ty in q4_0 q4_1 q8_0 apiq2; do
    m=$work/r7-$ty.gguf
    [ "$ty" = apiq2 ] && [[ $v == stock* ]] && continue # stock llama.cpp has no APIQ2
    rc=0
    timeout 300 "$bin/llama-perplexity" -m "$m" -f "$text" -c 128 --chunks 4 -t "$threads" \
      >"$work/ppl-$v-$ty.log" 2>&1 || rc=$?
    if [ "$rc" -eq 0 ]; then
      ppl=$(grep -o 'Final estimate: PPL = [0-9.]*' "$work/ppl-$v-$ty.log" | awk '{print $5}')
    elif [ "$rc" -gt 128 ]; then
      ppl="crashed: $(kill -l $((rc - 128)) 2>/dev/null || echo "signal $((rc - 128))")"
    else
      ppl="failed: exit $rc"
    fi
    bufs=$(grep -o '[A-Za-z_0-9]* model buffer size = *[0-9.]* MiB' "$work/ppl-$v-$ty.log" |
      awk '{printf "%s%s %s", (NR > 1 ? ", " : ""), $1, $6}')
    pp=- tg=-
    if [[ $v == ours* ]] && [ "$rc" -eq 0 ]; then
      "$bin/llama-bench" -m "$m" -p 512 -n 128 -r "$reps" -t "$threads" -o csv \
        >"$work/bench-$v-$ty.csv" 2>"$work/bench-$v-$ty.log" || true
      pp=$(speed "$work/bench-$v-$ty.csv" n_prompt)
      tg=$(speed "$work/bench-$v-$ty.csv" n_gen)
    fi
    echo "| $v | $ty | ${ppl:-?} | ${bufs:-?} | ${pp:--} | ${tg:--} |" | tee -a "$work/amx.md"
  done
done
