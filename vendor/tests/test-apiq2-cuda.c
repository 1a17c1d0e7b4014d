// APIQ2 on ggml's CUDA backend, checked in the manner of upstream's test-backend-ops: each graph
// runs on the GPU and on the CPU backend with the same random data, and the GPU's result must
//  1. for the kernels with int8 (Q8_1) activations - MMVQ for n <= 8 columns, MMQ above when
//     GGML_APIQ2_MMQ=1 - lie within the bound that Q8_1 rounding allows around the exact product
//     (double) of the dequantized weights and the activations; for the default path above 8
//     (dequantization to F16 + cuBLAS) agree with that product to NMSE <= 5e-4. Every output of
//     the small shapes is checked, 48 rows spread over the matrix of the large ones;
//  2. agree with the CPU backend's result within twice that bound (the CPU rounds activations to
//     Q8_1 too; NMSE, test-backend-ops' measure, is printed);
//  3. GET_ROWS: return the dequantized rows bit for bit;
//  4. batch 1's fused feed-forward, glu(gate(x) + bg, up(x) + bu) in one kernel launch (SwiGLU
//     without biases, GeGLU with): agree with the GLU applied in double to the same backend's
//     separate products, which run the same per-row sums, to float rounding of the GLU.
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

// The feed-forward's gate and up products of one column, either as out_a = glu(gate + bg, up + bu)
// (ggml-cuda fuses the graph into one launch) or separately (out_a = gate + bg, out_b = up + bu).
static int run_ffn(ggml_backend_t be, const void * qg, const void * qu, int k, int m, const float * x,
                   const float * bg, const float * bu, int geglu, int fused, float * out_a, float * out_b) {
    struct ggml_init_params ip = { 16 * ggml_tensor_overhead() + ggml_graph_overhead(), NULL, true };
    struct ggml_context * ctx = ggml_init(ip);
    struct ggml_tensor * ag = ggml_new_tensor_2d(ctx, GGML_TYPE_APIQ2, k, m);
    struct ggml_tensor * au = ggml_new_tensor_2d(ctx, GGML_TYPE_APIQ2, k, m);
    struct ggml_tensor * b = ggml_new_tensor_2d(ctx, GGML_TYPE_F32, k, 1);
    struct ggml_tensor * tbg = bg ? ggml_new_tensor_1d(ctx, GGML_TYPE_F32, m) : NULL;
    struct ggml_tensor * tbu = bu ? ggml_new_tensor_1d(ctx, GGML_TYPE_F32, m) : NULL;
    struct ggml_tensor * g = ggml_mul_mat(ctx, ag, b);
    struct ggml_tensor * u = ggml_mul_mat(ctx, au, b);
    if (tbg) {
        g = ggml_add(ctx, g, tbg);
        u = ggml_add(ctx, u, tbu);
    }
    struct ggml_tensor * out = fused ? (geglu ? ggml_geglu_split(ctx, g, u) : ggml_swiglu_split(ctx, g, u)) : NULL;
    ggml_backend_buffer_t buf = ggml_backend_alloc_ctx_tensors(ctx, be);
    ggml_backend_tensor_set(ag, qg, 0, ggml_nbytes(ag));
    ggml_backend_tensor_set(au, qu, 0, ggml_nbytes(au));
    ggml_backend_tensor_set(b, x, 0, ggml_nbytes(b));
    if (tbg) {
        ggml_backend_tensor_set(tbg, bg, 0, ggml_nbytes(tbg));
        ggml_backend_tensor_set(tbu, bu, 0, ggml_nbytes(tbu));
    }
    struct ggml_cgraph * gf = ggml_new_graph(ctx);
    if (fused) {
        ggml_build_forward_expand(gf, out);
    } else {
        ggml_build_forward_expand(gf, g);
        ggml_build_forward_expand(gf, u);
    }
    const int ok = ggml_backend_graph_compute(be, gf) == GGML_STATUS_SUCCESS;
    if (ok && fused) {
        ggml_backend_tensor_get(out, out_a, 0, ggml_nbytes(out));
    } else if (ok) {
        ggml_backend_tensor_get(g, out_a, 0, ggml_nbytes(g));
        ggml_backend_tensor_get(u, out_b, 0, ggml_nbytes(u));
    }
    ggml_backend_buffer_free(buf);
    ggml_free(ctx);
    return ok ? 1 : -1;
}

