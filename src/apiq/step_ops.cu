// The elementwise and row-wise passes of the written-out training step (`step.rs`), each one
// launch where candle composes 3–12: RMSNorm with the residual add before it and its backward,
// head split/merge with RoPE (and the inverse rotation, RoPE's backward), SwiGLU and its
// backward, and the residual + MSE loss with its gradient. The references are the candle
// compositions in `step_ops.rs`.
//
// `T` is the products' operand type (f32, bf16 or f16); activations, norms, RoPE tables and all
// arithmetic are f32. A product's output arrives as up to four "parts" (the quantized weight's
// product and LoRA's, of one or two linears) that are summed in f32 on load; unused part
// pointers repeat the first one and are not read.
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <stdint.h>

__device__ __forceinline__ float tof(float x) { return x; }
__device__ __forceinline__ float tof(__nv_bfloat16 x) { return __bfloat162float(x); }
__device__ __forceinline__ float tof(__half x) { return __half2float(x); }

template <typename T> __device__ __forceinline__ T fromf(float x);
template <> __device__ __forceinline__ float fromf<float>(float x) { return x; }
template <> __device__ __forceinline__ __nv_bfloat16 fromf<__nv_bfloat16>(float x) {
  return __float2bfloat16(x);
}
template <> __device__ __forceinline__ __half fromf<__half>(float x) { return __float2half(x); }

template <typename T> struct Parts {
  const T* p[4];
  int n;
  // Constant indices only: a loop over p[k] would copy the pointers to local memory.
  __device__ __forceinline__ float at(int64_t i) const {
    float s = tof(p[0][i]);
    if (n > 1) s += tof(p[1][i]);
    if (n > 2) s += tof(p[2][i]);
    if (n > 3) s += tof(p[3][i]);
    return s;
  }
};

// Sum over the block (blockDim.x a multiple of 32, at most 1024); every thread gets the total.
__device__ float block_sum(float v) {
  __shared__ float warp_sums[32];
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  __syncthreads();
  if (lane == 0) warp_sums[warp] = v;
  __syncthreads();
  int n_warps = blockDim.x >> 5;
  v = lane < n_warps ? warp_sums[lane] : 0.0f;
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}

// rope: 0 none, 1 consecutive pairs (llama, GGUF order), 2 halves (neox/qwen2).
__device__ __forceinline__ void pair_cols(int rope, int i, int hd, int* c0, int* c1) {
  if (rope == 1) {
    *c0 = 2 * i;
    *c1 = 2 * i + 1;
  } else {
    *c0 = i;
    *c1 = i + hd / 2;
  }
}

// [N, H·hd] (sum of parts, + bias) → [B, H, L, hd], rotated by +θ when rope != 0.
template <typename T>
__device__ void heads(Parts<T> x, const float* bias, int has_bias, const float* cos,
                      const float* sin, int rope, T* out, int B, int L, int H, int hd) {
  int half = hd / 2;
  int64_t n_pairs = (int64_t)B * L * H * half;
  int64_t stride = (int64_t)gridDim.x * blockDim.x;
  for (int64_t t = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; t < n_pairs; t += stride) {
    int i = t % half;
    int h = (t / half) % H;
    int64_t row = t / ((int64_t)half * H);  // b·L + l
    int l = row % L;
    int b = row / L;
    int c0, c1;
    pair_cols(rope, i, hd, &c0, &c1);
    int64_t in0 = row * H * hd + (int64_t)h * hd;
    float v0 = x.at(in0 + c0), v1 = x.at(in0 + c1);
    if (has_bias) {
      v0 += bias[h * hd + c0];
      v1 += bias[h * hd + c1];
    }
    if (rope) {
      float cs = cos[(int64_t)l * half + i], sn = sin[(int64_t)l * half + i];
      float r0 = v0 * cs - v1 * sn;
      float r1 = v0 * sn + v1 * cs;
      v0 = r0;
      v1 = r1;
    }
    int64_t o = (((int64_t)b * H + h) * L + l) * hd;
    out[o + c0] = fromf<T>(v0);
    out[o + c1] = fromf<T>(v1);
  }
}

