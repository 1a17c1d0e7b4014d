// APIQ2 in ggml's CUDA batch <= 8 kernel (MMVQ): the dot product of one 32-value half of a block
// with its Q8_1 block. Included by ggml-cuda/mmvq.cu.
#pragma once

// MMVQ: half iqs (0 or 1) of block kbx against its Q8_1 block.
static __device__ __forceinline__ float vec_dot_apiq2_q8_1(
    const void * __restrict__ vbq, const block_q8_1 * __restrict__ bq8_1, const int & kbx, const int & iqs) {
    const block_apiq2_dm * bx = (const block_apiq2_dm *) vbq + kbx;
    const block_q8_1 * by = bq8_1 + iqs;
    const int * qs = (const int *) bx->qs + 2 * iqs;
    const int * ys = (const int *) by->qs;

    int sumi = 0;
#pragma unroll
    for (int j = 0; j < 2; ++j) {
        const int q = qs[j];
        const int2 lo = apiq2_unpack8(q);
        const int2 hi = apiq2_unpack8(q >> 16);
        sumi = ggml_cuda_dp4a(lo.x, ys[4 * j + 0], sumi);
        sumi = ggml_cuda_dp4a(lo.y, ys[4 * j + 1], sumi);
        sumi = ggml_cuda_dp4a(hi.x, ys[4 * j + 2], sumi);
        sumi = ggml_cuda_dp4a(hi.y, ys[4 * j + 3], sumi);
    }
    const float2 dm = __half22float2(bx->dm);
    const float2 ds = __half22float2(by->ds);
    return dm.x * ds.x * (float) sumi + dm.y * ds.y;
}
