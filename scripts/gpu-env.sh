# Sourced on the GPU machine: puts PyTorch's CUDA 13 libraries (cuBLAS, cudart, cuRAND, and
# NCCL for a `--features nccl` build) and the driver's libcuda on the loader path for a
# `--features cuda` build of apiq2gguf. NVLink multicast stays off in NCCL.
nv=$(python3 -c 'import nvidia, os; print(os.path.dirname(nvidia.__path__[0]) if hasattr(nvidia, "__path__") else "")' 2>/dev/null)/nvidia
export LD_LIBRARY_PATH="$nv/cu13/lib:$nv/nccl/lib:/usr/local/nvidia/lib64:/usr/local/nvidia/lib:${LD_LIBRARY_PATH:-}"
export NCCL_NVLS_ENABLE=0

# `bin=$(gpu_bin BIN)`: BIN itself, or for a gzip-compressed BIN.gz the binary unpacked into
# .cache/gpu/ of the repository (the current directory).
gpu_bin() {
  if [[ $1 == *.gz ]]; then
    mkdir -p .cache/gpu && gunzip -c "$1" > .cache/gpu/apiq2gguf && chmod +x .cache/gpu/apiq2gguf
    echo .cache/gpu/apiq2gguf
  else
    echo "$1"
  fi
}
