// Bf16 attention on Intel AMX tiles (AttnPrecision::Bf16 on Isa::Amx; ops.h states the
// arithmetic and its error bound, ops_kernels.h the packed K and V layouts).
//
// One task is a block of up to 32 query rows of one head. Its rows are rounded to bf16 once
// (qb [32][hc·32], zero past hd), then per key tile of 128 keys (64 for short key ranges; a tile
// starts at a multiple of 32, so the packed blocks line up):
//  - S = Q·Kᵀ on tiles: C 16 rows × 16 keys (f32) += A (16 rows × 32 dims, bf16 pairs) · B (the
//    packed key block: 16 dim pairs × 16 keys). 2 row halves × 2 key blocks per pass (tiles 0-3),
//    the Q chunks in tiles 4-5, the key blocks in 6-7; one pass per 32 keys. S is stored to
//    st [32][keys of the tile] f32.
//  - the mask (the driver's rule, only for rows whose visible run does not cover the tile), the
//    scale, and the online softmax in AVX-512 (f32, attention_x86_impl.h's exp): per row the tile
//    maximum, then per 16 rows at once the new running maximum and the correction, then per row
//    p = exp(scale·s − m), the row sum of the unrounded p, and p rounded to bf16 into pb (the A
//    operand of P·V: 32 keys of a row per tile row);
//  - the accumulator rows whose maximum moved are scaled in memory, then O += P·V on tiles: C =
//    acc (16 rows × 16 dims) loaded, += A (16 rows × 32 keys of P) · B (the packed V block: 16
//    key pairs × 16 dims), over the tile's 32-key parts, stored back.
// Rows past nr (a partial block) are zero queries: computed, never stored. Keys past the call's
// last key are zero in the packed K and V and −inf in S, so they add exactly 0.
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#pragma GCC diagnostic ignored "-Wuninitialized"
#endif

#include <immintrin.h>

#include <algorithm>
#include <cstring>
#include <limits>
#include <vector>

#include "kernels/amx_tiles.h"
#include "kernels/attention_x86_impl.h"
#include "kernels/ops_kernels.h"
#include "kernels/vec_avx512.h"

