// APIQ2 on ggml's CUDA backend, checked in the manner of upstream's test-backend-ops: each graph
// runs on the GPU and on the CPU backend with the same random data, and the GPU's result must
//  1. for the kernels with int8 (Q8_1) activations - MMVQ for n <= 8 columns, MMQ above when
//     GGML_APIQ2_MMQ=1 - lie within the bound that Q8_1 rounding allows around the exact product
//     (double) of the dequantized weights and the activations; for the default path above 8
//     (dequantization to F16 + cuBLAS) agree with that product to NMSE <= 5e-4. Every output of
//     the small shapes is checked, 48 rows spread over the matrix of the large ones;
//  2. agree with the CPU backend's result within twice that bound (the CPU rounds activations to
//     Q8_1 too; NMSE, test-backend-ops' measure, is printed);
//  3. GET_ROWS: return the dequantized rows bit for bit.
// Shapes: n = 1..8 and 16..512 columns; k x m from a tile-aligned toy, SmolLM2-135M and
// Llama-2-7B (4096 x 4096, 4096 x 11008, 11008 x 4096), and rows that are no multiple of the
// tile height. Prints OK or the failures; exit status 0, 1 (failures) or 2 (no GPU backend).
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
#include <unistd.h>

static int failures = 0;

static void fail(const char * what, int k, int m, int n, const char * detail) {
    failures++;
    if (failures <= 60) {
        fprintf(stderr, "FAIL %s k=%d m=%d n=%d: %s\n", what, k, m, n, detail);
    }
}

// c = a x b on one backend: a APIQ2 (k x m, bytes qw), b (k x n) as F32 or F16.
static int run_mul_mat(ggml_backend_t be, const void * qw, int k, int m, const void * x, enum ggml_type xt, int n,
                       float * out) {
    struct ggml_init_params ip = { 8 * ggml_tensor_overhead() + ggml_graph_overhead(), NULL, true };
    struct ggml_context * ctx = ggml_init(ip);
    struct ggml_tensor * a = ggml_new_tensor_2d(ctx, GGML_TYPE_APIQ2, k, m);
    struct ggml_tensor * b = ggml_new_tensor_2d(ctx, xt, k, n);
    struct ggml_tensor * c = ggml_mul_mat(ctx, a, b);
    if (!ggml_backend_supports_op(be, c)) {
        ggml_free(ctx);
        return 0;
    }
    ggml_backend_buffer_t buf = ggml_backend_alloc_ctx_tensors(ctx, be);
    ggml_backend_tensor_set(a, qw, 0, ggml_nbytes(a));
    ggml_backend_tensor_set(b, x, 0, ggml_nbytes(b));
    struct ggml_cgraph * gf = ggml_new_graph(ctx);
    ggml_build_forward_expand(gf, c);
    const int ok = ggml_backend_graph_compute(be, gf) == GGML_STATUS_SUCCESS;
    if (ok) {
        ggml_backend_tensor_get(c, out, 0, ggml_nbytes(c));
    }
    ggml_backend_buffer_free(buf);
    ggml_free(ctx);
    return ok ? 1 : -1;
}

static int run_get_rows(ggml_backend_t be, const void * qw, int k, int m, const int32_t * idx, int n, float * out) {
    struct ggml_init_params ip = { 8 * ggml_tensor_overhead() + ggml_graph_overhead(), NULL, true };
    struct ggml_context * ctx = ggml_init(ip);
    struct ggml_tensor * a = ggml_new_tensor_2d(ctx, GGML_TYPE_APIQ2, k, m);
    struct ggml_tensor * ids = ggml_new_tensor_1d(ctx, GGML_TYPE_I32, n);
    struct ggml_tensor * rows = ggml_get_rows(ctx, a, ids);
    if (!ggml_backend_supports_op(be, rows)) {
        ggml_free(ctx);
        return 0;
    }
    ggml_backend_buffer_t buf = ggml_backend_alloc_ctx_tensors(ctx, be);
    ggml_backend_tensor_set(a, qw, 0, ggml_nbytes(a));
    ggml_backend_tensor_set(ids, idx, 0, ggml_nbytes(ids));
    struct ggml_cgraph * gf = ggml_new_graph(ctx);
    ggml_build_forward_expand(gf, rows);
    const int ok = ggml_backend_graph_compute(be, gf) == GGML_STATUS_SUCCESS;
    if (ok) {
        ggml_backend_tensor_get(rows, out, 0, ggml_nbytes(rows));
    }
    ggml_backend_buffer_free(buf);
    ggml_free(ctx);
    return ok ? 1 : -1;
}

