#!/usr/bin/env bash
# APIQ2 on CUDA inside llama.cpp, on a GPU machine with nvcc, CMake and ninja (no Rust, no
# network needed): builds a llama.cpp tree with vendor/ applied and the CUDA backend, runs the
# CUDA test (vendor/tests/test-apiq2-cuda.c: GPU against the CPU backend and exact math), scores
# an APIQ2 model's perplexity fully offloaded and on the CPU, times pp512/tg128 of
# Llama-2-7B-shaped random models in APIQ2 and stock Q2_0, Q2_K, Q4_0, Q4_K (same tree, all
# layers offloaded) against the card's measured copy bandwidth, and shows that the test fails
# with mutated kernels. Prints a table last.
#   scripts/gpu-llama-apiq2.sh TREE BUILD WORK
# TREE: a llama.cpp source tree (e.g. the one inside the PyPI sdist llama-cpp-python==0.3.36,
# scripts/fetch-llama-sdist.sh), patched in place. Environment:
#   STAGES      what to run, default "build test ppl bench mutate" (and "rowblock": batch 1 with
#               upstream's kernel and launch, one row per CUDA block, instead of ours over four
#               rows, tested and timed against the default; "rows": ROWS, default "8", rows per
#               CUDA block of upstream's kernel over the small-k launch in place of our kernel's
#               4, each tested and timed; "profile": each model the bench,
#               rowblock and rows stages time is also run under Nsight Compute, which sums its
#               kernels' time per generated token); results collect in
#               WORK/results and every run prints the table of all of them, so a machine with a
#               time limit per command can run the stages in turn
#   MODEL LORA  an APIQ2 GGUF (and adapter) for the perplexity stage; TEXT the evaluation text
#               (WikiText-2 test, raw); scored 512 tokens x 40 chunks
#   VOCAB       any llama GGUF whose vocabulary the random models take (default: MODEL)
#   BENCH_TYPES the types the bench stage times, default "apiq2 apiq2-mmq q2_0 q2_k q4_0 q4_k"
#               (keep q4_0: the ratios are taken to it in the same run)
#   CUDA_ARCHS  CMAKE_CUDA_ARCHITECTURES, default 90 (Hopper)
# Flash attention is built off (GGML_CUDA_FA=OFF: 82 of ggml-cuda's 189 files), alike for every
# type.
# BUILD/bin also holds llama-quantize and llama-imatrix, for `apiq2gguf eval --llama-bin` there.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
tree=${1:?usage: $0 TREE BUILD WORK}
build=${2:?usage: $0 TREE BUILD WORK}
work=${3:?usage: $0 TREE BUILD WORK}
stages=${STAGES:-build test ppl bench mutate}
mkdir -p "$work"
results=$work/results
bin=$build/bin
threads=$(nproc)
has() { [[ " $stages " == *" $1 "* ]]; }
record() { echo "$1" >> "$results"; }

build() {
  local s=$SECONDS
  LLAMA_TARGETS="llama-perplexity llama-bench llama-quantize llama-imatrix ggml-cuda" "$here/scripts/llama-cpp-apiq2.sh" "$tree" "$build" -- \
    -DGGML_CUDA=ON -DCMAKE_CUDA_ARCHITECTURES="${CUDA_ARCHS:-90}" -DGGML_CUDA_FA=OFF \
    -DLLAMA_BUILD_SERVER=OFF -DLLAMA_BUILD_APP=OFF >/dev/null
  echo "build: $((SECONDS - s)) s" >&2
}

if has build; then
  build
  record "build|$(nvidia-smi --query-gpu=name,driver_version --format=csv,noheader | head -1)|$SECONDS s"
fi

if has test; then
  # batches above 8: the default dequantize + cuBLAS path, then the MMQ kernel
  for mmq in 0 1; do
    log=$work/test-mmq$mmq.log
    if GGML_APIQ2_MMQ=$mmq "$bin/test-apiq2-cuda" > "$log" 2>&1; then verdict=OK; else verdict=FAILED; fi
    record "test|$(sed -n 's/.*n > 8: //p' "$log")|$verdict - $(grep 'MUL_MAT cases' "$log" || tail -1 "$log")"
    tail -2 "$log" >&2
  done
fi

