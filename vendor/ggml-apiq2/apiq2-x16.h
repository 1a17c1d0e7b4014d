// APIQ2 in the layout of ggml-cpu's repack buffer, and the matrix kernels over it.
//
// Weights: 16 rows interleaved per 64-column block (block_apiq2x16, the same 320 bytes as 16
// block_apiq2). The codes are laid out so that a 32-bit lane holds 4 columns of one row:
// qs[64u + 32(r/8) + 4(r%8) + i], bits 2k..2k+1, is the code of row r, column 16u + 4k + i.
// One 64-byte load therefore gives 16 rows (one per 32-bit lane) x 16 columns, and masking
// the shifted bytes gives 16 rows x 4 columns per register: the lanes are rows, so the dot
// products never need a horizontal reduction.
//
// Activations: int16 per 64 values with one f32 scale (the rounding that keeps an APIQ2 model
// at its F16 twin's perplexity; 8-bit activations move it by a percent), stored as two signed
// bytes a = 256*h + l so that byte dot products (vpmaddubsw, vpdpbusd, ARM's sdot) apply: the
// codes (0..3) times h and times l, each exact in 16 or 32 bits. Values are limited to +-32639
// so that h = round(a / 256) stays a signed byte.
//
// Header-only C++ (included by ggml-cpu's repack.cpp through apiq2-repack.inc) with no ggml
// dependency but the f16 conversion APIQ2_FP16_TO_FP32, so the kernels also build on their own.
#pragma once

#include "apiq2.h"

#include <math.h>
#include <stdint.h>
#include <string.h>

#if defined(__AVX2__)
#include <immintrin.h>
#endif
#if defined(__ARM_NEON) && defined(__aarch64__)
#include <arm_neon.h>
#endif

#ifndef APIQ2_FP16_TO_FP32
#define APIQ2_FP16_TO_FP32(x) GGML_CPU_FP16_TO_FP32(x)
#endif

// GCC at -O3 reassociates the integer accumulations below into trees that compute every product
// first and spill them; an empty asm on the accumulator keeps the chains as written.
#if defined(__GNUC__)
#define APIQ2_KEEP(v) __asm__("" : "+x"(v))
#define APIQ2_UNROLL _Pragma("GCC unroll 4")
#else
#define APIQ2_KEEP(v) (void) 0
#define APIQ2_UNROLL
#endif

#define APIQ2_X16_ROWS 16
#define APIQ2_A16_MAX 32639 // largest |a| with round(a / 256) in a signed byte

struct block_apiq2x16 {
    uint16_t d[APIQ2_X16_ROWS];
    uint16_t m[APIQ2_X16_ROWS];
    uint8_t  qs[APIQ2_X16_ROWS * QK_APIQ2 / 4];
};
static_assert(sizeof(block_apiq2x16) == APIQ2_X16_ROWS * sizeof(block_apiq2), "wrong apiq2x16 block size");

struct block_apiq2_a16 {
    float  d;           // value = d * (256 * h + l)
    float  s;           // d * sum(256 * h + l), for the offset term m * sum(x)
    int8_t h[QK_APIQ2];
    int8_t l[QK_APIQ2];
};

static inline int apiq2x16_byte(int r, int c) {
    return 64 * (c / 16) + 32 * (r / 8) + 4 * (r % 8) + c % 4;
}

static inline int apiq2x16_shift(int c) {
    return 2 * ((c % 16) / 4);
}

// The 4 source bytes of 16 columns hold a 4x4 matrix of 2-bit codes, byte j field i = column
// 4j + i; the layout wants byte i field k = column 4k + i: a transpose, done with two delta swaps
// (2x2 blocks of fields, then the fields within each block).
static inline uint32_t apiq2x16_transpose4x4(uint32_t w) {
    uint32_t t = ((w >> 12) ^ w) & 0x0000F0F0u;
    w ^= t ^ (t << 12);
    t = ((w >> 6) ^ w) & 0x00CC00CCu;
    return w ^ t ^ (t << 6);
}

