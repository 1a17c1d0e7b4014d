#!/usr/bin/env bash
# The users' path, tested: applies vendor/ to the llama.cpp tree inside the PyPI sdist
# llama-cpp-python==0.3.36 (a fresh copy in .cache/llama-apiq2/), builds llama-cli,
# llama-server and llama-perplexity with it, and runs the ggml-level APIQ2 test there (SIMD and
# generic kernels), then on ARM NEON under qemu-aarch64. On the way, `apiq2gguf eval` makes its
# rows of llama.cpp's own types with this tree's llama-quantize and llama-imatrix (the code of
# those types is upstream's, untouched by the patch) on stories260K and must list every one.
set -euo pipefail
cd "$(dirname "$0")/.."
root=.cache/llama-apiq2
scripts/fetch-llama-sdist.sh "$root/src"
bin=$(scripts/llama-cpp-apiq2.sh "$root/src" "$root/build")
for tool in llama-cli llama-server llama-perplexity llama-quantize llama-imatrix; do
  [ -x "$bin/$tool" ] || { echo "error: $tool was not built" >&2; exit 1; }
done
"$bin/test-apiq2"
GGML_APIQ2_KERNEL=generic "$bin/test-apiq2"

eval_dir=$(mktemp -d)
trap 'rm -rf "$eval_dir"' EXIT
tail -c 60000 ../shared/data/calib/tiny.utf8 | tail -n +2 > "$eval_dir/held.txt"
target/release/apiq2gguf --quiet eval ../shared/models/stories260K/stories260K.gguf "$eval_dir/out" \
  --text "$eval_dir/held.txt" --bits 2 --formats q2_k --quick --calib ../shared/data/calib/tiny.utf8 \
  --calib-max-bytes 200000 -c 256 --chunks 4 --llama-bin "$bin" > "$eval_dir/table.md"
# 6 of ours at --bits 2 and 2 of --formats q2_k; then each of the 12 stock types with an
# importance matrix and the 7 that llama-quantize makes without one: 19.
rows=$(grep -c '^| llama-' "$eval_dir/table.md" || true)
ours=$(grep -Ec '^\| (rtn|lwc|apiq-bw|apiq-q2_k)-' "$eval_dir/table.md" || true)
if [ "$rows" != 19 ] || [ "$ours" != 8 ] || grep -Eq '\| (NaN|inf)' "$eval_dir/table.md"; then
  echo "error: eval's table is missing rows ($rows stock, $ours ours):" >&2
  cat "$eval_dir/table.md" >&2
  exit 1
fi
echo "eval with stock rows: OK ($rows rows of llama.cpp's types)"
scripts/test-ggml-neon.sh "$root/src" "$root/build-aarch64"
