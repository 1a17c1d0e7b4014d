// ggml-level checks of APIQ2 on the CPU backend (in the spirit of upstream test-backend-ops):
//  1. the kernel in use (AVX2/NEON/generic) against the same sum in double, per row;
//  2. MUL_MAT of APIQ2 x F32 against F32 math on the dequantized weights, n = 1..33 columns,
//     k = 64*j; the error must stay inside the bound that Q8_1 rounding of the activations allows;
//  3. GET_ROWS returns the dequantized rows bit for bit;
//  4. MUL_MAT with the weights in the CPU_REPACK buffer (16 interleaved rows, int16 activations,
//     the path llama.cpp takes by default), within the bound of int16 activation rounding.
// GGML_APIQ2_KERNEL=generic runs the same checks on the portable kernels.
#define GGML_COMMON_DECL_C
#include "ggml-common.h"
#include "ggml-apiq2/apiq2.h"

#include "ggml.h"
#include "ggml-alloc.h"
#include "ggml-backend.h"
#include "ggml-cpu.h"

#include "apiq2-test-data.h"

#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int failures = 0;

static void check(int ok, const char * what, int k, int n, int row, double got, double want, double bound) {
    if (!ok) {
        failures++;
        if (failures < 20) {
            fprintf(stderr, "FAIL %s k=%d n=%d row=%d: got %.9g want %.9g (|diff| %.3g > bound %.3g)\n",
                    what, k, n, row, got, want, fabs(got - want), bound);
        }
    }
}

// 1. One row dot product, kernel vs the exact sum of its own formula in double.
static void test_vec_dot(int k) {
    const int64_t nb = k / QK_APIQ2;
    float * w = malloc(sizeof(float) * k);
    float * x = malloc(sizeof(float) * k);
    block_apiq2 * qw = malloc(sizeof(block_apiq2) * nb);
    block_q8_1 * qx = malloc(sizeof(block_q8_1) * 2 * nb);
    fill_weights(w, k);
    fill_acts(x, k);
    ggml_quantize_chunk(GGML_TYPE_APIQ2, w, qw, 0, 1, k, NULL);
    ggml_get_type_traits_cpu(GGML_TYPE_Q8_1)->from_float(x, qx, k);

    double want = 0.0, mag = 0.0;
    for (int64_t i = 0; i < nb; i++) {
        const double d = ggml_fp16_to_fp32(qw[i].d), m = ggml_fp16_to_fp32(qw[i].m);
        for (int h = 0; h < 2; h++) {
            const block_q8_1 * y = &qx[2 * i + h];
            long sum = 0, asum = 0;
            for (int j = 0; j < QK8_1; j++) {
                const int q = (qw[i].qs[(h * QK8_1 + j) / 4] >> (2 * (j % 4))) & 3;
                sum += q * y->qs[j];
                asum += labs((long) q * y->qs[j]);
            }
            const double d8 = ggml_fp16_to_fp32(y->d), s8 = ggml_fp16_to_fp32(y->s);
            want += d * d8 * (double) sum + m * s8;
            mag += fabs(d * d8) * (double) asum + fabs(m * s8);
        }
    }
    float got = 0.0f, got_generic = 0.0f;
    apiq2_vec_dot_q8_1(k, &got, 0, qw, 0, qx, 0, 1);
    apiq2_vec_dot_q8_1_generic(k, &got_generic, 0, qw, 0, qx, 0, 1);
    const double bound = 4e-6 * mag + 1e-6;
    check(fabs(got - want) <= bound, "vec_dot", k, 1, 0, got, want, bound);
    check(fabs(got_generic - want) <= bound, "vec_dot_generic", k, 1, 0, got_generic, want, bound);
    free(w); free(x); free(qw); free(qx);
}