// 16 rows of nb blocks each (row-major block_apiq2) into nb interleaved blocks.
static void apiq2x16_pack(const block_apiq2 * src, int64_t nb, block_apiq2x16 * dst) {
    for (int64_t b = 0; b < nb; b++) {
        block_apiq2x16 & out = dst[b];
        for (int r = 0; r < APIQ2_X16_ROWS; r++) {
            const block_apiq2 & in = src[r * nb + b];
            out.d[r] = in.d;
            out.m[r] = in.m;
            for (int u = 0; u < 4; u++) {
                uint32_t w;
                memcpy(&w, in.qs + 4 * u, sizeof(w));
                w = apiq2x16_transpose4x4(w);
                memcpy(out.qs + apiq2x16_byte(r, 16 * u), &w, sizeof(w));
            }
        }
    }
}

// ---- activations ----------------------------------------------------------------------------

static inline void apiq2_a16_split(int32_t q, int8_t * h, int8_t * l) {
    const int32_t hi = ((q + 128 + 32768) >> 8) - 128; // floor((q + 128) / 256) without negative shifts
    *h = (int8_t) hi;
    *l = (int8_t) (q - 256 * hi);
}

static void apiq2_quantize_a16_generic(const float * x, block_apiq2_a16 * y, int64_t nblocks) {
    for (int64_t i = 0; i < nblocks; i++) {
        const float * xb = x + i * QK_APIQ2;
        float amax = 0.0f;
        for (int j = 0; j < QK_APIQ2; j++) {
            amax = fmaxf(amax, fabsf(xb[j]));
        }
        const float d  = amax / (float) APIQ2_A16_MAX;
        const float id = d != 0.0f ? 1.0f / d : 0.0f;
        int32_t sum = 0;
        for (int j = 0; j < QK_APIQ2; j++) {
            int32_t q = (int32_t) nearbyintf(xb[j] * id);
            q = q > APIQ2_A16_MAX ? APIQ2_A16_MAX : q < -APIQ2_A16_MAX ? -APIQ2_A16_MAX : q;
            apiq2_a16_split(q, &y[i].h[j], &y[i].l[j]);
            sum += q;
        }
        y[i].d = d;
        y[i].s = d * (float) sum;
    }
}

#if defined(__AVX2__)
// The same numbers as the generic version: x * id in f32, rounded to nearest even (MXCSR's
// default, as nearbyintf), clamped, split.
static void apiq2_quantize_a16_avx2(const float * x, block_apiq2_a16 * y, int64_t nblocks) {
    const __m256 sign = _mm256_set1_ps(-0.0f);
    const __m256i qmax = _mm256_set1_epi32(APIQ2_A16_MAX), qmin = _mm256_set1_epi32(-APIQ2_A16_MAX);
    const __m256i c128 = _mm256_set1_epi32(128);
    const __m256i order = _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7);
    for (int64_t i = 0; i < nblocks; i++) {
        const float * xb = x + i * QK_APIQ2;
        __m256 v[8];
        __m256 mx = _mm256_setzero_ps();
        for (int j = 0; j < 8; j++) {
            v[j] = _mm256_loadu_ps(xb + 8 * j);
            mx = _mm256_max_ps(mx, _mm256_andnot_ps(sign, v[j]));
        }
        __m128 m4 = _mm_max_ps(_mm256_castps256_ps128(mx), _mm256_extractf128_ps(mx, 1));
        m4 = _mm_max_ps(m4, _mm_movehl_ps(m4, m4));
        m4 = _mm_max_ss(m4, _mm_movehdup_ps(m4));
        const float amax = _mm_cvtss_f32(m4);
        const float d  = amax / (float) APIQ2_A16_MAX;
        const float id = d != 0.0f ? 1.0f / d : 0.0f;
        const __m256 idv = _mm256_set1_ps(id);
        __m256i sum = _mm256_setzero_si256();
        __m256i hs[8], ls[8];
        for (int j = 0; j < 8; j++) {
            __m256i q = _mm256_cvtps_epi32(_mm256_mul_ps(v[j], idv));
            q = _mm256_max_epi32(_mm256_min_epi32(q, qmax), qmin);
            sum = _mm256_add_epi32(sum, q);
            hs[j] = _mm256_srai_epi32(_mm256_add_epi32(q, c128), 8);
            ls[j] = _mm256_sub_epi32(q, _mm256_slli_epi32(hs[j], 8));
        }
        for (int half = 0; half < 2; half++) {
            const __m256i * src = half ? ls : hs;
            const __m256i w01 = _mm256_packs_epi32(src[0], src[1]);
            const __m256i w23 = _mm256_packs_epi32(src[2], src[3]);
            const __m256i w45 = _mm256_packs_epi32(src[4], src[5]);
            const __m256i w67 = _mm256_packs_epi32(src[6], src[7]);
            const __m256i b0 = _mm256_permutevar8x32_epi32(_mm256_packs_epi16(w01, w23), order);
            const __m256i b1 = _mm256_permutevar8x32_epi32(_mm256_packs_epi16(w45, w67), order);
            int8_t * dst = half ? y[i].l : y[i].h;
            _mm256_storeu_si256((__m256i *) dst, b0);
            _mm256_storeu_si256((__m256i *) (dst + 32), b1);
        }
        __m128i s4 = _mm_add_epi32(_mm256_castsi256_si128(sum), _mm256_extracti128_si256(sum, 1));
        s4 = _mm_add_epi32(s4, _mm_shuffle_epi32(s4, 0x4e));
        s4 = _mm_add_epi32(s4, _mm_shuffle_epi32(s4, 0xb1));
        y[i].d = d;
        y[i].s = d * (float) _mm_cvtsi128_si32(s4);
    }
}
#endif

