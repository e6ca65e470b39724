// AVX-512 table of the op layer (compiled with the avx512 flags; chosen at run time): the AVX2
// row/elementwise kernels (bound by memory, libm or sequential sums, not by vector width) and
// the AVX2 one-row attention tiles (decode), with 512-bit query-block attention tiles, where the
// FMA width pays: 16 query rows per vector, 32 registers.
// GCC 12 reports _mm512_undefined_*() inside its own intrinsics (roundscale, cvtps, maskz) as
// maybe-uninitialized; the diagnostic is about the header, not this code.
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#endif
#include <immintrin.h>

#include <limits>

#include "kernels/attention_x86_impl.h"
#include "kernels/ops_kernels.h"
#include "kernels/vec_avx512.h"

namespace lancet::kernels::detail {
namespace {

// 32 registers: scores 2 row vectors × 12 keys (24 accumulators + 2 q + broadcasts), p·v
// 2 row vectors × 10 dims (20 accumulators; the ViT's 80 = 8 blocks, 128 = 12 · 10 + 8).
void scores_cols16(const float* q, size_t ld, size_t nr, const float* k, size_t ldk, size_t nk,
                   size_t hd, float* st) {
    scores_cols<Vec16, 12>(q, ld, nr, k, ldk, nk, hd, st);
}
void softmax_cols16(float* st, size_t ld, size_t nr, size_t nk, float* m, float* sum, float* corr) {
    softmax_cols<Vec16>(st, ld, nr, nk, m, sum, corr);
}
void pv_cols16(const float* p, size_t ld, size_t nr, const float* v, size_t ldv, size_t nk,
               size_t hd, const float* corr, float* acc) {
    pv_cols<Vec16, 10>(p, ld, nr, v, ldv, nk, hd, corr, acc);
}

}  // namespace

const OpKernels& op_kernels_avx512() {
    static const OpKernels k = [] {
        OpKernels t = op_kernels_avx2();
        t.attn_scores_cols = &scores_cols16;
        t.attn_softmax_cols = &softmax_cols16;
        t.attn_pv_cols = &pv_cols16;
        return t;
    }();
    return k;
}

}  // namespace lancet::kernels::detail
