// APIQ2: ApiQ's 2-bit weights as a ggml type (spec: vendor/README.md).
// 64 weights per block: f16 scale d, f16 offset m, 64 two-bit codes; value = d*q + m.
#pragma once

#include <stddef.h>
#include <stdint.h>
#include <stdbool.h>

#ifdef __cplusplus
extern "C" {
#endif

#define QK_APIQ2 64

typedef struct {
    uint16_t d;               // scale, IEEE binary16 (d and m sit together like block_q4_1's dm)
    uint16_t m;               // offset, IEEE binary16
    uint8_t  qs[QK_APIQ2 / 4]; // code j: bits 2*(j%4) of qs[j/4]
} block_apiq2;

#ifdef __cplusplus
static_assert(sizeof(block_apiq2) == 2 * sizeof(uint16_t) + QK_APIQ2 / 4, "wrong apiq2 block size/padding");
#else
_Static_assert(sizeof(block_apiq2) == 2 * sizeof(uint16_t) + QK_APIQ2 / 4, "wrong apiq2 block size/padding");
#endif

// ggml-base: conversions and checks.
void   apiq2_quantize_row_ref(const float * x, block_apiq2 * y, int64_t k);
void   apiq2_dequantize_row(const block_apiq2 * x, float * y, int64_t k);
size_t apiq2_quantize(const float * src, void * dst, int64_t nrows, int64_t n_per_row, const float * imatrix);
bool   apiq2_validate_row_data(const void * data, size_t nbytes);

// ggml-cpu: activations are Q8_1 (two 32-blocks per APIQ2 block).
void apiq2_quantize_row(const float * x, void * y, int64_t k);
void apiq2_vec_dot_q8_1(int n, float * s, size_t bs, const void * vx, size_t bx, const void * vy, size_t by, int nrc);
// The portable kernel, always built: the tests compare the SIMD kernel against it.
void apiq2_vec_dot_q8_1_generic(int n, float * s, size_t bs, const void * vx, size_t bx, const void * vy, size_t by, int nrc);
// Which kernel apiq2_vec_dot_q8_1 runs: "avx2", "neon" or "generic".
const char * apiq2_vec_dot_kernel(void);
// Which kernels the repack buffer's matrix multiplication runs (apiq2-x16.h): "avx512-vnni",
// "avx512", "avx2-vnni", "avx2", "neon-dotprod" or "generic".
const char * apiq2_repack_kernel(void);
// Nonzero when GGML_APIQ2_KERNEL=generic asks for the portable kernels (tests, comparisons).
int apiq2_vec_dot_generic_forced(void);

#ifdef __cplusplus
}
#endif
