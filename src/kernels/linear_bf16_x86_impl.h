// f32 -> bf16 rounding of activation rows for the bf16-activation kernels (Bf16Act::Bf16 and
// ActMode::Bf16, linear.h), included only by the AVX-512 and AMX .cc files (internal linkage, so
// translation units built for different ISAs never share a copy).
#pragma once

#include <immintrin.h>

#include <cstddef>
#include <cstdint>

namespace lancet::kernels::detail {
namespace {
namespace bf16x {

// f32 -> bf16 bits, round to nearest even; NaN -> quiet NaN (as f32_to_bf16 in core/numeric.h,
// the same integer rounding, so every path rounds identically; denormals are kept, not flushed
// as vcvtne2ps2bf16 would).
inline __m256i round_bf16x16(__m512 v) {
    const __m512i u = _mm512_castps_si512(v);
    const __m512i r = _mm512_srli_epi32(
        _mm512_add_epi32(_mm512_add_epi32(u, _mm512_set1_epi32(0x7fff)),
                         _mm512_and_si512(_mm512_srli_epi32(u, 16), _mm512_set1_epi32(1))),
        16);
    const __mmask16 nan = _mm512_cmp_ps_mask(v, v, _CMP_UNORD_Q);
    const __m512i q = _mm512_or_si512(_mm512_srli_epi32(u, 16), _mm512_set1_epi32(0x40));
    return _mm512_cvtepi32_epi16(_mm512_mask_mov_epi32(r, nan, q));
}

// dst[0, len) = bf16 of src[0, len), then zeros up to padded_len.
inline void round_row(const float* src, size_t len, uint16_t* dst, size_t padded_len) {
    size_t k = 0;
    for (; k + 16 <= len; k += 16)
        _mm256_storeu_si256(reinterpret_cast<__m256i*>(dst + k),
                            round_bf16x16(_mm512_loadu_ps(src + k)));
    if (k < len) {
        const __mmask16 m = static_cast<__mmask16>((1u << (len - k)) - 1);
        _mm256_mask_storeu_epi16(dst + k, m, round_bf16x16(_mm512_maskz_loadu_ps(m, src + k)));
    }
    for (k = len; k < padded_len; ++k) dst[k] = 0;
}

}  // namespace bf16x
}  // namespace
}  // namespace lancet::kernels::detail
