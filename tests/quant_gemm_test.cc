// Checks the quantizer's f32 A·Bᵀ product against a double-precision reference with the standard
// dot-product rounding bound.
#include <gtest/gtest.h>

#include <cmath>
#include <random>
#include <vector>

#include "kernels/dispatch.h"
#include "kernels/gemm.h"

namespace lancet::kernels {
namespace {

using GemmFn = void (*)(int64_t, int64_t, int64_t, const float*, int64_t, const float*, int64_t,
                        float*, int64_t, bool);

// nn = true: B is [k, n] (gemm_nn); otherwise [n, k] (gemm_nt).
void check(GemmFn fn, int64_t m, int64_t n, int64_t k, bool accumulate, uint32_t seed,
           bool nn = false) {
    std::mt19937 rng(seed);
    std::uniform_real_distribution<float> ud(0.1f, 1.0f);
    auto val = [&] { return (rng() & 1 ? 1.0f : -1.0f) * ud(rng); };  // non-zero, mixed sign
    const int64_t lda = k + 3, ldb = nn ? n + 5 : k + 5, ldc = n + 2;
    std::vector<float> A(m * lda), B((nn ? k : n) * ldb), C(m * ldc);
    for (auto& v : A) v = val();
    for (auto& v : B) v = val();
    for (auto& v : C) v = val();
    const std::vector<float> C0 = C;
    fn(m, n, k, A.data(), lda, B.data(), ldb, C.data(), ldc, accumulate);
    for (int64_t i = 0; i < m; ++i)
        for (int64_t j = 0; j < n; ++j) {
            double ref = accumulate ? C0[i * ldc + j] : 0.0, mag = std::fabs(ref);
            for (int64_t p = 0; p < k; ++p) {
                const double t =
                    static_cast<double>(A[i * lda + p]) * (nn ? B[p * ldb + j] : B[j * ldb + p]);
                ref += t;
                mag += std::fabs(t);
            }
            // Recursive/blocked f32 summation of k + 1 terms: |err| <= (k + 1) u sum|terms|.
            const double bound = (k + 2) * std::ldexp(1.0, -24) * mag;
            ASSERT_LE(std::fabs(C[i * ldc + j] - ref), bound) << i << "," << j;
        }
    // Padding columns are untouched.
    for (int64_t i = 0; i < m; ++i) ASSERT_EQ(C[i * ldc + n], C0[i * ldc + n]);
}

TEST(QuantGemm, MatchesDoubleReference) {
    for (GemmFn fn : {&gemm_nt, &detail::gemm_nt_portable}) {
        check(fn, 7, 5, 37, false, 1);
        check(fn, 13, 11, 600, true, 2);  // crosses the k block
        check(fn, 100, 7, 64, false, 3);  // crosses the m block, short k
        check(fn, 1, 1, 3, true, 4);
    }
    std::vector<GemmFn> nn = {&gemm_nn, &detail::gemm_nn_portable};
    for (Isa isa : {Isa::Avx2, Isa::Avx512})
        if (cpu_supports(isa)) nn.push_back(detail::gemm_nn_kernel(isa));
    for (GemmFn fn : nn) {
        check(fn, 7, 64, 64, false, 5, true);
        check(fn, 9, 70, 33, true, 6, true);  // odd rows, a column tail past the 32-wide blocks
        check(fn, 2, 5, 1, false, 7, true);
        check(fn, 19, 45, 300, true, 8, true);  // a row tail past the 8-row tiles, crosses k blocks
        check(fn, 16, 16, 5, false, 9, true);   // one half-masked tile
    }
}

}  // namespace
}  // namespace lancet::kernels
