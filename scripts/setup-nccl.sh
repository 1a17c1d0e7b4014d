#!/usr/bin/env bash
# NCCL for `cargo build --release --features nccl` (calibration on several GPUs): PyPI's
# nvidia-nccl-cu13 wheel (the NCCL that PyTorch's CUDA 13 wheels load) unpacked into
# ~/.cache/apiq2gguf/nccl, with the unversioned name the linker looks for. Prints the variable
# build.rs reads; at run time libnccl.so.2 must be on the loader path (scripts/gpu-env.sh adds
# PyTorch's).
#   eval "$(scripts/setup-nccl.sh)"
set -euo pipefail
version=${NCCL_WHEEL_VERSION:-2.32.6}
dir=${XDG_CACHE_HOME:-$HOME/.cache}/apiq2gguf/nccl
if [ ! -f "$dir/lib/libnccl.so.2" ]; then
  tmp=$(mktemp -d)
  trap 'rm -rf "$tmp"' EXIT
  python3 -m pip download --no-deps --only-binary=:all: -d "$tmp" "nvidia-nccl-cu13==$version" >&2
  mkdir -p "$dir/lib"
  python3 - "$tmp"/nvidia_nccl_cu13-*.whl "$dir/lib" <<'PY'
import sys, zipfile
with zipfile.ZipFile(sys.argv[1]) as z:
    with z.open("nvidia/nccl/lib/libnccl.so.2") as src, open(sys.argv[2] + "/libnccl.so.2", "wb") as dst:
        dst.write(src.read())
PY
fi
ln -sf libnccl.so.2 "$dir/lib/libnccl.so"
echo "export NCCL_LIB_DIR=$dir/lib"