ppl() { # GPU_LAYERS [extra flags]: the final perplexity estimate
  local ngl=$1; shift
  "$bin/llama-perplexity" -m "$MODEL" ${LORA:+--lora "$LORA"} -f "$TEXT" -c 512 --chunks 40 \
    -t "$threads" -ngl "$ngl" "$@" 2>&1 | tee -a "$work/ppl.log" |
    sed -n 's/.*Final estimate: PPL = \([0-9.]*\).*/\1/p'
}
if has ppl && [ -n "${MODEL:-}" ]; then
  name="$(basename "$MODEL")${LORA:+ + $(basename "$LORA")}"
  cpu=$(ppl 0 --device none)
  record "ppl|$name, CPU|$cpu|$cpu"
  record "ppl|$name, GPU: cuBLAS F16 (default)|$(ppl 99)|$cpu"
  record "ppl|$name, GPU: cuBLAS BF16|$(GGML_CUDA_CUBLAS_COMPUTE_TYPE=bf16 ppl 99)|$cpu"
  record "ppl|$name, GPU: cuBLAS F32|$(GGML_CUDA_CUBLAS_COMPUTE_TYPE=f32 ppl 99)|$cpu"
  record "ppl|$name, GPU: MMQ (int8 activations)|$(GGML_APIQ2_MMQ=1 ppl 99)|$cpu"
fi

bench_one() { # LABEL: TYPE[-mmq|-rowblock], timed with llama-bench on its random 7B-shaped model
  local ty=$1 base=${1%-*} f csv pp tg mmq=0
  [ "$ty" = apiq2-mmq ] && mmq=1
  f=$work/r7-$base.gguf
  [ -f "$f" ] || python3 "$here/scripts/make-random-model.py" "$vocab" "$f" "$base" > "$work/r7-$base.bytes"
  csv=$(GGML_APIQ2_MMQ=$mmq "$bin/llama-bench" -m "$f" -ngl 99 -p 512 -n 128 -r 3 -t "$threads" -o csv 2>/dev/null)
  pp=$(echo "$csv" | python3 -c 'import csv,sys; r=[x for x in csv.DictReader(sys.stdin) if x["n_prompt"]=="512"]; print(r[0]["avg_ts"])')
  tg=$(echo "$csv" | python3 -c 'import csv,sys; r=[x for x in csv.DictReader(sys.stdin) if x["n_gen"]=="128"]; print(r[0]["avg_ts"])')
  record "bench|$ty|$(stat -c %s "$f")|$(sed -n 's/bytes_read_per_token=//p' "$work/r7-$base.bytes")|$pp|$tg"
  has profile && profile_one "$ty"
  true
}