// [B, H·rep, L, hd] → [N, H·hd]: heads h·rep … h·rep + rep − 1 summed, rotated by −θ when
// rope != 0 (RoPE's backward).
template <typename T>
__device__ void unheads(const T* x, const float* cos, const float* sin, int rope, T* out, int B,
                        int L, int H, int rep, int hd) {
  int half = hd / 2;
  int64_t n_pairs = (int64_t)B * L * H * half;
  int64_t stride = (int64_t)gridDim.x * blockDim.x;
  for (int64_t t = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; t < n_pairs; t += stride) {
    int i = t % half;
    int h = (t / half) % H;
    int64_t row = t / ((int64_t)half * H);
    int l = row % L;
    int b = row / L;
    int c0, c1;
    pair_cols(rope, i, hd, &c0, &c1);
    float v0 = 0.0f, v1 = 0.0f;
    for (int r = 0; r < rep; ++r) {
      int64_t o = (((int64_t)b * H * rep + (int64_t)h * rep + r) * L + l) * hd;
      v0 += tof(x[o + c0]);
      v1 += tof(x[o + c1]);
    }
    if (rope) {
      float cs = cos[(int64_t)l * half + i], sn = -sin[(int64_t)l * half + i];
      float r0 = v0 * cs - v1 * sn;
      float r1 = v0 * sn + v1 * cs;
      v0 = r0;
      v1 = r1;
    }
    int64_t o = row * H * hd + (int64_t)h * hd;
    out[o + c0] = fromf<T>(v0);
    out[o + c1] = fromf<T>(v1);
  }
}

// One block per row: x2 = x + Σ parts (written when there are parts), h = x2·rstd·w,
// rstd = 1/√(mean(x2²) + eps).
template <typename T>
__device__ void rms_norm(const float* x, Parts<T> add, const float* w, float eps, float* x2,
                         T* h, float* rstd, int E) {
  int64_t row = blockIdx.x;
  const float* xr = x + row * E;
  float ss = 0.0f;
  for (int j = threadIdx.x; j < E; j += blockDim.x) {
    float v = xr[j];
    if (add.n) {
      v += add.at(row * E + j);
      x2[row * E + j] = v;
    }
    ss += v * v;
  }
  float r = 1.0f / sqrtf(block_sum(ss) / E + eps);
  if (threadIdx.x == 0) rstd[row] = r;
  const float* src = add.n ? x2 + row * E : xr;
  for (int j = threadIdx.x; j < E; j += blockDim.x) h[row * E + j] = fromf<T>(src[j] * r * w[j]);
}

// One block per row: dx = (dh·w − x̂·mean(dh·w·x̂))·rstd + dres with x̂ = x·rstd, dh = Σ parts;
// written in f32 and in T.
template <typename T>
__device__ void rms_norm_bwd(const float* x, const float* rstd, const float* w, Parts<T> dh,
                             const float* dres, float* dx, T* dx_t, int E) {
  int64_t row = blockIdx.x;
  float r = rstd[row];
  float dot = 0.0f;
  for (int j = threadIdx.x; j < E; j += blockDim.x)
    dot += dh.at(row * E + j) * w[j] * (x[row * E + j] * r);
  float proj = block_sum(dot) / E;
  for (int j = threadIdx.x; j < E; j += blockDim.x) {
    int64_t k = row * E + j;
    float xhat = x[k] * r;
    float v = (dh.at(k) * w[j] - xhat * proj) * r + dres[k];
    dx[k] = v;
    dx_t[k] = fromf<T>(v);
  }
}

__device__ __forceinline__ float sigmoid(float x) { return 1.0f / (1.0f + expf(-x)); }

template <typename T>
__device__ void swiglu(Parts<T> g, Parts<T> u, T* a, int64_t n) {
  int64_t stride = (int64_t)gridDim.x * blockDim.x;
  for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += stride) {
    float gv = g.at(i);
    a[i] = fromf<T>(sigmoid(gv) * gv * u.at(i));
  }
}

