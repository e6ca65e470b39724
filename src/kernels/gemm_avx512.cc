// AVX-512 kernel of the quantizer's plain product C (+)= A·B (B row-major [k, n]): 8-row x
// 32-column register tiles (16 zmm accumulators; per k step two B loads and eight A broadcasts feed
// 16 FMAs), k blocked so a 32-column B strip stays in L1. GPTQ's factorisation and column sweep run
// on it.
#include <immintrin.h>

#include <algorithm>
#include <vector>

#include "kernels/gemm.h"

namespace lancet::kernels::detail {
namespace {

constexpr int64_t kKc = 256;  // k block
constexpr int64_t kNc = 256;  // columns of a packed B block (256 KiB with kKc: L2)

// Rows [0, MR) x the 32 (or fewer: masks m0, m1) columns at C, k steps of A and B.
template <int MR>
void tile(int64_t kc, const float* A, int64_t lda, const float* B, int64_t ldb, float* C,
          int64_t ldc, bool add, __mmask16 m0, __mmask16 m1) {
    __m512 c0[MR], c1[MR];
#pragma GCC unroll 8
    for (int r = 0; r < MR; ++r) {
        c0[r] = add ? _mm512_maskz_loadu_ps(m0, C + r * ldc) : _mm512_setzero_ps();
        c1[r] = add ? _mm512_maskz_loadu_ps(m1, C + r * ldc + 16) : _mm512_setzero_ps();
    }
    for (int64_t p = 0; p < kc; ++p) {
        const __m512 b0 = _mm512_maskz_loadu_ps(m0, B + p * ldb);
        const __m512 b1 = _mm512_maskz_loadu_ps(m1, B + p * ldb + 16);
#pragma GCC unroll 8
        for (int r = 0; r < MR; ++r) {
            const __m512 a = _mm512_set1_ps(A[r * lda + p]);
            c0[r] = _mm512_fmadd_ps(a, b0, c0[r]);
            c1[r] = _mm512_fmadd_ps(a, b1, c1[r]);
        }
    }
#pragma GCC unroll 8
    for (int r = 0; r < MR; ++r) {
        _mm512_mask_storeu_ps(C + r * ldc, m0, c0[r]);
        _mm512_mask_storeu_ps(C + r * ldc + 16, m1, c1[r]);
    }
}

using TileFn = void (*)(int64_t, const float*, int64_t, const float*, int64_t, float*, int64_t,
                        bool, __mmask16, __mmask16);

TileFn pick(int64_t mr) {
    switch (mr) {
        case 1:
            return tile<1>;
        case 2:
            return tile<2>;
        case 3:
            return tile<3>;
        case 4:
            return tile<4>;
        case 5:
            return tile<5>;
        case 6:
            return tile<6>;
        case 7:
            return tile<7>;
        default:
            return tile<8>;
    }
}

__mmask16 lanes(int64_t n) {
    return n >= 16 ? static_cast<__mmask16>(0xFFFF)
                   : static_cast<__mmask16>((1u << std::max<int64_t>(n, 0)) - 1);
}

}  // namespace

void gemm_nn_avx512(int64_t m, int64_t n, int64_t k, const float* A, int64_t lda, const float* B,
                    int64_t ldb, float* C, int64_t ldc, bool accumulate) {
    if (k <= 0) {
        if (!accumulate)
            for (int64_t i = 0; i < m; ++i) std::fill(C + i * ldc, C + i * ldc + n, 0.0f);
        return;
    }
    // B is packed per (kc x nc) block into 32-column strips [nc / 32][kc][32] (contiguous: rows
    // of B a power-of-two stride apart, like the GPTQ factor's, would share a few L1 sets), which
    // stay in L2 while every 8-row tile of A walks along them; C is then read and written row by
    // row, in order.
    thread_local std::vector<float> panel;
    panel.resize(static_cast<size_t>(kKc) * kNc);
    for (int64_t j0 = 0; j0 < n; j0 += kNc) {
        const int64_t nc = std::min(kNc, n - j0);
        for (int64_t p0 = 0; p0 < k; p0 += kKc) {
            const int64_t kc = std::min(kKc, k - p0);
            const bool add = accumulate || p0 > 0;
            for (int64_t j = 0; j < nc; j += 32) {
                const __mmask16 m0 = lanes(nc - j), m1 = lanes(nc - j - 16);
                float* strip = &panel[static_cast<size_t>(j) * kc];
                for (int64_t p = 0; p < kc; ++p) {
                    const float* b = B + (p0 + p) * ldb + j0 + j;
                    _mm512_storeu_ps(strip + p * 32, _mm512_maskz_loadu_ps(m0, b));
                    _mm512_storeu_ps(strip + p * 32 + 16, _mm512_maskz_loadu_ps(m1, b + 16));
                }
            }
            for (int64_t i = 0; i < m; i += 8) {
                const TileFn fn = pick(std::min<int64_t>(8, m - i));
                for (int64_t j = 0; j < nc; j += 32)
                    fn(kc, A + i * lda + p0, lda, &panel[static_cast<size_t>(j) * kc], 32,
                       C + i * ldc + j0 + j, ldc, add, lanes(nc - j), lanes(nc - j - 16));
            }
        }
    }
}

}  // namespace lancet::kernels::detail
