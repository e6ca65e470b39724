// AVX2+FMA kernels of the op layer (compiled with -mavx2 -mfma; chosen at run time): the attention
// tiles and the row/elementwise primitives. Loop tails go through masked loads and stores, so
// every element is computed by the same instructions wherever a row is split.
#include <immintrin.h>

#include <algorithm>
#include <cmath>
#include <limits>

#include "kernels/attention_x86_impl.h"
#include "kernels/ops_kernels.h"

namespace lancet::kernels::detail {

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

// Four sums of 8-lane vectors at once: {sum a, sum b, sum c, sum d}.
inline __m128 hsum4(__m256 a, __m256 b, __m256 c, __m256 d) {
    const __m256 t = _mm256_hadd_ps(_mm256_hadd_ps(a, b), _mm256_hadd_ps(c, d));
    return _mm_add_ps(_mm256_castps256_ps128(t), _mm256_extractf128_ps(t, 1));
}

// Rows r and r + 1 of scores() at once (hd a multiple of 8): each key vector loaded once serves
// both query rows (8 accumulators + 2 q + 4 k vectors fit the 16 registers). Every score is the
// same FMA chain and horizontal sum as the one-row loop below, so the results are bit-identical.
void scores_two_rows(const float* q, const float* k, size_t ldk, size_t nk, size_t hd, float* s) {
    const float* q0 = q;
    const float* q1 = q + hd;
    size_t j = 0;
    for (; j + 4 <= nk; j += 4) {
        const float* k0 = k + j * ldk;
        __m256 a0 = _mm256_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
        __m256 b0 = a0, b1 = a0, b2 = a0, b3 = a0;
        for (size_t d = 0; d < hd; d += 8) {
            const __m256 qa = _mm256_loadu_ps(q0 + d), qb = _mm256_loadu_ps(q1 + d);
            const __m256 c0 = _mm256_loadu_ps(k0 + d), c1 = _mm256_loadu_ps(k0 + ldk + d);
            const __m256 c2 = _mm256_loadu_ps(k0 + 2 * ldk + d);
            const __m256 c3 = _mm256_loadu_ps(k0 + 3 * ldk + d);
            a0 = _mm256_fmadd_ps(qa, c0, a0);
            a1 = _mm256_fmadd_ps(qa, c1, a1);
            a2 = _mm256_fmadd_ps(qa, c2, a2);
            a3 = _mm256_fmadd_ps(qa, c3, a3);
            b0 = _mm256_fmadd_ps(qb, c0, b0);
            b1 = _mm256_fmadd_ps(qb, c1, b1);
            b2 = _mm256_fmadd_ps(qb, c2, b2);
            b3 = _mm256_fmadd_ps(qb, c3, b3);
        }
        _mm_storeu_ps(s + j, hsum4(a0, a1, a2, a3));
        _mm_storeu_ps(s + nk + j, hsum4(b0, b1, b2, b3));
    }
    for (; j < nk; ++j) {
        s[j] = dot(q0, k + j * ldk, hd);
        s[nk + j] = dot(q1, k + j * ldk, hd);
    }
}

void scores(const float* q, size_t nq, const float* k, size_t ldk, size_t nk, size_t hd, float* s) {
    size_t r0 = 0;
    // Head dims that are not a multiple of 64 (the ViT's 80); the decoder's 128 keeps one row at
    // a time (same results either way).
    if (hd % 8 == 0 && hd % 64 != 0)
        for (; r0 + 2 <= nq; r0 += 2) scores_two_rows(q + r0 * hd, k, ldk, nk, hd, s + r0 * nk);
    for (size_t r = r0; r < nq; ++r) {
        const float* qr = q + r * hd;
        size_t j = 0;
        if (hd % 8 == 0)
            for (; j + 4 <= nk; j += 4) {
                const float* k0 = k + j * ldk;
                __m256 a0 = _mm256_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
                for (size_t d = 0; d < hd; d += 8) {
                    const __m256 qv = _mm256_loadu_ps(qr + d);
                    a0 = _mm256_fmadd_ps(qv, _mm256_loadu_ps(k0 + d), a0);
                    a1 = _mm256_fmadd_ps(qv, _mm256_loadu_ps(k0 + ldk + d), a1);
                    a2 = _mm256_fmadd_ps(qv, _mm256_loadu_ps(k0 + 2 * ldk + d), a2);
                    a3 = _mm256_fmadd_ps(qv, _mm256_loadu_ps(k0 + 3 * ldk + d), a3);
                }
                _mm_storeu_ps(s + r * nk + j, hsum4(a0, a1, a2, a3));
            }
        for (; j < nk; ++j) s[r * nk + j] = dot(qr, k + j * ldk, hd);
    }
}

// acc[0, 8*NB) += sum_j p_j v_j[0, 8*NB) with the accumulators held in NB registers.
template <int NB>
inline void pv_block(const float* pr, const float* v, size_t ldv, size_t nk, float* a) {
    __m256 s[NB];
    for (int u = 0; u < NB; ++u) s[u] = _mm256_loadu_ps(a + 8 * u);
    for (size_t j = 0; j < nk; ++j) {
        if (pr[j] == 0.0f) continue;  // masked key
        const __m256 b = _mm256_set1_ps(pr[j]);
        const float* vj = v + j * ldv;
        for (int u = 0; u < NB; ++u) s[u] = _mm256_fmadd_ps(b, _mm256_loadu_ps(vj + 8 * u), s[u]);
    }
    for (int u = 0; u < NB; ++u) _mm256_storeu_ps(a + 8 * u, s[u]);
}

// NR rows at once, for head dims a multiple of 8 but not of 64 (the ViT's 80, which pv_block
// covers as 64 + 16 in two passes over the keys): acc[r][0, 8*NB) += sum_j p[r][j] v_j[0, 8*NB),
// each V vector loaded once for NR rows (2 x 4 accumulators + 4 V vectors fit the 16 registers;
// the row-at-a-time form loads one V vector per FMA). Per (row, lane) the same FMA chain over j
// in order as pv_block; a key that all NR rows mask is skipped (adding 0 changes nothing).
// Measured (one thread, n = 576, 16 heads, hd 80, no mask): 181 -> 116 ms for the whole
// attention op. The -O2 build does not unroll nested loops over register arrays by itself.
template <int NR, int NB>
inline void pv_rows_block(const float* p, size_t ldp, const float* v, size_t ldv, size_t nk,
                          float* a, size_t lda) {
    __m256 s[NR][NB];
#pragma GCC unroll 8
    for (int r = 0; r < NR; ++r)
#pragma GCC unroll 8
        for (int u = 0; u < NB; ++u) s[r][u] = _mm256_loadu_ps(a + r * lda + 8 * u);
    for (size_t j = 0; j < nk; ++j) {
        bool any = false;
#pragma GCC unroll 8
        for (int r = 0; r < NR; ++r) any |= p[r * ldp + j] != 0.0f;
        if (!any) continue;
        const float* vj = v + j * ldv;
        __m256 vv[NB];
#pragma GCC unroll 8
        for (int u = 0; u < NB; ++u) vv[u] = _mm256_loadu_ps(vj + 8 * u);
#pragma GCC unroll 8
        for (int r = 0; r < NR; ++r) {
            const __m256 b = _mm256_set1_ps(p[r * ldp + j]);
#pragma GCC unroll 8
            for (int u = 0; u < NB; ++u) s[r][u] = _mm256_fmadd_ps(b, vv[u], s[r][u]);
        }
    }
#pragma GCC unroll 8
    for (int r = 0; r < NR; ++r)
#pragma GCC unroll 8
        for (int u = 0; u < NB; ++u) _mm256_storeu_ps(a + r * lda + 8 * u, s[r][u]);
}

template <int NR>
inline void pv_rows(const float* p, size_t nk, const float* v, size_t ldv, size_t hd, float* a) {
    size_t d = 0;
    for (; d + 32 <= hd; d += 32) pv_rows_block<NR, 4>(p, nk, v + d, ldv, nk, a + d, hd);
    switch ((hd - d) / 8) {
        case 3:
            pv_rows_block<NR, 3>(p, nk, v + d, ldv, nk, a + d, hd);
            break;
        case 2:
            pv_rows_block<NR, 2>(p, nk, v + d, ldv, nk, a + d, hd);
            break;
        case 1:
            pv_rows_block<NR, 1>(p, nk, v + d, ldv, nk, a + d, hd);
            break;
        default:
            break;
    }
}

void pv(const float* p, size_t nq, const float* v, size_t ldv, size_t nk, size_t hd, float* acc) {
    if (hd % 8 == 0 && hd % 64 != 0) {
        size_t r = 0;
        for (; r + 2 <= nq; r += 2) pv_rows<2>(p + r * nk, nk, v, ldv, hd, acc + r * hd);
        if (r < nq) pv_rows<1>(p + r * nk, nk, v, ldv, hd, acc + r * hd);
        return;
    }
    for (size_t r = 0; r < nq; ++r) {
        float* a = acc + r * hd;
        const float* pr = p + r * nk;
        size_t d = 0;
        for (; d + 64 <= hd; d += 64) pv_block<8>(pr, v + d, ldv, nk, a + d);
        switch ((hd - d) / 8) {
            case 7:
                pv_block<7>(pr, v + d, ldv, nk, a + d);
                break;
            case 6:
                pv_block<6>(pr, v + d, ldv, nk, a + d);
                break;
            case 5:
                pv_block<5>(pr, v + d, ldv, nk, a + d);
                break;
            case 4:
                pv_block<4>(pr, v + d, ldv, nk, a + d);
                break;
            case 3:
                pv_block<3>(pr, v + d, ldv, nk, a + d);
                break;
            case 2:
                pv_block<2>(pr, v + d, ldv, nk, a + d);
                break;
            case 1:
                pv_block<1>(pr, v + d, ldv, nk, a + d);
                break;
            default:
                break;
        }
        for (d += (hd - d) / 8 * 8; d < hd; ++d)
            for (size_t j = 0; j < nk; ++j) a[d] += pr[j] * v[j * ldv + d];
    }
}

// 256-bit vectors for attention_x86_impl.h's query-block tiles and exp_neg.
struct Vec8 {
    using V = __m256;
    static constexpr size_t kLanes = 8;
    static V zero() { return _mm256_setzero_ps(); }
    static V load(const float* p) { return _mm256_loadu_ps(p); }
    static void store(float* p, V v) { _mm256_storeu_ps(p, v); }
    static V set1(float x) { return _mm256_set1_ps(x); }
    static V fmadd(V a, V b, V c) { return _mm256_fmadd_ps(a, b, c); }
    static V fnmadd(V a, V b, V c) { return _mm256_fnmadd_ps(a, b, c); }
    static V mul(V a, V b) { return _mm256_mul_ps(a, b); }
    static V add(V a, V b) { return _mm256_add_ps(a, b); }
    static V sub(V a, V b) { return _mm256_sub_ps(a, b); }
    static V max(V a, V b) { return _mm256_max_ps(a, b); }
    static V round(V x) {
        return _mm256_round_ps(x, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    }
    static V pow2i(V n) {
        return _mm256_castsi256_ps(
            _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23));
    }
    static V lt(V a, V b) { return _mm256_cmp_ps(a, b, _CMP_LT_OQ); }
    static V eq(V a, V b) { return _mm256_cmp_ps(a, b, _CMP_EQ_OQ); }
    static V zero_where(V m, V v) { return _mm256_andnot_ps(m, v); }
};

float exp_sum(float* p, size_t n, float m) {
    const __m256 mv = _mm256_set1_ps(m);
    __m256 acc = _mm256_setzero_ps();
    size_t i = 0;
    for (; i + 8 <= n; i += 8) {
        const __m256 e = exp_neg<Vec8>(_mm256_sub_ps(_mm256_loadu_ps(p + i), mv));
        _mm256_storeu_ps(p + i, e);
        acc = _mm256_add_ps(acc, e);
    }
    float s = hsum(acc);
    for (; i < n; ++i) s += (p[i] = std::exp(p[i] - m));
    return s;
}

// 16 registers: scores 2 row vectors × 6 keys (12 accumulators + 2 q + 1 broadcast), p·v
// 2 row vectors × 6 dims.
void scores_cols8(const float* q, size_t ld, size_t nr, const float* k, size_t ldk, size_t nk,
                  size_t hd, float* st) {
    scores_cols<Vec8, 6>(q, ld, nr, k, ldk, nk, hd, st);
}
void softmax_cols8(float* st, size_t ld, size_t nr, size_t nk, float* m, float* sum, float* corr) {
    softmax_cols<Vec8>(st, ld, nr, nk, m, sum, corr);
}
void pv_cols8(const float* p, size_t ld, size_t nr, const float* v, size_t ldv, size_t nk,
              size_t hd, const float* corr, float* acc) {
    pv_cols<Vec8, 6>(p, ld, nr, v, ldv, nk, hd, corr, acc);
}

}  // namespace