// ---- matrix kernels: s[c * bs + r] for the 16 rows of one group and ncols <= 4 columns -------

static void apiq2x16_gemm_generic(int nb, const block_apiq2x16 * x, const block_apiq2_a16 * y, size_t y_stride,
                                  int ncols, float * s, size_t bs) {
    for (int c = 0; c < ncols; c++) {
        float acc[APIQ2_X16_ROWS] = {0};
        for (int b = 0; b < nb; b++) {
            const block_apiq2_a16 * a = y + c * y_stride + b;
            int32_t av[QK_APIQ2];
            for (int col = 0; col < QK_APIQ2; col++) {
                av[col] = 256 * a->h[col] + a->l[col];
            }
            for (int r = 0; r < APIQ2_X16_ROWS; r++) {
                int32_t sum = 0;
                for (int col = 0; col < QK_APIQ2; col++) {
                    sum += ((x[b].qs[apiq2x16_byte(r, col)] >> apiq2x16_shift(col)) & 3) * av[col];
                }
                acc[r] += APIQ2_FP16_TO_FP32(x[b].d[r]) * a->d * (float) sum;
                acc[r] += APIQ2_FP16_TO_FP32(x[b].m[r]) * a->s;
            }
        }
        for (int r = 0; r < APIQ2_X16_ROWS; r++) {
            s[c * bs + r] = acc[r];
        }
    }
}

#if defined(__AVX2__) && defined(__FMA__) && defined(__F16C__)
#define APIQ2_X16_AVX2 1

static inline __m256i apiq2_bcast4(const int8_t * p) {
    int32_t v;
    memcpy(&v, p, sizeof(v));
    return _mm256_set1_epi32(v);
}

// Byte products of codes (u8) and activations (s8) accumulated per 32-bit lane: int32 with
// AVX-VNNI; otherwise int16 pair sums (at most 16 * 768 in magnitude), widened by apiq2_join256.
static inline __m256i apiq2_dot256(__m256i acc, __m256i codes, __m256i act) {
#if defined(__AVXVNNI__)
    return _mm256_dpbusd_avx_epi32(acc, codes, act);
#else
    return _mm256_add_epi16(acc, _mm256_maddubs_epi16(codes, act));
#endif
}

// The accumulated h and l products into int32 256*h + l per row.
static inline __m256i apiq2_join256(__m256i h, __m256i l) {
#if defined(__AVXVNNI__)
    return _mm256_add_epi32(_mm256_slli_epi32(h, 8), l);
#else
    return _mm256_add_epi32(_mm256_madd_epi16(h, _mm256_set1_epi16(256)), _mm256_madd_epi16(l, _mm256_set1_epi16(1)));
#endif
}