static double nmse(const float * got, const double * want, int64_t n) {
    double err = 0.0, ref = 0.0;
    for (int64_t i = 0; i < n; i++) {
        err += (got[i] - want[i]) * (got[i] - want[i]);
        ref += want[i] * want[i];
    }
    return ref > 0.0 ? err / ref : err;
}

static double worst_nmse_cpu = 0.0, worst_nmse_exact = 0.0, worst_bound_use = 0.0;
static int cases = 0, mmq = 0;

static void test_shape(ggml_backend_t gpu, ggml_backend_t cpu, int k, int m, const int * ns, int n_ns) {
    const size_t wbytes = ggml_row_size(GGML_TYPE_APIQ2, k) * m;
    float * w = malloc(sizeof(float) * k * m);
    fill_weights(w, (int64_t) k * m);
    void * qw = malloc(wbytes);
    ggml_quantize_chunk(GGML_TYPE_APIQ2, w, qw, 0, m, k, NULL);
    ggml_get_type_traits(GGML_TYPE_APIQ2)->to_float(qw, w, (int64_t) k * m); // w = the file's values
    const block_apiq2 * blocks = (const block_apiq2 *) qw;

    // the rows checked against double: all, or 48 spread over the matrix (first and last included)
    const int n_rows = m <= 2048 ? m : 48;
    int * rows = malloc(sizeof(int) * n_rows);
    for (int i = 0; i < n_rows; i++) {
        rows[i] = n_rows == m ? i : (int) ((int64_t) i * (m - 1) / (n_rows - 1));
    }

    const int n_max = ns[n_ns - 1];
    float * x = malloc(sizeof(float) * k * n_max);
    float * got = malloc(sizeof(float) * m * n_max);
    float * ref = malloc(sizeof(float) * m * n_max);
    double * want = malloc(sizeof(double) * n_rows * n_max);
    float * got_sel = malloc(sizeof(float) * n_rows * n_max);
    char msg[256];

    for (int t = 0; t < n_ns; t++) {
        const int n = ns[t];
        fill_acts(x, (int64_t) k * n);
        cases++;
        if (run_mul_mat(gpu, qw, k, m, x, GGML_TYPE_F32, n, got) != 1) {
            fail("mul_mat (GPU)", k, m, n, "not supported or failed");
            continue;
        }
        if (run_mul_mat(cpu, qw, k, m, x, GGML_TYPE_F32, n, ref) != 1) {
            fail("mul_mat (CPU)", k, m, n, "not supported or failed");
            continue;
        }
        // 1. against the exact product: within the Q8_1 rounding bound, or by NMSE (one report a case)
        const int int8_path = n <= 8 || mmq;
        int reported = 0;
        for (int col = 0; col < n; col++) {
            const float * xc = x + (size_t) col * k;
            for (int ri = 0; ri < n_rows; ri++) {
                const int r = rows[ri];
                const float * wr = w + (size_t) r * k;
                double dot, mag;
                double bound = q8_1_bound(wr, xc, blocks + (size_t) r * (k / QK_APIQ2), k, &dot, &mag);
                bound = bound * 1.001 + 4e-6 * mag + 1e-5; // plus f32 accumulation
                want[(size_t) col * n_rows + ri] = dot;
                const float g = got[(size_t) col * m + r];
                got_sel[(size_t) col * n_rows + ri] = g;
                const double use = int8_path ? fabs(g - dot) / bound : 0.0;
                // both backends round the activations to Q8_1 (the CPU always), each within the
                // bound of the exact value, so they may differ by twice it
                const float c = ref[(size_t) col * m + r];
                if (!(fabs(g - c) <= 2.0 * bound) && !reported) {
                    reported = 1;
                    snprintf(msg, sizeof msg, "row %d col %d: GPU %.9g CPU %.9g (|diff| %.3g > 2 x bound %.3g)", r,
                             col, g, c, fabs(g - c), bound);
                    fail("mul_mat vs CPU", k, m, n, msg);
                }
                if (use > worst_bound_use) {
                    worst_bound_use = use;
                }
                if (!(use <= 1.0) && !reported) {
                    reported = 1;
                    snprintf(msg, sizeof msg, "row %d col %d: got %.9g want %.9g (|diff| %.3g > bound %.3g)", r, col,
                             g, dot, fabs(g - dot), bound);
                    fail("mul_mat vs exact", k, m, n, msg);
                }
            }
        }
        if (!int8_path) {
            const double e = nmse(got_sel, want, (int64_t) n_rows * n);
            if (e > worst_nmse_exact) {
                worst_nmse_exact = e;
            }
            if (!(e <= 5e-4)) {
                snprintf(msg, sizeof msg, "NMSE to the exact product %.3g > 5e-4", e);
                fail("mul_mat vs exact", k, m, n, msg);
            }
        }
        // 2. against the CPU backend, all outputs (reported; the check is the bound above)
        double err = 0.0, sq = 0.0;
        for (int64_t i = 0; i < (int64_t) m * n; i++) {
            err += ((double) got[i] - ref[i]) * ((double) got[i] - ref[i]);
            sq += (double) ref[i] * ref[i];
        }
        const double e_cpu = err / sq;
        if (e_cpu > worst_nmse_cpu) {
            worst_nmse_cpu = e_cpu;
        }
    }

    // 3. GET_ROWS, bit for bit
    const int n_idx = 37;
    int32_t idx[37];
    for (int i = 0; i < n_idx; i++) {
        idx[i] = i == 0 ? 0 : i == 1 ? m - 1 : (int32_t) (urand() * m);
    }
    float * grows = malloc(sizeof(float) * k * n_idx);
    if (run_get_rows(gpu, qw, k, m, idx, n_idx, grows) != 1) {
        fail("get_rows", k, m, n_idx, "not supported or failed");
    } else {
        for (int i = 0; i < n_idx; i++) {
            if (memcmp(grows + (size_t) i * k, w + (size_t) idx[i] * k, sizeof(float) * k) != 0) {
                snprintf(msg, sizeof msg, "row %d differs from the dequantized row", idx[i]);
                fail("get_rows", k, m, n_idx, msg);
            }
        }
    }

    free(grows); free(w); free(qw); free(rows); free(x); free(got); free(ref); free(want); free(got_sel);
}

