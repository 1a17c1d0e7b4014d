#!/usr/bin/env bash
# The main job at 7B scale on the GPU machine (a benchmark, not a test), in stages that each fit
# one call of at most 10 minutes, from the repository root:
#   scripts/bench-7b-gpu.sh BIN CALIB_TEXT OUT_DIR STAGE...
# BIN: apiq2gguf built with --features cuda (a .xz is unpacked first). Files between stages live
# in .cache/gpu/7b (kept while the machine stays warm). Stages:
#   make       a Llama-2-7B-shaped Hugging Face checkpoint with random BF16 weights in 5 GB
#              shards and model.safetensors.index.json (scripts/make-random-hf.py), the
#              tokenizer files of TOKENIZER_DIR (default .cache/gpu-carry/smollm2-tokenizer)
#   convert    `BIN DIR f16.gguf --type f16` beside llama.cpp's `convert_hf_to_gguf.py --outtype
#              f16` (LLAMA_CONVERT: a folder with convert_hf_to_gguf.py and gguf-py/ of the pinned
#              sdist), one after the other: wall time, peak RSS, disk traffic; outputs deleted
#   calibrate  the main job with the released recipe (128 x 2048 x 20 epochs, APIQ2 + r64 adapter,
#              bf16, fused kernels; EPOCHS=N for fewer) on one GPU; stopped by SIGTERM after LIMIT
#              seconds (default 540) so that it fits a call: run the stage again and it resumes
#              from the saved blocks. Each call's log is OUT_DIR/calibrate-eN.K.log
#   resume     the kill check, after `calibrate` finished: the same recipe again, stopped by
#              SIGTERM once RESUME_AT blocks (default 16) are saved, run again; its files against
#              calibrate's
#   run        `bench --gpu-layers 99` without and with the adapter, and a greedy `generate`
# SHAPE, LAYERS and DEVICE (defaults llama2-7b, all, cuda) run the same stages small, to try
# them on the CPU. Each measured command's log ends with its exit code, wall time, peak host RSS, peak device
# memory and disk traffic (scripts/measure.py).
set -uo pipefail
cd "$(dirname "$0")/.."
. scripts/gpu-env.sh
bin=${1:?usage: scripts/bench-7b-gpu.sh BIN CALIB_TEXT OUT_DIR STAGE...}
calib=${2:?} out=${3:?}
shift 3
work=.cache/gpu/7b
mkdir -p "$out" "$work"
case $bin in
  *.xz)
    [ -x "$work/apiq2gguf" ] || python3 -c 'import lzma, shutil, sys; shutil.copyfileobj(lzma.open(sys.argv[1]), open(sys.argv[2], "wb"))' "$bin" "$work/apiq2gguf"
    chmod +x "$work/apiq2gguf"; bin=$work/apiq2gguf ;;
esac
epochs=${EPOCHS:-20}
hf=$work/hf7b model=$work/apiq2-e$epochs.gguf
recipe=(--device "${DEVICE:-cuda}" --calib "$calib" --epochs "$epochs" ${NSAMPLES:+--nsamples $NSAMPLES} ${SEQLEN:+--seqlen $SEQLEN})
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>/dev/null | tee -a "$out/card.txt"
measure() { python3 scripts/measure.py "$@" >/dev/null; }
last() { tail -1 "$1"; }

for stage in "$@"; do
  echo "== $stage $(date +%T)"
  case $stage in
    make)
      [ -f "$hf/model.safetensors.index.json" ] || python3 scripts/make-random-hf.py \
        "${TOKENIZER_DIR:-.cache/gpu-carry/smollm2-tokenizer}" "$hf" --shape "${SHAPE:-llama2-7b}" ${LAYERS:+--layers $LAYERS} >"$out/make.log" 2>&1 || { cat "$out/make.log"; exit 1; }
      du -sh "$hf"; ls "$hf"
      ;;
    convert)
      rm -f "$work"/*.f16.gguf
      measure "$out/convert-ours.log" "$bin" -q "$hf" "$work/ours.f16.gguf" --type f16
      echo "ours:  $(last "$out/convert-ours.log")"
      rm -f "$work/ours.f16.gguf"
      conv=${LLAMA_CONVERT:-.cache/gpu-carry/llama-convert}
      PYTHONPATH="$conv/gguf-py" measure "$out/convert-llama.log" python3 "$conv/convert_hf_to_gguf.py" "$hf" --outtype f16 --outfile "$work/llama.f16.gguf"
      echo "llama: $(last "$out/convert-llama.log")"
      rm -f "$work/llama.f16.gguf"
      ;;
    calibrate)
      n=$(ls "$out"/calibrate-e"$epochs".*.log 2>/dev/null | grep -c '\.log$')
      log=$out/calibrate-e$epochs.$((n + 1)).log
      python3 scripts/measure.py "$log" timeout -s TERM "${LIMIT:-540}" "$bin" "$hf" "$model" "${recipe[@]}" >/dev/null
      grep -E "^calibrating|^\[|time per phase|calibration took|^wrote|interrupted" "$log" | tail -45
      echo "$(last "$log")"
      [ -f "$model" ] && ls -l "$work"/apiq2-e"$epochs"*.gguf
      ;;
    resume)
      b=$work/resumed-e$epochs.gguf
      rm -rf "$b" "$b.apiq-state"
      "$bin" "$hf" "$b" "${recipe[@]}" 2>"$out/resume-e$epochs.1.log" >/dev/null &
      pid=$!
      while kill -0 "$pid" 2>/dev/null; do
        [ "$(ls "$b.apiq-state" 2>/dev/null | grep -c '^block-')" -ge "${RESUME_AT:-16}" ] && { kill -TERM "$pid"; break; }
        sleep 0.2
      done
      wait "$pid"; echo "interrupted: exit $?, $(ls "$b.apiq-state" 2>/dev/null | grep -c '^block-') blocks saved"
      [ -f "$b" ] && echo "RESUME CHECK INVALID: the interrupted run finished"
      measure "$out/resume-e$epochs.2.log" "$bin" "$hf" "$b" "${recipe[@]}"
      grep -E "^\[|time per phase|calibration took" "$out/resume-e$epochs.2.log" | tail -40; last "$out/resume-e$epochs.2.log"
      for f in "" .lora; do
        if cmp -s "${model%.gguf}$f.gguf" "${b%.gguf}$f.gguf"; then echo "resume: ${b%.gguf}$f.gguf equals the uninterrupted run's ($(sha256sum <"${b%.gguf}$f.gguf" | cut -c1-16))"
        else echo "RESUME MISMATCH: ${b%.gguf}$f.gguf"; fi
      done
      ;;
    run)
      "$bin" bench -q "$model" --gpu-layers 99 2>&1 | tee "$out/bench.log" | tail -4
      "$bin" bench -q "$model" --lora "${model%.gguf}.lora.gguf" --gpu-layers 99 2>&1 | tee "$out/bench-lora.log" | tail -4
      "$bin" generate -q "$model" --lora "${model%.gguf}.lora.gguf" --gpu-layers 99 -n 32 -p "The capital of France is" 2>&1 | tee "$out/generate.log" | tail -4
      ;;
    *) echo "unknown stage $stage"; exit 2 ;;
  esac
done
