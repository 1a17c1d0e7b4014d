// LWC fake quantization of one linear in a single pass (forward) and its gradient with respect
// to the clipping logits in a single pass (backward). The f32 reference is
// `quant::quantizer::fake_quant` (candle ops) and `quant::fake_quant_op` on the CPU; the
// arithmetic below follows it operation for operation so that the forward is bit-identical in
// f32: sigmoid as 1/(1+exp(-x)), the scale multiplied by the reciprocal of qmax (candle's
// affine), true divisions elsewhere, rounding half to even (rintf).
//
// One warp per group: the group's values are read once, its extremes reduced by shuffles.
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <stdint.h>

struct QParams {
  float qmax;       // 2^b - 1
  float inv_div;    // 1/qmax (asymmetric) or 1/(2^(b-1) - 1) (symmetric), rounded to f32
  float sym_zero;   // 2^(b-1) - 1
  int symmetric;
  int zero_clamp;   // asymmetric zero points clamped to [zlo, zhi]
  float zlo, zhi;
};

__device__ __forceinline__ float sigmoid_(float x) { return 1.0f / (1.0f + expf(-x)); }

__device__ __forceinline__ float warp_max(float v) {
  for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
  return v;
}
__device__ __forceinline__ float warp_min(float v) {
  for (int o = 16; o > 0; o >>= 1) v = fminf(v, __shfl_xor_sync(0xffffffffu, v, o));
  return v;
}
__device__ __forceinline__ float warp_sum(float v) {
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}

template <typename T> __device__ __forceinline__ T from_f32(float v);
template <> __device__ __forceinline__ float from_f32<float>(float v) { return v; }
template <> __device__ __forceinline__ __nv_bfloat16 from_f32<__nv_bfloat16>(float v) { return __float2bfloat16_rn(v); }
template <> __device__ __forceinline__ __half from_f32<__half>(float v) { return __float2half_rn(v); }
__device__ __forceinline__ float to_f32(float v) { return v; }
__device__ __forceinline__ float to_f32(__nv_bfloat16 v) { return __bfloat162float(v); }
__device__ __forceinline__ float to_f32(__half v) { return __half2float(v); }

// The group's max and min, in every lane.
__device__ __forceinline__ void group_extremes(const float* x, int G, int lane, float& xmax,
                                               float& xmin) {
  xmax = -INFINITY;
  xmin = INFINITY;
  for (int i = lane; i < G; i += 32) {
    float v = x[i];
    xmax = fmaxf(xmax, v);
    xmin = fminf(xmin, v);
  }
  xmax = warp_max(xmax);
  xmin = warp_min(xmin);
}

// Scale before its clamp, scale, zero point; the pieces the backward needs too.
struct GroupScale {
  float sg, sb;    // sigmoid of the logits
  float hi, lo;    // clipped max and min
  float s_raw, s, z;
};

__device__ __forceinline__ GroupScale group_scale(const QParams& p, float xmax, float xmin,
                                                   float gamma, float beta) {
  GroupScale g;
  g.sg = sigmoid_(gamma);
  g.sb = sigmoid_(beta);
  g.hi = g.sg * xmax;
  g.lo = g.sb * xmin;
  if (p.symmetric) {
    float absmax = fmaxf(fabsf(g.hi), fabsf(g.lo));
    g.s_raw = absmax * p.inv_div;
    g.s = fminf(fmaxf(g.s_raw, 1e-5f), 1e4f);
    g.z = p.sym_zero;
  } else {
    g.s_raw = (g.hi - g.lo) * p.inv_div;
    g.s = fminf(fmaxf(g.s_raw, 1e-5f), 1e4f);
    float z = rintf(fminf(fmaxf(-g.lo / g.s, -1e4f), 1e4f));
    if (p.zero_clamp) z = fminf(fmaxf(z, p.zlo), p.zhi);
    g.z = z;
  }
  return g;
}

// The fake-quantized value of one element.
__device__ __forceinline__ float fake_value(const QParams& p, const GroupScale& g, float x) {
  float q = rintf(x / g.s) + g.z;
  q = fminf(fmaxf(q, 0.0f), p.qmax);
  return (q - g.z) * g.s;
}

