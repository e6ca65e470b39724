// BF16 weights x bf16-rounded activations with vdpbf16ps (AVX-512 BF16): a GEMV over pairs of
// 8-row blocks for n <= kGemvMaxRows and a 12x32 panel GEMM above. The weight stays in the BF16
// repacked layout ([block][in][8], linear.h); the kernels interleave columns k and k+1 of a row
// into one 32-bit pair in registers (GEMV) or once per L1 panel (GEMM), which is what vdpbf16ps
// multiplies against a pair (x[k], x[k+1]).
//
// Arithmetic (linear.h, Bf16Act::Bf16): x̃ = f32_to_bf16(x) (round to nearest even, the same
// integer rounding as core/numeric.h, so every path rounds identically); each vdpbf16ps adds the
// two exact products of a pair to an f32 accumulator (denormal inputs and results flushed to zero
// by the instruction). Columns past `in` are zero pairs. Each output is produced by one thread
// with a fixed instruction sequence, so results do not depend on the thread count.
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#endif

#include <immintrin.h>

#include <algorithm>
#include <cstring>
#include <utility>
#include <vector>

#include "kernels/linear_bf16_x86_impl.h"
#include "kernels/linear_kernels.h"

namespace lancet::kernels::detail {
namespace {

using bf16x::round_row;

inline __m512 dp(__m512 acc, __m512i a, __m512i b) {
    return _mm512_dpbf16_ps(acc, (__m512bh)a, (__m512bh)b);
}

constexpr size_t kPrefetchBytes = 2048;  // as the f32/int4 GEMV (linear_avx512.cc)

// ---- GEMV ------------------------------------------------------------------------------------

// 64 bytes of a block = columns k..k+3 of its 8 rows ([k][8] u16). Permuted so that 32-bit lane
// 2j holds (w[k][j], w[k+1][j]) and lane 2j+1 (w[k+2][j], w[k+3][j]); a broadcast 64-bit
// (x[k], x[k+1], x[k+2], x[k+3]) then pairs with it, and lanes 2j + 2j+1 sum to row j.
inline __m512i gemv_index() {
    alignas(64) uint16_t idx[32];
    for (int j = 0; j < 8; ++j)
        for (int t = 0; t < 4; ++t) idx[4 * j + t] = static_cast<uint16_t>(8 * t + j);
    return _mm512_load_si512(idx);
}

// out[r][0..16) = rows of blocks a (0..7) and b (8..15) for x rows r < NR. xb: bf16 rows of
// ldx (a multiple of 4) elements, zero past in.
template <int NR>
void gemv_bf16_pair(const PackedView& p, size_t ba, size_t bb, const uint16_t* xb, size_t ldx,
                    float* out) {
    constexpr int U = NR == 1 ? 4 : NR == 2 ? 2 : 1;  // >= 6 accumulation chains in flight
    const size_t in = p.in;
    const uint16_t* wa = static_cast<const uint16_t*>(p.data) + ba * in * kRowBlock;
    const uint16_t* wb = static_cast<const uint16_t*>(p.data) + bb * in * kRowBlock;
    const __m512i idx = gemv_index();
    __m512 acc[NR][2][U];
#pragma GCC unroll 8
    for (int r = 0; r < NR; ++r)
#pragma GCC unroll 8
        for (int u = 0; u < U; ++u) acc[r][0][u] = acc[r][1][u] = _mm512_setzero_ps();
    auto step = [&](size_t k, int u, __mmask32 m) {
        const __m512i a = _mm512_permutexvar_epi16(idx, _mm512_maskz_loadu_epi16(m, wa + k * 8));
        const __m512i b = _mm512_permutexvar_epi16(idx, _mm512_maskz_loadu_epi16(m, wb + k * 8));
#pragma GCC unroll 8
        for (int r = 0; r < NR; ++r) {
            long long xq;
            std::memcpy(&xq, xb + r * ldx + k, 8);
            const __m512i xv = _mm512_set1_epi64(xq);
            acc[r][0][u] = dp(acc[r][0][u], a, xv);
            acc[r][1][u] = dp(acc[r][1][u], b, xv);
        }
    };
    size_t k = 0;
    for (; k + 4 * U <= in; k += 4 * U) {
        // 4U columns of a block are 64U bytes: prefetch them kPrefetchBytes ahead.
        for (int u = 0; u < U; ++u) {
            _mm_prefetch(reinterpret_cast<const char*>(wa + k * 8) + 64 * u + kPrefetchBytes,
                         _MM_HINT_T0);
            _mm_prefetch(reinterpret_cast<const char*>(wb + k * 8) + 64 * u + kPrefetchBytes,
                         _MM_HINT_T0);
        }
#pragma GCC unroll 8
        for (int u = 0; u < U; ++u) step(k + 4 * u, u, ~__mmask32{0});
    }
    for (; k < in; k += 4) {
        const size_t left = std::min<size_t>(4, in - k);
        step(k, 0, left == 4 ? ~__mmask32{0} : static_cast<__mmask32>((1u << (8 * left)) - 1));
    }
#pragma GCC unroll 8
    for (int r = 0; r < NR; ++r)
        for (int h = 0; h < 2; ++h) {
            __m512 s = acc[r][h][0];
            for (int u = 1; u < U; ++u) s = _mm512_add_ps(s, acc[r][h][u]);
            // Lanes 2j and 2j+1 are row j: add neighbours, keep the even lanes.
            s = _mm512_add_ps(s, _mm512_permute_ps(s, 0xB1));
            const __m512 even = _mm512_permutexvar_ps(
                _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 0, 2, 4, 6, 8, 10, 12, 14), s);
            _mm256_storeu_ps(out + r * 16 + 8 * h, _mm512_castps512_ps256(even));
        }
}

template <int NR>
void gemv_rows(const PackedView& p, size_t b, size_t bb, const uint16_t* xb, size_t ldx,
               float* out) {
    gemv_bf16_pair<NR>(p, b, bb, xb, ldx, out);
}

void gemv(const float* x, size_t n, const PackedView& p, const float* bias, float* y,
          ThreadPool& pool) {
    const size_t in = p.in, ldx = (in + 3) / 4 * 4;
    thread_local std::vector<uint16_t> xbuf;
    if (xbuf.size() < n * ldx) xbuf.resize(n * ldx);
    for (size_t r = 0; r < n; ++r) round_row(x + r * in, in, xbuf.data() + r * ldx, ldx);
    const uint16_t* xb = xbuf.data();
    pool.parallel_for(
        p.n_blocks,
        [&](size_t b0, size_t b1) {
            alignas(64) float out[4 * 16];
            for (size_t b = b0; b < b1; b += 2) {
                const size_t bb = b + 1 < b1 ? b + 1 : b;  // odd tail: compute b twice
                for (size_t r0 = 0; r0 < n; r0 += 4) {
                    const size_t nr = std::min<size_t>(4, n - r0);
                    const uint16_t* xr = xb + r0 * ldx;
                    switch (nr) {
                        case 1:
                            gemv_rows<1>(p, b, bb, xr, ldx, out);
                            break;
                        case 2:
                            gemv_rows<2>(p, b, bb, xr, ldx, out);
                            break;
                        case 3:
                            gemv_rows<3>(p, b, bb, xr, ldx, out);
                            break;
                        default:
                            gemv_rows<4>(p, b, bb, xr, ldx, out);
                            break;
                    }
                    store_block_pair(out, nr, r0, b, bb, p.out, bias, y);
                }
            }
        },
        2);
}

// ---- GEMM: 32-output x kc panels of bf16 pairs, 12x32 register tiles -------------------------

constexpr size_t kPanel = 32;
constexpr size_t kMr = 12;

// c[MR][32] (+)= x̃[MR][2·kp] · panel. panel: u32 [kp][32] pairs (w[o][2k], w[o][2k+1]);
// x: bf16 rows of ldx elements (pairs read as u32). init: start from bias32.
template <int MR>
void micro_kernel(const uint16_t* x, size_t ldx, const uint32_t* panel, size_t kp, float* c,
                  size_t ldc, bool init, const float* bias32) {
    __m512 c0[MR], c1[MR];
#pragma GCC unroll 16
    for (int i = 0; i < MR; ++i) {
        c0[i] = init ? _mm512_load_ps(bias32) : _mm512_loadu_ps(c + i * ldc);
        c1[i] = init ? _mm512_load_ps(bias32 + 16) : _mm512_loadu_ps(c + i * ldc + 16);
    }
    for (size_t k = 0; k < kp; ++k) {
        const __m512i a = _mm512_load_si512(panel + k * kPanel);
        const __m512i b = _mm512_load_si512(panel + k * kPanel + 16);
#pragma GCC unroll 16
        for (int i = 0; i < MR; ++i) {
            int xv;
            std::memcpy(&xv, x + i * ldx + 2 * k, 4);
            const __m512i xb = _mm512_set1_epi32(xv);
            c0[i] = dp(c0[i], a, xb);
            c1[i] = dp(c1[i], b, xb);
        }
    }
#pragma GCC unroll 16
    for (int i = 0; i < MR; ++i) {
        _mm512_storeu_ps(c + i * ldc, c0[i]);
        _mm512_storeu_ps(c + i * ldc + 16, c1[i]);
    }
}

template <int... MR>
void micro_dispatch(std::integer_sequence<int, MR...>, size_t mr, const uint16_t* x, size_t ldx,
                    const uint32_t* panel, size_t kp, float* c, size_t ldc, bool init,
                    const float* bias32) {
    ((mr == size_t(MR + 1) ? micro_kernel<MR + 1>(x, ldx, panel, kp, c, ldc, init, bias32)
                           : void()),
     ...);
}

// Columns [k0, k0+kc) of block b as pairs into panel columns [8j, 8j+8) (zeros past the last
// block or past in).
void fill_panel(const PackedView& p, size_t b, size_t j, size_t k0, size_t kc, uint32_t* panel) {
    const size_t in = p.in, kp = (kc + 1) / 2;
    uint32_t* dst = panel + 8 * j;
    if (b >= p.n_blocks) {
        for (size_t k = 0; k < kp; ++k)
            _mm256_store_si256(reinterpret_cast<__m256i*>(dst + k * kPanel),
                               _mm256_setzero_si256());
        return;
    }
    const uint16_t* w = static_cast<const uint16_t*>(p.data) + (b * in + k0) * kRowBlock;
    // u16 r of a pair vector = column k row r/2 (even r) or column k+1 row r/2 (odd r).
    alignas(32) static constexpr uint16_t kIdx[16] = {0, 8,  1, 9,  2, 10, 3, 11,
                                                      4, 12, 5, 13, 6, 14, 7, 15};
    const __m256i idx = _mm256_load_si256(reinterpret_cast<const __m256i*>(kIdx));
    for (size_t k = 0; k < kc / 2; ++k)
        _mm256_store_si256(
            reinterpret_cast<__m256i*>(dst + k * kPanel),
            _mm256_permutexvar_epi16(
                idx, _mm256_loadu_si256(reinterpret_cast<const __m256i*>(w + 2 * k * kRowBlock))));
    if (kc % 2)  // the last column pairs with a zero
        _mm256_store_si256(
            reinterpret_cast<__m256i*>(dst + (kc / 2) * kPanel),
            _mm256_permutexvar_epi16(
                idx, _mm256_zextsi128_si256(_mm_loadu_si128(
                         reinterpret_cast<const __m128i*>(w + (kc - 1) * kRowBlock)))));
}

void gemm(const float* x, size_t n, const PackedView& p, const float* bias, float* y,
          ThreadPool& pool) {
    const size_t in = p.in, out = p.out;
    const size_t n_panels = (p.n_blocks + 3) / 4;
    // Work items: (row chunk of kNc, panel), panel fastest, so a narrow layer (the VAE's 32- and
    // 128-channel convolutions: one to four panels) still spreads over every thread.
    const size_t n_row_chunks = (n + kNc - 1) / kNc;
    pool.parallel_for(n_row_chunks * n_panels, [&](size_t t0, size_t t1) {
        alignas(64) uint32_t panel[(kKc / 2) * kPanel];
        alignas(64) float bias32[kPanel];
        alignas(64) float tile[kMr * kPanel];
        // The x chunk as bf16 rows of kKc (even) elements: 12 rows of a tile read as 12
        // sequential streams of 512 bytes.
        alignas(64) uint16_t xpack[kNc * kKc];
        for (size_t t = t0; t < t1;) {
            const size_t rc = t / n_panels, pp_begin = t % n_panels;
            const size_t pp_end = std::min(n_panels, pp_begin + (t1 - t));
            const size_t r0 = rc * kNc, nr = std::min(kNc, n - r0);
            for (size_t k0 = 0; k0 < in; k0 += kKc) {
                const size_t kc = std::min(kKc, in - k0), kp = (kc + 1) / 2;
                for (size_t r = 0; r < nr; ++r)
                    round_row(x + (r0 + r) * in + k0, kc, xpack + r * kKc, 2 * kp);
                for (size_t pp = pp_begin; pp < pp_end; ++pp) {
                    const size_t o0 = kPanel * pp;
                    const size_t cols = std::min(kPanel, out - o0);
                    for (size_t j = 0; j < 4; ++j) fill_panel(p, 4 * pp + j, j, k0, kc, panel);
                    for (size_t j = 0; j < kPanel; ++j)
                        bias32[j] = bias && j < cols ? bias[o0 + j] : 0.0f;
                    for (size_t i = 0; i < nr; i += kMr) {
                        const size_t mr = std::min(kMr, nr - i);
                        const uint16_t* xi = xpack + i * kKc;
                        float* yi = y + (r0 + i) * out + o0;
                        const auto seq = std::make_integer_sequence<int, kMr>{};
                        if (cols == kPanel) {
                            micro_dispatch(seq, mr, xi, kKc, panel, kp, yi, out, k0 == 0, bias32);
                            continue;
                        }
                        if (k0 != 0)
                            for (size_t r = 0; r < mr; ++r)
                                std::memcpy(tile + r * kPanel, yi + r * out, cols * sizeof(float));
                        micro_dispatch(seq, mr, xi, kKc, panel, kp, tile, kPanel, k0 == 0, bias32);
                        for (size_t r = 0; r < mr; ++r)
                            std::memcpy(yi + r * out, tile + r * kPanel, cols * sizeof(float));
                    }
                }
            }
            t += pp_end - pp_begin;
        }
    });
}

}  // namespace

void bf16dot_avx512(const float* x, size_t n, const PackedView& p, const float* bias, float* y,
                    ThreadPool& pool) {
    if (n <= kGemvMaxRows)
        gemv(x, n, p, bias, y, pool);
    else
        gemm(x, n, p, bias, y, pool);
}

}  // namespace lancet::kernels::detail
