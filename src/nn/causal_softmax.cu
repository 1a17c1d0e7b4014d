// Scaled causal softmax over the last dimension of attention scores [..., L, L] in one pass,
// and its backward in one pass. Row r is query position i = r mod L and sees keys 0..=i.
// The reference is the composed candle forward of `nn::block` (scores·scale, −inf mask,
// softmax with the max subtracted) and `nn::causal_softmax_op` on the CPU.
// Arithmetic in f32 whatever the storage type.
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <stdint.h>

__device__ __forceinline__ float to_f32(float v) { return v; }
__device__ __forceinline__ float to_f32(__nv_bfloat16 v) { return __bfloat162float(v); }
__device__ __forceinline__ float to_f32(__half v) { return __half2float(v); }
template <typename T> __device__ __forceinline__ T from_f32(float v);
template <> __device__ __forceinline__ float from_f32<float>(float v) { return v; }
template <> __device__ __forceinline__ __nv_bfloat16 from_f32<__nv_bfloat16>(float v) { return __float2bfloat16_rn(v); }
template <> __device__ __forceinline__ __half from_f32<__half>(float v) { return __float2half_rn(v); }

// Block-wide reduction of one float (max or sum); every thread gets the result.
template <bool MAX>
__device__ float block_reduce(float v, float* shared) {
  for (int o = 16; o > 0; o >>= 1) {
    float other = __shfl_xor_sync(0xffffffffu, v, o);
    v = MAX ? fmaxf(v, other) : v + other;
  }
  int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  __syncthreads();
  if (lane == 0) shared[warp] = v;
  __syncthreads();
  int n_warps = blockDim.x / 32;
  v = lane < n_warps ? shared[lane] : (MAX ? -INFINITY : 0.0f);
  for (int o = 16; o > 0; o >>= 1) {
    float other = __shfl_xor_sync(0xffffffffu, v, o);
    v = MAX ? fmaxf(v, other) : v + other;
  }
  return v;
}

template <typename T>
__device__ void causal_softmax_fwd(const T* __restrict__ x, T* __restrict__ y, int L, float scale) {
  __shared__ float shared[32];
  int64_t row = blockIdx.x;
  int pos = (int)(row % L);
  const T* xr = x + row * L;
  T* yr = y + row * L;
  float m = -INFINITY;
  for (int j = threadIdx.x; j <= pos; j += blockDim.x) m = fmaxf(m, to_f32(xr[j]) * scale);
  m = block_reduce<true>(m, shared);
  float s = 0.0f;
  for (int j = threadIdx.x; j <= pos; j += blockDim.x) s += expf(to_f32(xr[j]) * scale - m);
  s = block_reduce<false>(s, shared);
  for (int j = threadIdx.x; j < L; j += blockDim.x)
    yr[j] = from_f32<T>(j <= pos ? expf(to_f32(xr[j]) * scale - m) / s : 0.0f);
}

// dx_j = scale · y_j · (g_j − Σ_k g_k·y_k)
template <typename T>
__device__ void causal_softmax_bwd(const T* __restrict__ y, const T* __restrict__ g,
                                   T* __restrict__ dx, int L, float scale) {
  __shared__ float shared[32];
  int64_t row = blockIdx.x;
  int pos = (int)(row % L);
  const T* yr = y + row * L;
  const T* gr = g + row * L;
  T* dr = dx + row * L;
  float dot = 0.0f;
  for (int j = threadIdx.x; j <= pos; j += blockDim.x) dot += to_f32(gr[j]) * to_f32(yr[j]);
  dot = block_reduce<false>(dot, shared);
  for (int j = threadIdx.x; j < L; j += blockDim.x)
    dr[j] = from_f32<T>(j <= pos ? scale * to_f32(yr[j]) * (to_f32(gr[j]) - dot) : 0.0f);
}

// The same passes with each thread holding 8 consecutive values of the row in registers
// (L a multiple of 8, at most 8·1024; blockDim.x = L/8 rounded up to a warp): the row is read
// once and written once, in 16-byte pieces for 16-bit types, and keys past the query position
// are not read at all. Same arithmetic per element as above.
template <typename T>
__device__ __forceinline__ void load8(const T* src, float* v) {
  __align__(16) T t[8];
  for (int k = 0; k < (int)(8 * sizeof(T) / 16); ++k)
    reinterpret_cast<uint4*>(t)[k] = reinterpret_cast<const uint4*>(src)[k];
#pragma unroll
  for (int k = 0; k < 8; ++k) v[k] = to_f32(t[k]);
}