// From Σ dL/dŵ·dŵ/ds over the group: (dL/dγ, dL/dβ) into out[0], out[1].
__device__ __forceinline__ void logit_grads(const QParams& p, const GroupScale& g, float acc,
                                            float xmax, float xmin, float* out) {
  float s_in = (g.s_raw >= 1e-5f && g.s_raw <= 1e4f) ? 1.0f : 0.0f;
  float ds = acc * s_in * p.inv_div;
  float dsg = g.sg * (1.0f - g.sg);
  float dsb = g.sb * (1.0f - g.sb);
  float dg, db;
  if (p.symmetric) {
    float a = fabsf(g.hi), b = fabsf(g.lo);
    float wa = a > b ? 1.0f : (a < b ? 0.0f : 0.5f);
    float sa = g.hi >= 0.0f ? 1.0f : -1.0f;
    float sb_ = g.lo >= 0.0f ? 1.0f : -1.0f;
    dg = ds * wa * sa * dsg * xmax;
    db = ds * (1.0f - wa) * sb_ * dsb * xmin;
  } else {
    dg = ds * dsg * xmax;
    db = -ds * dsb * xmin;
  }
  out[0] = dg;
  out[1] = db;
}

// dŵ/ds of one element: round(u) − u inside the clamp (u = x/s), q − z outside it (PyTorch's
// clamp passes the gradient on the inclusive range).
__device__ __forceinline__ float dw_ds(const QParams& p, const GroupScale& g, float x) {
  float u = x / g.s;
  float r = rintf(u);
  float pre = r + g.z;
  return (pre >= 0.0f && pre <= p.qmax) ? (r - u) : (fminf(fmaxf(pre, 0.0f), p.qmax) - g.z);
}

// w: [n_groups, G] f32; gamma, beta: [n_groups]; out: [n_groups, G].
template <typename T>
__device__ void fake_quant_fwd(const float* __restrict__ w, const float* __restrict__ gamma,
                               const float* __restrict__ beta, T* __restrict__ out,
                               int64_t n_groups, int G, QParams p) {
  int64_t group = (int64_t)blockIdx.x * (blockDim.x / 32) + threadIdx.x / 32;
  int lane = threadIdx.x % 32;
  if (group >= n_groups) return;
  const float* x = w + group * G;
  float xmax, xmin;
  group_extremes(x, G, lane, xmax, xmin);
  GroupScale g = group_scale(p, xmax, xmin, gamma[group], beta[group]);
  T* o = out + group * G;
  for (int i = lane; i < G; i += 32) o[i] = from_f32<T>(fake_value(p, g, x[i]));
}

// grad: [n_groups, G] (dL/dŵ); gb: [n_groups, 2] = (γ, β); out: [n_groups, 2] = (dL/dγ, dL/dβ).
// ds/dγ and ds/dβ are zero where s hit its own clamp.
template <typename T>
__device__ void fake_quant_bwd(const T* __restrict__ grad, const float* __restrict__ w,
                               const float* __restrict__ gb, float* __restrict__ out,
                               int64_t n_groups, int G, QParams p) {
  int64_t group = (int64_t)blockIdx.x * (blockDim.x / 32) + threadIdx.x / 32;
  int lane = threadIdx.x % 32;
  if (group >= n_groups) return;
  const float* x = w + group * G;
  const T* gr = grad + group * G;
  float xmax, xmin;
  group_extremes(x, G, lane, xmax, xmin);
  GroupScale g = group_scale(p, xmax, xmin, gb[group * 2], gb[group * 2 + 1]);
  float acc = 0.0f;
  for (int i = lane; i < G; i += 32) acc += to_f32(gr[i]) * dw_ds(p, g, x[i]);
  acc = warp_sum(acc);
  if (lane != 0) return;
  logit_grads(p, g, acc, xmax, xmin, out + group * 2);
}

// The same two passes for groups of G = 8·EPL (32, 64, 128): eight lanes per group, EPL
// consecutive values per lane held in registers, read and written in 16-byte (or 8-byte)
// pieces, so a warp has four groups' loads in flight at once. Same arithmetic per element;
// only the order of the backward's sum differs.

// EPL values of T from src to dst, both 16-byte aligned (8-byte when EPL·sizeof(T) is 8).
template <typename T, int EPL>
__device__ __forceinline__ void copy_t(T* dst, const T* src) {
  if constexpr ((EPL * sizeof(T)) % 16 == 0) {
    for (int k = 0; k < (int)(EPL * sizeof(T) / 16); ++k)
      reinterpret_cast<uint4*>(dst)[k] = reinterpret_cast<const uint4*>(src)[k];
  } else {
    for (int k = 0; k < (int)(EPL * sizeof(T) / 8); ++k)
      reinterpret_cast<uint2*>(dst)[k] = reinterpret_cast<const uint2*>(src)[k];
  }
}

template <int EPL>
__device__ __forceinline__ void lane_extremes(const float* v, float& xmax, float& xmin) {
  xmax = -INFINITY;
  xmin = INFINITY;
#pragma unroll
  for (int k = 0; k < EPL; ++k) {
    xmax = fmaxf(xmax, v[k]);
    xmin = fminf(xmin, v[k]);
  }
  for (int o = 4; o > 0; o >>= 1) {
    xmax = fmaxf(xmax, __shfl_xor_sync(0xffffffffu, xmax, o));
    xmin = fminf(xmin, __shfl_xor_sync(0xffffffffu, xmin, o));
  }
}

