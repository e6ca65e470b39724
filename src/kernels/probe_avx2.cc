// AVX2+FMA versions of the bench probes (streaming read, FMA peak, int8 dot peak).
#include <immintrin.h>

#include <cstddef>

namespace lancet::kernels::detail {

float probe_read_avx2(const float* p, size_t n) {
    __m256 a0 = _mm256_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
    for (size_t i = 0; i < n; i += 32) {
        a0 = _mm256_add_ps(a0, _mm256_load_ps(p + i));
        a1 = _mm256_add_ps(a1, _mm256_load_ps(p + i + 8));
        a2 = _mm256_add_ps(a2, _mm256_load_ps(p + i + 16));
        a3 = _mm256_add_ps(a3, _mm256_load_ps(p + i + 24));
    }
    alignas(32) float l[8];
    _mm256_store_ps(l, _mm256_add_ps(_mm256_add_ps(a0, a1), _mm256_add_ps(a2, a3)));
    return l[0] + l[1] + l[2] + l[3] + l[4] + l[5] + l[6] + l[7];
}

double probe_fma_avx2(size_t iters, float seed) {
    // 12 chains hide the 4-cycle latency of 2 FMA pipes with room to spare.
    constexpr int kChains = 12;
    __m256 acc[kChains];
#pragma GCC unroll 16
    for (int c = 0; c < kChains; ++c) acc[c] = _mm256_set1_ps(seed * float(c + 1));
    const __m256 a = _mm256_set1_ps(0.999999f), b = _mm256_set1_ps(1e-7f);
    for (size_t i = 0; i < iters; ++i)
#pragma GCC unroll 16
        for (int c = 0; c < kChains; ++c) acc[c] = _mm256_fmadd_ps(acc[c], a, b);
    __m256 s = acc[0];
    for (int c = 1; c < kChains; ++c) s = _mm256_add_ps(s, acc[c]);
    alignas(32) float l[8];
    _mm256_store_ps(l, s);
    // Returning the flops keeps the loop alive; the sum is folded in as a zero-weight term.
    return double(iters) * kChains * 16 + 0.0 * l[0];
}

bool avx_vnni();                                    // dispatch.cc
double probe_int8_avxvnni(size_t iters, int seed);  // linear_avxvnni.cc

double probe_int8_avx2(size_t iters, int seed) {
    // With AVX-VNNI the tier's W4A8 kernels run vpdpbusd ymm (dispatch.cc), so that is the peak.
    if (avx_vnni()) return probe_int8_avxvnni(iters, seed);
    // The W4A8 inner step: acc += maddubs(w1, b) + maddubs(w2, b), 2 x 64 ops counted (32 u8 x
    // s8 products and 16 pair adds into i16 each, as the GEMM's GOP/s count them) plus the two i16
    // adds. w1, w2 change every iteration so nothing can be hoisted, and the chains run through
    // the adds only, so this measures throughput rather than vpmaddubsw latency.
    constexpr int kChains = 6;
    __m256i acc[kChains], b[kChains];
#pragma GCC unroll 16
    for (int c = 0; c < kChains; ++c) {
        acc[c] = _mm256_set1_epi16(short(seed + c));
        b[c] = _mm256_set1_epi8(char(c - 3));
    }
    for (size_t i = 0; i < iters; ++i) {
        const __m256i w1 = _mm256_set1_epi8(char(i & 15)),
                      w2 = _mm256_set1_epi8(char((i >> 4) & 15));
#pragma GCC unroll 16
        for (int c = 0; c < kChains; ++c)
            acc[c] = _mm256_add_epi16(acc[c], _mm256_add_epi16(_mm256_maddubs_epi16(w1, b[c]),
                                                               _mm256_maddubs_epi16(w2, b[c])));
    }
    __m256i s = acc[0];
    for (int c = 1; c < kChains; ++c) s = _mm256_add_epi16(s, acc[c]);
    return double(iters) * kChains * 128 + 0.0 * double(_mm256_extract_epi16(s, 0));
}

}  // namespace lancet::kernels::detail
