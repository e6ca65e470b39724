// f32 -> bf16 rounding of activation rows for the bf16-activation kernels (Bf16Act::Bf16 and
// ActMode::Bf16, linear.h), included only by the AVX-512 and AMX .cc files (internal linkage, so
// translation units built for different ISAs never share a copy).
#pragma once

#include <immintrin.h>

#include <cstddef>
#include <cstdint>

#include "kernels/linear.h"

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

// Columns 8c .. 8c + 7 of two row blocks of a Q4 weight (PackedView layout; outputs 0-7 from
// block ba, 8-15 from block ba + 1, zeros for the latter when !has_b) dequantized to bf16 pairs:
// row u at dst + u * stride (u16) holds 16 x (w̃[o][8c + 2u], w̃[o][8c + 2u + 1]), the TDPBF16PS /
// vdpbf16ps pair layout. w = (q - z)·s = fma(q, s, -(z·s)) is exact in f32 (4-bit by 8-bit
// significands; z·s exact too), then rounded to nearest even by vcvtne2ps2bf16, which also
// flushes a denormal w to zero (the tile and vdpbf16ps instructions treat denormal inputs as
// zero anyway).
inline void q4_pairs(const PackedView& p, size_t ba, bool has_b, size_t c, uint16_t* dst,
                     size_t stride) {
    const size_t chunks = p.in / 8, groups = p.in / p.group_size, g = 8 * c / p.group_size;
    const uint32_t* q = static_cast<const uint32_t*>(p.data);
    const __m256i wa =
        _mm256_load_si256(reinterpret_cast<const __m256i*>(q + (ba * chunks + c) * 8));
    const __m256i wb =
        has_b ? _mm256_load_si256(reinterpret_cast<const __m256i*>(q + ((ba + 1) * chunks + c) * 8))
              : _mm256_setzero_si256();
    const __m512i v = _mm512_inserti64x4(_mm512_castsi256_si512(wa), wb, 1);
    const size_t at = (ba * groups + g) * 8, bt = ((ba + 1) * groups + g) * 8;
    const __m128i sa = _mm_loadu_si128(reinterpret_cast<const __m128i*>(p.scales + at));
    const __m128i sb = has_b ? _mm_loadu_si128(reinterpret_cast<const __m128i*>(p.scales + bt))
                             : _mm_setzero_si128();
    const __m512 s = _mm512_castsi512_ps(_mm512_slli_epi32(
        _mm512_cvtepu16_epi32(_mm256_inserti128_si256(_mm256_castsi128_si256(sa), sb, 1)), 16));
    const __m128i za = _mm_loadl_epi64(reinterpret_cast<const __m128i*>(p.zeros + at));
    const __m128i zb = has_b ? _mm_loadl_epi64(reinterpret_cast<const __m128i*>(p.zeros + bt))
                             : _mm_setzero_si128();
    const __m512 zs =
        _mm512_mul_ps(_mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(_mm_unpacklo_epi64(za, zb))), s);
    const __m512i m = _mm512_set1_epi32(0xf);
    alignas(64) static constexpr uint16_t kIdx[32] = {0,  16, 1,  17, 2,  18, 3,  19, 4,  20, 5,
                                                      21, 6,  22, 7,  23, 8,  24, 9,  25, 10, 26,
                                                      11, 27, 12, 28, 13, 29, 14, 30, 15, 31};
    const __m512i idx = _mm512_load_si512(kIdx);
#pragma GCC unroll 4
    for (int u = 0; u < 4; ++u) {
        const __m512 f0 = _mm512_fmsub_ps(
            _mm512_cvtepi32_ps(_mm512_and_si512(_mm512_srli_epi32(v, 8 * u), m)), s, zs);
        const __m512 f1 = _mm512_fmsub_ps(
            _mm512_cvtepi32_ps(_mm512_and_si512(_mm512_srli_epi32(v, 8 * u + 4), m)), s, zs);
        // cvtne2ps: f0 in the low 16 bf16, f1 in the high 16; interleave into pairs.
        const __m512i pr = _mm512_permutexvar_epi16(idx, (__m512i)_mm512_cvtne2ps_pbh(f1, f0));
        _mm512_storeu_si512(dst + u * stride, pr);
    }
}

}  // namespace bf16x
}  // namespace
}  // namespace lancet::kernels::detail