static int ffn_cases = 0;
static double worst_ffn = 0.0;

static void test_ffn(ggml_backend_t gpu, int k, int m, int geglu) {
    const size_t wbytes = ggml_row_size(GGML_TYPE_APIQ2, k) * m;
    float * w = malloc(sizeof(float) * k * m);
    void * qg = malloc(wbytes), * qu = malloc(wbytes);
    fill_weights(w, (int64_t) k * m);
    ggml_quantize_chunk(GGML_TYPE_APIQ2, w, qg, 0, m, k, NULL);
    fill_weights(w, (int64_t) k * m);
    ggml_quantize_chunk(GGML_TYPE_APIQ2, w, qu, 0, m, k, NULL);
    float * x = malloc(sizeof(float) * k), * bg = malloc(sizeof(float) * m), * bu = malloc(sizeof(float) * m);
    fill_acts(x, k);
    for (int r = 0; r < m; r++) {
        bg[r] = frand(-0.5f, 0.5f);
        bu[r] = frand(-0.5f, 0.5f);
    }
    float * got = malloc(sizeof(float) * m), * g = malloc(sizeof(float) * m), * u = malloc(sizeof(float) * m);
    // GeGLU with biases, SwiGLU without
    const float * gate_bias = geglu ? bg : NULL, * up_bias = geglu ? bu : NULL;
    const char * what = geglu ? "fused GeGLU + biases" : "fused SwiGLU";
    char msg[256];
    ffn_cases++;
    if (run_ffn(gpu, qg, qu, k, m, x, gate_bias, up_bias, geglu, 1, got, NULL) != 1 ||
        run_ffn(gpu, qg, qu, k, m, x, gate_bias, up_bias, geglu, 0, g, u) != 1) {
        fail(what, k, m, 1, "not supported or failed");
    } else {
        // want = glu(g, u) in double; the tolerance is relative, with a floor at the scale of all rows
        double * want = malloc(sizeof(double) * m);
        double scale = 0.0;
        for (int r = 0; r < m; r++) {
            const double a = g[r];
            const double act = geglu ? 0.5 * a * (1.0 + tanh(0.7978845608028654 * a * (1.0 + 0.044715 * a * a)))
                                     : a / (1.0 + exp(-a));
            want[r] = act * u[r];
            scale = fmax(scale, fabs(want[r]));
        }
        for (int r = 0; r < m; r++) {
            const double e = fabs(got[r] - want[r]) / (1e-5 * fabs(want[r]) + 1e-6 * scale + 1e-30);
            if (e > worst_ffn) {
                worst_ffn = e;
            }
            if (!(e <= 1.0)) {
                snprintf(msg, sizeof msg, "row %d: fused %.9g, GLU of the separate products %.9g", r, got[r], want[r]);
                fail(what, k, m, 1, msg);
                break;
            }
        }
        free(want);
    }
    free(w); free(qg); free(qu); free(x); free(bg); free(bu); free(got); free(g); free(u);
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
    // batch 1's fused gate and up: SmolLM2-135M's and Llama-2-7B's feed-forward
    static const int ffn_shapes[][2] = { { 576, 1536 }, { 4096, 11008 } };
    for (size_t s = 0; s < sizeof(ffn_shapes) / sizeof(ffn_shapes[0]); s++) {
        for (int geglu = 0; geglu <= 1; geglu++) {
            test_ffn(gpu, ffn_shapes[s][0], ffn_shapes[s][1], geglu);
        }
    }
    printf("%d MUL_MAT cases: worst |error|/bound (int8 paths) %.3f, worst NMSE to exact (cuBLAS path) %.2e, "
           "worst NMSE to CPU %.2e\n",
           cases, worst_bound_use, worst_nmse_exact, worst_nmse_cpu);
    printf("%d fused feed-forward cases: worst |error|/tolerance %.3f\n", ffn_cases, worst_ffn);
    ggml_backend_free(gpu);
    ggml_backend_free(cpu);
    if (failures) {
        printf("FAILED: %d failures\n", failures);
        return 1;
    }
    printf("OK\n");
    return 0;
}