namespace lancet::kernels::detail {
namespace {

// Keys per step of the online softmax: 128 for tasks that see many keys (half the accumulator
// round trips of 64 per key; measured 1.12x on the generation block), 64 for short ranges (the
// ViT's 64-key windows, the diagonal of causal blocks).
constexpr size_t kKeys = 128;
constexpr size_t kShortKeys = 64;
constexpr size_t kRowsMax = 32;     // query rows per task: 2 A tiles
constexpr size_t kTileWords = 256;  // u32 words of one 16 × 64-byte tile

size_t kchunks(size_t hd) { return (hd + 31) / 32; }  // 32-dim chunks of S's reduction
// 16-dim chunks of the output, rounded up to an even count (tiles 0-3 take two at a time).
size_t vchunks(size_t hd) { return ((hd + 15) / 16 + 1) & ~size_t{1}; }
// Keys held in the packed layouts: every 64-key tile that starts at a multiple of 32 below the
// last key lies inside.
size_t padded_keys(size_t keys) { return (keys + 31) / 32 * 32 + kKeys - 32; }

size_t k_blocks(size_t keys) { return padded_keys(keys) / 16; }
size_t v_blocks(size_t keys) { return padded_keys(keys) / 32; }
size_t k_words(size_t keys, size_t hd) { return k_blocks(keys) * kchunks(hd) * kTileWords; }
size_t v_words(size_t keys, size_t hd) { return v_blocks(keys) * vchunks(hd) * kTileWords; }

// The lanes of a 16-float vector at column d that lie below n.
inline __mmask16 lanes_below(size_t n, size_t d) {
    if (n <= d) return 0;
    return n - d >= 16 ? static_cast<__mmask16>(0xffff)
                       : static_cast<__mmask16>((1u << (n - d)) - 1);
}

// y[0, n_pad) = bf16(x[0, n)) then zeros (n_pad a multiple of 32). vcvtne2ps2bf16 rounds to
// nearest even (denormal inputs flush to 0).
inline void row_to_bf16(const float* x, size_t n, size_t n_pad, uint16_t* y) {
    for (size_t d = 0; d < n_pad; d += 32) {
        const __m512 a = _mm512_maskz_loadu_ps(lanes_below(n, d), x + d);
        const __m512 b = _mm512_maskz_loadu_ps(lanes_below(n, d + 16), x + d + 16);
        _mm512_storeu_si512(y + d, (__m512i)_mm512_cvtne2ps_pbh(b, a));
    }
}

// Key rows a0 .. a0 + count − 1 of x (ld floats apart, hd dims) rounded by row_to_bf16 into y
// (rows `width` bf16 apart); rows of keys at or past `keys` are zero.
inline void keys_to_bf16(const float* x, size_t ld, size_t keys, size_t hd, size_t a0, size_t count,
                         size_t width, uint16_t* y) {
    for (size_t j = 0; j < count; ++j) {
        if (a0 + j < keys)
            row_to_bf16(x + (a0 + j) * ld, hd, width, y + j * width);
        else
            std::fill_n(y + j * width, width, uint16_t{0});
    }
}

void pack_k(const float* k, size_t ldk, size_t keys, size_t hd, size_t b0, size_t b1,
            uint32_t* kp) {
    const size_t hc = kchunks(hd), hcp = hc * 32;
    std::vector<uint16_t> rows(16 * hcp);
    for (size_t kb = b0; kb < b1; ++kb) {
        keys_to_bf16(k, ldk, keys, hd, kb * 16, 16, hcp, rows.data());
        // A 32-bit transpose per chunk: tile row r holds dim pair r of the 16 keys.
        uint32_t* dst = kp + kb * hc * kTileWords;
        for (size_t c = 0; c < hc; ++c)
            for (size_t r = 0; r < 16; ++r)
                for (size_t j = 0; j < 16; ++j) {
                    uint32_t w;
                    std::memcpy(&w, &rows[j * hcp + c * 32 + 2 * r], 4);
                    dst[(c * 16 + r) * 16 + j] = w;
                }
    }
}

void pack_v(const float* v, size_t ldv, size_t keys, size_t hd, size_t b0, size_t b1,
            uint32_t* vp) {
    const size_t dc = vchunks(hd), dcp = dc * 16, rp = (dcp + 31) / 32 * 32;
    std::vector<uint16_t> rows(32 * rp);
    for (size_t kb = b0; kb < b1; ++kb) {
        keys_to_bf16(v, ldv, keys, hd, kb * 32, 32, rp, rows.data());
        // Tile row r interleaves keys 2r and 2r + 1 per output column.
        uint32_t* dst = vp + kb * dc * kTileWords;
        for (size_t c = 0; c < dc; ++c)
            for (size_t r = 0; r < 16; ++r)
                for (size_t n = 0; n < 16; ++n)
                    dst[(c * 16 + r) * 16 + n] = uint32_t{rows[2 * r * rp + c * 16 + n]} |
                                                 uint32_t{rows[(2 * r + 1) * rp + c * 16 + n]}
                                                     << 16;
    }
}

size_t scratch_floats(size_t hd) {
    // qb, st, pb, acc, then m, l, corr, base, tmax; every part a multiple of 16 floats.
    return kRowsMax * kchunks(hd) * 16 + kRowsMax * kKeys + kRowsMax * kKeys / 2 +
           kRowsMax * vchunks(hd) * 16 + 5 * kRowsMax;
}

// exp(x) for x <= 0 (and −inf): attention_x86_impl.h's exp_neg (the same reduction and
// polynomial, the same results: 2^n is a normal number for n >= −126) with 2^n applied by
// vscalefps and the underflow to 0 folded into its mask.
inline __m512 exp_neg_fast(__m512 x) {
    const __m512 lo = _mm512_set1_ps(-87.0f);
    const __mmask16 keep = _mm512_cmp_ps_mask(x, lo, _CMP_NLT_UQ);
    x = _mm512_max_ps(x, lo);
    const __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(1.44269504088896341f)),
                                          _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693359375f), x);
    r = _mm512_fnmadd_ps(n, _mm512_set1_ps(-2.12194440e-4f), r);
    __m512 y = _mm512_set1_ps(1.9875691500e-4f);
    y = _mm512_fmadd_ps(y, r, _mm512_set1_ps(1.3981999507e-3f));
    y = _mm512_fmadd_ps(y, r, _mm512_set1_ps(8.3334519073e-3f));
    y = _mm512_fmadd_ps(y, r, _mm512_set1_ps(4.1665795894e-2f));
    y = _mm512_fmadd_ps(y, r, _mm512_set1_ps(1.6666665459e-1f));
    y = _mm512_fmadd_ps(y, r, _mm512_set1_ps(5.0000001201e-1f));
    y = _mm512_fmadd_ps(y, _mm512_mul_ps(r, r), _mm512_add_ps(r, _mm512_set1_ps(1.0f)));
    return _mm512_maskz_scalef_ps(keep, y, n);
}

