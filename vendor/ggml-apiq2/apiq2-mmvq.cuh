// APIQ2 in ggml's CUDA batch <= 8 kernel (MMVQ). Included by ggml-cuda/mmvq.cu after its own
// headers. Batches 2..8 run upstream's kernel with vec_dot_apiq2_q8_1; batch 1 (every generated
// token) runs apiq2_mul_mat_vec_1 below, launched from upstream's launcher in its place.
#pragma once

// Batch 1 takes ggml's small-k launch at every k, not only where one 128-thread block would cover
// a row in a single pass: four rows per CUDA block, every thread working on all four over its
// share of k, so each Q8_1 activation value it loads (8.5 bits, against 2.5 of weight) serves four
// rows. Only where the rows fill whole CUDA blocks: the launch reads its last block's rows whole.
// 0 restores upstream's kernel and choice (scripts/gpu-llama-apiq2.sh, stage rowblock, times it).
#define APIQ2_MMVQ_SMALL_K_ALWAYS 1

// Rows per CUDA block of that launch (upstream: one per warp, 4). apiq2_mul_mat_vec_1 is written
// for 4; other values run upstream's kernel. tg128 on the H200 with upstream's kernel
// (scripts/gpu-llama-apiq2.sh, stage rows): 2 rows 294.9 t/s, 4 rows 289.1-297.4, 8 rows 281.5,
// 16 rows 239.9.
#define APIQ2_MMVQ_ROWS_PER_BLOCK 4

// Halves of a block per thread in upstream's kernel (batches 2..8). 2 (a whole block per thread)
// was slower on the H200 either way: 270.2 t/s with upstream's launch, 278.8 with the small-k
// launch at every k.
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

// ---- batch 1 ----
//
// A token's matrix products are short kernels (a 4096 x 4096 APIQ2 matrix is 5.2 MB, about a
// microsecond of the H200's bandwidth), so what counts besides the bytes is what follows their
// arrival. Against upstream's kernel this one
//  - loads its first pass of weights before waiting for the previous kernel (the weights are no
//    kernel's output), so their latency hides behind the activations' quantization, and lets the
//    next kernel launch as soon as it has its activations: every kernel ggml launches this way
//    waits (ggml_cuda_pdl_sync) before reading what an earlier kernel wrote, as upstream's
//    quantize_q8_1 and MoE kernels rely on too;
//  - multiplies the codes in place: the thread's 32 activations are transposed once into the
//    order of a code word's bit pairs and each row's codes are only masked, 2 instructions per 4
//    values against 6 for unpacking each row's codes to bytes;
//  - sums the 4 rows (8 with the gate) over the warp in one butterfly, 6 exchanges instead of 20.
// tg128 of the Llama-2-7B-shaped model on the H200 (scripts/gpu-llama-apiq2.sh, stage bench):
// 343.1 t/s against 289.1-297.4 with upstream's kernel; Q4_0 251.6.
#define APIQ2_MMVQ_1_ROWS  4
#define APIQ2_MMVQ_1_WARPS 4

// The first pass's weights of one thread for one row: its half of block kbx.
struct apiq2_half_w {
    int   q0, q1; // 16 codes each, code c at bits 2c
    half2 dm;
};

static __device__ __forceinline__ apiq2_half_w apiq2_load_half(const block_apiq2_dm * x, const int h) {
    const int * qs = (const int *) x->qs + 2 * h;
    apiq2_half_w w;
    w.q0 = qs[0];
    w.q1 = qs[1];
    w.dm = x->dm;
    return w;
}

// Activation ints Y[0..3] (values 4j .. 4j+3 in Y[j]) into T[k] = values k, 4+k, 8+k, 12+k: byte j
// of T[k] meets code 4j+k, which a code word holds in bits 8j+2k.
static __device__ __forceinline__ void apiq2_transpose4(const int * Y, int * T) {
    const int a = __byte_perm(Y[0], Y[1], 0x5140), b = __byte_perm(Y[0], Y[1], 0x7362);
    const int c = __byte_perm(Y[2], Y[3], 0x5140), d = __byte_perm(Y[2], Y[3], 0x7362);
    T[0] = __byte_perm(a, c, 0x5410);
    T[1] = __byte_perm(a, c, 0x7632);
    T[2] = __byte_perm(b, d, 0x5410);
    T[3] = __byte_perm(b, d, 0x7632);
}

