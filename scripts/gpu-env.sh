# Sourced on the GPU machine: puts PyTorch's CUDA 13 libraries (cuBLAS, cudart, cuRAND) and the
# driver's libcuda on the loader path for a `--features cuda` build of apiq2gguf.
nv=$(python3 -c 'import nvidia, os; print(os.path.dirname(nvidia.__path__[0]) if hasattr(nvidia, "__path__") else "")' 2>/dev/null)/nvidia
export LD_LIBRARY_PATH="$nv/cu13/lib:/usr/local/nvidia/lib64:/usr/local/nvidia/lib:${LD_LIBRARY_PATH:-}"
