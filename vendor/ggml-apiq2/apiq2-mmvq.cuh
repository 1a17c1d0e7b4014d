// APIQ2 in ggml's CUDA batch <= 8 kernel (MMVQ): the dot product of 32-value halves of a block
// with their Q8_1 blocks. Included by ggml-cuda/mmvq.cu.
#pragma once

// Batch 1 takes ggml's small-k launch at every k, not only where one 128-thread block would cover
// a row in a single pass: four rows per CUDA block, every thread working on all four over its
// share of k, so each Q8_1 activation value it loads (8.5 bits, against 2.5 of weight) serves four
// rows. Only where the rows fill whole CUDA blocks: the launch reads its last block's rows whole. Llama-2-7B shape, tg128 on an H200: 299.5 t/s against 274.6 with one row per block
// (Q4_0: 252.5 and 251.8 in the same runs). 0 restores upstream's choice (scripts/gpu-llama-apiq2.sh,
// stage rowblock, times it).
#define APIQ2_MMVQ_SMALL_K_ALWAYS 1

// Rows per CUDA block of that launch (upstream: one per warp, 4), each thread working on all of
// them: more rows reuse each activation load more often but leave the card fewer, heavier blocks.
// tg128 on the H200 (scripts/gpu-llama-apiq2.sh, stage rows): 2 rows 294.9 t/s, 4 rows
// 289.1-297.4, 8 rows 281.5, 16 rows 239.9.
#define APIQ2_MMVQ_ROWS_PER_BLOCK 4

// Halves of a block per thread. 2 (a whole block per thread) was slower on the H200 either way:
// 270.2 t/s with upstream's launch, 278.8 with the small-k launch at every k.
#define VDR_APIQ2_Q8_1_MMVQ 1

// MMVQ: halves iqs .. iqs + VDR - 1 of block kbx against their Q8_1 blocks.
static __device__ __forceinline__ float vec_dot_apiq2_q8_1(
    const void * __restrict__ vbq, const block_q8_1 * __restrict__ bq8_1, const int & kbx, const int & iqs) {
    const block_apiq2_dm * bx = (const block_apiq2_dm *) vbq + kbx;
    const float2 dm = __half22float2(bx->dm);

    float sum = 0.0f;
#pragma unroll
    for (int h = 0; h < VDR_APIQ2_Q8_1_MMVQ; ++h) {
        const block_q8_1 * by = bq8_1 + iqs + h;
        const int * qs = (const int *) bx->qs + 2 * (iqs + h);
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
        const float2 ds = __half22float2(by->ds);
        sum += dm.x * ds.x * (float) sumi + dm.y * ds.y;
    }
    return sum;
}
