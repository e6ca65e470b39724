// Vec16: the 512-bit float vector type over which attention_x86_impl.h's templates are written,
// for the files compiled with the AVX-512 flags (ops_avx512.cc, attention_amx.cc). In an anonymous
// namespace like the templates, so each file gets its own copy for its own target.
#pragma once

#include <immintrin.h>

#include <cstddef>

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

}  // namespace
}  // namespace lancet::kernels::detail
