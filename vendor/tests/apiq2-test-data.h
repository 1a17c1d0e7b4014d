// What the APIQ2 tests share (test-apiq2.c on the CPU, test-apiq2-cuda.c on CUDA): weights
// shaped like calibrated ones and activations with outliers, from a fixed xorshift64* stream,
// and the error bound of Q8_1 activations. Include after ggml.h.
#pragma once

#include <math.h>
#include <stdint.h>

#include "ggml-apiq2/apiq2.h"

static uint64_t rng_state = 0x9e3779b97f4a7c15ull;

static double urand(void) { // xorshift64*, uniform in [0, 1)
    rng_state ^= rng_state >> 12;
    rng_state ^= rng_state << 25;
    rng_state ^= rng_state >> 27;
    return (double) ((rng_state * 0x2545f4914f6cdd1dull) >> 11) / 9007199254740992.0;
}

static float frand(float lo, float hi) { return lo + (hi - lo) * (float) urand(); }

// Mostly small weights, some outlier groups, some groups all positive (offset above zero), some
// constant (d = 0).
static void fill_weights(float * w, int64_t n) {
    for (int64_t g = 0; g < n / QK_APIQ2; g++) {
        const double kind = urand();
        const float base = kind < 0.1 ? frand(0.5f, 2.0f) : 0.0f;
        const float amp = kind < 0.2 ? 8.0f : 1.0f;
        for (int j = 0; j < QK_APIQ2; j++) {
            w[g * QK_APIQ2 + j] = kind > 0.97 ? 0.25f : base + amp * frand(-1.0f, 1.0f);
        }
    }
}

// Activations in +-2 with an outlier of up to +-40 every 97 values.
static void fill_acts(float * x, int64_t n) {
    for (int64_t i = 0; i < n; i++) {
        x[i] = (i % 97 == 5) ? frand(-40.0f, 40.0f) : frand(-2.0f, 2.0f);
    }
}

// The exact product (double) of one row of dequantized weights `wr` (whose blocks are `row`) and
// the activations `xc`, and the error that rounding the activations to Q8_1 allows around it:
// per 32 values the int8 grid (d8/2), the f16 rounding of d8 (127*d8*2^-11) and the f16-rounded
// stored sum seen through the offset m. `mag` receives sum |w*x|.
static double q8_1_bound(const float * wr, const float * xc, const block_apiq2 * row, int k, double * dot,
                         double * mag) {
    double bound = 0.0;
    *dot = 0.0;
    *mag = 0.0;
    for (int blk = 0; blk < k / QK8_1; blk++) {
        double amax = 0.0, wabs = 0.0;
        for (int j = 0; j < QK8_1; j++) {
            const int e = blk * QK8_1 + j;
            amax = fmax(amax, fabs(xc[e]));
            *dot += (double) wr[e] * xc[e];
            wabs += fabs(wr[e]);
            *mag += fabs((double) wr[e] * xc[e]);
        }
        const double d8 = amax / 127.0;
        const double mabs = fabs(ggml_fp16_to_fp32(row[(blk * QK8_1) / QK_APIQ2].m));
        bound += wabs * d8 * (0.5 + 127.0 / 2048.0) + mabs * amax * QK8_1 / 2048.0;
    }
    return bound;
}