// c + the dot product of a's unsigned bytes with b's signed ones.
static __device__ __forceinline__ int apiq2_dp4a_us(const int a, const int b, const int c) {
#if defined(GGML_USE_HIP) || __CUDA_ARCH__ < GGML_CUDA_CC_DP4A
    const uint8_t * a8 = (const uint8_t *) &a;
    const int8_t  * b8 = (const int8_t  *) &b;
    return c + a8[0] * b8[0] + a8[1] * b8[1] + a8[2] * b8[2] + a8[3] * b8[3];
#else
    int d;
    asm("dp4a.u32.s32 %0, %1, %2, %3;" : "=r"(d) : "r"(a), "r"(b), "r"(c));
    return d;
#endif
}

// 64 * sum(code * activation) over a half: code word q0 against T[0..3], q1 against T[4..7]. The
// masked codes carry factors 1, 4, 16, 64 (exact integers), undone in the sum's weights.
static __device__ __forceinline__ int apiq2_dot_half64(const int q0, const int q1, const int * T) {
    int s0 = apiq2_dp4a_us(q0 & 0x03030303, T[0], 0);
    int s1 = apiq2_dp4a_us(q0 & 0x0C0C0C0C, T[1], 0);
    int s2 = apiq2_dp4a_us(q0 & 0x30303030, T[2], 0);
    int s3 = apiq2_dp4a_us(q0 & 0xC0C0C0C0, T[3], 0);
    s0 = apiq2_dp4a_us(q1 & 0x03030303, T[4], s0);
    s1 = apiq2_dp4a_us(q1 & 0x0C0C0C0C, T[5], s1);
    s2 = apiq2_dp4a_us(q1 & 0x30303030, T[6], s2);
    s3 = apiq2_dp4a_us(q1 & 0xC0C0C0C0, T[7], s3);
    return ((s0 * 4 + s1) * 4 + s2) * 4 + s3;
}

// v[0..N-1] summed over the warp: each step hands half of the values still held to the partner
// lane, so N values take N - 1 exchanges before the plain steps. Lane l returns the total of value
// (l / (32/N)).
template <int N>
static __device__ __forceinline__ float apiq2_warp_sum_n(float * v) {
    static_assert(N >= 1 && N <= 32 && (N & (N - 1)) == 0, "N must be a power of 2 up to 32");
    int held = N;
#pragma unroll
    for (int o = 16; o >= 1; o >>= 1) {
        if (held > 1) {
            const int  half = held / 2;
            const bool up   = threadIdx.x & o;
#pragma unroll
            for (int i = 0; i < N / 2; ++i) {
                if (i < half) {
                    const float give = up ? v[i] : v[i + half];
                    const float keep = up ? v[i + half] : v[i];
                    v[i] = keep + __shfl_xor_sync(0xffffffff, give, o, 32);
                }
            }
            held = half;
        } else {
            v[0] += __shfl_xor_sync(0xffffffff, v[0], o, 32);
        }
    }
    return v[0];
}

