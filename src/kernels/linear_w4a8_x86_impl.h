// 256-bit W4A8 kernels (int8 activations x u4 codes, integer dot products), included only by the
// per-ISA .cc files. Compiled with AVX-512 VNNI (linear_avx512.cc) or AVX-VNNI
// (linear_avxvnni.cc: the VEX encoding on ymm, for AVX2 machines that have it) the block dot
// product is vpdpbusd; otherwise (linear_avx2.cc) vpmaddubsw + i16 adds + vpmaddwd. All give the
// same exact integer per block, and the f32 part follows the one order stated in linear.h, so the
// results are bit-identical to linear_scalar.cc's reference.
#pragma once

#include <immintrin.h>

#include <algorithm>
#include <cmath>
#include <cstring>

#include "core/aligned_buffer.h"
#include "kernels/linear_kernels.h"

namespace lancet::kernels::detail {
namespace {
namespace w4a8 {

inline __m256 bf16x8_to_f32(const uint16_t* p) {
    const __m128i h = _mm_loadu_si128(reinterpret_cast<const __m128i*>(p));
    return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16));
}

inline __m256 u8x8_to_f32(const uint8_t* p) {
    const __m128i b = _mm_loadl_epi64(reinterpret_cast<const __m128i*>(p));
    return _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(b));
}

inline __m256i bcast32(const int8_t* p) {
    int32_t v;
    std::memcpy(&v, p, 4);
    return _mm256_set1_epi32(v);
}

// One 8-row x 8-column Q4 tile (one 32-bit word per row, column t in bits 4t..4t+3) as two byte
// planes: lo byte j of a row = code of column 2j, hi byte j = code of column 2j+1.
inline __m256i lo_plane(__m256i v) { return _mm256_and_si256(v, _mm256_set1_epi8(0x0f)); }
inline __m256i hi_plane(__m256i v) {
    // A 16-bit shift moves each byte's high nibble down; the bits that come in from the byte
    // above land in the high nibble and are masked off.
    return _mm256_and_si256(_mm256_srli_epi16(v, 4), _mm256_set1_epi8(0x0f));
}

// Block accumulator: per row lane, the exact sum of q * x8 over the chunks fed to acc_step.
#if defined(__AVX512VNNI__) && defined(__AVX512VL__)
inline __m256i acc_step(__m256i acc, __m256i lo, __m256i hi, __m256i xe, __m256i xo) {
    // vpdpbusd: four u8 x s8 products summed into each i32 lane, no intermediate saturation.
    return _mm256_dpbusd_epi32(_mm256_dpbusd_epi32(acc, lo, xe), hi, xo);
}
inline __m256i acc_to_i32(__m256i acc) { return acc; }
#elif defined(__AVXVNNI__)
inline __m256i acc_step(__m256i acc, __m256i lo, __m256i hi, __m256i xe, __m256i xo) {
    return _mm256_dpbusd_avx_epi32(_mm256_dpbusd_avx_epi32(acc, lo, xe), hi, xo);
}
inline __m256i acc_to_i32(__m256i acc) { return acc; }
#else
// vpmaddubsw multiplies u8 codes by s8 activations and adds adjacent pairs into i16 with signed
// saturation. It never saturates here: codes are 0..15 and x8 is in [-127, 127] (|x / d| <=
// 127 (1 + 2^-23)^2 < 127.5 rounds to at most 127), so a pair sum is at most 2 * 15 * 127 = 3810
// in magnitude; the lo and hi planes of one chunk add to at most 7620, and a block has at most 4
// chunks (kb <= 32), so the i16 accumulator stays within 4 * 7620 = 30480 < 32767 and the
// wrapping vpaddw never wraps. vpmaddwd with ones then widens the pairs to exact i32.
inline __m256i acc_step(__m256i acc, __m256i lo, __m256i hi, __m256i xe, __m256i xo) {
    return _mm256_add_epi16(
        acc, _mm256_add_epi16(_mm256_maddubs_epi16(lo, xe), _mm256_maddubs_epi16(hi, xo)));
}
inline __m256i acc_to_i32(__m256i acc) { return _mm256_madd_epi16(acc, _mm256_set1_epi16(1)); }
#endif

struct Layout {
    size_t in, gs, kb, groups, nblk, bpg;  // bpg: activation blocks per group
    explicit Layout(const PackedView& p)
        : in(p.in),
          gs(p.group_size),
          kb(w4a8_block(p.group_size)),
          groups(p.in / p.group_size),
          nblk(p.in / kb),
          bpg(p.group_size / kb) {}
};

