// The AVX2 tier's W4A8 kernels built with AVX-VNNI (VEX vpdpbusd on ymm: one instruction per
// plane instead of vpmaddubsw + vpaddw, accumulating straight into i32), for CPUs that have
// AVX2 and AVX-VNNI (Alder Lake, Sapphire Rapids, Zen 5); dispatch.cc picks them for Isa::Avx2
// when CPUID says so. Same exact block integers and the same f32 order as linear_avx2.cc, so the
// results are bit-identical to it and to the scalar reference.
#include "kernels/linear_w4a8_x86_impl.h"

namespace lancet::kernels::detail {

void w4a8_avxvnni(const float* x, size_t n, const PackedView& p, const float* bias, float* y,
                  const W4A8Scratch& s, ThreadPool& pool) {
    w4a8::run(x, n, p, bias, y, s, pool);
}

void w4a8_gemv_many_avxvnni(const float* x, size_t n, const W4A8Out* outs, size_t count,
                            const W4A8Scratch& s, ThreadPool& pool) {
    w4a8::gemv_many(x, n, outs, count, s, pool);
}

// The int8 dot peak of this tier: independent vpdpbusd ymm chains (32 u8 x s8 products and 32
// adds = 64 ops each, the count the W4A8 GOP/s use), enough of them to cover the instruction's
// latency on two pipes; the operands change every iteration so nothing is hoisted.
double probe_int8_avxvnni(size_t iters, int seed) {
    constexpr int kChains = 12;
    __m256i acc[kChains], b[kChains];
#pragma GCC unroll 16
    for (int c = 0; c < kChains; ++c) {
        acc[c] = _mm256_set1_epi32(seed + c);
        b[c] = _mm256_set1_epi8(char(c - 6));
    }
    for (size_t i = 0; i < iters; ++i) {
        const __m256i w = _mm256_set1_epi8(char(i & 15));
#pragma GCC unroll 16
        for (int c = 0; c < kChains; ++c) acc[c] = _mm256_dpbusd_avx_epi32(acc[c], w, b[c]);
    }
    __m256i s = acc[0];
    for (int c = 1; c < kChains; ++c) s = _mm256_add_epi32(s, acc[c]);
    return double(iters) * kChains * 64 + 0.0 * double(_mm256_extract_epi32(s, 0));
}

}  // namespace lancet::kernels::detail
