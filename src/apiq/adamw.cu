// One AdamW update of one parameter tensor in a single pass: torch.optim.AdamW's arithmetic
// (decoupled decay, bias corrections; the same expression order as candle-nn's AdamW, the
// reference in `apiq::adamw`). The gradient is multiplied by `grad_scale` first, which
// un-scales a loss-scaled (f16) backward pass.
#include <stdint.h>

struct AdamWStep {
  float lr;
  float beta1, beta2;
  float eps;
  float decay;      // 1 − lr·weight_decay
  float scale_m;    // 1 / (1 − beta1^t)
  float scale_v;    // 1 / (1 − beta2^t)
  float grad_scale;
};

extern "C" __global__ void adamw_f32(float* __restrict__ theta, float* __restrict__ m,
                                     float* __restrict__ v, const float* __restrict__ grad,
                                     int64_t n, AdamWStep a) {
  int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
  int64_t stride = (int64_t)gridDim.x * blockDim.x;
  for (; i < n; i += stride) {
    float g = grad[i] * a.grad_scale;
    float nm = m[i] * a.beta1 + g * (1.0f - a.beta1);
    float nv = v[i] * a.beta2 + (g * g) * (1.0f - a.beta2);
    float m_hat = nm * a.scale_m;
    float v_hat = nv * a.scale_v;
    float t = theta[i] * a.decay;
    theta[i] = t - (m_hat / (sqrtf(v_hat) + a.eps)) * a.lr;
    m[i] = nm;
    v[i] = nv;
  }
}