// Upstream's mul_mat_vec_q for ncols_dst = 1 (same arguments, grid and fusion: bias, gate and GLU),
// 4 rows per block of 4 warps. 8 blocks per SM keep a 4096-row product in one wave. The gate is a
// template argument, as the rows: its sums are registers only where it is there.
template <bool has_fusion, bool has_gate>
__launch_bounds__(APIQ2_MMVQ_1_WARPS * 32, 8)
static __global__ void apiq2_mul_mat_vec_1(
        const void * vx, const void * vy, const int32_t * ids, const ggml_cuda_mm_fusion_args_device fusion, float * dst,
        const uint32_t ncols_x, const uint3 nchannels_y, const uint32_t stride_row_x, const uint32_t stride_col_y,
        const uint32_t stride_col_dst, const uint3 channel_ratio, const uint32_t stride_channel_x,
        const uint32_t stride_channel_y, const uint32_t stride_channel_dst, const uint3 sample_ratio,
        const uint32_t stride_sample_x, const uint32_t stride_sample_y, const uint32_t stride_sample_dst,
        const uint32_t ids_stride) {
    constexpr int rows = APIQ2_MMVQ_1_ROWS, nwarps = APIQ2_MMVQ_1_WARPS;
    constexpr int blocks_per_iter = nwarps * 32 / 2; // two threads (halves) per block
    constexpr int nv = has_gate ? 2 * rows : rows;    // sums per thread: rows, then the gate's

    const int tid  = 32 * threadIdx.y + threadIdx.x;
    const int row0 = rows * blockIdx.x;
    const int nb   = ncols_x / QK_APIQ2;
    const int h    = tid % 2;

    // no expert ids (the launcher leaves those to upstream's kernel): the weights' place is known
    // before the wait
    const uint32_t channel_dst = blockIdx.y;
    const uint32_t sample_dst  = blockIdx.z;
    const uint32_t channel_x   = fastdiv(channel_dst, channel_ratio);
    const uint32_t sample_x    = fastdiv(sample_dst, sample_ratio);

    // block offsets in int, as upstream's kernel
    const int x_off = sample_x * stride_sample_x + channel_x * stride_channel_x + row0 * stride_row_x;
    const block_apiq2_dm * x = (const block_apiq2_dm *) vx + x_off;
    const block_apiq2_dm * g = has_gate ? (const block_apiq2_dm *) fusion.gate + x_off : x;

    int kbx = tid / 2;
    apiq2_half_w w[rows], wg[rows];
    if (kbx < nb) {
#pragma unroll
        for (int i = 0; i < rows; ++i) {
            w[i] = apiq2_load_half(x + i * stride_row_x + kbx, h);
            if constexpr (has_gate) {
                wg[i] = apiq2_load_half(g + i * stride_row_x + kbx, h);
            }
        }
    }

    ggml_cuda_pdl_sync();
    ggml_cuda_pdl_lc();

    const block_q8_1 * y = (const block_q8_1 *) vy + sample_dst * stride_sample_y + channel_dst * stride_channel_y;
    float sum[nv] = { 0.0f };
    for (; kbx < nb; kbx += blocks_per_iter) {
        const block_q8_1 * by = y + 2 * kbx + h;
        int ys[8], T[8];
#pragma unroll
        for (int j = 0; j < 8; ++j) {
            ys[j] = ((const int *) by->qs)[j];
        }
        apiq2_transpose4(ys, T);
        apiq2_transpose4(ys + 4, T + 4);
        const float2 ds = __half22float2(by->ds);
        const float  d8 = ds.x * (1.0f / 64);
#pragma unroll
        for (int i = 0; i < rows; ++i) {
            const float2 dm = __half22float2(w[i].dm);
            sum[i] += dm.x * (d8 * (float) apiq2_dot_half64(w[i].q0, w[i].q1, T)) + dm.y * ds.y;
            if constexpr (has_gate) {
                const float2 dg = __half22float2(wg[i].dm);
                sum[rows + i] += dg.x * (d8 * (float) apiq2_dot_half64(wg[i].q0, wg[i].q1, T)) + dg.y * ds.y;
            }
        }
        if (kbx + blocks_per_iter < nb) {
#pragma unroll
            for (int i = 0; i < rows; ++i) {
                w[i] = apiq2_load_half(x + i * stride_row_x + kbx + blocks_per_iter, h);
                if constexpr (has_gate) {
                    wg[i] = apiq2_load_half(g + i * stride_row_x + kbx + blocks_per_iter, h);
                }
            }
        }
    }

    // per warp, then over the warps
    __shared__ float warp_sums[nwarps][nv];
    const float t = apiq2_warp_sum_n<nv>(sum);
    if (threadIdx.x % (32 / nv) == 0) {
        warp_sums[threadIdx.y][threadIdx.x / (32 / nv)] = t;
    }
    __syncthreads();
    const int i = threadIdx.x;
    if (threadIdx.y != 0 || i >= rows || uint32_t(row0 + i) >= stride_col_dst) {
        return;
    }
    float result = 0.0f;
#pragma unroll
    for (int l = 0; l < nwarps; ++l) {
        result += warp_sums[l][i];
    }
    if constexpr (has_fusion) {
        const int bias_off = sample_dst * stride_sample_dst + channel_dst * stride_channel_dst + row0 + i;
        if (fusion.x_bias) {
            result += ((const float *) fusion.x_bias)[bias_off];
        }
        if constexpr (has_gate) {
            float gate_value = 0.0f;
#pragma unroll
            for (int l = 0; l < nwarps; ++l) {
                gate_value += warp_sums[l][rows + i];
            }
            if (fusion.gate_bias) {
                gate_value += ((const float *) fusion.gate_bias)[bias_off];
            }
            switch (fusion.glu_op) {
                case GGML_GLU_OP_SWIGLU:
                    result *= ggml_cuda_op_silu_single(gate_value);
                    break;
                case GGML_GLU_OP_GEGLU:
                    result *= ggml_cuda_op_gelu_single(gate_value);
                    break;
                case GGML_GLU_OP_SWIGLU_OAI:
                    result = ggml_cuda_op_swiglu_oai_single(gate_value, result);
                    break;
                case GGML_GLU_OP_SWIGLU_CLAMP:
                    result = ggml_cuda_op_swiglu_clamp_single(gate_value, result, fusion.glu_limit);
                    break;
                default:
                    result = result * gate_value;
                    break;
            }
        }
    }
    dst[sample_dst * stride_sample_dst + channel_dst * stride_channel_dst + row0 + i] = result;
    GGML_UNUSED_VARS(ids, nchannels_y, stride_col_y, ids_stride);
}