// One column: both halves (rows 0-7, 8-15) share each broadcast activation.
static void apiq2x16_gemv_avx2(int nb, const block_apiq2x16 * x, const block_apiq2_a16 * a, float * s) {
    const __m256i m3 = _mm256_set1_epi8(3);
    __m256 acc0 = _mm256_setzero_ps(), acc1 = _mm256_setzero_ps();
    for (int b = 0; b < nb; b++, a++) {
        const uint8_t * qs = x[b].qs;
        __m256i h0 = _mm256_setzero_si256(), l0 = _mm256_setzero_si256();
        __m256i h1 = _mm256_setzero_si256(), l1 = _mm256_setzero_si256();
        APIQ2_UNROLL
        for (int u = 0; u < 4; u++) {
            const __m256i p0 = _mm256_loadu_si256((const __m256i *) (qs + 64 * u));
            const __m256i p1 = _mm256_loadu_si256((const __m256i *) (qs + 64 * u + 32));
            APIQ2_UNROLL
            for (int k = 0; k < 4; k++) {
                const __m256i ah = apiq2_bcast4(a->h + 16 * u + 4 * k);
                const __m256i al = apiq2_bcast4(a->l + 16 * u + 4 * k);
                const __m256i c0 = _mm256_and_si256(_mm256_srli_epi16(p0, 2 * k), m3);
                const __m256i c1 = _mm256_and_si256(_mm256_srli_epi16(p1, 2 * k), m3);
                h0 = apiq2_dot256(h0, c0, ah);
                l0 = apiq2_dot256(l0, c0, al);
                h1 = apiq2_dot256(h1, c1, ah);
                l1 = apiq2_dot256(l1, c1, al);
                APIQ2_KEEP(h0);
                APIQ2_KEEP(l0);
                APIQ2_KEEP(h1);
                APIQ2_KEEP(l1);
            }
        }
        const __m256 ad = _mm256_set1_ps(a->d), as = _mm256_set1_ps(a->s);
        const __m256 d0 = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *) x[b].d));
        const __m256 d1 = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *) (x[b].d + 8)));
        acc0 = _mm256_fmadd_ps(_mm256_cvtepi32_ps(apiq2_join256(h0, l0)), _mm256_mul_ps(d0, ad), acc0);
        acc1 = _mm256_fmadd_ps(_mm256_cvtepi32_ps(apiq2_join256(h1, l1)), _mm256_mul_ps(d1, ad), acc1);
        acc0 = _mm256_fmadd_ps(_mm256_cvtph_ps(_mm_loadu_si128((const __m128i *) x[b].m)), as, acc0);
        acc1 = _mm256_fmadd_ps(_mm256_cvtph_ps(_mm_loadu_si128((const __m128i *) (x[b].m + 8))), as, acc1);
    }
    _mm256_storeu_ps(s, acc0);
    _mm256_storeu_ps(s + 8, acc1);
}

// NC columns, one half (8 rows) at a time so that the accumulators fit the 16 registers.
template <int NC>
static void apiq2x16_gemm_avx2(int nb, const block_apiq2x16 * x, const block_apiq2_a16 * y, size_t y_stride,
                               float * s, size_t bs) {
    const __m256i m3 = _mm256_set1_epi8(3);
    for (int half = 0; half < 2; half++) {
        __m256 acc[NC];
        APIQ2_UNROLL
        for (int c = 0; c < NC; c++) {
            acc[c] = _mm256_setzero_ps();
        }
        for (int b = 0; b < nb; b++) {
            const uint8_t * qs = x[b].qs + 32 * half;
            __m256i h[NC], l[NC];
            APIQ2_UNROLL
            for (int c = 0; c < NC; c++) {
                h[c] = _mm256_setzero_si256();
                l[c] = _mm256_setzero_si256();
            }
            APIQ2_UNROLL
            for (int u = 0; u < 4; u++) {
                const __m256i p = _mm256_loadu_si256((const __m256i *) (qs + 64 * u));
                APIQ2_UNROLL
                for (int k = 0; k < 4; k++) {
                    const __m256i cd = _mm256_and_si256(_mm256_srli_epi16(p, 2 * k), m3);
                    APIQ2_UNROLL
                    for (int c = 0; c < NC; c++) {
                        const block_apiq2_a16 * a = y + c * y_stride + b;
                        h[c] = apiq2_dot256(h[c], cd, apiq2_bcast4(a->h + 16 * u + 4 * k));
                        l[c] = apiq2_dot256(l[c], cd, apiq2_bcast4(a->l + 16 * u + 4 * k));
                        APIQ2_KEEP(h[c]);
                        APIQ2_KEEP(l[c]);
                    }
                }
            }
            const __m256 dv = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *) (x[b].d + 8 * half)));
            const __m256 mv = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *) (x[b].m + 8 * half)));
            APIQ2_UNROLL
            for (int c = 0; c < NC; c++) {
                const block_apiq2_a16 * a = y + c * y_stride + b;
                acc[c] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(apiq2_join256(h[c], l[c])), _mm256_mul_ps(dv, _mm256_set1_ps(a->d)), acc[c]);
                acc[c] = _mm256_fmadd_ps(mv, _mm256_set1_ps(a->s), acc[c]);
            }
        }
        APIQ2_UNROLL
        for (int c = 0; c < NC; c++) {
            _mm256_storeu_ps(s + c * bs + 8 * half, acc[c]);
        }
    }
}
#endif

