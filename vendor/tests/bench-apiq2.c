// Kernel-level speed of APIQ2 against Q4_0: MUL_MAT through ggml's CPU backend with both
// weights in the CPU_REPACK buffer (where llama.cpp puts them), Llama-2-7B's linear shapes plus
// one that fits in the caches, so the table separates kernel speed from memory speed.
//   bench-apiq2 [THREADS] [REPS]
// Prints one row per shape and column count: median time of each type, the ratio, and the
// weight bytes streamed per second.
#include "ggml.h"
#include "ggml-alloc.h"
#include "ggml-backend.h"
#include "ggml-cpu.h"
#include "ggml-apiq2/apiq2.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static uint64_t rng = 0x2545f4914f6cdd1dull;

static float frand(void) { // xorshift64, uniform in [-1, 1)
    rng ^= rng << 13;
    rng ^= rng >> 7;
    rng ^= rng << 17;
    return (float) ((double) (rng >> 11) / 4503599627370496.0 - 1.0);
}

static int cmp_double(const void * a, const void * b) {
    const double x = *(const double *) a, y = *(const double *) b;
    return (x > y) - (x < y);
}

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

// Median seconds of one MUL_MAT (k inputs, m rows, n columns) with weights of type `type`.
static double time_mul_mat(ggml_backend_t cpu, ggml_backend_buffer_type_t buft, enum ggml_type type,
                           const float * w, int k, int m, int n, int reps) {
    struct ggml_init_params ip = { 4 * ggml_tensor_overhead() + ggml_graph_overhead(), NULL, true };
    struct ggml_context * ctx_w = ggml_init(ip);
    struct ggml_context * ctx = ggml_init(ip);
    struct ggml_tensor * a = ggml_new_tensor_2d(ctx_w, type, k, m);
    struct ggml_tensor * b = ggml_new_tensor_2d(ctx, GGML_TYPE_F32, k, n);
    struct ggml_tensor * c = ggml_mul_mat(ctx, a, b);
    ggml_backend_buffer_t bw = ggml_backend_alloc_ctx_tensors_from_buft(ctx_w, buft);
    ggml_backend_buffer_t bx = ggml_backend_alloc_ctx_tensors(ctx, cpu);

    void * q = malloc(ggml_row_size(type, k) * m);
    ggml_quantize_chunk(type, w, q, 0, m, k, NULL);
    ggml_backend_tensor_set(a, q, 0, ggml_nbytes(a)); // repacks
    free(q);
    float * x = malloc(sizeof(float) * k * n);
    for (int64_t i = 0; i < (int64_t) k * n; i++) {
        x[i] = 2.0f * frand();
    }
    ggml_backend_tensor_set(b, x, 0, ggml_nbytes(b));
    free(x);

    struct ggml_cgraph * gf = ggml_new_graph(ctx);
    ggml_build_forward_expand(gf, c);
    ggml_backend_graph_compute(cpu, gf); // warm-up
    double * t = malloc(sizeof(double) * reps);
    for (int r = 0; r < reps; r++) {
        const int64_t t0 = ggml_time_us();
        ggml_backend_graph_compute(cpu, gf);
        t[r] = 1e-6 * (double) (ggml_time_us() - t0);
    }
    qsort(t, reps, sizeof(double), cmp_double);
    const double med = t[reps / 2];
    free(t);
    ggml_backend_buffer_free(bw);
    ggml_backend_buffer_free(bx);
    ggml_free(ctx_w);
    ggml_free(ctx);
    return med;
}

int main(int argc, char ** argv) {
    const int threads = argc > 1 ? atoi(argv[1]) : 2;
    const int reps = argc > 2 ? atoi(argv[2]) : 9;
    ggml_time_init();
    ggml_cpu_init();
    ggml_backend_t cpu = ggml_backend_cpu_init();
    ggml_backend_cpu_set_n_threads(cpu, threads);
    ggml_backend_buffer_type_t buft = repack_buft(cpu);
    if (buft == NULL) {
        fprintf(stderr, "no CPU_REPACK buffer type\n");
        return 1;
    }
    // k inputs, m rows: one that stays in L3 (1.3 MB of APIQ2), attention (q/k/v/o), ffn up/gate, ffn down
    const int shapes[][2] = { {4096, 1024}, {4096, 4096}, {4096, 11008}, {11008, 4096} };
    const int ncols[] = { 1, 4, 64 };
    printf("threads %d, median of %d; apiq2 repack kernel: %s\n", threads, reps, apiq2_repack_kernel());
    printf("| k x m | n | apiq2 ms | q4_0 ms | q4_0 / apiq2 | apiq2 GB/s | q4_0 GB/s |\n");
    printf("|---|---:|---:|---:|---:|---:|---:|\n");
    for (size_t s = 0; s < sizeof(shapes) / sizeof(shapes[0]); s++) {
        const int k = shapes[s][0], m = shapes[s][1];
        float * w = malloc(sizeof(float) * (size_t) k * m);
        for (int64_t i = 0; i < (int64_t) k * m; i++) {
            w[i] = frand();
        }
        for (size_t j = 0; j < sizeof(ncols) / sizeof(ncols[0]); j++) {
            const int n = ncols[j];
            const double ta = time_mul_mat(cpu, buft, GGML_TYPE_APIQ2, w, k, m, n, reps);
            const double tq = time_mul_mat(cpu, buft, GGML_TYPE_Q4_0, w, k, m, n, reps);
            const double ba = (double) ggml_row_size(GGML_TYPE_APIQ2, k) * m, bq = (double) ggml_row_size(GGML_TYPE_Q4_0, k) * m;
            printf("| %d x %d | %d | %.3f | %.3f | %.2f | %.1f | %.1f |\n", k, m, n, ta * 1e3, tq * 1e3, tq / ta,
                   ba / ta * 1e-9, bq / tq * 1e-9);
            fflush(stdout);
        }
        free(w);
    }
    ggml_backend_free(cpu);
    return 0;
}