// Quantizes rows [r0, r1) of x into s (see W4A8Scratch and linear.h for the formulas).
void quantize_rows(const float* x, size_t r0, size_t r1, const Layout& L, const W4A8Scratch& s) {
    const __m256 abs_mask = _mm256_castsi256_ps(_mm256_set1_epi32(0x7fffffff));
    const __m256i perm = _mm256_setr_epi32(0, 2, 4, 6, 1, 3, 5, 7);
    for (size_t r = r0; r < r1; ++r) {
        const float* xr = x + r * L.in;
        int8_t* qr = s.q + r * L.in;
        for (size_t g = 0; g < L.groups; ++g) {
            float xs = 0.0f;
            for (size_t bi = 0; bi < L.bpg; ++bi) {
                const size_t blk = g * L.bpg + bi, k0 = blk * L.kb;
                __m256 m = _mm256_setzero_ps();
                for (size_t k = k0; k < k0 + L.kb; k += 8)
                    m = _mm256_max_ps(m, _mm256_and_ps(_mm256_loadu_ps(xr + k), abs_mask));
                __m128 m4 = _mm_max_ps(_mm256_castps256_ps128(m), _mm256_extractf128_ps(m, 1));
                m4 = _mm_max_ps(m4, _mm_movehl_ps(m4, m4));
                m4 = _mm_max_ss(m4, _mm_shuffle_ps(m4, m4, 1));
                const float amax = _mm_cvtss_f32(m4);
                const float d = amax / 127.0f, id = amax > 0.0f ? 127.0f / amax : 0.0f;
                const __m256 vid = _mm256_set1_ps(id);
                __m256i sum = _mm256_setzero_si256();
                for (size_t k = k0; k < k0 + L.kb; k += 8) {
                    // cvtps rounds to nearest even under the default MXCSR, as std::nearbyint.
                    const __m256i v =
                        _mm256_cvtps_epi32(_mm256_mul_ps(_mm256_loadu_ps(xr + k), vid));
                    sum = _mm256_add_epi32(sum, v);
                    const __m256i e = _mm256_permutevar8x32_epi32(v, perm);
                    const __m128i w16 =
                        _mm_packs_epi32(_mm256_castsi256_si128(e), _mm256_extracti128_si256(e, 1));
                    _mm_storel_epi64(reinterpret_cast<__m128i*>(qr + k), _mm_packs_epi16(w16, w16));
                }
                __m128i s4 =
                    _mm_add_epi32(_mm256_castsi256_si128(sum), _mm256_extracti128_si256(sum, 1));
                s4 = _mm_add_epi32(s4, _mm_shuffle_epi32(s4, 0x4e));
                s4 = _mm_add_epi32(s4, _mm_shuffle_epi32(s4, 0xb1));
                s.d[r * L.nblk + blk] = d;
                xs = std::fma(d, float(_mm_cvtsi128_si32(s4)), xs);
            }
            s.xs[r * L.groups + g] = xs;
        }
    }
}

void quantize(const float* x, size_t n, const Layout& L, const W4A8Scratch& s, ThreadPool& pool) {
    if (n * L.in < (size_t{1} << 16)) {
        quantize_rows(x, 0, n, L, s);
        return;
    }
    pool.parallel_for(n, [&](size_t r0, size_t r1) { quantize_rows(x, r0, r1, L, s); });
}

