#!/usr/bin/env bash
# Short fuzz run of every target (CI smoke; the long runs use the README's command): seeds the
# corpora from ../shared, then runs each target for SECONDS (default 20) on the stable toolchain.
# Fails on any crash, hang or out-of-memory, printing libFuzzer's report.
#   scripts/fuzz-smoke.sh [SECONDS]
set -euo pipefail
cd "$(dirname "$0")/.."
secs=${1:-20}
if ! cargo fuzz --version >/dev/null 2>&1; then
  cargo install cargo-fuzz --version 0.13.2 --locked
fi
fuzz/seed.sh
cd fuzz
export RUSTC_BOOTSTRAP=1
log=$(mktemp)
trap 'rm -f "$log"' EXIT
for t in gguf_reader safetensors_header model_config tokenizer_json; do
  if ! cargo fuzz run -O "$t" "corpus/$t" -- -max_total_time="$secs" -rss_limit_mb=2048 \
      -max_len=65536 >"$log" 2>&1; then
    tail -n 60 "$log"
    echo "fuzz smoke: $t found a problem (artifact under fuzz/artifacts/$t)" >&2
    exit 1
  fi
  echo "$t: $(grep -E '^#[0-9]+[[:space:]]+DONE' "$log" | tail -1)"
done
echo "fuzz smoke: every target ran ${secs} s without a finding"
