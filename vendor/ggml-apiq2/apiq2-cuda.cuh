// APIQ2 in ggml's CUDA backend: the block as the device reads it, type traits, the code
// unpacking every kernel shares and dequantization (the cuBLAS path and GET_ROWS). Included at
// the end of ggml-cuda/common.cuh. The dot product of the batch <= 8 kernel is apiq2-mmvq.cuh
// (included by mmvq.cu only), the tile loader of the matrix kernel apiq2-mmq.cuh (mmq.cuh only),
// so a change to either recompiles one file.
//
// The block is Q2_0's (64 two-bit codes, sequential) plus an f16 offset beside the scale:
// y = d*q + m. Activations are Q8_1 as for Q4_1/Q5_1, whose stored sum s = d8*sum(q8) turns the
// offset into one multiply per 32 values: sum(y*x) = d*d8*sum(q*q8) + m*s.
#pragma once

#include "../ggml-apiq2/apiq2.h"

// block_apiq2 as the device reads it: d and m as one half2, like block_q4_1's dm.
typedef struct {
    half2   dm;
    uint8_t qs[QK_APIQ2 / 4];
} block_apiq2_dm;
static_assert(sizeof(block_apiq2_dm) == sizeof(block_apiq2), "block_apiq2_dm must match block_apiq2");

// Q2_0's constants: a block is two 32-value halves (QI), each matching one Q8_1 block; QR = 1:
// dequantize returns neighbouring values. The kernels' halves per thread (VDR) are in
// apiq2-mmvq.cuh and apiq2-mmq.cuh.
#define QI_APIQ2 (QK_APIQ2 / 32)
#define QR_APIQ2 1

template<>
struct ggml_cuda_type_traits<GGML_TYPE_APIQ2> {
    static constexpr int qk = QK_APIQ2;
    static constexpr int qr = QR_APIQ2;
    static constexpr int qi = QI_APIQ2;
    static constexpr int bs = sizeof(block_apiq2);
};

// Values iqs and iqs + 1 of block ib, in f32 exactly as the CPU computes them.
static __device__ __forceinline__ void dequantize_apiq2(const void * vx, const int64_t ib, const int iqs, float2 & v) {
    const block_apiq2_dm * x = (const block_apiq2_dm *) vx + ib;
    const float2 dm = __half22float2(x->dm);
    const int c0 = (x->qs[(iqs + 0) / 4] >> (2 * ((iqs + 0) % 4))) & 3;
    const int c1 = (x->qs[(iqs + 1) / 4] >> (2 * ((iqs + 1) % 4))) & 3;
    v.x = (float) c0 * dm.x + dm.y;
    v.y = (float) c1 * dm.x + dm.y;
}

// Eight 2-bit codes (the low 16 bits of q) as eight unsigned bytes in two ints, in order.
static __device__ __forceinline__ int2 apiq2_unpack8(const int q) {
#if defined(GGML_USE_HIP)
    const int lo = q & 0xFF, hi = (q >> 8) & 0xFF;
    return make_int2((lo | lo << 6 | lo << 12 | lo << 18) & 0x03030303,
                     (hi | hi << 6 | hi << 12 | hi << 18) & 0x03030303);
#else
    // Each selector nibble picks byte (code & 3) of 0x03020100, i.e. the code itself: the even
    // codes from q, the odd ones from q >> 2; then interleave.
    const int even = __byte_perm(0x03020100, 0x03020100, q >> 0);
    const int odd  = __byte_perm(0x03020100, 0x03020100, q >> 2);
    return make_int2(__byte_perm(even, odd, 0x5140), __byte_perm(even, odd, 0x7362));
#endif // defined(GGML_USE_HIP)
}

// Batches above 8 run the dequantize + cuBLAS path (F16 activations, F16 weights exact to
// f16 rounding) unless GGML_APIQ2_MMQ=1 selects the MMQ kernel, whose int8 (Q8_1) activations cost
// a 2-bit model measurably more perplexity than they cost a 4-bit one. MMQ's tiles are written for
// the NVIDIA configurations (Volta and later use the Ampere table).
static inline bool apiq2_mmq_supported(const int cc) {
    // read once: this runs for every matrix product of every graph
    static const bool wanted = [] {
        const char * env = getenv("GGML_APIQ2_MMQ");
        return env != nullptr && atoi(env) != 0;
    }();
    return wanted && GGML_CUDA_CC_IS_NVIDIA(cc) && ggml_cuda_highest_compiled_arch(cc) >= GGML_CUDA_CC_VOLTA;
}