// 2 and 3 through a ggml graph on the CPU backend.
static void test_graph(int k, int n, int m, int n_threads) {
    const size_t mem = (size_t) (k * (m + n) * 8 + m * n * 8 + k * m * 8) + 16 * 1024 * 1024;
    struct ggml_init_params ip = { mem, NULL, false };
    struct ggml_context * ctx = ggml_init(ip);

    float * w = malloc(sizeof(float) * k * m);
    fill_weights(w, (int64_t) k * m);
    struct ggml_tensor * a = ggml_new_tensor_2d(ctx, GGML_TYPE_APIQ2, k, m);
    ggml_quantize_chunk(GGML_TYPE_APIQ2, w, a->data, 0, m, k, NULL);
    float * wd = malloc(sizeof(float) * k * m); // the weights as the file holds them
    ggml_get_type_traits(GGML_TYPE_APIQ2)->to_float(a->data, wd, (int64_t) k * m);

    struct ggml_tensor * b = ggml_new_tensor_2d(ctx, GGML_TYPE_F32, k, n);
    fill_acts((float *) b->data, (int64_t) k * n);
    struct ggml_tensor * c = ggml_mul_mat(ctx, a, b);

    struct ggml_tensor * idx = ggml_new_tensor_1d(ctx, GGML_TYPE_I32, n);
    for (int i = 0; i < n; i++) {
        ((int32_t *) idx->data)[i] = (int32_t) (urand() * m);
    }
    struct ggml_tensor * rows = ggml_get_rows(ctx, a, idx);

    struct ggml_cgraph * gf = ggml_new_graph(ctx);
    ggml_build_forward_expand(gf, c);
    ggml_build_forward_expand(gf, rows);
    if (ggml_graph_compute_with_ctx(ctx, gf, n_threads) != GGML_STATUS_SUCCESS) {
        fprintf(stderr, "FAIL graph compute k=%d n=%d\n", k, n);
        failures++;
    }

    const float * bx = (const float *) b->data;
    for (int col = 0; col < n; col++) {
        const float * xc = bx + (size_t) col * k;
        for (int r = 0; r < m; r++) {
            const float * wr = wd + (size_t) r * k;
            double want, mag;
            double bound = q8_1_bound(wr, xc, (const block_apiq2 *) a->data + (size_t) r * (k / QK_APIQ2), k, &want, &mag);
            bound = bound * 1.001 + 1e-5;
            const double got = ((const float *) c->data)[(size_t) col * m + r];
            check(fabs(got - want) <= bound, "mul_mat", k, n, r, got, want, bound);
        }
        const int32_t src = ((const int32_t *) idx->data)[col];
        const float * got_row = (const float *) ((const char *) rows->data + (size_t) col * rows->nb[1]);
        if (memcmp(got_row, wd + (size_t) src * k, sizeof(float) * k) != 0) {
            failures++;
            fprintf(stderr, "FAIL get_rows k=%d row=%d\n", k, src);
        }
    }
    free(w); free(wd);
    ggml_free(ctx);
}

// 4. The weights in the CPU_REPACK buffer, computed by the CPU backend.
static ggml_backend_buffer_type_t repack_buft(ggml_backend_t cpu) {
    ggml_backend_dev_t dev = ggml_backend_get_device(cpu);
    ggml_backend_reg_t reg = ggml_backend_dev_backend_reg(dev);
    typedef ggml_backend_buffer_type_t * (*get_extra_t)(ggml_backend_dev_t);
    get_extra_t get_extra = (get_extra_t) ggml_backend_reg_get_proc_address(reg, "ggml_backend_dev_get_extra_bufts");
    for (ggml_backend_buffer_type_t * b = get_extra ? get_extra(dev) : NULL; b && *b; b++) {
        if (strcmp(ggml_backend_buft_name(*b), "CPU_REPACK") == 0) {
            return *b;
        }
    }
    return NULL;
}

// Rounding to the int16 grid leaves an error uniform in +-d/2 per activation, so the squared
// output errors must add up to about sum(w^2 d^2 / 12); the worst-case bound alone would not
// notice, for example, truncation instead of rounding.
static double repack_err2 = 0.0, repack_var = 0.0;