namespace {

// Lanes [0, n) of a vector, n < 8.
inline __m256i tail_mask(size_t n) {
    return _mm256_cmpgt_epi32(_mm256_set1_epi32(static_cast<int>(n)),
                              _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
}

// Runs f(i, mask) over [0, n) in steps of 8, the last step with the lanes past n masked off;
// f loads with load(p, m) and stores with store(p, m, v).
inline __m256 load(const float* p, const __m256i* m) {
    return m ? _mm256_maskload_ps(p, *m) : _mm256_loadu_ps(p);
}
inline void store(float* p, const __m256i* m, __m256 v) {
    if (m)
        _mm256_maskstore_ps(p, *m, v);
    else
        _mm256_storeu_ps(p, v);
}
template <typename F>
inline void for_vectors(size_t n, F&& f) {
    size_t i = 0;
    for (; i + 8 <= n; i += 8) f(i, static_cast<const __m256i*>(nullptr));
    if (i < n) {
        const __m256i m = tail_mask(n - i);
        f(i, &m);
    }
}

// A value the compiler cannot see through, so a product stays rounded on its own (no fma
// contraction with a following add).
inline __m256 opaque(__m256 v) {
    __asm__("" : "+x"(v));
    return v;
}

void rms_norm_row(const float* x, size_t dim, const float* w, float eps, float* y) {
    // Index-order double sum, as the scalar path (x² is exact in double, so a contracted fma
    // rounds the same).
    double ss = 0;
    for (size_t i = 0; i < dim; ++i) ss += static_cast<double>(x[i]) * x[i];
    const __m256 inv =
        _mm256_set1_ps(static_cast<float>(1.0 / std::sqrt(ss / static_cast<double>(dim) + eps)));
    for_vectors(dim, [&](size_t i, const __m256i* m) {
        __m256 v = _mm256_mul_ps(load(x + i, m), inv);
        if (w) v = _mm256_mul_ps(v, load(w + i, m));
        store(y + i, m, v);
    });
}

void channel_rms_norm_row(const float* x, size_t c, const float* gamma, const float* bias,
                          float* y) {
    double ss = 0;
    for (size_t i = 0; i < c; ++i) ss += static_cast<double>(x[i]) * x[i];
    const __m256 inv = _mm256_set1_ps(
        static_cast<float>(std::sqrt(static_cast<double>(c)) / std::max(std::sqrt(ss), 1e-12)));
    for_vectors(c, [&](size_t i, const __m256i* m) {
        __m256 v = opaque(_mm256_mul_ps(_mm256_mul_ps(load(x + i, m), inv), load(gamma + i, m)));
        if (bias) v = _mm256_add_ps(v, load(bias + i, m));
        store(y + i, m, v);
    });
}

// expf of −x for 8 lanes, lane by lane with libm (the scalar path's values exactly).
inline __m256 exp_neg_libm(__m256 x) {
    alignas(32) float t[8];
    _mm256_store_ps(t, x);
    for (float& v : t) v = std::exp(-v);
    return _mm256_load_ps(t);
}

void silu_mul(const float* gate, const float* up, size_t n, float* y) {
    const __m256 one = _mm256_set1_ps(1.0f);
    for_vectors(n, [&](size_t i, const __m256i* m) {
        const __m256 g = load(gate + i, m);
        const __m256 s = _mm256_div_ps(g, _mm256_add_ps(one, exp_neg_libm(g)));
        store(y + i, m, _mm256_mul_ps(s, load(up + i, m)));
    });
}

void silu(const float* x, size_t n, float* y) {
    const __m256 one = _mm256_set1_ps(1.0f);
    for_vectors(n, [&](size_t i, const __m256i* m) {
        const __m256 g = load(x + i, m);
        store(y + i, m, _mm256_div_ps(g, _mm256_add_ps(one, exp_neg_libm(g))));
    });
}

void gelu(const float* x, size_t n, float* y) {
    const __m256 one = _mm256_set1_ps(1.0f), half = _mm256_set1_ps(0.5f),
                 rs2 = _mm256_set1_ps(0.70710678f);
    for_vectors(n, [&](size_t i, const __m256i* m) {
        const __m256 v = load(x + i, m);
        alignas(32) float t[8];
        _mm256_store_ps(t, _mm256_mul_ps(v, rs2));
        for (float& e : t) e = std::erf(e);
        const __m256 e = _mm256_add_ps(one, _mm256_load_ps(t));
        store(y + i, m, _mm256_mul_ps(_mm256_mul_ps(half, v), e));
    });
}

void add(const float* a, const float* b, size_t n, float* y) {
    for_vectors(n, [&](size_t i, const __m256i* m) {
        store(y + i, m, _mm256_add_ps(load(a + i, m), load(b + i, m)));
    });
}

void rope_row(float* x, size_t heads, size_t hd, const float* cos, const float* sin) {
    const size_t half = hd / 2;
    for (size_t h = 0; h < heads; ++h) {
        float* v = x + h * hd;
        for_vectors(half, [&](size_t j, const __m256i* m) {
            const __m256 a = load(v + j, m), b = load(v + half + j, m), c = load(cos + j, m),
                         s = load(sin + j, m);
            // Unfused, as the scalar path: a·c − b·s and b·c + a·s, each product rounded (GCC
            // would contract a mul and a sub of intrinsics into an fma; the barrier stops it).
            const __m256 ac = opaque(_mm256_mul_ps(a, c)), bs = opaque(_mm256_mul_ps(b, s)),
                         bc = opaque(_mm256_mul_ps(b, c)), as = opaque(_mm256_mul_ps(a, s));
            store(v + j, m, _mm256_sub_ps(ac, bs));
            store(v + half + j, m, _mm256_add_ps(bc, as));
        });
    }
}

}  // namespace

const OpKernels& op_kernels_avx2() {
    static const OpKernels k{&rms_norm_row, &channel_rms_norm_row,
                             &silu_mul,     &silu,
                             &gelu,         &add,
                             &rope_row,     &scores,
                             &pv,           &exp_sum,
                             &scores_cols8, &softmax_cols8,
                             &pv_cols8};
    return k;
}

}  // namespace lancet::kernels::detail