// Called by upstream's launcher for every batch-1 small-k launch of APIQ2: true when it launched
// apiq2_mul_mat_vec_1, i.e. the launch has its shape (4 warps of 32 over 4 rows per block) and no
// expert ids (MUL_MAT_ID of one token), whose expert an earlier kernel chooses.
static bool apiq2_mul_mat_vec_1_launch(
        const void * vx, const void * vy, const int32_t * ids, const ggml_cuda_mm_fusion_args_device fusion, float * dst,
        const uint32_t ncols_x, const uint3 nchannels_y, const uint32_t stride_row_x, const uint32_t stride_col_y,
        const uint32_t stride_col_dst, const uint3 channel_ratio, const uint32_t stride_channel_x,
        const uint32_t stride_channel_y, const uint32_t stride_channel_dst, const uint3 sample_ratio,
        const uint32_t stride_sample_x, const uint32_t stride_sample_y, const uint32_t stride_sample_dst,
        const dim3 & block_nums, const dim3 & block_dims, const uint32_t ids_stride, cudaStream_t stream) {
    if (ids || APIQ2_MMVQ_ROWS_PER_BLOCK != APIQ2_MMVQ_1_ROWS || block_dims.x != 32 || block_dims.y != APIQ2_MMVQ_1_WARPS) {
        return false;
    }
    const bool has_fusion = fusion.gate != nullptr || fusion.x_bias != nullptr || fusion.gate_bias != nullptr;
    const ggml_cuda_kernel_launch_params launch_params(block_nums, block_dims, 0, stream);
    const auto launch = [&](auto kernel) {
        ggml_cuda_kernel_launch(kernel, launch_params, vx, vy, ids, fusion, dst, ncols_x, nchannels_y, stride_row_x,
            stride_col_y, stride_col_dst, channel_ratio, stride_channel_x, stride_channel_y, stride_channel_dst,
            sample_ratio, stride_sample_x, stride_sample_y, stride_sample_dst, ids_stride);
    };
    if (fusion.gate != nullptr) {
        launch(apiq2_mul_mat_vec_1<true, true>);
    } else if (has_fusion) {
        launch(apiq2_mul_mat_vec_1<true, false>);
    } else {
        launch(apiq2_mul_mat_vec_1<false, false>);
    }
    return true;
}