#if defined(__AVX512F__) && defined(__AVX512BW__) && defined(__FMA__) && defined(__F16C__)
#define APIQ2_X16_AVX512 1

// Byte products of codes (u8) and activations (s8) accumulated per 32-bit lane: int32 with
// VNNI; otherwise int16 pair sums (at most 16 * 768), widened by apiq2_join512.
static inline __m512i apiq2_dot512(__m512i acc, __m512i codes, __m512i act) {
#if defined(__AVX512VNNI__)
    return _mm512_dpbusd_epi32(acc, codes, act);
#else
    return _mm512_add_epi16(acc, _mm512_maddubs_epi16(codes, act));
#endif
}

static inline __m512i apiq2_join512(__m512i h, __m512i l) {
#if defined(__AVX512VNNI__)
    return _mm512_add_epi32(_mm512_slli_epi32(h, 8), l);
#else
    return _mm512_add_epi32(_mm512_madd_epi16(h, _mm512_set1_epi16(256)), _mm512_madd_epi16(l, _mm512_set1_epi16(1)));
#endif
}

static inline __m512i apiq2_bcast4x16(const int8_t * p) {
    int32_t v;
    memcpy(&v, p, sizeof(v));
    return _mm512_set1_epi32(v);
}

// NC columns; all 16 rows in one register, two accumulator pairs per column to halve the
// dependency chains.
template <int NC>
static void apiq2x16_gemm_avx512(int nb, const block_apiq2x16 * x, const block_apiq2_a16 * y, size_t y_stride,
                                 float * s, size_t bs) {
    const __m512i m3 = _mm512_set1_epi8(3);
    __m512 acc[NC];
    APIQ2_UNROLL
    for (int c = 0; c < NC; c++) {
        acc[c] = _mm512_setzero_ps();
    }
    for (int b = 0; b < nb; b++) {
        __m512i h[NC][2], l[NC][2];
        APIQ2_UNROLL
        for (int c = 0; c < NC; c++) {
            h[c][0] = h[c][1] = l[c][0] = l[c][1] = _mm512_setzero_si512();
        }
        APIQ2_UNROLL
        for (int u = 0; u < 4; u++) {
            const __m512i p = _mm512_loadu_si512((const void *) (x[b].qs + 64 * u));
            APIQ2_UNROLL
            for (int k = 0; k < 4; k++) {
                const __m512i cd = _mm512_and_si512(_mm512_srli_epi16(p, 2 * k), m3);
                APIQ2_UNROLL
                for (int c = 0; c < NC; c++) {
                    const block_apiq2_a16 * a = y + c * y_stride + b;
                    h[c][u & 1] = apiq2_dot512(h[c][u & 1], cd, apiq2_bcast4x16(a->h + 16 * u + 4 * k));
                    l[c][u & 1] = apiq2_dot512(l[c][u & 1], cd, apiq2_bcast4x16(a->l + 16 * u + 4 * k));
                    APIQ2_KEEP(h[c][u & 1]);
                    APIQ2_KEEP(l[c][u & 1]);
                }
            }
        }
        const __m512 dv = _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *) x[b].d));
        const __m512 mv = _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *) x[b].m));
        APIQ2_UNROLL
        for (int c = 0; c < NC; c++) {
            const block_apiq2_a16 * a = y + c * y_stride + b;
            const __m512i sum = _mm512_add_epi32(apiq2_join512(h[c][0], l[c][0]), apiq2_join512(h[c][1], l[c][1]));
            acc[c] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(sum), _mm512_mul_ps(dv, _mm512_set1_ps(a->d)), acc[c]);
            acc[c] = _mm512_fmadd_ps(mv, _mm512_set1_ps(a->s), acc[c]);
        }
    }
    APIQ2_UNROLL
    for (int c = 0; c < NC; c++) {
        _mm512_storeu_ps(s + c * bs, acc[c]);
    }
}
#endif

