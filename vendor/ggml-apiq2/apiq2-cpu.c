// APIQ2 kernels for ggml-cpu: the dot product of an APIQ2 row with a Q8_1 row.
// Per APIQ2 block (64 codes q, scale d, offset m) and its two Q8_1 blocks (a, b: scale d8,
// int8 values u, stored sum s8 = d8*sum(u)):
//   sum = d*(d8a*sum(q*ua) + d8b*sum(q*ub)) + m*(s8a + s8b)
#define GGML_COMMON_DECL_C
#include "ggml-common.h"

#include "apiq2.h"

#include "ggml-impl.h"
#include "simd-mappings.h"

#include <assert.h>
#include <stdlib.h>
#include <string.h>

#if defined(__AVX2__)
#include <immintrin.h>
#elif defined(__ARM_NEON) && defined(__aarch64__)
#include <arm_neon.h>
#endif

#define APIQ2_FP16(x) GGML_CPU_FP16_TO_FP32(x)

static inline int apiq2_code(const block_apiq2 * b, int j) {
    return (b->qs[j / 4] >> (2 * (j % 4))) & 3;
}

void apiq2_quantize_row(const float * x, void * y, int64_t k) {
    apiq2_quantize_row_ref(x, (block_apiq2 *) y, k);
}

void apiq2_vec_dot_q8_1_generic(int n, float * s, size_t bs, const void * vx, size_t bx, const void * vy, size_t by, int nrc) {
    assert(n % QK_APIQ2 == 0);
    assert(nrc == 1);
    (void) bs; (void) bx; (void) by; (void) nrc;

    const block_apiq2 * x = (const block_apiq2 *) vx;
    const block_q8_1  * y = (const block_q8_1  *) vy;
    const int nb = n / QK_APIQ2;

    float sumf = 0.0f;
    for (int i = 0; i < nb; i++) {
        const block_q8_1 * ya = &y[2 * i];
        const block_q8_1 * yb = &y[2 * i + 1];
        int sa = 0, sb = 0;
        for (int j = 0; j < QK8_1; j++) {
            sa += apiq2_code(&x[i], j) * ya->qs[j];
            sb += apiq2_code(&x[i], QK8_1 + j) * yb->qs[j];
        }
        const float d = APIQ2_FP16(x[i].d);
        const float m = APIQ2_FP16(x[i].m);
        sumf += d * (APIQ2_FP16(ya->d) * (float) sa + APIQ2_FP16(yb->d) * (float) sb)
              + m * (APIQ2_FP16(ya->s) + APIQ2_FP16(yb->s));
    }
    *s = sumf;
}

#if defined(__AVX2__)

static inline float apiq2_hsum_ps(__m256 v) {
    __m128 r = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    r = _mm_add_ps(r, _mm_movehl_ps(r, r));
    r = _mm_add_ss(r, _mm_movehdup_ps(r));
    return _mm_cvtss_f32(r);
}

static inline __m256 apiq2_madd_ps(__m256 a, __m256 b, __m256 c) {
#if defined(__FMA__)
    return _mm256_fmadd_ps(a, b, c);
#else
    return _mm256_add_ps(_mm256_mul_ps(a, b), c);
#endif
}

// Codes of 32 elements (qs bytes picked by `pick`) as unsigned bytes in element order. Each
// 32-bit word first holds 4 qs bytes and is shifted by 2*word, which leaves the codes of a
// 4x4 block transposed (position 4g+k holds element 4k+g); `transpose` puts them back.
static inline __m256i apiq2_codes32(__m256i qs2, __m256i pick, __m256i shifts, __m256i transpose, __m256i m3) {
    __m256i c = _mm256_shuffle_epi8(qs2, pick);
    c = _mm256_and_si256(_mm256_srlv_epi32(c, shifts), m3);
    return _mm256_shuffle_epi8(c, transpose);
}

static void apiq2_vec_dot_q8_1_avx2(int n, float * s, const void * vx, const void * vy) {
    const block_apiq2 * x = (const block_apiq2 *) vx;
    const block_q8_1  * y = (const block_q8_1  *) vy;
    const int nb = n / QK_APIQ2;

    const __m256i pick_a = _mm256_setr_epi8(0, 1, 2, 3, 0, 1, 2, 3, 0, 1, 2, 3, 0, 1, 2, 3,
                                            4, 5, 6, 7, 4, 5, 6, 7, 4, 5, 6, 7, 4, 5, 6, 7);
    const __m256i pick_b = _mm256_add_epi8(pick_a, _mm256_set1_epi8(8));
    const __m256i shifts = _mm256_setr_epi32(0, 2, 4, 6, 0, 2, 4, 6);
    const __m256i transpose = _mm256_setr_epi8(0, 4, 8, 12, 1, 5, 9, 13, 2, 6, 10, 14, 3, 7, 11, 15,
                                               0, 4, 8, 12, 1, 5, 9, 13, 2, 6, 10, 14, 3, 7, 11, 15);
    const __m256i m3 = _mm256_set1_epi8(3);
    const __m256i ones = _mm256_set1_epi16(1);

    __m256 acc = _mm256_setzero_ps();
    float summ = 0.0f;
    for (int i = 0; i < nb; i++) {
        const block_q8_1 * ya = &y[2 * i];
        const block_q8_1 * yb = &y[2 * i + 1];
        const __m256i qs2 = _mm256_broadcastsi128_si256(_mm_loadu_si128((const __m128i *) x[i].qs));
        const __m256i ca = apiq2_codes32(qs2, pick_a, shifts, transpose, m3);
        const __m256i cb = apiq2_codes32(qs2, pick_b, shifts, transpose, m3);
        // codes <= 3 and |int8| <= 128: the pair sums of maddubs cannot saturate.
        const __m256i pa = _mm256_madd_epi16(_mm256_maddubs_epi16(ca, _mm256_loadu_si256((const __m256i *) ya->qs)), ones);
        const __m256i pb = _mm256_madd_epi16(_mm256_maddubs_epi16(cb, _mm256_loadu_si256((const __m256i *) yb->qs)), ones);
        const float d = APIQ2_FP16(x[i].d);
        acc = apiq2_madd_ps(_mm256_set1_ps(d * APIQ2_FP16(ya->d)), _mm256_cvtepi32_ps(pa), acc);
        acc = apiq2_madd_ps(_mm256_set1_ps(d * APIQ2_FP16(yb->d)), _mm256_cvtepi32_ps(pb), acc);
        summ += APIQ2_FP16(x[i].m) * (APIQ2_FP16(ya->s) + APIQ2_FP16(yb->s));
    }
    *s = apiq2_hsum_ps(acc) + summ;
}

