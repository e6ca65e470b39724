// The query-block attention tiles of ops_kernels.h ("cols" form), written once over a vector
// type and included only by the per-ISA files (ops_avx2.cc with 256-bit vectors, ops_avx512.cc
// with 512-bit ones). Everything is in an anonymous namespace, so each ISA file gets its own copy
// compiled for its own target and the linker never picks one ISA's inline function for another.
//
// Lanes are query rows: a block of up to `ld` rows is held transposed (q[d*ld + r]), so
//  - S = Q·Kᵀ is an outer-product micro-kernel: a register block of KB keys × RV row vectors,
//    each k value broadcast once for the RV·lanes rows, each q vector loaded once for KB keys;
//  - the online softmax (running max, correction, sum) is plain vertical vector work per row;
//  - O += P·V is the same micro-kernel again: DB head dims × RV row vectors, each v value
//    broadcast once for all rows of the block.
// Per (row, key) and (row, dim) every path runs the same FMA chain in index order whatever the
// block's row count, so results never depend on where a thread's work starts.
#pragma once

#include <cstddef>
#include <limits>

namespace lancet::kernels::detail {
namespace {

// VT provides: V, kLanes, zero, load, store, set1, fmadd(a, b, c) = a·b + c, fnmadd(a, b, c) =
// c − a·b, mul, add, sub, max, round (to nearest even), pow2i(n) = 2^n for integral n in float
// lanes, lt / eq (a lane mask: a < b, a == b) and zero_where(mask, v).

// exp(x) for x <= 0: 2^n · poly(r), r = x − n ln2 in [−ln2/2, ln2/2] (ln2 in two parts, so the
// reduction is exact); relative error ~2e-7; 0 below −87 (and for −inf). One polynomial for every
// vector width, so the AVX2 and AVX-512 tables agree lane for lane.
template <class VT>
inline typename VT::V exp_neg(typename VT::V x) {
    using V = typename VT::V;
    const V lo = VT::set1(-87.0f);
    const auto underflow = VT::lt(x, lo);
    x = VT::max(x, lo);
    const V n = VT::round(VT::mul(x, VT::set1(1.44269504088896341f)));
    V r = VT::fnmadd(n, VT::set1(0.693359375f), x);
    r = VT::fnmadd(n, VT::set1(-2.12194440e-4f), r);
    V y = VT::set1(1.9875691500e-4f);
    y = VT::fmadd(y, r, VT::set1(1.3981999507e-3f));
    y = VT::fmadd(y, r, VT::set1(8.3334519073e-3f));
    y = VT::fmadd(y, r, VT::set1(4.1665795894e-2f));
    y = VT::fmadd(y, r, VT::set1(1.6666665459e-1f));
    y = VT::fmadd(y, r, VT::set1(5.0000001201e-1f));
    y = VT::fmadd(y, VT::mul(r, r), VT::add(r, VT::set1(1.0f)));
    return VT::zero_where(underflow, VT::mul(y, VT::pow2i(n)));
}

// x with its −inf lanes set to 0.
template <class VT>
inline typename VT::V zero_if_neg_inf(typename VT::V x) {
    return VT::zero_where(VT::eq(x, VT::set1(-std::numeric_limits<float>::infinity())), x);
}

// st[j*ld + r] = Σ_d q[d*ld + r] · k[j*ldk + d] for rows of RV vectors from r0 and KB keys.
template <class VT, int RV, int KB>
inline void scores_cols_block(const float* q, size_t ld, const float* k, size_t ldk, size_t hd,
                              float* st) {
    using V = typename VT::V;
    V acc[KB][RV];
#pragma GCC unroll 16
    for (int b = 0; b < KB; ++b)
#pragma GCC unroll 4
        for (int i = 0; i < RV; ++i) acc[b][i] = VT::zero();
    for (size_t d = 0; d < hd; ++d) {
        V qv[RV];
#pragma GCC unroll 4
        for (int i = 0; i < RV; ++i) qv[i] = VT::load(q + d * ld + i * VT::kLanes);
#pragma GCC unroll 16
        for (int b = 0; b < KB; ++b) {
            const V kv = VT::set1(k[b * ldk + d]);
#pragma GCC unroll 4
            for (int i = 0; i < RV; ++i) acc[b][i] = VT::fmadd(qv[i], kv, acc[b][i]);
        }
    }
#pragma GCC unroll 16
    for (int b = 0; b < KB; ++b)
#pragma GCC unroll 4
        for (int i = 0; i < RV; ++i) VT::store(st + b * ld + i * VT::kLanes, acc[b][i]);
}

// All nk keys for RV row vectors.
template <class VT, int RV, int KB>
inline void scores_cols_rows(const float* q, size_t ld, const float* k, size_t ldk, size_t nk,
                             size_t hd, float* st) {
    size_t j = 0;
    for (; j + KB <= nk; j += KB)
        scores_cols_block<VT, RV, KB>(q, ld, k + j * ldk, ldk, hd, st + j * ld);
    // The remainder (< KB keys) in halving blocks: 64 = 5·12 + 4 runs one 4-key block.
    if constexpr (KB > 1)
        if (j < nk)
            scores_cols_rows<VT, RV, KB / 2>(q, ld, k + j * ldk, ldk, nk - j, hd, st + j * ld);
}

template <class VT, int KB>
void scores_cols(const float* q, size_t ld, size_t nr, const float* k, size_t ldk, size_t nk,
                 size_t hd, float* st) {
    const size_t nv = (nr + VT::kLanes - 1) / VT::kLanes;
    size_t v = 0;
    for (; v + 2 <= nv; v += 2)
        scores_cols_rows<VT, 2, KB>(q + v * VT::kLanes, ld, k, ldk, nk, hd, st + v * VT::kLanes);
    if (v < nv)
        scores_cols_rows<VT, 1, KB>(q + v * VT::kLanes, ld, k, ldk, nk, hd, st + v * VT::kLanes);
}

// The online-softmax step over one key tile, per row lane: top = max(m, max_j s), corr =
// exp(m − top), s ← exp(s − top), sum ← sum·corr + Σ_j s, m ← top. A row that has seen no
// visible key yet (top = −inf) gets p = 0 and corr = 0 (its accumulator is still 0).
template <class VT>
void softmax_cols(float* st, size_t ld, size_t nr, size_t nk, float* m, float* sum, float* corr) {
    using V = typename VT::V;
    const size_t nv = (nr + VT::kLanes - 1) / VT::kLanes;
    for (size_t v = 0; v < nv; ++v) {
        const size_t o = v * VT::kLanes;
        const V m_old = VT::load(m + o);
        V top = m_old;
        for (size_t j = 0; j < nk; ++j) top = VT::max(top, VT::load(st + j * ld + o));
        const V base = zero_if_neg_inf<VT>(top);
        const V c = exp_neg<VT>(VT::sub(m_old, base));
        V s = VT::zero();
        for (size_t j = 0; j < nk; ++j) {
            const V p = exp_neg<VT>(VT::sub(VT::load(st + j * ld + o), base));
            VT::store(st + j * ld + o, p);
            s = VT::add(s, p);
        }
        VT::store(m + o, top);
        VT::store(corr + o, c);
        VT::store(sum + o, VT::add(VT::mul(VT::load(sum + o), c), s));
    }
}

// acc[d*ld + r] = acc[d*ld + r]·corr[r] + Σ_j v[j*ldv + d] · p[j*ld + r] for DB dims, RV vectors.
template <class VT, int RV, int DB>
inline void pv_cols_block(const float* p, size_t ld, const float* v, size_t ldv, size_t nk,
                          const float* corr, float* acc) {
    using V = typename VT::V;
    V a[DB][RV];
    V c[RV];
#pragma GCC unroll 4
    for (int i = 0; i < RV; ++i) c[i] = VT::load(corr + i * VT::kLanes);
#pragma GCC unroll 16
    for (int b = 0; b < DB; ++b)
#pragma GCC unroll 4
        for (int i = 0; i < RV; ++i)
            a[b][i] = VT::mul(VT::load(acc + b * ld + i * VT::kLanes), c[i]);
    for (size_t j = 0; j < nk; ++j) {
        V pv[RV];
#pragma GCC unroll 4
        for (int i = 0; i < RV; ++i) pv[i] = VT::load(p + j * ld + i * VT::kLanes);
        const float* vj = v + j * ldv;
#pragma GCC unroll 16
        for (int b = 0; b < DB; ++b) {
            const V vv = VT::set1(vj[b]);
#pragma GCC unroll 4
            for (int i = 0; i < RV; ++i) a[b][i] = VT::fmadd(vv, pv[i], a[b][i]);
        }
    }
#pragma GCC unroll 16
    for (int b = 0; b < DB; ++b)
#pragma GCC unroll 4
        for (int i = 0; i < RV; ++i) VT::store(acc + b * ld + i * VT::kLanes, a[b][i]);
}

template <class VT, int RV, int DB>
inline void pv_cols_rows(const float* p, size_t ld, const float* v, size_t ldv, size_t nk,
                         size_t hd, const float* corr, float* acc) {
    size_t d = 0;
    for (; d + DB <= hd; d += DB)
        pv_cols_block<VT, RV, DB>(p, ld, v + d, ldv, nk, corr, acc + d * ld);
    if constexpr (DB > 1)
        if (d < hd) pv_cols_rows<VT, RV, DB / 2>(p, ld, v + d, ldv, nk, hd - d, corr, acc + d * ld);
}

template <class VT, int DB>
void pv_cols(const float* p, size_t ld, size_t nr, const float* v, size_t ldv, size_t nk, size_t hd,
             const float* corr, float* acc) {
    const size_t nv = (nr + VT::kLanes - 1) / VT::kLanes;
    size_t r = 0;
    for (; r + 2 <= nv; r += 2)
        pv_cols_rows<VT, 2, DB>(p + r * VT::kLanes, ld, v, ldv, nk, hd, corr + r * VT::kLanes,
                                acc + r * VT::kLanes);
    if (r < nv)
        pv_cols_rows<VT, 1, DB>(p + r * VT::kLanes, ld, v, ldv, nk, hd, corr + r * VT::kLanes,
                                acc + r * VT::kLanes);
}

}  // namespace
}  // namespace lancet::kernels::detail