#if defined(__AVX512F__)
// One 32-column block x[0, 32) quantized with 512-bit steps, the operations of quantize_rows
// (d = amax / 127, id = 127 / amax, x8 = rint(x * id) under the default MXCSR), so the codes and
// scale are identical to it: the codes of columns 0-15 (lo) and 16-31 (hi) as 16 bytes each in
// W4A8Scratch's order (within each 8-column chunk even columns, then odd), d, and the exact sum
// of the codes. The AVX-512 and AMX quantizers store them in their own layouts.
struct Block32 {
    __m128i lo, hi;
    float d;
    int sum;
};
inline Block32 quantize_block32(const float* x) {
    const __m512i perm = _mm512_setr_epi32(0, 2, 4, 6, 1, 3, 5, 7, 8, 10, 12, 14, 9, 11, 13, 15);
    const __m512 abs_mask = _mm512_castsi512_ps(_mm512_set1_epi32(0x7fffffff));
    const __m512 a = _mm512_loadu_ps(x), b = _mm512_loadu_ps(x + 16);
    const float amax =
        _mm512_reduce_max_ps(_mm512_max_ps(_mm512_and_ps(a, abs_mask), _mm512_and_ps(b, abs_mask)));
    const float d = amax / 127.0f, id = amax > 0.0f ? 127.0f / amax : 0.0f;
    const __m512 vid = _mm512_set1_ps(id);
    const __m512i va = _mm512_cvtps_epi32(_mm512_mul_ps(a, vid)),
                  vb = _mm512_cvtps_epi32(_mm512_mul_ps(b, vid));
    // |x8| <= 127: the saturating narrow is exact.
    return Block32{_mm512_cvtsepi32_epi8(_mm512_permutexvar_epi32(perm, va)),
                   _mm512_cvtsepi32_epi8(_mm512_permutexvar_epi32(perm, vb)), d,
                   _mm512_reduce_add_epi32(_mm512_add_epi32(va, vb))};
}
#endif

// ---- GEMV (n <= kGemvMaxRows): the weight streams once; NR rows of x against each tile -----

template <int NR, int CPB>
void gemv_block(const PackedView& p, const Layout& L, size_t b, const W4A8Scratch& a, size_t r0,
                float* out) {
    const __m256i* q =
        reinterpret_cast<const __m256i*>(static_cast<const uint8_t*>(p.data)) + b * (L.in / 8);
    const uint16_t* sc = p.scales + b * L.groups * kRowBlock;
    const uint8_t* zr = p.zeros + b * L.groups * kRowBlock;
    const int8_t* xq = a.q + r0 * L.in;
    const float* d = a.d + r0 * L.nblk;
    const float* xs = a.xs + r0 * L.groups;
    __m256 y[NR];
#pragma GCC unroll 8
    for (int r = 0; r < NR; ++r) y[r] = _mm256_setzero_ps();
    for (size_t g = 0; g < L.groups; ++g) {
        const __m256 s = bf16x8_to_f32(sc + g * kRowBlock);
        for (size_t bi = 0; bi < L.bpg; ++bi) {
            const size_t blk = g * L.bpg + bi;
            __m256i acc[NR];
#pragma GCC unroll 8
            for (int r = 0; r < NR; ++r) acc[r] = _mm256_setzero_si256();
#pragma GCC unroll 4
            for (int c = 0; c < CPB; ++c) {
                const size_t chunk = blk * CPB + c;
                const __m256i v = _mm256_load_si256(q + chunk);
                const __m256i lo = lo_plane(v), hi = hi_plane(v);
#pragma GCC unroll 8
                for (int r = 0; r < NR; ++r) {
                    const int8_t* xc = xq + r * L.in + chunk * 8;
                    acc[r] = acc_step(acc[r], lo, hi, bcast32(xc), bcast32(xc + 4));
                }
            }
#pragma GCC unroll 8
            for (int r = 0; r < NR; ++r)
                y[r] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(acc_to_i32(acc[r])),
                                       _mm256_mul_ps(s, _mm256_set1_ps(d[r * L.nblk + blk])), y[r]);
        }
        const __m256 zs = _mm256_mul_ps(u8x8_to_f32(zr + g * kRowBlock), s);
#pragma GCC unroll 8
        for (int r = 0; r < NR; ++r)
            y[r] = _mm256_fnmadd_ps(zs, _mm256_set1_ps(xs[r * L.groups + g]), y[r]);
    }
#pragma GCC unroll 8
    for (int r = 0; r < NR; ++r) _mm256_storeu_ps(out + r * kRowBlock, y[r]);
}

template <int CPB>
void gemv_rows(size_t nr, const PackedView& p, const Layout& L, size_t b, const W4A8Scratch& a,
               size_t r0, float* out) {
    switch (nr) {
        case 1:
            gemv_block<1, CPB>(p, L, b, a, r0, out);
            break;
        case 2:
            gemv_block<2, CPB>(p, L, b, a, r0, out);
            break;
        case 3:
            gemv_block<3, CPB>(p, L, b, a, r0, out);
            break;
        default:
            gemv_block<4, CPB>(p, L, b, a, r0, out);
            break;
    }
}