template <typename T>
__device__ __forceinline__ void store8(T* dst, const float* v) {
  __align__(16) T t[8];
#pragma unroll
  for (int k = 0; k < 8; ++k) t[k] = from_f32<T>(v[k]);
  for (int k = 0; k < (int)(8 * sizeof(T) / 16); ++k)
    reinterpret_cast<uint4*>(dst)[k] = reinterpret_cast<const uint4*>(t)[k];
}

template <typename T>
__device__ void causal_softmax_fwd8(const T* __restrict__ x, T* __restrict__ y, int L,
                                    float scale) {
  __shared__ float shared[32];
  int64_t row = blockIdx.x;
  int pos = (int)(row % L);
  int j0 = threadIdx.x * 8;
  bool in_row = j0 < L;
  bool seen = in_row && j0 <= pos;
  float v[8];
  float m = -INFINITY;
  if (seen) {
    load8<T>(x + row * L + j0, v);
#pragma unroll
    for (int k = 0; k < 8; ++k) {
      v[k] = v[k] * scale;
      if (j0 + k <= pos) m = fmaxf(m, v[k]);
    }
  }
  m = block_reduce<true>(m, shared);
  float s = 0.0f;
  if (seen) {
#pragma unroll
    for (int k = 0; k < 8; ++k) {
      v[k] = j0 + k <= pos ? expf(v[k] - m) : 0.0f;
      s += v[k];
    }
  }
  s = block_reduce<false>(s, shared);
  if (!in_row) return;
#pragma unroll
  for (int k = 0; k < 8; ++k) v[k] = seen ? v[k] / s : 0.0f;
  store8<T>(y + row * L + j0, v);
}

template <typename T>
__device__ void causal_softmax_bwd8(const T* __restrict__ y, const T* __restrict__ g,
                                    T* __restrict__ dx, int L, float scale) {
  __shared__ float shared[32];
  int64_t row = blockIdx.x;
  int pos = (int)(row % L);
  int j0 = threadIdx.x * 8;
  bool in_row = j0 < L;
  bool seen = in_row && j0 <= pos;
  float yv[8], gv[8];
  float dot = 0.0f;
  if (seen) {
    load8<T>(y + row * L + j0, yv);
    load8<T>(g + row * L + j0, gv);
#pragma unroll
    for (int k = 0; k < 8; ++k)
      if (j0 + k <= pos) dot += gv[k] * yv[k];
  }
  dot = block_reduce<false>(dot, shared);
  if (!in_row) return;
#pragma unroll
  for (int k = 0; k < 8; ++k)
    yv[k] = seen && j0 + k <= pos ? scale * yv[k] * (gv[k] - dot) : 0.0f;
  store8<T>(dx + row * L + j0, yv);
}

#define KERNELS(SUFFIX, T)                                                                     \
  extern "C" __global__ void causal_softmax_fwd_##SUFFIX(const T* x, T* y, int L, float scale) { \
    causal_softmax_fwd<T>(x, y, L, scale);                                                     \
  }                                                                                            \
  extern "C" __global__ void causal_softmax_bwd_##SUFFIX(const T* y, const T* g, T* dx, int L,  \
                                                         float scale) {                        \
    causal_softmax_bwd<T>(y, g, dx, L, scale);                                                 \
  }                                                                                            \
  extern "C" __global__ void causal_softmax_fwd8_##SUFFIX(const T* x, T* y, int L, float scale) { \
    causal_softmax_fwd8<T>(x, y, L, scale);                                                    \
  }                                                                                            \
  extern "C" __global__ void causal_softmax_bwd8_##SUFFIX(const T* y, const T* g, T* dx, int L, \
                                                          float scale) {                       \
    causal_softmax_bwd8<T>(y, g, dx, L, scale);                                                \
  }
KERNELS(f32, float)
KERNELS(bf16, __nv_bfloat16)
KERNELS(f16, __half)