template <typename T>
__device__ void swiglu_bwd(Parts<T> g, Parts<T> u, Parts<T> da, T* dg, T* du, int64_t n) {
  int64_t stride = (int64_t)gridDim.x * blockDim.x;
  for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += stride) {
    float gv = g.at(i), uv = u.at(i), d = da.at(i);
    float s = sigmoid(gv);
    du[i] = fromf<T>(d * (gv * s));
    dg[i] = fromf<T>((d * uv) * (s * (1.0f + gv * (1.0f - s))));
  }
}

// One block per row: out = x2 + Σ parts; for each target t: Σ (out − t)² into row_loss and
// Σ k·(out − t) into dout (f32 and T).
template <typename T>
__device__ void residual_mse(const float* x2, Parts<T> y, const float* t0, const float* t1,
                             int n_targets, float k, float* row_loss, float* dout, T* dout_t,
                             int E) {
  int64_t row = blockIdx.x;
  float ss = 0.0f;
  for (int j = threadIdx.x; j < E; j += blockDim.x) {
    int64_t i = row * E + j;
    float out = x2[i] + y.at(i);
    float d0 = out - t0[i];
    float d = d0 * k;
    ss += d0 * d0;
    if (n_targets > 1) {
      float d1 = out - t1[i];
      ss += d1 * d1;
      d += d1 * k;
    }
    dout[i] = d;
    dout_t[i] = fromf<T>(d);
  }
  float total = block_sum(ss);
  if (threadIdx.x == 0) row_loss[row] = total;
}

#define PARTS(T, name) \
  const T *name##0, const T *name##1, const T *name##2, const T *name##3, int n_##name
#define MAKE(T, name) Parts<T>{{name##0, name##1, name##2, name##3}, n_##name}

#define INSTANTIATE(T, S)                                                                        \
  extern "C" __global__ void heads_##S(PARTS(T, x), const float* bias, int has_bias,            \
                                       const float* cos, const float* sin, int rope, T* out,     \
                                       int B, int L, int H, int hd) {                            \
    heads<T>(MAKE(T, x), bias, has_bias, cos, sin, rope, out, B, L, H, hd);                      \
  }                                                                                              \
  extern "C" __global__ void unheads_##S(const T* x, const float* cos, const float* sin,        \
                                         int rope, T* out, int B, int L, int H, int rep,         \
                                         int hd) {                                               \
    unheads<T>(x, cos, sin, rope, out, B, L, H, rep, hd);                                        \
  }                                                                                              \
  extern "C" __global__ void rms_norm_##S(const float* x, PARTS(T, add), const float* w,        \
                                          float eps, float* x2, T* h, float* rstd, int E) {      \
    rms_norm<T>(x, MAKE(T, add), w, eps, x2, h, rstd, E);                                        \
  }                                                                                              \
  extern "C" __global__ void rms_norm_bwd_##S(const float* x, const float* rstd, const float* w, \
                                              PARTS(T, dh), const float* dres, float* dx,        \
                                              T* dx_t, int E) {                                  \
    rms_norm_bwd<T>(x, rstd, w, MAKE(T, dh), dres, dx, dx_t, E);                                 \
  }                                                                                              \
  extern "C" __global__ void swiglu_##S(PARTS(T, g), PARTS(T, u), T* a, int64_t n) {             \
    swiglu<T>(MAKE(T, g), MAKE(T, u), a, n);                                                     \
  }                                                                                              \
  extern "C" __global__ void swiglu_bwd_##S(PARTS(T, g), PARTS(T, u), PARTS(T, da), T* dg,       \
                                            T* du, int64_t n) {                                  \
    swiglu_bwd<T>(MAKE(T, g), MAKE(T, u), MAKE(T, da), dg, du, n);                               \
  }                                                                                              \
  extern "C" __global__ void residual_mse_##S(const float* x2, PARTS(T, y), const float* t0,    \
                                              const float* t1, int n_targets, float k,           \
                                              float* row_loss, float* dout, T* dout_t, int E) {  \
    residual_mse<T>(x2, MAKE(T, y), t0, t1, n_targets, k, row_loss, dout, dout_t, E);            \
  }

INSTANTIATE(float, f32)
INSTANTIATE(__nv_bfloat16, bf16)
INSTANTIATE(__half, f16)
