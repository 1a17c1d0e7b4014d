#!/usr/bin/env bash
# Where a calibration's time goes on the GPU (not a test), one call on the GPU machine, from the
# repository root:
#   scripts/bench-blocks-gpu.sh VOCAB_GGUF CALIB_TEXT OUT_DIR NAME=BIN [NAME=BIN ...]
# Each BIN (apiq2gguf built with --features cuda; a .gz is unpacked first) calibrates, with the
# default recipe (bf16, fused kernels, APIQ2 + r64 adapter) and CALIB_TEXT:
# 1. a Llama-2-7B-shaped random Q4_0 GGUF of 4 blocks (scripts/make-random-model.py, VOCAB_GGUF's
#    vocabulary), 128 windows x 2048 tokens x 2 epochs: each block's line and the phase split,
#    peak device memory (nvidia-smi, every 0.2 s) and peak host RSS;
# 2. a SmolLM2-135M-shaped random Q4_1 GGUF with the GPU recipe (128 x 2048 x 5 epochs): wall time
#    (SMOL=0 skips it);
# then, for the last BIN only (unless RESUME=0), the resume check at the 7B shape: the same run interrupted
# (SIGTERM) once 3 blocks are saved, run again (3 blocks replayed), and its output's sha256
# beside the uninterrupted run's. Random weights: the timings are real, the MSEs mean nothing.
set -uo pipefail
cd "$(dirname "$0")/.."
. scripts/gpu-env.sh
vocab=${1:?usage: scripts/bench-blocks-gpu.sh VOCAB_GGUF CALIB_TEXT OUT_DIR NAME=BIN ...}
calib=${2:?} out=${3:?}
shift 3
mkdir -p "$out" .cache/gpu
models=.cache/gpu/models
mkdir -p "$models"
[ -f "$models/r7-4.gguf" ] || python3 scripts/make-random-model.py "$vocab" "$models/r7-4.gguf" q4_0 --shape llama2-7b --layers 4 >/dev/null || exit 1
[ -f "$models/rs.gguf" ] || python3 scripts/make-random-model.py "$vocab" "$models/rs.gguf" q4_1 --shape smollm2-135m >/dev/null || exit 1
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader | tee "$out/card.txt"

# `measure LOG CMD...`: CMD's stderr in LOG, then its wall time, peak host RSS, peak device
# memory and disk traffic appended (scripts/measure.py).
measure() { python3 scripts/measure.py "$@" >/dev/null; }

last=
for nb in "$@"; do
  name=${nb%%=*} bin=${nb#*=}
  # A compressed BIN is unpacked into .cache/gpu/NAME (kept between calls while the machine is
  # warm: two binaries that do not fit one call's carry run in two calls).
  case $bin in
    *.gz) gunzip -c "$bin" >".cache/gpu/$name" ;;
    *.xz) python3 -c 'import lzma, shutil, sys; shutil.copyfileobj(lzma.open(sys.argv[1]), open(sys.argv[2], "wb"))' "$bin" ".cache/gpu/$name" ;;
  esac
  case $bin in *.gz | *.xz) chmod +x ".cache/gpu/$name"; bin=.cache/gpu/$name ;; esac
  last=$bin lastname=$name
  rm -rf "$out/$name".r7*
  measure "$out/$name.r7.log" "$bin" "$models/r7-4.gguf" "$out/$name.r7.gguf" --device cuda \
    --nsamples 128 --seqlen 2048 --epochs 2 --calib "$calib"
  rm -f "$out/$name".r7.gguf "$out/$name".r7.lora.gguf
  [ "${SMOL:-1}" = 1 ] || { echo "== $name"; grep -E "^\[|time per phase|exit=" "$out/$name.r7.log"; continue; }
  measure "$out/$name.smol.log" "$bin" "$models/rs.gguf" "$out/$name.smol.gguf" --device cuda \
    --nsamples 128 --seqlen 2048 --epochs 5 --calib "$calib"
  rm -f "$out/$name".smol*.gguf
  echo "== $name"; grep -E "^\[|time per phase|exit=" "$out/$name.r7.log"
  echo "-- $name SmolLM2 shape, GPU recipe:"; grep -E "exit=" "$out/$name.smol.log"
done

# Resume at the 7B shape (last BIN; RESUME=0 skips it): uninterrupted, then interrupted after 3
# saved blocks and resumed.
[ "${RESUME:-1}" = 1 ] || exit 0
bin=$last name=$lastname
run() { "$bin" "$models/r7-4.gguf" "$1" --device cuda --nsamples 128 --seqlen 2048 --epochs 1 --calib "$calib"; }
work=.cache/gpu/resume
rm -rf "$work"; mkdir -p "$work"
run "$work/a.gguf" 2>"$out/$name.resume-a.log" >/dev/null
# The binary itself in the background (a background shell function ignores SIGINT), stopped
# by SIGTERM, which the binary handles as Ctrl-C.
"$bin" "$models/r7-4.gguf" "$work/b.gguf" --device cuda --nsamples 128 --seqlen 2048 --epochs 1 \
  --calib "$calib" 2>"$out/$name.resume-b1.log" >/dev/null &
pid=$!
while kill -0 "$pid" 2>/dev/null; do
  n=$(ls "$work/b.gguf.apiq-state" 2>/dev/null | grep -c '^block-')
  if [ "$n" -ge 3 ]; then kill -TERM "$pid"; break; fi
  sleep 0.2
done
wait "$pid"; echo "interrupted run: exit $?, $(ls "$work/b.gguf.apiq-state" 2>/dev/null | grep -c '^block-') blocks saved"
[ -f "$work/b.gguf" ] && echo "RESUME CHECK INVALID: the interrupted run finished"
run "$work/b.gguf" 2>"$out/$name.resume-b2.log" >/dev/null
echo "-- resumed run:"; grep -E "^\[|time per phase" "$out/$name.resume-b2.log"
for f in a.gguf a.lora.gguf; do
  g=${f/a/b}
  if cmp -s "$work/$f" "$work/$g"; then echo "resume: $g equals $f ($(sha256sum <"$work/$f" | cut -c1-16))"; else echo "RESUME MISMATCH: $g differs from $f"; fi
done
