// AVX2+FMA kernel of the quantizer's f32 A·Bᵀ product: 4x3 register tiles of 8-wide dot
// products, blocked along k so the A and B panels stay in L1/L2.
#include <immintrin.h>

#include <algorithm>

#include "kernels/gemm.h"

namespace lancet::kernels::detail {
namespace {

constexpr int64_t kKc = 256;  // k block: a 4x256 A tile and a 3x256 B tile fit in L1
constexpr int64_t kMc = 96;   // A rows kept hot in L2 while B streams past

inline float hsum(__m256 v) {
    __m128 lo = _mm256_castps256_ps128(v);
    const __m128 hi = _mm256_extractf128_ps(v, 1);
    lo = _mm_add_ps(lo, hi);
    lo = _mm_add_ps(lo, _mm_movehl_ps(lo, lo));
    lo = _mm_add_ss(lo, _mm_movehdup_ps(lo));
    return _mm_cvtss_f32(lo);
}

template <int MR, int NR>
void micro(int64_t kc, const float* A, int64_t lda, const float* B, int64_t ldb, float* C,
           int64_t ldc, bool add) {
    // Fully unrolled so the MR x NR accumulators live in registers (GCC -O2 would keep them in
    // memory otherwise).
    __m256 acc[MR][NR];
#pragma GCC unroll 4
    for (int a = 0; a < MR; ++a)
#pragma GCC unroll 4
        for (int b = 0; b < NR; ++b) acc[a][b] = _mm256_setzero_ps();
    int64_t p = 0;
    for (; p + 8 <= kc; p += 8) {
        __m256 bv[NR];
#pragma GCC unroll 4
        for (int b = 0; b < NR; ++b) bv[b] = _mm256_loadu_ps(B + b * ldb + p);
#pragma GCC unroll 4
        for (int a = 0; a < MR; ++a) {
            const __m256 av = _mm256_loadu_ps(A + a * lda + p);
#pragma GCC unroll 4
            for (int b = 0; b < NR; ++b) acc[a][b] = _mm256_fmadd_ps(av, bv[b], acc[a][b]);
        }
    }
    for (int a = 0; a < MR; ++a)
        for (int b = 0; b < NR; ++b) {
            float s = hsum(acc[a][b]);
            for (int64_t q = p; q < kc; ++q) s += A[a * lda + q] * B[b * ldb + q];
            float& c = C[a * ldc + b];
            c = add ? c + s : s;
        }
}

using MicroFn = void (*)(int64_t, const float*, int64_t, const float*, int64_t, float*, int64_t,
                         bool);

template <int MR>
MicroFn pick_nr(int nr) {
    switch (nr) {
        case 1:
            return micro<MR, 1>;
        case 2:
            return micro<MR, 2>;
        default:
            return micro<MR, 3>;
    }
}

MicroFn pick(int mr, int nr) {
    switch (mr) {
        case 1:
            return pick_nr<1>(nr);
        case 2:
            return pick_nr<2>(nr);
        case 3:
            return pick_nr<3>(nr);
        default:
            return pick_nr<4>(nr);
    }
}

}  // namespace

void gemm_nt_avx2(int64_t m, int64_t n, int64_t k, const float* A, int64_t lda, const float* B,
                  int64_t ldb, float* C, int64_t ldc, bool accumulate) {
    if (k <= 0) {
        if (!accumulate)
            for (int64_t i = 0; i < m; ++i) std::fill(C + i * ldc, C + i * ldc + n, 0.0f);
        return;
    }
    for (int64_t p0 = 0; p0 < k; p0 += kKc) {
        const int64_t kc = std::min(kKc, k - p0);
        const bool add = accumulate || p0 > 0;
        for (int64_t i0 = 0; i0 < m; i0 += kMc) {
            const int64_t i1 = std::min(m, i0 + kMc);
            for (int64_t j = 0; j < n; j += 3) {
                const int nr = static_cast<int>(std::min<int64_t>(3, n - j));
                for (int64_t i = i0; i < i1; i += 4) {
                    const int mr = static_cast<int>(std::min<int64_t>(4, i1 - i));
                    pick(mr, nr)(kc, A + i * lda + p0, lda, B + j * ldb + p0, ldb, C + i * ldc + j,
                                 ldc, add);
                }
            }
        }
    }
}

void gemm_nn_avx2(int64_t m, int64_t n, int64_t k, const float* A, int64_t lda, const float* B,
                  int64_t ldb, float* C, int64_t ldc, bool accumulate) {
    // Two rows of A by 32 columns of B per step: 8 accumulators, 4 B loads and 2 broadcasts
    // per 8 FMAs; the (small) B stays in L1.
    int64_t j = 0;
    for (; j + 32 <= n; j += 32) {
        int64_t i = 0;
        for (; i + 2 <= m; i += 2) {
            __m256 c0[4], c1[4];
            for (int q = 0; q < 4; ++q) {
                c0[q] = accumulate ? _mm256_loadu_ps(C + i * ldc + j + 8 * q) : _mm256_setzero_ps();
                c1[q] = accumulate ? _mm256_loadu_ps(C + (i + 1) * ldc + j + 8 * q)
                                   : _mm256_setzero_ps();
            }
            for (int64_t p = 0; p < k; ++p) {
                const __m256 a0 = _mm256_broadcast_ss(A + i * lda + p);
                const __m256 a1 = _mm256_broadcast_ss(A + (i + 1) * lda + p);
#pragma GCC unroll 4
                for (int q = 0; q < 4; ++q) {
                    const __m256 b = _mm256_loadu_ps(B + p * ldb + j + 8 * q);
                    c0[q] = _mm256_fmadd_ps(a0, b, c0[q]);
                    c1[q] = _mm256_fmadd_ps(a1, b, c1[q]);
                }
            }
            for (int q = 0; q < 4; ++q) {
                _mm256_storeu_ps(C + i * ldc + j + 8 * q, c0[q]);
                _mm256_storeu_ps(C + (i + 1) * ldc + j + 8 * q, c1[q]);
            }
        }
        if (i < m)
            gemm_nn_portable(m - i, 32, k, A + i * lda, lda, B + j, ldb, C + i * ldc + j, ldc,
                             accumulate);
    }
    if (j < n) gemm_nn_portable(m, n - j, k, A, lda, B + j, ldb, C + j, ldc, accumulate);
}

}  // namespace lancet::kernels::detail
