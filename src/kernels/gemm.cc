// The entry points and the portable kernel of the quantizer's f32 A·Bᵀ product.
#include "kernels/gemm.h"

#include "kernels/dispatch.h"

namespace lancet::kernels {
namespace detail {

void gemm_nt_portable(int64_t m, int64_t n, int64_t k, const float* A, int64_t lda, const float* B,
                      int64_t ldb, float* C, int64_t ldc, bool accumulate) {
    for (int64_t i = 0; i < m; ++i)
        for (int64_t j = 0; j < n; ++j) {
            const float* a = A + i * lda;
            const float* b = B + j * ldb;
            // Four partial sums break the dependency chain; the order is fixed by k alone.
            float s0 = 0, s1 = 0, s2 = 0, s3 = 0;
            int64_t p = 0;
            for (; p + 4 <= k; p += 4) {
                s0 += a[p] * b[p];
                s1 += a[p + 1] * b[p + 1];
                s2 += a[p + 2] * b[p + 2];
                s3 += a[p + 3] * b[p + 3];
            }
            for (; p < k; ++p) s0 += a[p] * b[p];
            const float s = (s0 + s1) + (s2 + s3);
            C[i * ldc + j] = accumulate ? C[i * ldc + j] + s : s;
        }
}

void gemm_nn_portable(int64_t m, int64_t n, int64_t k, const float* A, int64_t lda, const float* B,
                      int64_t ldb, float* C, int64_t ldc, bool accumulate) {
    for (int64_t i = 0; i < m; ++i) {
        float* c = C + i * ldc;
        if (!accumulate)
            for (int64_t j = 0; j < n; ++j) c[j] = 0.0f;
        for (int64_t p = 0; p < k; ++p) {
            const float a = A[i * lda + p];
            const float* b = B + p * ldb;
            for (int64_t j = 0; j < n; ++j) c[j] += a * b[j];
        }
    }
}

}  // namespace detail

void gemm_nt(int64_t m, int64_t n, int64_t k, const float* A, int64_t lda, const float* B,
             int64_t ldb, float* C, int64_t ldc, bool accumulate) {
    if (m <= 0 || n <= 0) return;
    detail::gemm_nt_kernel(active_isa())(m, n, k, A, lda, B, ldb, C, ldc, accumulate);
}

}  // namespace lancet::kernels

namespace lancet::kernels {

void gemm_nn(int64_t m, int64_t n, int64_t k, const float* A, int64_t lda, const float* B,
             int64_t ldb, float* C, int64_t ldc, bool accumulate) {
    if (m <= 0 || n <= 0) return;
    detail::gemm_nn_kernel(active_isa())(m, n, k, A, lda, B, ldb, C, ldc, accumulate);
}

}  // namespace lancet::kernels