# Where a token's time goes: Nsight Compute times every kernel of 16 generated tokens (one at a
# time, so the gaps between kernels are not in it) and sums them per token: the batch-1 matrix
# kernel (MMVQ), the activations' Q8_1 quantization, everything else.
profile_one() { # LABEL, after bench_one made its model
  local ty=$1 base=${1%-*} mmq=0 ncu csv
  [ "$ty" = apiq2-mmq ] && mmq=1
  ncu=$(command -v ncu || ls /opt/nvidia/nsight-compute/*/ncu 2>/dev/null | head -1)
  [ -n "$ncu" ] || { echo "error: profile needs Nsight Compute (ncu)" >&2; exit 1; }
  csv=$work/profile-$ty.csv
  GGML_APIQ2_MMQ=$mmq "$ncu" --clock-control none --metrics gpu__time_duration.sum --csv --page raw \
    --print-units base --print-kernel-base function "$bin/llama-bench" -m "$work/r7-$base.gguf" -ngl 99 -p 0 -n 16 -r 1 \
    --no-warmup -t "$threads" > "$csv" 2> "$work/profile-$ty.log"
  record "profile|$ty|$(python3 - "$csv" 16 <<'PY'
import csv, sys
lines = [l for l in open(sys.argv[1]) if l.startswith('"')]
rows = list(csv.reader(lines))
head, units, rows = rows[0], rows[1], rows[2:]
name, ns = head.index("Kernel Name"), head.index("gpu__time_duration.sum")
assert units[ns] == "ns", units[ns]
tokens = int(sys.argv[2])
total = {"mmvq": 0.0, "q8_1": 0.0, "other": 0.0}
for r in rows:
    k = "mmvq" if r[name].startswith("mul_mat_vec_q") else "q8_1" if r[name].startswith("quantize_q8_1") else "other"
    total[k] += float(r[ns].replace(",", ""))
n = sum(1 for r in rows if r[name].startswith("mul_mat_vec_q"))
print(f"{len(rows) / tokens:.0f}|{n / tokens:.0f}|" + "|".join(f"{total[k] / tokens / 1e3:.1f}" for k in ("mmvq", "q8_1", "other")))
# per kernel and launch shape: calls per token, mean and summed time (the CSV itself is large)
grid, block = head.index("Grid Size"), head.index("Block Size")
shapes = {}
for r in rows:
    s = shapes.setdefault((r[name], r[grid], r[block]), [0, 0.0])
    s[0] += 1
    s[1] += float(r[ns].replace(",", ""))
with open(sys.argv[1][:-4] + ".txt", "w") as f:
    print("kernel | grid | block | calls per token | mean us | us per token", file=f)
    for (k, g, b), (c, t) in sorted(shapes.items(), key=lambda kv: -kv[1][1]):
        print(f"{k} | {g} | {b} | {c / tokens:.1f} | {t / c / 1e3:.2f} | {t / tokens / 1e3:.1f}", file=f)
PY
)"
}
vocab=${VOCAB:-${MODEL:-}}

if has bench; then
  [ -n "$vocab" ] || { echo "error: bench needs VOCAB or MODEL (the random models take its vocabulary)" >&2; exit 1; }
  # the card's copy bandwidth (read + write), against which tg128's bytes per token are set
  cat > "$work/bw.cu" <<'CU'
#include <cstdio>
#include <cuda_runtime.h>
int main() {
    const size_t n = size_t(2) << 30;
    void *a, *b;
    cudaMalloc(&a, n); cudaMalloc(&b, n);
    cudaMemset(a, 1, n);
    cudaEvent_t t0, t1;
    cudaEventCreate(&t0); cudaEventCreate(&t1);
    for (int i = 0; i < 3; i++) cudaMemcpy(b, a, n, cudaMemcpyDeviceToDevice);
    cudaEventRecord(t0);
    for (int i = 0; i < 20; i++) cudaMemcpy(b, a, n, cudaMemcpyDeviceToDevice);
    cudaEventRecord(t1);
    cudaEventSynchronize(t1);
    float ms = 0;
    cudaEventElapsedTime(&ms, t0, t1);
    printf("%.1f\n", 2.0 * n * 20 / (ms / 1e3) / 1e9);
    return 0;
}
CU
  nvcc -O2 -o "$work/bw" "$work/bw.cu"
  record "bandwidth|$("$work/bw")"
  for ty in ${BENCH_TYPES:-apiq2 apiq2-mmq q2_0 q2_k q4_0 q4_k}; do
    bench_one "$ty"
  done
fi

# A batch-1 MMVQ variant: DEFINE set to VALUE in apiq2-mmvq.cuh, rebuilt, tested and timed as
# apiq2-LABEL in this build; the next variant (or the restore below) rebuilds mmvq.cu again.
variant() { # DEFINE VALUE LABEL DESCRIPTION
  local h=$tree/ggml/src/ggml-apiq2/apiq2-mmvq.cuh log=$work/test-$3.log verdict
  [ -n "$vocab" ] || { echo "error: $3 needs VOCAB or MODEL" >&2; exit 1; }
  sed -i "s/^#define $1 [0-9]*$/#define $1 $2/" "$h"
  grep -q "^#define $1 $2$" "$h" || { echo "error: $1 no longer in $h" >&2; exit 1; }
  cmake --build "$build" -j"$threads" --target ggml-cuda >/dev/null
  if "$bin/test-apiq2-cuda" > "$log" 2>&1; then verdict=OK; else verdict=FAILED; fi
  record "test|dequantize + cuBLAS; MMVQ $4|$verdict - $(grep 'MUL_MAT cases' "$log" || tail -1 "$log")"
  bench_one "apiq2-$3"
}
if has rowblock || has rows; then
  # rowblock: upstream's launch for a type like ours (one row per 128-thread block) instead of
  # four rows per block at every k; rows: each of ROWS rows per block of that launch
  has rowblock && variant APIQ2_MMVQ_SMALL_K_ALWAYS 0 rowblock "one row per block"
  if has rows; then
    for n in ${ROWS:-8}; do
      cp "$here/vendor/ggml-apiq2/apiq2-mmvq.cuh" "$tree/ggml/src/ggml-apiq2/"
      variant APIQ2_MMVQ_ROWS_PER_BLOCK "$n" "rows$n" "$n rows per block"
    done
  fi
  cp "$here/vendor/ggml-apiq2/apiq2-mmvq.cuh" "$tree/ggml/src/ggml-apiq2/"
  cmake --build "$build" -j"$threads" --target ggml-cuda >/dev/null
fi

if has mutate; then
  # The test must fail when a kernel is wrong: the batch-1 kernel and upstream's MMVQ dot product
  # (batches 2..8) each without the offset term, and the MMQ tile loader with two code words
  # swapped (each in a header only one file includes).
  k=$tree/ggml/src/ggml-apiq2
  mutate() { # FILE SED_EXPRESSION: must change the file
    local before; before=$(md5sum < "$1")
    sed -i "$2" "$1"
    [ "$(md5sum < "$1")" != "$before" ] || { echo "error: the mutation of $1 no longer applies" >&2; exit 1; }
  }
  mutate "$k/apiq2-mmvq.cuh" 's/sum += dm.x \* ds.x \* (float) sumi + dm.y \* ds.y;/sum += dm.x * ds.x * (float) sumi;/'
  mutate "$k/apiq2-mmvq.cuh" 's/sum\[i\] += dm.x \* (d8 \* (float) apiq2_dot_half64(w\[i\].q0, w\[i\].q1, T)) + dm.y \* ds.y;/sum[i] += dm.x * (d8 * (float) apiq2_dot_half64(w[i].q0, w[i].q1, T));/'
  mutate "$k/apiq2-mmq.cuh" 's/dst\[4\*j + 0\] = lo.x;/dst[4*j + 0] = lo.y;/; s/dst\[4\*j + 1\] = lo.y;/dst[4*j + 1] = lo.x;/'
  cmake --build "$build" -j"$threads" --target ggml-cuda >/dev/null
  if GGML_APIQ2_MMQ=1 "$bin/test-apiq2-cuda" > "$work/mutated.log" 2>&1; then verdict="passed (WRONG)"; else verdict="failed, as it must"; fi
  one=$(grep -cE '^FAIL .* n=1:' "$work/mutated.log" || true)
  small=$(grep -cE '^FAIL .* n=[2-8]:' "$work/mutated.log" || true)
  large=$(grep -cE '^FAIL .* n=([0-9]{2,}):' "$work/mutated.log" || true)
  record "mutate|$verdict|$one|$small|$large"
  # the originals back: the next build stage recompiles the two files
  cp "$here"/vendor/ggml-apiq2/apiq2-mmvq.cuh "$here"/vendor/ggml-apiq2/apiq2-mmq.cuh "$k/"
fi

# the table of everything recorded so far
python3 - "$results" <<'PY'
import sys
rows = [l.rstrip("\n").split("|") for l in open(sys.argv[1])]
last = {}
for r in rows:
    last[(r[0],) + ((r[1],) if r[0] in ("bench", "ppl", "test", "profile") else ())] = r
def get(kind):
    return [v for k, v in last.items() if k[0] == kind]
for r in get("build"):
    print(f"card: {r[1]}")
for r in get("test"):
    print(f"CUDA test, n > 8 by {r[1]}: {'|'.join(r[2:])}")
for r in get("mutate"):
    print(f"mutated kernels: the test {r[1]} (reports for n = 1: {r[2]}, n = 2..8: {r[3]}, for n >= 16: {r[4]})")
for r in get("ppl"):
    v, cpu = float(r[2]), float(r[3])
    print(f"perplexity WT2-512x40, {r[1]}: {v:.4f} ({100 * (v - cpu) / cpu:+.4f} % from the CPU)")
bw = get("bandwidth")
bench = {r[1]: r for r in get("bench")}
if bench:
    gbs = float(bw[0][1]) if bw else None
    if gbs:
        print(f"device copy bandwidth: {gbs:.0f} GB/s (read + write)")
    ref = bench.get("q4_0")
    print("| Llama-2-7B shape | file GiB | pp512 t/s | pp / Q4_0 | tg128 t/s | tg / Q4_0 | GB read per token | tg roofline |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    rows = sorted((k for k in bench if k.startswith("apiq2-rows")), key=lambda k: int(k[10:]))
    for ty in ["apiq2", "apiq2-mmq", "apiq2-rowblock"] + rows + ["q2_0", "q2_k", "q4_0", "q4_k"]:
        if ty not in bench:
            continue
        _, _, size, read, pp, tg = bench[ty]
        pp, tg, read = float(pp), float(tg), int(read)
        rp = f"{pp / float(ref[4]):.2f}" if ref else "-"
        rt = f"{tg / float(ref[5]):.2f}" if ref else "-"
        roof = f"{100 * tg * read / 1e9 / gbs:.0f} %" if gbs else "-"
        print(f"| {ty.upper()} | {int(size) / 2**30:.2f} | {pp:.0f} | {rp} | {tg:.1f} | {rt} | {read / 1e9:.2f} | {roof} |")
prof = {r[1]: r for r in get("profile")}
if prof:
    print("| kernel time per token (ncu) | kernels | MMVQ kernels | MMVQ ms | Q8_1 ms | other ms | tg128 ms per token |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for ty, r in prof.items():
        tg = f"{1e3 / float(bench[ty][5]):.2f}" if ty in bench else "-"
        print(f"| {ty.upper()} | {r[2]} | {r[3]} | {float(r[4]) / 1e3:.2f} | {float(r[5]) / 1e3:.2f} | {float(r[6]) / 1e3:.2f} | {tg} |")
PY