#if defined(__ARM_NEON) && defined(__aarch64__) && defined(__ARM_FEATURE_DOTPROD)
#define APIQ2_X16_NEON 1

// NC columns, a quarter (4 rows, one 16-byte quarter of each 64-byte unit) at a time; the four
// column groups of a unit are the four 32-bit lanes of one activation load (vdotq_laneq).
template <int NC>
static void apiq2x16_gemm_neon(int nb, const block_apiq2x16 * x, const block_apiq2_a16 * y, size_t y_stride,
                               float * s, size_t bs) {
    const uint8x16_t m3 = vdupq_n_u8(3);
    APIQ2_UNROLL
    for (int qr = 0; qr < 4; qr++) {
        float32x4_t acc[NC];
        APIQ2_UNROLL
        for (int c = 0; c < NC; c++) {
            acc[c] = vdupq_n_f32(0.0f);
        }
        for (int b = 0; b < nb; b++) {
            int32x4_t h[NC], l[NC];
            APIQ2_UNROLL
            for (int c = 0; c < NC; c++) {
                h[c] = vdupq_n_s32(0);
                l[c] = vdupq_n_s32(0);
            }
            APIQ2_UNROLL
            for (int u = 0; u < 4; u++) {
                const uint8x16_t p = vld1q_u8(x[b].qs + 64 * u + 16 * qr);
                const int8x16_t c0 = vreinterpretq_s8_u8(vandq_u8(p, m3));
                const int8x16_t c1 = vreinterpretq_s8_u8(vandq_u8(vshrq_n_u8(p, 2), m3));
                const int8x16_t c2 = vreinterpretq_s8_u8(vandq_u8(vshrq_n_u8(p, 4), m3));
                const int8x16_t c3 = vreinterpretq_s8_u8(vshrq_n_u8(p, 6));
                APIQ2_UNROLL
                for (int c = 0; c < NC; c++) {
                    const block_apiq2_a16 * a = y + c * y_stride + b;
                    const int8x16_t ah = vld1q_s8(a->h + 16 * u);
                    const int8x16_t al = vld1q_s8(a->l + 16 * u);
                    h[c] = vdotq_laneq_s32(h[c], c0, ah, 0);
                    h[c] = vdotq_laneq_s32(h[c], c1, ah, 1);
                    h[c] = vdotq_laneq_s32(h[c], c2, ah, 2);
                    h[c] = vdotq_laneq_s32(h[c], c3, ah, 3);
                    l[c] = vdotq_laneq_s32(l[c], c0, al, 0);
                    l[c] = vdotq_laneq_s32(l[c], c1, al, 1);
                    l[c] = vdotq_laneq_s32(l[c], c2, al, 2);
                    l[c] = vdotq_laneq_s32(l[c], c3, al, 3);
                }
            }
            const float32x4_t dv = vcvt_f32_f16(vreinterpret_f16_u16(vld1_u16(x[b].d + 4 * qr)));
            const float32x4_t mv = vcvt_f32_f16(vreinterpret_f16_u16(vld1_u16(x[b].m + 4 * qr)));
            APIQ2_UNROLL
            for (int c = 0; c < NC; c++) {
                const block_apiq2_a16 * a = y + c * y_stride + b;
                const int32x4_t sum = vaddq_s32(vshlq_n_s32(h[c], 8), l[c]);
                acc[c] = vfmaq_f32(acc[c], vcvtq_f32_s32(sum), vmulq_n_f32(dv, a->d));
                acc[c] = vfmaq_n_f32(acc[c], mv, a->s);
            }
        }
        APIQ2_UNROLL
        for (int c = 0; c < NC; c++) {
            vst1q_f32(s + c * bs + 4 * qr, acc[c]);
        }
    }
}
#endif

