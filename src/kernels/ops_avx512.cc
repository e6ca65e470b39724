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

namespace lancet::kernels::detail {
namespace {

struct Vec16 {
    using V = __m512;
    static constexpr size_t kLanes = 16;
    static V zero() { return _mm512_setzero_ps(); }
    static V load(const float* p) { return _mm512_loadu_ps(p); }
    static void store(float* p, V v) { _mm512_storeu_ps(p, v); }
    static V set1(float x) { return _mm512_set1_ps(x); }
    static V fmadd(V a, V b, V c) { return _mm512_fmadd_ps(a, b, c); }
    static V mul(V a, V b) { return _mm512_mul_ps(a, b); }
    static V add(V a, V b) { return _mm512_add_ps(a, b); }
    static V sub(V a, V b) { return _mm512_sub_ps(a, b); }
    static V max(V a, V b) { return _mm512_max_ps(a, b); }
    static V fnmadd(V a, V b, V c) { return _mm512_fnmadd_ps(a, b, c); }
    static V round(V x) {
        return _mm512_roundscale_ps(x, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    }
    static V pow2i(V n) {
        return _mm512_castsi512_ps(
            _mm512_slli_epi32(_mm512_add_epi32(_mm512_cvtps_epi32(n), _mm512_set1_epi32(127)), 23));
    }
    static __mmask16 lt(V a, V b) { return _mm512_cmp_ps_mask(a, b, _CMP_LT_OQ); }
    static __mmask16 eq(V a, V b) { return _mm512_cmp_ps_mask(a, b, _CMP_EQ_OQ); }
    static V zero_where(__mmask16 m, V v) {
        return _mm512_maskz_mov_ps(static_cast<__mmask16>(~m), v);
    }
};

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