void begin() { amx::load_config(amx::full_tiles()); }
void end() { amx::release(); }

// st [RH·16][KT] = Q·Kᵀ for the KT keys from 16-key block kb0 on.
template <int RH, size_t KT>
inline void scores_tile(const uint16_t* qb, size_t hc, const uint32_t* kp, size_t kb0, float* st) {
    const size_t qstride = hc * 64;  // bytes per qb row
    for (size_t t = 0; t < KT / 32; ++t) {
        const uint32_t* b0 = kp + (kb0 + 2 * t) * hc * kTileWords;
        const uint32_t* b1 = b0 + hc * kTileWords;
        amx::zero_c<RH>();
        for (size_t c = 0; c < hc; ++c) {
            LANCET_TILE_LOAD(4, qb + c * 32, qstride);
            if constexpr (RH == 2) LANCET_TILE_LOAD(5, qb + 16 * hc * 32 + c * 32, qstride);
            LANCET_TILE_LOAD(6, b0 + c * kTileWords, 64);
            LANCET_TILE_LOAD(7, b1 + c * kTileWords, 64);
            amx::dpbf16ps_c<RH>();
        }
        amx::store_c<RH>(st + 32 * t, KT);
    }
}

// acc [RH·16][dc·16] += P (pb [RH·16][KT] bf16) · V (the KT / 32 blocks from vb0 on).
template <int RH, size_t KT>
inline void pv_tile(const uint16_t* pb, const uint32_t* vp, size_t vb0, size_t dc, float* acc) {
    const size_t ld = dc * 16;
    for (size_t cp = 0; cp < dc; cp += 2) {
        float* a0 = acc + cp * 16;
        amx::load_c<RH>(a0, ld);
        for (size_t kc = 0; kc < KT / 32; ++kc) {
            LANCET_TILE_LOAD(4, pb + kc * 32, KT * 2);
            if constexpr (RH == 2) LANCET_TILE_LOAD(5, pb + 16 * KT + kc * 32, KT * 2);
            const uint32_t* b = vp + ((vb0 + kc) * dc + cp) * kTileWords;
            LANCET_TILE_LOAD(6, b, 64);
            LANCET_TILE_LOAD(7, b + kTileWords, 64);
            amx::dpbf16ps_c<RH>();
        }
        amx::store_c<RH>(a0, ld);
    }
}

