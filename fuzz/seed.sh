#!/usr/bin/env bash
# Seeds the fuzz corpora from the real test files in ../shared (never committed here).
set -euo pipefail
cd "$(dirname "$0")"
S=../../shared/models
mkdir -p corpus/{gguf_reader,safetensors_header,model_config,tokenizer_json}
head -c 16384 $S/stories260K/stories260K.gguf > corpus/gguf_reader/stories-head.gguf
cp $S/stories260K/hf/config.json corpus/model_config/stories.json
cp $S/smollm2-135m/config.json corpus/model_config/smollm2.json
cp $S/stories260K/hf/tokenizer.json corpus/tokenizer_json/stories.json
head -c 4096 $S/stories260K/hf/model.safetensors > corpus/safetensors_header/stories-head.bin
printf '{"metadata":{"total_size":8},"weight_map":{"a.weight":"model-00001-of-00002.safetensors","b.weight":"model-00002-of-00002.safetensors"}}' \
  > corpus/safetensors_header/index.json
chmod -R u+w corpus
