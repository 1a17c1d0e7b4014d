// APIQ2 in ggml's CUDA matrix kernel (MMQ): the tile loader. Included by ggml-cuda/mmq.cuh after
// its own loaders. The codes are unpacked into the int8 tile of Q5_1's layout (eight ints per 32
// values, one half2 (d, m) per 32 values), so upstream's Q8_1 x Q8_1 dot products (dp4a and
// tensor-core mma) do the arithmetic: d*d8*sum(q*q8) + m*s per 32 values.
#pragma once

// Halves of a block per step of the Q8_1 x Q8_1 dot products (Q2_0's value).
#define VDR_APIQ2_Q8_1_MMQ 2

template <ggml_type type, int J, bool fallback> static __device__ __forceinline__ void apiq2_mmq_load_tiles(
        const char * __restrict__ x, int * __restrict__ x_tile, const int kbx0, const int i_max, const int stride) {
    constexpr int warp_size   = ggml_cuda_get_physical_warp_size();
    constexpr int nwarps      = ggml_cuda_mmq_get_nthreads(type, J, fallback) / warp_size;
    constexpr int I           = ggml_cuda_mmq_get_I(type, J, fallback);
    constexpr int sram_stride = ggml_cuda_mmq_get_sram_stride(type, J, fallback);

#if defined(AMD_MFMA_AVAILABLE) || defined(TURING_MMA_AVAILABLE) || defined(AMD_WMMA_AVAILABLE)
    int   * x_qs = (int   *)  x_tile;
    half2 * x_dm = (half2 *) (x_qs + 2*MMQ_TILE_NE_K);
    constexpr int qs_stride = sram_stride;
#else
    constexpr tile_x_sizes txs = mmq_get_dp4a_tile_x_sizes(GGML_TYPE_Q5_1, I);
    int   * x_qs = (int   *)  x_tile;
    half2 * x_dm = (half2 *) (x_qs + txs.qs);
    constexpr int qs_stride = 2*MMQ_TILE_NE_K + 1;
#endif // defined(AMD_MFMA_AVAILABLE) || defined(TURING_MMA_AVAILABLE) || defined(AMD_WMMA_AVAILABLE)

    // One thread per 32 values: two ints of codes -> eight ints of bytes, and their (d, m).
    constexpr int blocks_per_iter = MMQ_ITER_K / QK_APIQ2;
    constexpr int halves_per_row  = blocks_per_iter * QI_APIQ2;
    constexpr int rows_per_pass   = warp_size / halves_per_row;
    static_assert(warp_size % halves_per_row == 0, "APIQ2 tile loader: warp size");

    const int half_idx = threadIdx.x % halves_per_row;
    const int kbx      = half_idx / QI_APIQ2;
    const int khalf    = half_idx % QI_APIQ2;

#pragma unroll
    for (int i0 = 0; i0 < I; i0 += rows_per_pass*nwarps) {
        int i = i0 + threadIdx.y*rows_per_pass + threadIdx.x/halves_per_row;

        if (fallback) {
            i = min(i, i_max);
        }

        const block_apiq2_dm * bxi = (const block_apiq2_dm *) x + kbx0 + i*stride + kbx;
        const int * qs = (const int *) bxi->qs + 2*khalf;
        int * dst = x_qs + i*qs_stride + half_idx*QI8_1;

#pragma unroll
        for (int j = 0; j < 2; ++j) {
            const int q = qs[j];
            const int2 lo = apiq2_unpack8(q);
            const int2 hi = apiq2_unpack8(q >> 16);
            dst[4*j + 0] = lo.x;
            dst[4*j + 1] = lo.y;
            dst[4*j + 2] = hi.x;
            dst[4*j + 3] = hi.y;
        }

        // (d, m) once per 32 values: both halves of a block get the block's pair.
#if defined(AMD_MFMA_AVAILABLE) || defined(TURING_MMA_AVAILABLE) || defined(AMD_WMMA_AVAILABLE)
        x_dm[i*sram_stride                     + half_idx] = bxi->dm;
#else
        x_dm[i*(MMQ_TILE_NE_K/QI5_1) + i/QI5_1 + half_idx] = bxi->dm;
#endif // defined(AMD_MFMA_AVAILABLE) || defined(TURING_MMA_AVAILABLE) || defined(AMD_WMMA_AVAILABLE)
    }
}