static void test_repack(ggml_backend_t cpu, ggml_backend_buffer_type_t buft, int k, int n, int m) {
    struct ggml_init_params ip = { 4 * ggml_tensor_overhead() + ggml_graph_overhead(), NULL, true };
    struct ggml_context * ctx_w = ggml_init(ip);
    struct ggml_context * ctx = ggml_init(ip);
    struct ggml_tensor * a = ggml_new_tensor_2d(ctx_w, GGML_TYPE_APIQ2, k, m);
    struct ggml_tensor * b = ggml_new_tensor_2d(ctx, GGML_TYPE_F32, k, n);
    struct ggml_tensor * c = ggml_mul_mat(ctx, a, b);
    ggml_backend_buffer_t bw = ggml_backend_alloc_ctx_tensors_from_buft(ctx_w, buft);
    ggml_backend_buffer_t bx = ggml_backend_alloc_ctx_tensors(ctx, cpu);

    float * w = malloc(sizeof(float) * k * m);
    fill_weights(w, (int64_t) k * m);
    void * qw = malloc(ggml_row_size(GGML_TYPE_APIQ2, k) * m);
    ggml_quantize_chunk(GGML_TYPE_APIQ2, w, qw, 0, m, k, NULL);
    float * wd = malloc(sizeof(float) * k * m);
    ggml_get_type_traits(GGML_TYPE_APIQ2)->to_float(qw, wd, (int64_t) k * m);
    ggml_backend_tensor_set(a, qw, 0, ggml_nbytes(a)); // repacks
    float * x = malloc(sizeof(float) * k * n);
    fill_acts(x, (int64_t) k * n);
    ggml_backend_tensor_set(b, x, 0, ggml_nbytes(b));

    struct ggml_cgraph * gf = ggml_new_graph(ctx);
    ggml_build_forward_expand(gf, c);
    if (ggml_backend_graph_compute(cpu, gf) != GGML_STATUS_SUCCESS) {
        fprintf(stderr, "FAIL repack graph compute k=%d n=%d\n", k, n);
        failures++;
    }
    float * out = malloc(sizeof(float) * m * n);
    ggml_backend_tensor_get(c, out, 0, ggml_nbytes(c));
    for (int col = 0; col < n; col++) {
        const float * xc = x + (size_t) col * k;
        for (int r = 0; r < m; r++) {
            const float * wr = wd + (size_t) r * k;
            double want = 0.0, bound = 0.0, mag = 0.0;
            for (int blk = 0; blk < k / QK_APIQ2; blk++) {
                double amax = 0.0, wabs = 0.0, w2 = 0.0;
                for (int j = 0; j < QK_APIQ2; j++) {
                    const int e = blk * QK_APIQ2 + j;
                    amax = fmax(amax, fabs(xc[e]));
                    want += (double) wr[e] * xc[e];
                    wabs += fabs(wr[e]);
                    w2 += (double) wr[e] * wr[e];
                    mag += fabs((double) wr[e] * xc[e]);
                }
                // int16 rounding of the activations (grid amax / 32639, see apiq2-x16.h)
                bound += wabs * amax / 32639.0 * 0.5;
                repack_var += w2 * (amax / 32639.0) * (amax / 32639.0) / 12.0;
            }
            const double err = out[(size_t) col * m + r] - want;
            repack_err2 += err * err;
            bound = bound * 1.001 + 4e-6 * mag + 1e-5; // plus f32 accumulation
            check(fabs(out[(size_t) col * m + r] - want) <= bound, "mul_mat_repack", k, n, r, out[(size_t) col * m + r], want, bound);
        }
    }
    free(w); free(qw); free(wd); free(x); free(out);
    ggml_backend_buffer_free(bw);
    ggml_backend_buffer_free(bx);
    ggml_free(ctx_w);
    ggml_free(ctx);
}

int main(void) {
    ggml_cpu_init();
    printf("apiq2 vec_dot kernel: %s; repack kernel: %s\n", apiq2_vec_dot_kernel(), apiq2_repack_kernel());
    int cases = 0;
    for (int j = 1; j <= 64; j++) {
        test_vec_dot(64 * j);
        cases++;
    }
    test_vec_dot(4096);
    test_vec_dot(11008);
    cases += 2;
    const int ks[] = {64, 128, 192, 320, 576, 1024, 1536};
    for (size_t ik = 0; ik < sizeof(ks) / sizeof(ks[0]); ik++) {
        for (int n = 1; n <= 33; n++) {
            test_graph(ks[ik], n, 19, 1 + (n % 3));
            cases++;
        }
    }
    ggml_backend_t cpu = ggml_backend_cpu_init();
    ggml_backend_cpu_set_n_threads(cpu, 2);
    ggml_backend_buffer_type_t buft = repack_buft(cpu);
    if (buft == NULL) {
        fprintf(stderr, "FAIL no CPU_REPACK buffer type\n");
        failures++;
    } else {
        for (size_t ik = 0; ik < sizeof(ks) / sizeof(ks[0]); ik++) {
            for (int n = 1; n <= 33; n++) {
                test_repack(cpu, buft, ks[ik], n, 32 + 16 * (n % 2)); // 2 or 3 groups of 16 rows
                cases++;
            }
        }
    }
    ggml_backend_free(cpu);
    const double ratio = repack_err2 / repack_var;
    printf("CPU_REPACK squared error / expected from int16 rounding: %.3f\n", ratio);
    if (!(ratio > 0.5 && ratio < 1.5)) {
        fprintf(stderr, "FAIL int16 rounding error statistics: ratio %.3f outside (0.5, 1.5)\n", ratio);
        failures++;
    }
    if (failures) {
        printf("FAILED: %d mismatches in %d cases\n", failures, cases);
        return 1;
    }
    printf("OK: %d cases (vec_dot vs double; MUL_MAT n=1..33 within the Q8_1 bound, and through CPU_REPACK within the int16 bound; GET_ROWS exact)\n", cases);
    return 0;
}