template <int RH, size_t KT>
void run_task(const AttnAmxTask& t) {
    using VT = Vec16;
    constexpr size_t rows = 16 * RH;
    const size_t hd = t.hd, hc = kchunks(hd), hcp = hc * 32, dc = vchunks(hd), ld = dc * 16;
    float* sc = t.scratch;
    uint16_t* qb = reinterpret_cast<uint16_t*>(sc);
    sc += kRowsMax * hc * 16;
    float* st = sc;
    sc += kRowsMax * kKeys;
    uint16_t* pb = reinterpret_cast<uint16_t*>(sc);
    sc += kRowsMax * kKeys / 2;
    float* acc = sc;
    sc += kRowsMax * ld;
    float* m = sc;
    float* l = m + kRowsMax;
    float* corr = l + kRowsMax;
    float* base = corr + kRowsMax;
    float* tmax = base + kRowsMax;

    for (size_t r = 0; r < rows; ++r) {
        if (r < t.nr)
            row_to_bf16(t.q[r], hd, hcp, qb + r * hcp);
        else
            std::fill_n(qb + r * hcp, hcp, uint16_t{0});
    }
    std::fill_n(acc, rows * ld, 0.0f);
    std::fill_n(m, rows, -std::numeric_limits<float>::infinity());
    std::fill_n(l, rows, 0.0f);
    const __m512 scale = _mm512_set1_ps(t.scale);
    const __m512 neg_inf = _mm512_set1_ps(-std::numeric_limits<float>::infinity());

    for (size_t a0 = t.key_begin / 32 * 32; a0 < t.key_end; a0 += KT) {
        const size_t nk = std::min(KT, t.key_end - a0);
        scores_tile<RH, KT>(qb, hc, t.kp, a0 / 16, st);
        for (size_t r = 0; r < t.nr; ++r) {
            const size_t qi = t.qi[r];
            if (a0 < t.lo[qi] || a0 + nk > t.dense[qi]) t.mask(t.env, st + r * KT, qi, a0, nk);
        }
        constexpr size_t kVecs = KT / 16;
        __mmask16 valid[kVecs];
        for (size_t i = 0; i < kVecs; ++i) valid[i] = lanes_below(nk, 16 * i);
        // Each row's maximum of the scaled scores, keys past the tile's end at −inf (the scale is
        // positive, so the maximum of the rounded products is the rounded product of the
        // maximum).
        for (size_t r = 0; r < rows; ++r) {
            const float* sr = st + r * KT;
            __m512 top = neg_inf;
            for (size_t i = 0; i < kVecs; ++i)
                top = _mm512_max_ps(top, _mm512_mask_load_ps(neg_inf, valid[i], sr + 16 * i));
            tmax[r] = _mm512_reduce_max_ps(top) * t.scale;
        }
        // The running maximum and the correction, 16 rows at a time (a row with nothing visible
        // yet keeps m = −inf, base 0, corr 0).
        for (size_t r = 0; r < rows; r += 16) {
            const __m512 mo = _mm512_load_ps(m + r);
            const __m512 top = _mm512_max_ps(mo, _mm512_load_ps(tmax + r));
            const __m512 b = zero_if_neg_inf<VT>(top);
            _mm512_store_ps(corr + r, exp_neg_fast(_mm512_sub_ps(mo, b)));
            _mm512_store_ps(m + r, top);
            _mm512_store_ps(base + r, b);
        }
        // p = exp(scale·s − m); l = l·corr + Σ p (unrounded); p rounded to bf16 for P·V.
        for (size_t r = 0; r < rows; ++r) {
            const float* sr = st + r * KT;
            const __m512 b = _mm512_set1_ps(base[r]);
            __m512 sum = _mm512_setzero_ps();
            uint16_t* pr = pb + r * KT;
            for (size_t i = 0; i < kVecs; i += 2) {
                const __m512 p0 = exp_neg_fast(
                    _mm512_fmsub_ps(_mm512_mask_load_ps(neg_inf, valid[i], sr + 16 * i), scale, b));
                const __m512 p1 = exp_neg_fast(_mm512_fmsub_ps(
                    _mm512_mask_load_ps(neg_inf, valid[i + 1], sr + 16 * i + 16), scale, b));
                sum = _mm512_add_ps(sum, _mm512_add_ps(p0, p1));
                _mm512_store_si512(pr + 16 * i, (__m512i)_mm512_cvtne2ps_pbh(p1, p0));
            }
            l[r] = l[r] * corr[r] + _mm512_reduce_add_ps(sum);
        }
        for (size_t r = 0; r < rows; ++r)
            if (corr[r] != 1.0f) {
                const __m512 c = _mm512_set1_ps(corr[r]);
                float* ar = acc + r * ld;
                for (size_t d = 0; d < ld; d += 16)
                    _mm512_store_ps(ar + d, _mm512_mul_ps(_mm512_load_ps(ar + d), c));
            }
        pv_tile<RH, KT>(pb, t.vp, a0 / 32, dc, acc);
    }
    for (size_t r = 0; r < t.nr; ++r) {
        const __m512 inv = _mm512_set1_ps(1.0f / l[r]);
        const float* ar = acc + r * ld;
        float* o = t.out[r];
        for (size_t d = 0; d < hd; d += 16)
            _mm512_mask_storeu_ps(o + d, lanes_below(hd, d),
                                  _mm512_mul_ps(_mm512_load_ps(ar + d), inv));
    }
}

void task(const AttnAmxTask& t) {
    const bool many = t.key_end - t.key_begin >= 4 * kKeys;
    if (t.nr > 16)
        many ? run_task<2, kKeys>(t) : run_task<2, kShortKeys>(t);
    else
        many ? run_task<1, kKeys>(t) : run_task<1, kShortKeys>(t);
}

}  // namespace

const AttnAmxKernels& attn_amx_kernels_amx() {
    static const AttnAmxKernels k{&k_words, &v_words,        &k_blocks, &v_blocks, &pack_k,
                                  &pack_v,  &scratch_floats, &begin,    &end,      &task};
    return k;
}

}  // namespace lancet::kernels::detail