// Rows 0..n-1 of y for row block b.
inline void gemv_block_rows(size_t n, const PackedView& p, const Layout& L, size_t b,
                            const float* bias, float* y, const W4A8Scratch& a) {
    alignas(32) float out[4 * kRowBlock];
    const size_t rows = std::min(kRowBlock, p.out - b * kRowBlock);
    for (size_t r0 = 0; r0 < n; r0 += 4) {
        const size_t nr = std::min<size_t>(4, n - r0);
        switch (L.kb / 8) {
            case 1:
                gemv_rows<1>(nr, p, L, b, a, r0, out);
                break;
            case 2:
                gemv_rows<2>(nr, p, L, b, a, r0, out);
                break;
            default:
                gemv_rows<4>(nr, p, L, b, a, r0, out);
                break;
        }
        for (size_t r = 0; r < nr; ++r) {
            float* yr = y + (r0 + r) * p.out + b * kRowBlock;
            for (size_t j = 0; j < rows; ++j)
                yr[j] = out[r * kRowBlock + j] + (bias ? bias[b * kRowBlock + j] : 0.0f);
        }
    }
}

[[maybe_unused]] void gemv(size_t n, const PackedView& p, const Layout& L, const float* bias,
                           float* y, const W4A8Scratch& a, ThreadPool& pool) {
    pool.parallel_for(p.n_blocks, [&](size_t b0, size_t b1) {
        for (size_t b = b0; b < b1; ++b) gemv_block_rows(n, p, L, b, bias, y, a);
    });
}

// Several weights of one x (W4A8ManyFn): x quantized once, the row blocks of all weights one
// after another in one pool job; each block computed as gemv() computes it.
[[maybe_unused]] void gemv_many(const float* x, size_t n, const W4A8Out* outs, size_t count,
                                const W4A8Scratch& s, ThreadPool& pool) {
    if (count == 0) return;
    const Layout L(outs[0].w);
    quantize(x, n, L, s, pool);
    size_t start[kW4A8MaxOuts + 1] = {0};
    for (size_t k = 0; k < count; ++k) start[k + 1] = start[k] + outs[k].w.n_blocks;
    pool.parallel_for(start[count], [&](size_t u0, size_t u1) {
        size_t k = 0;
        for (size_t u = u0; u < u1; ++u) {
            while (u >= start[k + 1]) ++k;
            gemv_block_rows(n, outs[k].w, L, u - start[k], outs[k].bias, outs[k].y, s);
        }
    });
}

// ---- GEMM (n > kGemvMaxRows): unpack a panel of NB blocks x kc columns into byte planes once,
// then MR rows x NB blocks register tiles over all rows of the chunk ---------------------------

// Panel for blocks b .. b+NB-1, columns [k0, k0 + kc) (kc a multiple of the group size):
// planes[(c * NB + j) * 64 + {0, 32}] = lo, hi planes of chunk c of block b+j;
// s[(g * NB + j) * 8], zs[...] = f32 scales and zero * scale of local group g.
struct Panel {
    uint8_t* planes;
    float* s;
    float* zs;
};

template <int NB>
void unpack_panel(const PackedView& p, const Layout& L, size_t b, size_t k0, size_t kc,
                  const Panel& P) {
    const size_t c0 = k0 / 8, nc = kc / 8, g0 = k0 / L.gs, ng = kc / L.gs;
    for (int j = 0; j < NB; ++j) {
        const __m256i* q = reinterpret_cast<const __m256i*>(static_cast<const uint8_t*>(p.data)) +
                           (b + j) * (L.in / 8) + c0;
        for (size_t c = 0; c < nc; ++c) {
            const __m256i v = _mm256_load_si256(q + c);
            uint8_t* dst = P.planes + (c * NB + j) * 64;
            _mm256_store_si256(reinterpret_cast<__m256i*>(dst), lo_plane(v));
            _mm256_store_si256(reinterpret_cast<__m256i*>(dst + 32), hi_plane(v));
        }
        for (size_t g = 0; g < ng; ++g) {
            const size_t at = ((b + j) * L.groups + g0 + g) * kRowBlock;
            const __m256 s = bf16x8_to_f32(p.scales + at);
            _mm256_store_ps(P.s + (g * NB + j) * 8, s);
            _mm256_store_ps(P.zs + (g * NB + j) * 8, _mm256_mul_ps(u8x8_to_f32(p.zeros + at), s));
        }
    }
}

