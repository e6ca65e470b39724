// AVX2+FMA attention tile primitives (compiled with -mavx2 -mfma; chosen at run time).
#include <immintrin.h>

#include <cmath>

#include "model/decoder_ops.h"

namespace lancet::ops::detail {

namespace {

inline float hsum(__m256 v) {
    __m128 lo = _mm256_castps256_ps128(v), hi = _mm256_extractf128_ps(v, 1);
    lo = _mm_add_ps(lo, hi);
    lo = _mm_add_ps(lo, _mm_movehl_ps(lo, lo));
    lo = _mm_add_ss(lo, _mm_movehdup_ps(lo));
    return _mm_cvtss_f32(lo);
}

inline float dot(const float* a, const float* b, size_t n) {
    __m256 s0 = _mm256_setzero_ps(), s1 = _mm256_setzero_ps();
    size_t i = 0;
    for (; i + 16 <= n; i += 16) {
        s0 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i), _mm256_loadu_ps(b + i), s0);
        s1 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i + 8), _mm256_loadu_ps(b + i + 8), s1);
    }
    for (; i + 8 <= n; i += 8)
        s0 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i), _mm256_loadu_ps(b + i), s0);
    float s = hsum(_mm256_add_ps(s0, s1));
    for (; i < n; ++i) s += a[i] * b[i];
    return s;
}

void scores(const float* q, size_t nq, const float* k, size_t nk, size_t hd, float* s) {
    for (size_t r = 0; r < nq; ++r)
        for (size_t j = 0; j < nk; ++j) s[r * nk + j] = dot(q + r * hd, k + j * hd, hd);
}

void pv(const float* p, size_t nq, const float* v, size_t nk, size_t hd, float* acc) {
    for (size_t r = 0; r < nq; ++r) {
        float* a = acc + r * hd;
        size_t d = 0;
        for (; d + 8 <= hd; d += 8) {
            __m256 s = _mm256_loadu_ps(a + d);
            for (size_t j = 0; j < nk; ++j)
                s = _mm256_fmadd_ps(_mm256_set1_ps(p[r * nk + j]), _mm256_loadu_ps(v + j * hd + d),
                                    s);
            _mm256_storeu_ps(a + d, s);
        }
        for (; d < hd; ++d)
            for (size_t j = 0; j < nk; ++j) a[d] += p[r * nk + j] * v[j * hd + d];
    }
}

// exp(x) for x <= 0: 2^n * poly(r), r = x - n ln2 in [-ln2/2, ln2/2]; relative error ~2e-7.
inline __m256 exp_neg(__m256 x) {
    const __m256 lo = _mm256_set1_ps(-87.0f);
    const __m256 underflow = _mm256_cmp_ps(x, lo, _CMP_LT_OQ);
    x = _mm256_max_ps(x, lo);
    const __m256 n = _mm256_round_ps(_mm256_mul_ps(x, _mm256_set1_ps(1.44269504088896341f)),
                                     _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m256 r = _mm256_fnmadd_ps(n, _mm256_set1_ps(0.693359375f), x);
    r = _mm256_fnmadd_ps(n, _mm256_set1_ps(-2.12194440e-4f), r);
    __m256 y = _mm256_set1_ps(1.9875691500e-4f);
    y = _mm256_fmadd_ps(y, r, _mm256_set1_ps(1.3981999507e-3f));
    y = _mm256_fmadd_ps(y, r, _mm256_set1_ps(8.3334519073e-3f));
    y = _mm256_fmadd_ps(y, r, _mm256_set1_ps(4.1665795894e-2f));
    y = _mm256_fmadd_ps(y, r, _mm256_set1_ps(1.6666665459e-1f));
    y = _mm256_fmadd_ps(y, r, _mm256_set1_ps(5.0000001201e-1f));
    y = _mm256_fmadd_ps(y, _mm256_mul_ps(r, r), _mm256_add_ps(r, _mm256_set1_ps(1.0f)));
    const __m256i e =
        _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23);
    y = _mm256_mul_ps(y, _mm256_castsi256_ps(e));
    return _mm256_andnot_ps(underflow, y);
}

float exp_sum(float* p, size_t n, float m) {
    const __m256 mv = _mm256_set1_ps(m);
    __m256 acc = _mm256_setzero_ps();
    size_t i = 0;
    for (; i + 8 <= n; i += 8) {
        const __m256 e = exp_neg(_mm256_sub_ps(_mm256_loadu_ps(p + i), mv));
        _mm256_storeu_ps(p + i, e);
        acc = _mm256_add_ps(acc, e);
    }
    float s = hsum(acc);
    for (; i < n; ++i) s += (p[i] = std::exp(p[i] - m));
    return s;
}

}  // namespace

AttnKernels attn_kernels_avx2() { return {&scores, &pv, &exp_sum}; }

}  // namespace lancet::ops::detail