template <typename T, int EPL>
__device__ void fake_quant_fwd_lanes(const float* __restrict__ w, const float* __restrict__ gamma,
                                     const float* __restrict__ beta, T* __restrict__ out,
                                     int64_t n_groups, QParams p) {
  constexpr int G = 8 * EPL;
  int64_t group = ((int64_t)blockIdx.x * blockDim.x + threadIdx.x) / 8;
  bool live = group < n_groups;
  if (!live) group = n_groups - 1;  // every lane takes part in the shuffles
  int64_t first = group * G + (threadIdx.x % 8) * EPL;
  __align__(16) float v[EPL];
  copy_t<float, EPL>(v, w + first);
  float xmax, xmin;
  lane_extremes<EPL>(v, xmax, xmin);
  GroupScale g = group_scale(p, xmax, xmin, gamma[group], beta[group]);
  __align__(16) T r[EPL];
#pragma unroll
  for (int k = 0; k < EPL; ++k) r[k] = from_f32<T>(fake_value(p, g, v[k]));
  if (live) copy_t<T, EPL>(out + first, r);
}

template <typename T, int EPL>
__device__ void fake_quant_bwd_lanes(const T* __restrict__ grad, const float* __restrict__ w,
                                     const float* __restrict__ gb, float* __restrict__ out,
                                     int64_t n_groups, QParams p) {
  constexpr int G = 8 * EPL;
  int64_t group = ((int64_t)blockIdx.x * blockDim.x + threadIdx.x) / 8;
  bool live = group < n_groups;
  if (!live) group = n_groups - 1;
  int64_t first = group * G + (threadIdx.x % 8) * EPL;
  __align__(16) float v[EPL];
  __align__(16) T gr[EPL];
  copy_t<float, EPL>(v, w + first);
  copy_t<T, EPL>(gr, grad + first);
  float xmax, xmin;
  lane_extremes<EPL>(v, xmax, xmin);
  GroupScale g = group_scale(p, xmax, xmin, gb[group * 2], gb[group * 2 + 1]);
  float acc = 0.0f;
#pragma unroll
  for (int k = 0; k < EPL; ++k) acc += to_f32(gr[k]) * dw_ds(p, g, v[k]);
  for (int o = 4; o > 0; o >>= 1) acc += __shfl_xor_sync(0xffffffffu, acc, o);
  if (live && threadIdx.x % 8 == 0) logit_grads(p, g, acc, xmax, xmin, out + group * 2);
}

#define FWD(NAME, T)                                                                            \
  extern "C" __global__ void NAME(const float* w, const float* gamma, const float* beta, T* out, \
                                  int64_t n_groups, int G, QParams p) {                         \
    fake_quant_fwd<T>(w, gamma, beta, out, n_groups, G, p);                                     \
  }
FWD(fake_quant_fwd_f32, float)
FWD(fake_quant_fwd_bf16, __nv_bfloat16)
FWD(fake_quant_fwd_f16, __half)

#define BWD(NAME, T)                                                                       \
  extern "C" __global__ void NAME(const T* grad, const float* w, const float* gb, float* out, \
                                  int64_t n_groups, int G, QParams p) {                      \
    fake_quant_bwd<T>(grad, w, gb, out, n_groups, G, p);                                     \
  }
BWD(fake_quant_bwd_f32, float)
BWD(fake_quant_bwd_bf16, __nv_bfloat16)
BWD(fake_quant_bwd_f16, __half)

#define LANES(G, EPL, S, T)                                                                    \
  extern "C" __global__ void fake_quant_fwd_g##G##_##S(const float* w, const float* gamma,    \
                                                       const float* beta, T* out,             \
                                                       int64_t n_groups, QParams p) {         \
    fake_quant_fwd_lanes<T, EPL>(w, gamma, beta, out, n_groups, p);                           \
  }                                                                                           \
  extern "C" __global__ void fake_quant_bwd_g##G##_##S(const T* grad, const float* w,         \
                                                       const float* gb, float* out,           \
                                                       int64_t n_groups, QParams p) {         \
    fake_quant_bwd_lanes<T, EPL>(grad, w, gb, out, n_groups, p);                              \
  }
#define LANES_ALL(S, T) LANES(32, 4, S, T) LANES(64, 8, S, T) LANES(128, 16, S, T)
LANES_ALL(f32, float)
LANES_ALL(bf16, __nv_bfloat16)
LANES_ALL(f16, __half)