// c[MR][NB*8] (+)= rows r .. r+MR-1 against the panel. init: start from zero; last: add bias16.
template <int MR, int NB, int CPB>
void micro(const Panel& P, const Layout& L, size_t k0, size_t kc, const W4A8Scratch& a, size_t r,
           float* c, size_t ldc, bool init, bool last, const float* bias16) {
    __m256 y[MR][NB];
#pragma GCC unroll 8
    for (int i = 0; i < MR; ++i)
#pragma GCC unroll 8
        for (int j = 0; j < NB; ++j)
            y[i][j] = init ? _mm256_setzero_ps() : _mm256_loadu_ps(c + i * ldc + j * 8);
    const size_t g0 = k0 / L.gs, ng = kc / L.gs;
    const int8_t* xq = a.q + r * L.in;
    for (size_t g = 0; g < ng; ++g) {
        for (size_t bi = 0; bi < L.bpg; ++bi) {
            const size_t lblk = g * L.bpg + bi, blk = g0 * L.bpg + lblk;
            __m256i acc[MR][NB];
#pragma GCC unroll 8
            for (int i = 0; i < MR; ++i)
#pragma GCC unroll 8
                for (int j = 0; j < NB; ++j) acc[i][j] = _mm256_setzero_si256();
#pragma GCC unroll 4
            for (int cc = 0; cc < CPB; ++cc) {
                const size_t lc = lblk * CPB + cc;  // chunk within the panel
                const uint8_t* pl = P.planes + lc * NB * 64;
                const size_t col = k0 + lc * 8;
#pragma GCC unroll 8
                for (int i = 0; i < MR; ++i) {
                    const __m256i xe = bcast32(xq + i * L.in + col),
                                  xo = bcast32(xq + i * L.in + col + 4);
#pragma GCC unroll 8
                    for (int j = 0; j < NB; ++j)
                        acc[i][j] = acc_step(
                            acc[i][j],
                            _mm256_load_si256(reinterpret_cast<const __m256i*>(pl + j * 64)),
                            _mm256_load_si256(reinterpret_cast<const __m256i*>(pl + j * 64 + 32)),
                            xe, xo);
                }
            }
#pragma GCC unroll 8
            for (int i = 0; i < MR; ++i) {
                const __m256 dv = _mm256_set1_ps(a.d[(r + i) * L.nblk + blk]);
#pragma GCC unroll 8
                for (int j = 0; j < NB; ++j)
                    y[i][j] = _mm256_fmadd_ps(
                        _mm256_cvtepi32_ps(acc_to_i32(acc[i][j])),
                        _mm256_mul_ps(_mm256_load_ps(P.s + (g * NB + j) * 8), dv), y[i][j]);
            }
        }
#pragma GCC unroll 8
        for (int i = 0; i < MR; ++i) {
            const __m256 xv = _mm256_set1_ps(a.xs[(r + i) * L.groups + g0 + g]);
#pragma GCC unroll 8
            for (int j = 0; j < NB; ++j)
                y[i][j] = _mm256_fnmadd_ps(_mm256_load_ps(P.zs + (g * NB + j) * 8), xv, y[i][j]);
        }
    }
#pragma GCC unroll 8
    for (int i = 0; i < MR; ++i)
#pragma GCC unroll 8
        for (int j = 0; j < NB; ++j) {
            __m256 v = y[i][j];
            if (last) v = _mm256_add_ps(v, _mm256_load_ps(bias16 + j * 8));
            _mm256_storeu_ps(c + i * ldc + j * 8, v);
        }
}

// 3 rows x 2 blocks: 6 i16 accumulators and 6 f32 sums; the vector units, not loads, bound it
// (measured here: 3 rows ~10% faster than 2 or 4 per core).
constexpr int kMR = 3;

template <int NB, int CPB>
void micro_rows(size_t mr, const Panel& P, const Layout& L, size_t k0, size_t kc,
                const W4A8Scratch& a, size_t r, float* c, size_t ldc, bool init, bool last,
                const float* bias16) {
    if (mr == 3)
        micro<3, NB, CPB>(P, L, k0, kc, a, r, c, ldc, init, last, bias16);
    else if (mr == 2)
        micro<2, NB, CPB>(P, L, k0, kc, a, r, c, ldc, init, last, bias16);
    else
        micro<1, NB, CPB>(P, L, k0, kc, a, r, c, ldc, init, last, bias16);
}

