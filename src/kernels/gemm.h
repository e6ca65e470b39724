// Single-threaded f32 matrix product C = A·Bᵀ for the quantizer's error evaluations, with an
// AVX2+FMA kernel picked by dispatch.cc and a portable fallback.
#pragma once

#include <cstdint>

#include "kernels/dispatch.h"

namespace lancet::kernels {

// C[i, j] (+)= sum_p A[i, p] * B[j, p] for i < m, j < n, p < k; all row-major with leading
// dimensions lda, ldb, ldc. accumulate=false overwrites C. Summation order depends only on k (fixed
// blocking), so results are reproducible run to run; they differ from a double-precision sum by the
// usual f32 dot-product rounding (|error| <= ~k * 2^-24 * sum |a*b|).
void gemm_nt(int64_t m, int64_t n, int64_t k, const float* A, int64_t lda, const float* B,
             int64_t ldb, float* C, int64_t ldc, bool accumulate);

// C[i, j] (+)= sum_p A[i, p] * B[p, j]: the plain product with B row-major [k, n]. Used for the
// small products with a Gram block (k = n = group size), where A·Bᵀ's per-output horizontal sums
// would dominate. Same rounding bound as gemm_nt.
void gemm_nn(int64_t m, int64_t n, int64_t k, const float* A, int64_t lda, const float* B,
             int64_t ldb, float* C, int64_t ldc, bool accumulate);

namespace detail {
void gemm_nt_portable(int64_t m, int64_t n, int64_t k, const float* A, int64_t lda, const float* B,
                      int64_t ldb, float* C, int64_t ldc, bool accumulate);
void gemm_nt_avx2(int64_t m, int64_t n, int64_t k, const float* A, int64_t lda, const float* B,
                  int64_t ldb, float* C, int64_t ldc, bool accumulate);
void gemm_nn_portable(int64_t m, int64_t n, int64_t k, const float* A, int64_t lda, const float* B,
                      int64_t ldb, float* C, int64_t ldc, bool accumulate);
void gemm_nn_avx2(int64_t m, int64_t n, int64_t k, const float* A, int64_t lda, const float* B,
                  int64_t ldb, float* C, int64_t ldc, bool accumulate);
void gemm_nn_avx512(int64_t m, int64_t n, int64_t k, const float* A, int64_t lda, const float* B,
                    int64_t ldb, float* C, int64_t ldc, bool accumulate);
// The kernels for an ISA (dispatch.cc): gemm_nt AVX2 for AVX2 and AVX-512; gemm_nn AVX-512 or
// AVX2; else portable.
using GemmFn = void (*)(int64_t m, int64_t n, int64_t k, const float* A, int64_t lda,
                        const float* B, int64_t ldb, float* C, int64_t ldc, bool accumulate);
GemmFn gemm_nt_kernel(Isa isa);
GemmFn gemm_nn_kernel(Isa isa);
}  // namespace detail

}  // namespace lancet::kernels
