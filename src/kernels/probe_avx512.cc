// AVX-512 versions of the bench probes: streaming read, f32 FMA peak, int8 dot peak (vpdpbusd),
// bf16 dot peak (vdpbf16ps). Each peak probe runs enough independent register-only chains to
// cover the instruction's latency times its issue rate (5 cycles x 2 pipes = 10 in flight on
// current cores; 16 chains leave room), so it measures throughput, not latency.
// GCC 12 reports the _mm512_undefined_* inside its own reduce intrinsics as uninitialized when
// they are inlined (a false positive of the intrinsics headers, as in linear_avx512.cc).
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#endif

#include <immintrin.h>

#include <cstddef>
#include <cstdint>

namespace lancet::kernels::detail {

float probe_read_avx512(const float* p, size_t n) {
    __m512 a0 = _mm512_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
    size_t i = 0;
    for (; i + 64 <= n; i += 64) {
        a0 = _mm512_add_ps(a0, _mm512_load_ps(p + i));
        a1 = _mm512_add_ps(a1, _mm512_load_ps(p + i + 16));
        a2 = _mm512_add_ps(a2, _mm512_load_ps(p + i + 32));
        a3 = _mm512_add_ps(a3, _mm512_load_ps(p + i + 48));
    }
    float tail = 0;
    for (; i < n; ++i) tail += p[i];
    return _mm512_reduce_add_ps(_mm512_add_ps(_mm512_add_ps(a0, a1), _mm512_add_ps(a2, a3))) + tail;
}

namespace {
constexpr int kChains = 16;
}

double probe_fma_avx512(size_t iters, float seed) {
    __m512 acc[kChains];
#pragma GCC unroll 16
    for (int c = 0; c < kChains; ++c) acc[c] = _mm512_set1_ps(seed * float(c + 1));
    const __m512 a = _mm512_set1_ps(0.999999f), b = _mm512_set1_ps(1e-7f);
    for (size_t i = 0; i < iters; ++i)
#pragma GCC unroll 16
        for (int c = 0; c < kChains; ++c) acc[c] = _mm512_fmadd_ps(acc[c], a, b);
    __m512 s = acc[0];
#pragma GCC unroll 16
    for (int c = 1; c < kChains; ++c) s = _mm512_add_ps(s, acc[c]);
    // 16 lanes x (multiply + add) per FMA; the sum is folded in as a zero-weight term so the
    // loop stays alive.
    return double(iters) * kChains * 32 + 0.0 * double(_mm512_reduce_add_ps(s));
}

double probe_int8_avx512(size_t iters, int seed) {
    // vpdpbusd: 64 u8 x s8 products summed into 16 i32 lanes; counted as 128 ops (multiply +
    // add per byte pair), the same count the W4A8 GEMM's GOP/s uses.
    __m512i acc[kChains];
#pragma GCC unroll 16
    for (int c = 0; c < kChains; ++c) acc[c] = _mm512_set1_epi32(seed + c);
    const __m512i u = _mm512_set1_epi8(7), s = _mm512_set1_epi8(-3);
    for (size_t i = 0; i < iters; ++i)
#pragma GCC unroll 16
        for (int c = 0; c < kChains; ++c) acc[c] = _mm512_dpbusd_epi32(acc[c], u, s);
    __m512i t = acc[0];
#pragma GCC unroll 16
    for (int c = 1; c < kChains; ++c) t = _mm512_add_epi32(t, acc[c]);
    return double(iters) * kChains * 128 + 0.0 * double(_mm512_reduce_add_epi32(t));
}

double probe_bf16_avx512(size_t iters, float seed) {
    // vdpbf16ps: 32 bf16 pairs multiplied and summed into 16 f32 lanes; 64 flops.
    __m512 acc[kChains];
#pragma GCC unroll 16
    for (int c = 0; c < kChains; ++c) acc[c] = _mm512_set1_ps(seed * float(c + 1));
    const __m512bh a = (__m512bh)_mm512_set1_epi16(0x3f80);  // 1.0
    const __m512bh b = (__m512bh)_mm512_set1_epi16(0x3380);  // 2^-24
    for (size_t i = 0; i < iters; ++i)
#pragma GCC unroll 16
        for (int c = 0; c < kChains; ++c) acc[c] = _mm512_dpbf16_ps(acc[c], a, b);
    __m512 s = acc[0];
#pragma GCC unroll 16
    for (int c = 1; c < kChains; ++c) s = _mm512_add_ps(s, acc[c]);
    return double(iters) * kChains * 64 + 0.0 * double(_mm512_reduce_add_ps(s));
}

}  // namespace lancet::kernels::detail