int main(void) {
    rng_state = 0x2545f4914f6cdd1dull; // the stream of the measurements in the README
    ggml_backend_dev_t dev = ggml_backend_dev_by_type(GGML_BACKEND_DEVICE_TYPE_GPU);
    if (dev == NULL) {
        fprintf(stderr, "no GPU backend in this ggml build\n");
        return 2;
    }
    ggml_backend_t gpu = ggml_backend_dev_init(dev, NULL);
    ggml_backend_t cpu = ggml_backend_init_by_type(GGML_BACKEND_DEVICE_TYPE_CPU, NULL);
    const long nproc = sysconf(_SC_NPROCESSORS_ONLN);
    ggml_backend_cpu_set_n_threads(cpu, nproc > 0 ? (int) nproc : 4);
    const char * env = getenv("GGML_APIQ2_MMQ");
    mmq = env != NULL && atoi(env) != 0;
    printf("apiq2 on %s (%s) against the CPU backend; n > 8: %s\n", ggml_backend_dev_name(dev),
           ggml_backend_dev_description(dev), mmq ? "MMQ (int8 activations)" : "dequantize + cuBLAS");

    static const int all_n[] = { 1, 2, 3, 4, 5, 6, 7, 8, 16, 32, 64, 128, 256, 512 };
    static const int few_n[] = { 1, 2, 8, 16, 64, 512 };
    const int n_all = sizeof(all_n) / sizeof(all_n[0]), n_few = sizeof(few_n) / sizeof(few_n[0]);
    // k x m: tile-aligned, rows below and between tile heights, SmolLM2-135M, Llama-2-7B
    static const int shapes[][2] = {
        { 256, 128 }, { 64, 1 }, { 320, 96 }, { 1344, 1000 }, { 576, 1536 }, { 1536, 576 },
        { 4096, 4096 }, { 4096, 11008 }, { 11008, 4096 },
    };
    for (size_t s = 0; s < sizeof(shapes) / sizeof(shapes[0]); s++) {
        const int k = shapes[s][0], m = shapes[s][1];
        const int big = (int64_t) k * m > 8 * 1024 * 1024;
        test_shape(gpu, cpu, k, m, big ? few_n : all_n, big ? n_few : n_all);
        printf("k=%5d m=%5d: %s\n", k, m, failures ? "failures so far" : "ok");
        fflush(stdout);
    }
    printf("%d MUL_MAT cases: worst |error|/bound (int8 paths) %.3f, worst NMSE to exact (cuBLAS path) %.2e, "
           "worst NMSE to CPU %.2e\n",
           cases, worst_bound_use, worst_nmse_exact, worst_nmse_cpu);
    ggml_backend_free(gpu);
    ggml_backend_free(cpu);
    if (failures) {
        printf("FAILED: %d failures\n", failures);
        return 1;
    }
    printf("OK\n");
    return 0;
}