#elif defined(__ARM_NEON) && defined(__aarch64__)

// Integer dot of 16 byte pairs into 4 lanes; lanes 0-1 sum bytes 0-7, lanes 2-3 bytes 8-15.
static inline int32x4_t apiq2_dot(int32x4_t acc, int8x16_t a, int8x16_t b) {
#if defined(__ARM_FEATURE_DOTPROD)
    return vdotq_s32(acc, a, b);
#else
    const int32x4_t lo = vpaddlq_s16(vmull_s8(vget_low_s8(a), vget_low_s8(b)));
    const int32x4_t hi = vpaddlq_s16(vmull_s8(vget_high_s8(a), vget_high_s8(b)));
    return vaddq_s32(acc, vpaddq_s32(lo, hi));
#endif
}

// Codes stay in shift order (vector k holds the codes of elements 4b+k), and vld4 splits the
// activations the same way, so no shuffle is needed.
static void apiq2_vec_dot_q8_1_neon(int n, float * s, const void * vx, const void * vy) {
    const block_apiq2 * x = (const block_apiq2 *) vx;
    const block_q8_1  * y = (const block_q8_1  *) vy;
    const int nb = n / QK_APIQ2;
    const uint8x16_t m3 = vdupq_n_u8(3);

    float32x4_t acc = vdupq_n_f32(0.0f);
    float summ = 0.0f;
    for (int i = 0; i < nb; i++) {
        const block_q8_1 * ya = &y[2 * i];
        const block_q8_1 * yb = &y[2 * i + 1];
        const uint8x16_t qs = vld1q_u8(x[i].qs);
        const int8x8x4_t ua = vld4_s8(ya->qs);
        const int8x8x4_t ub = vld4_s8(yb->qs);

        int32x4_t sum = vdupq_n_s32(0);
        sum = apiq2_dot(sum, vreinterpretq_s8_u8(vandq_u8(qs, m3)), vcombine_s8(ua.val[0], ub.val[0]));
        sum = apiq2_dot(sum, vreinterpretq_s8_u8(vandq_u8(vshrq_n_u8(qs, 2), m3)), vcombine_s8(ua.val[1], ub.val[1]));
        sum = apiq2_dot(sum, vreinterpretq_s8_u8(vandq_u8(vshrq_n_u8(qs, 4), m3)), vcombine_s8(ua.val[2], ub.val[2]));
        sum = apiq2_dot(sum, vreinterpretq_s8_u8(vshrq_n_u8(qs, 6)), vcombine_s8(ua.val[3], ub.val[3]));

        const float d = APIQ2_FP16(x[i].d);
        const float da = d * APIQ2_FP16(ya->d);
        const float db = d * APIQ2_FP16(yb->d);
        const float32x4_t scale = {da, da, db, db};
        acc = vmlaq_f32(acc, vcvtq_f32_s32(sum), scale);
        summ += APIQ2_FP16(x[i].m) * (APIQ2_FP16(ya->s) + APIQ2_FP16(yb->s));
    }
    *s = vaddvq_f32(acc) + summ;
}

#endif

// GGML_APIQ2_KERNEL=generic selects the portable kernel (for tests and speed comparisons).
static int apiq2_use_generic = -1;

int apiq2_vec_dot_generic_forced(void) {
    if (apiq2_use_generic < 0) {
        const char * v = getenv("GGML_APIQ2_KERNEL");
        apiq2_use_generic = v != NULL && strcmp(v, "generic") == 0;
    }
    return apiq2_use_generic;
}

const char * apiq2_vec_dot_kernel(void) {
#if defined(__AVX2__)
    return apiq2_vec_dot_generic_forced() ? "generic" : "avx2";
#elif defined(__ARM_NEON) && defined(__aarch64__)
    return apiq2_vec_dot_generic_forced() ? "generic" : "neon";
#else
    return "generic";
#endif
}

void apiq2_vec_dot_q8_1(int n, float * s, size_t bs, const void * vx, size_t bx, const void * vy, size_t by, int nrc) {
    assert(n % QK_APIQ2 == 0);
    assert(nrc == 1);
#if defined(__AVX2__)
    if (!apiq2_vec_dot_generic_forced()) {
        apiq2_vec_dot_q8_1_avx2(n, s, vx, vy);
        return;
    }
#elif defined(__ARM_NEON) && defined(__aarch64__)
    if (!apiq2_vec_dot_generic_forced()) {
        apiq2_vec_dot_q8_1_neon(n, s, vx, vy);
        return;
    }
#endif
    apiq2_vec_dot_q8_1_generic(n, s, bs, vx, bx, vy, by, nrc);
}
