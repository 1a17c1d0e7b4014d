// APIQ2 conversions for ggml-base: reference quantizer, dequantizer, row checks.
#include "apiq2.h"

#include "ggml-impl.h"

#include <math.h>
#include <stdio.h>
#include <string.h>

// Plain asymmetric round-to-nearest over the 4 levels, for F32 -> APIQ2 conversions inside
// ggml (llama-quantize, tests). ApiQ files carry learned d and m and never go through this.
void apiq2_quantize_row_ref(const float * x, block_apiq2 * y, int64_t k) {
    const int64_t nb = k / QK_APIQ2;
    for (int64_t i = 0; i < nb; i++) {
        const float * xb = x + i * QK_APIQ2;
        float lo = xb[0], hi = xb[0];
        for (int j = 1; j < QK_APIQ2; j++) {
            lo = fminf(lo, xb[j]);
            hi = fmaxf(hi, xb[j]);
        }
        y[i].d = GGML_FP32_TO_FP16((hi - lo) / 3.0f);
        y[i].m = GGML_FP32_TO_FP16(lo);
        // Codes against the stored (f16-rounded) d and m, so decoding picks the nearest level.
        const float d = GGML_FP16_TO_FP32(y[i].d);
        const float m = GGML_FP16_TO_FP32(y[i].m);
        const float id = d != 0.0f ? 1.0f / d : 0.0f;
        memset(y[i].qs, 0, sizeof(y[i].qs));
        for (int j = 0; j < QK_APIQ2; j++) {
            int q = (int) nearbyintf((xb[j] - m) * id);
            q = q < 0 ? 0 : q > 3 ? 3 : q;
            y[i].qs[j / 4] |= (uint8_t) (q << (2 * (j % 4)));
        }
    }
}

void apiq2_dequantize_row(const block_apiq2 * x, float * y, int64_t k) {
    const int64_t nb = k / QK_APIQ2;
    for (int64_t i = 0; i < nb; i++) {
        const float d = GGML_FP16_TO_FP32(x[i].d);
        const float m = GGML_FP16_TO_FP32(x[i].m);
        for (int j = 0; j < QK_APIQ2; j++) {
            const int q = (x[i].qs[j / 4] >> (2 * (j % 4))) & 3;
            y[i * QK_APIQ2 + j] = (float) q * d + m;
        }
    }
}

size_t apiq2_quantize(const float * src, void * dst, int64_t nrows, int64_t n_per_row, const float * imatrix) {
    (void) imatrix; // the reference quantizer has no weighted variant (like Q2_0's)
    apiq2_quantize_row_ref(src, (block_apiq2 *) dst, nrows * n_per_row);
    return (size_t) nrows * (size_t) (n_per_row / QK_APIQ2) * sizeof(block_apiq2);
}

static bool apiq2_f16_finite(uint16_t h) {
    return (h & 0x7c00) != 0x7c00;
}

bool apiq2_validate_row_data(const void * data, size_t nbytes) {
    if (nbytes % sizeof(block_apiq2) != 0) {
        fprintf(stderr, "%s: invalid size %zu for type apiq2\n", __func__, nbytes);
        return false;
    }
    const block_apiq2 * b = (const block_apiq2 *) data;
    const size_t nb = nbytes / sizeof(block_apiq2);
    for (size_t i = 0; i < nb; i++) {
        if (!apiq2_f16_finite(b[i].d) || !apiq2_f16_finite(b[i].m)) {
            fprintf(stderr, "%s: found non-finite d or m in block %zu of type apiq2\n", __func__, i);
            return false;
        }
    }
    return true;
}