template <int NB>
void micro_any(size_t mr, const Panel& P, const Layout& L, size_t k0, size_t kc,
               const W4A8Scratch& a, size_t r, float* c, size_t ldc, bool init, bool last,
               const float* bias16) {
    switch (L.kb / 8) {
        case 1:
            micro_rows<NB, 1>(mr, P, L, k0, kc, a, r, c, ldc, init, last, bias16);
            break;
        case 2:
            micro_rows<NB, 2>(mr, P, L, k0, kc, a, r, c, ldc, init, last, bias16);
            break;
        default:
            micro_rows<NB, 4>(mr, P, L, k0, kc, a, r, c, ldc, init, last, bias16);
            break;
    }
}

[[maybe_unused]] void gemm(size_t n, const PackedView& p, const Layout& L, const float* bias,
                           float* y, const W4A8Scratch& a, ThreadPool& pool) {
    const size_t in = p.in, out = p.out;
    // K chunk: whole groups, about kKc8 = 4096 columns, so y is loaded and stored once per chunk
    // for in <= 4096: those passes over y cost more than an L2-resident panel (kc / 8 * 128
    // bytes = 64 KiB; x of kNc rows: 1 MiB), most when out is a power of two (rows of y then
    // share cache sets). Measured: 1024 -> 4096 is 1.10-1.19x at n = 128-512 on Lance's shapes.
    constexpr size_t kKc8 = 4096;
    const size_t kc_max = L.gs * std::max<size_t>(1, kKc8 / L.gs);
    const size_t n_panels = (p.n_blocks + 1) / 2;
    pool.parallel_for(n_panels, [&](size_t p0, size_t p1) {
        const size_t plane_bytes = kc_max / 8 * 2 * 64, sfloats = kc_max / L.gs * 2 * 8;
        AlignedBuffer buf(plane_bytes + 2 * sfloats * sizeof(float));
        const Panel P{buf.data(), buf.as<float>() + plane_bytes / 4,
                      buf.as<float>() + plane_bytes / 4 + sfloats};
        alignas(32) float bias16[16];
        alignas(32) float tile[kMR * 16];
        static_assert(kMR == 3, "micro_rows dispatches 1..3 rows");
        for (size_t r0 = 0; r0 < n; r0 += kNc) {
            const size_t nr = std::min(kNc, n - r0);
            for (size_t k0 = 0; k0 < in; k0 += kc_max) {
                const size_t kc = std::min(kc_max, in - k0);
                const bool init = k0 == 0, last = k0 + kc == in;
                for (size_t pp = p0; pp < p1; ++pp) {
                    const size_t b = 2 * pp, o0 = 16 * pp;
                    const bool pair = b + 1 < p.n_blocks;
                    const size_t width = pair ? 16 : 8, cols = std::min(width, out - o0);
                    if (pair)
                        unpack_panel<2>(p, L, b, k0, kc, P);
                    else
                        unpack_panel<1>(p, L, b, k0, kc, P);
                    for (size_t j = 0; j < 16; ++j) bias16[j] = bias && j < cols ? bias[o0 + j] : 0;
                    for (size_t i = 0; i < nr; i += kMR) {
                        const size_t mr = std::min<size_t>(kMR, nr - i);
                        float* yi = y + (r0 + i) * out + o0;
                        float* dst = yi;
                        size_t ldc = out;
                        if (cols < width) {
                            // Ragged last panel: run on a full-width tile, copy the valid columns.
                            dst = tile;
                            ldc = width;
                            if (!init)
                                for (size_t r = 0; r < mr; ++r)
                                    std::memcpy(tile + r * width, yi + r * out,
                                                cols * sizeof(float));
                        }
                        if (pair)
                            micro_any<2>(mr, P, L, k0, kc, a, r0 + i, dst, ldc, init, last, bias16);
                        else
                            micro_any<1>(mr, P, L, k0, kc, a, r0 + i, dst, ldc, init, last, bias16);
                        if (dst == tile)
                            for (size_t r = 0; r < mr; ++r)
                                std::memcpy(yi + r * out, tile + r * width, cols * sizeof(float));
                    }
                }
            }
        }
    });
}

[[maybe_unused]] void run(const float* x, size_t n, const PackedView& p, const float* bias,
                          float* y, const W4A8Scratch& s, ThreadPool& pool) {
    const Layout L(p);
    quantize(x, n, L, s, pool);
    if (n <= kGemvMaxRows)
        gemv(n, p, L, bias, y, s, pool);
    else
        gemm(n, p, L, bias, y, s, pool);
}

}  // namespace w4a8
}  // namespace
}  // namespace lancet::kernels::detail