// ---- dispatch ---------------------------------------------------------------------------------

// Which kernels apiq2x16_gemm runs: "avx512-vnni", "avx512", "avx2-vnni", "avx2", "neon-dotprod"
// or "generic".
static inline const char * apiq2x16_kernel_name(void) {
#if defined(APIQ2_X16_AVX512) && defined(__AVX512VNNI__)
    return "avx512-vnni";
#elif defined(APIQ2_X16_AVX512)
    return "avx512";
#elif defined(APIQ2_X16_AVX2) && defined(__AVXVNNI__)
    return "avx2-vnni";
#elif defined(APIQ2_X16_AVX2)
    return "avx2";
#elif defined(APIQ2_X16_NEON)
    return "neon-dotprod";
#else
    return "generic";
#endif
}

static void apiq2_quantize_a16(const float * x, block_apiq2_a16 * y, int64_t nblocks, bool generic) {
#if defined(__AVX2__)
    if (!generic) {
        apiq2_quantize_a16_avx2(x, y, nblocks);
        return;
    }
#endif
    (void) generic;
    apiq2_quantize_a16_generic(x, y, nblocks);
}

template <template <int> class K>
static inline void apiq2x16_by_ncols(int nb, const block_apiq2x16 * x, const block_apiq2_a16 * y, size_t y_stride,
                                     int ncols, float * s, size_t bs) {
    switch (ncols) {
        case 1: K<1>::run(nb, x, y, y_stride, s, bs); break;
        case 2: K<2>::run(nb, x, y, y_stride, s, bs); break;
        case 3: K<3>::run(nb, x, y, y_stride, s, bs); break;
        default: K<4>::run(nb, x, y, y_stride, s, bs); break;
    }
}

#if defined(APIQ2_X16_AVX512)
template <int NC> struct apiq2x16_avx512_k {
    static void run(int nb, const block_apiq2x16 * x, const block_apiq2_a16 * y, size_t ys, float * s, size_t bs) {
        apiq2x16_gemm_avx512<NC>(nb, x, y, ys, s, bs);
    }
};
#endif
#if defined(APIQ2_X16_AVX2)
template <int NC> struct apiq2x16_avx2_k {
    static void run(int nb, const block_apiq2x16 * x, const block_apiq2_a16 * y, size_t ys, float * s, size_t bs) {
        if (NC == 1) {
            apiq2x16_gemv_avx2(nb, x, y, s);
        } else {
            apiq2x16_gemm_avx2<NC>(nb, x, y, ys, s, bs);
        }
    }
};
#endif
#if defined(APIQ2_X16_NEON)
template <int NC> struct apiq2x16_neon_k {
    static void run(int nb, const block_apiq2x16 * x, const block_apiq2_a16 * y, size_t ys, float * s, size_t bs) {
        apiq2x16_gemm_neon<NC>(nb, x, y, ys, s, bs);
    }
};
#endif

// ncols (1..4) activation columns y + c * y_stride against one group of 16 rows.
static void apiq2x16_gemm(int nb, const block_apiq2x16 * x, const block_apiq2_a16 * y, size_t y_stride, int ncols,
                          float * s, size_t bs, bool generic) {
    if (!generic) {
#if defined(APIQ2_X16_AVX512)
        apiq2x16_by_ncols<apiq2x16_avx512_k>(nb, x, y, y_stride, ncols, s, bs);
        return;
#elif defined(APIQ2_X16_AVX2)
        apiq2x16_by_ncols<apiq2x16_avx2_k>(nb, x, y, y_stride, ncols, s, bs);
        return;
#elif defined(APIQ2_X16_NEON)
        apiq2x16_by_ncols<apiq2x16_neon_k>(nb, x, y, y_stride, ncols, s, bs);
        return;
#endif
    }
    apiq2x16_gemm_generic(nb, x, y, y_stride, ncols, s, bs);
}
