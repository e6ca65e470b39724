// The AMX tier of the W4A8 linear (Isa::Amx): the integer dot product of each int8 activation
// block with the 4-bit codes on AMX tiles (TDPBSUD: signed activations x unsigned codes), then the
// same f32 epilogue as the AVX-512 W4A8 GEMM (linear.h's formula, in its order), so results are
// bit-identical to w4a8_avx512 and to the scalar reference.
//
// One tile dot covers one activation block: K = 32 bytes (kb = 32, i.e. group sizes that are
// multiples of 32; smaller blocks go to w4a8_avx512), because each block has its own scale d_k
// and its int32 sum must stay separate. A is 16 rows x 32 bytes of x8, quantized straight into
// 32-row tiles (1 KiB per block, see RowTiles); B is 8 rows x 16 outputs x 4 bytes (the VNNI
// layout), unpacked from the nibbles once per panel of 32 outputs and reused by every row tile.
// Per block, 2 A tiles (32 rows) x 2 B tiles (32 outputs) give 4 C tiles, stored and folded into
// f32 accumulators with s_g * d_k; up to 4 blocks of a group (and the group's zero-point term)
// are folded in one pass, after the next unit's tile dots have been issued. Measured on this
// machine the tile unit and the vector fold barely overlap and the fold plus the C tile stores
// cost more than the dots (README, "The AMX tier"), so this runs at 1.04-1.21x the VNNI GEMM.
#include <cmath>

#include "kernels/linear_amx_impl.h"
#include "kernels/linear_w4a8_x86_impl.h"

namespace lancet::kernels::detail {
namespace {

using namespace amx_linear;

constexpr size_t kKb = 32;      // activation block = tile K (bytes)
constexpr size_t kBTile = 512;  // bytes of one B tile (8 rows x 64)

// Tiles: C 0..3 (16 x 16 int32: rows 0-15 x outputs 0-15, 0-15 x 16-31, 16-31 x 0-15, 16-31 x
// 16-31), A 4, 5 (16 rows x 32 bytes), B 6, 7 (8 rows x 64 bytes).
amx::TileConfig w4a8_config() {
    amx::TileConfig c;
    for (int t = 0; t < 4; ++t) {
        c.rows[t] = 16;
        c.colsb[t] = 64;
    }
    for (int t = 4; t < 6; ++t) {
        c.rows[t] = 16;
        c.colsb[t] = kKb;
    }
    for (int t = 6; t < 8; ++t) {
        c.rows[t] = kKb / 4;
        c.colsb[t] = 64;
    }
    return c;
}

// The panel of row blocks b .. b+3 over columns [k0, k0 + kc) (kc a multiple of the group size):
//   bt[(lblk * 2 + t) * 512 + kk * 64 + h * 32 + 4 * r + i] = code of row r of block b + 2t + h
//   at the column whose x8 sits at byte 4 kk + i of local block lblk in W4A8Scratch's order
//   (within a chunk of 8 columns: even columns, then odd; so B row 2c holds chunk c's low-nibble
//   plane and row 2c + 1 its high-nibble plane, exactly the planes the VNNI path unpacks);
//   s[g * 32 + 8 j + r], zs[...] = f32 scale and zero * scale of row r of block b + j, local
//   group g. Blocks past the weight's last are zero (their outputs are never stored).
void unpack_panel(const PackedView& p, const w4a8::Layout& L, size_t b, size_t k0, size_t kc,
                  uint8_t* bt, float* s, float* zs) {
    const size_t c0 = k0 / 8, nc = kc / 8, g0 = k0 / L.gs, ng = kc / L.gs;
    const __m256i m4 = _mm256_set1_epi8(0x0f);
    for (size_t j = 0; j < 4; ++j) {
        const size_t t = j / 2, h = j % 2;
        if (b + j >= p.n_blocks) {
            for (size_t c = 0; c < nc; ++c) {
                uint8_t* dst = bt + ((c / 4) * 2 + t) * kBTile + (c % 4) * 128 + h * 32;
                _mm256_store_si256(reinterpret_cast<__m256i*>(dst), _mm256_setzero_si256());
                _mm256_store_si256(reinterpret_cast<__m256i*>(dst + 64), _mm256_setzero_si256());
            }
            for (size_t g = 0; g < ng; ++g) {
                _mm256_store_ps(s + g * 32 + j * 8, _mm256_setzero_ps());
                _mm256_store_ps(zs + g * 32 + j * 8, _mm256_setzero_ps());
            }
            continue;
        }
        const __m256i* q = reinterpret_cast<const __m256i*>(static_cast<const uint8_t*>(p.data)) +
                           (b + j) * (L.in / 8) + c0;
        for (size_t c = 0; c < nc; ++c) {
            const __m256i v = _mm256_load_si256(q + c);
            uint8_t* dst = bt + ((c / 4) * 2 + t) * kBTile + (c % 4) * 128 + h * 32;
            _mm256_store_si256(reinterpret_cast<__m256i*>(dst), _mm256_and_si256(v, m4));
            _mm256_store_si256(reinterpret_cast<__m256i*>(dst + 64),
                               _mm256_and_si256(_mm256_srli_epi16(v, 4), m4));
        }
        for (size_t g = 0; g < ng; ++g) {
            const size_t at = ((b + j) * L.groups + g0 + g) * kRowBlock;
            const __m256 sv = w4a8::bf16x8_to_f32(p.scales + at);
            _mm256_store_ps(s + g * 32 + j * 8, sv);
            _mm256_store_ps(zs + g * 32 + j * 8,
                            _mm256_mul_ps(w4a8::u8x8_to_f32(p.zeros + at), sv));
        }
    }
}

// Up to this many blocks are folded in one pass over the accumulators.
constexpr size_t kMaxUnit = 4;

// For the rows of `nu` consecutive blocks of one group (C tiles c[u], block scales d + u * 32):
// acc[i][0..31] = fma(float(c[u][i][0..31]), s * d_u[i], acc[i]) for u = 0 .. nu-1 in order (the
// VNNI path's per-block step, linear.h), then, when zs is non-null (the unit ends the group),
// acc[i] = fma(-(z * s), XS_i, acc[i]). One load and store of each accumulator per unit.
template <size_t NU>
inline void fold_unit(int32_t* const* c, const float* s, const float* d, const float* zs,
                      const float* xs, size_t rows, float* acc) {
    const __m512 s0 = _mm512_load_ps(s), s1 = _mm512_load_ps(s + 16);
    const __m512 z0 = zs ? _mm512_load_ps(zs) : _mm512_setzero_ps(),
                 z1 = zs ? _mm512_load_ps(zs + 16) : _mm512_setzero_ps();
    for (size_t i = 0; i < rows; ++i) {
        float* a = acc + i * kCols;
        __m512 y0 = _mm512_load_ps(a), y1 = _mm512_load_ps(a + 16);
#pragma GCC unroll 4
        for (size_t u = 0; u < NU; ++u) {
            const __m512 dv = _mm512_set1_ps(d[u * kRows + i]);
            const int32_t* ci = c[u] + i * kCols;
            y0 = _mm512_fmadd_ps(_mm512_cvtepi32_ps(_mm512_load_si512(ci)), _mm512_mul_ps(s0, dv),
                                 y0);
            y1 = _mm512_fmadd_ps(_mm512_cvtepi32_ps(_mm512_load_si512(ci + 16)),
                                 _mm512_mul_ps(s1, dv), y1);
        }
        if (zs) {
            const __m512 xv = _mm512_set1_ps(xs[i]);
            y0 = _mm512_fnmadd_ps(z0, xv, y0);
            y1 = _mm512_fnmadd_ps(z1, xv, y1);
        }
        _mm512_store_ps(a, y0);
        _mm512_store_ps(a + 16, y1);
    }
}

inline void fold_any(size_t nu, int32_t* const* c, const float* s, const float* d, const float* zs,
                     const float* xs, size_t rows, float* acc) {
    switch (nu) {
        case 1:
            fold_unit<1>(c, s, d, zs, xs, rows, acc);
            break;
        case 2:
            fold_unit<2>(c, s, d, zs, xs, rows, acc);
            break;
        case 3:
            fold_unit<3>(c, s, d, zs, xs, rows, acc);
            break;
        default:
            fold_unit<4>(c, s, d, zs, xs, rows, acc);
            break;
    }
}

// The 4 C tiles of one block: the 32 rows x 32 bytes of A at a (RowTiles' layout) against the
// panel's two B tiles at bt, stored to c[32][32].
inline void tile_block(const int8_t* a, const uint8_t* bt, int32_t* c) {
    amx::zero_c();
    LANCET_TILE_LOAD(4, a, kKb);
    LANCET_TILE_LOAD(5, a + 16 * kKb, kKb);
    LANCET_TILE_LOAD(6, bt, 64);
    LANCET_TILE_LOAD(7, bt + kBTile, 64);
    amx::dpbsud_c();
    amx::store_c(c, kCols);
}

// The activations quantized once per pass straight into row tiles of 32 rows, so that a tile
// load reads 1 KiB in one stream (rows `in` bytes apart would map 32 rows onto two L1 sets for
// in = 2048) and the fold reads each block's scales contiguously:
//   q[rt][blk][i][32] = x8 of block blk of row 32 rt + i (W4A8Scratch's column order: within
//   each 8-column chunk the even columns, then the odd ones),
//   d[rt][blk][i], xs[rt][g][i] = its block scale and XS_g. Rows past n are zero.
struct RowTiles {
    int8_t* q;
    float* d;
    float* xs;
};

// Rows [r0, r1) of x by linear.h's W4A8 formula for kb = 32, the operations of
// w4a8::quantize_rows and of the AVX-512 path's quantizer, each rounded in f32 (d = amax / 127,
// id = 127 / amax, x8 = rint(x * id) under the default MXCSR, XS_g by fma in block order), so
// codes and scales are identical to theirs.
void quantize_row_tiles(const float* x, size_t r0, size_t r1, const w4a8::Layout& L,
                        const RowTiles& X) {
    for (size_t r = r0; r < r1; ++r) {
        const float* xr = x + r * L.in;
        const size_t rt = r / kRows, i = r % kRows;
        int8_t* q = X.q + rt * L.nblk * kRows * kKb + i * kKb;
        float* d = X.d + rt * L.nblk * kRows + i;
        float* xs = X.xs + rt * L.groups * kRows + i;
        for (size_t g = 0; g < L.groups; ++g) {
            float acc = 0.0f;
            for (size_t bi = 0; bi < L.bpg; ++bi) {
                const size_t blk = g * L.bpg + bi, k0 = blk * kKb;
                const w4a8::Block32 b = w4a8::quantize_block32(xr + k0);
                int8_t* qb = q + blk * kRows * kKb;
                _mm_storeu_si128(reinterpret_cast<__m128i*>(qb), b.lo);
                _mm_storeu_si128(reinterpret_cast<__m128i*>(qb + 16), b.hi);
                d[blk * kRows] = b.d;
                acc = std::fma(b.d, float(b.sum), acc);
            }
            xs[g * kRows] = acc;
        }
    }
}

// Zeroes rows [n, n_rt * 32) of the row tiles (their outputs are computed and never stored).
void zero_pad_rows(const w4a8::Layout& L, size_t n, size_t n_rt, const RowTiles& X) {
    for (size_t r = n; r < n_rt * kRows; ++r) {
        const size_t rt = r / kRows, i = r % kRows;
        for (size_t k = 0; k < L.nblk; ++k) {
            std::memset(X.q + (rt * L.nblk + k) * kRows * kKb + i * kKb, 0, kKb);
            X.d[(rt * L.nblk + k) * kRows + i] = 0.0f;
        }
        for (size_t g = 0; g < L.groups; ++g) X.xs[(rt * L.groups + g) * kRows + i] = 0.0f;
    }
}

// K chunk: whole groups, about 4096 columns (the B panel, kc * 32 bytes = 128 KiB, in L2); row
// chunk: as many 32-row tiles as keep the chunk's x8 within ~1.5 MiB of L2 (768 rows at in =
// 2048), so a panel's B is unpacked once per chunk and reused by all its row tiles.
constexpr size_t kKc8 = 4096, kChunkBytes = size_t{3} << 19;

// Rows [0, n) of one pass: x [n, in] quantized into the row tiles at X, then the tiles; y [n,
// out] = x . w^T + bias. kc_max, rc_rows: the K chunk (columns) and the row chunk (rows).
void w4a8_pass(const float* x, size_t n, const PackedView& p, const w4a8::Layout& L,
               const float* bias, float* y, const RowTiles& X, size_t kc_max, size_t rc_rows,
               ThreadPool& pool) {
    const size_t in = p.in, out = p.out;
    const size_t n_rt = (n + kRows - 1) / kRows;
    if (n * in < (size_t{1} << 16))
        quantize_row_tiles(x, 0, n, L, X);
    else
        pool.parallel_for(n, [&](size_t r0, size_t r1) { quantize_row_tiles(x, r0, r1, L, X); });
    zero_pad_rows(L, n, n_rt, X);
    // Blocks per fold unit: the largest divisor of the blocks per group up to kMaxUnit.
    size_t U = std::min(L.bpg, kMaxUnit);
    while (L.bpg % U) --U;
    const size_t n_panels = (p.n_blocks + 3) / 4;
    pool.parallel_for(n_panels, [&](size_t p0, size_t p1) {
        thread_local AlignedBuffer panel_buf;
        const size_t bt_bytes = kc_max / kKb * 2 * kBTile, sfloats = kc_max / L.gs * kCols;
        const size_t cbytes = kRows * kCols * 4, accbytes = kRows * kCols * 4;
        uint8_t* buf =
            panel_buf.grow(bt_bytes + 2 * sfloats * 4 + 2 * kMaxUnit * cbytes + accbytes);
        uint8_t* bt = buf;
        float* s = reinterpret_cast<float*>(buf + bt_bytes);
        float* zs = s + sfloats;
        int32_t* cbuf[2 * kMaxUnit];
        for (size_t j = 0; j < 2 * kMaxUnit; ++j)
            cbuf[j] = reinterpret_cast<int32_t*>(zs + sfloats) + j * kRows * kCols;
        float* acc = reinterpret_cast<float*>(cbuf[2 * kMaxUnit - 1] + kRows * kCols);
        amx::load_config(w4a8_config());
        for (size_t rc0 = 0; rc0 < n; rc0 += rc_rows) {
            const size_t rc1 = std::min(n, rc0 + rc_rows);
            for (size_t k0 = 0; k0 < in; k0 += kc_max) {
                const size_t kc = std::min(kc_max, in - k0);
                const bool init = k0 == 0, last = k0 + kc == in;
                const size_t blk0 = k0 / kKb, g0 = k0 / L.gs, nb = kc / kKb;
                for (size_t pp = p0; pp < p1; ++pp) {
                    const size_t o0 = kCols * pp, cols = std::min(kCols, out - o0);
                    const auto [m0, m1] = panel_masks(cols);
                    unpack_panel(p, L, 4 * pp, k0, kc, bt, s, zs);
                    for (size_t r = rc0; r < rc1; r += kRows) {
                        const size_t rows = std::min(kRows, n - r);
                        const size_t rt = r / kRows;
                        const int8_t* xq = X.q + (rt * L.nblk + blk0) * kRows * kKb;
                        const float* d = X.d + (rt * L.nblk + blk0) * kRows;
                        const float* xs = X.xs + (rt * L.groups + g0) * kRows;
                        for (size_t i = 0; i < rows; ++i) {
                            float* ai = acc + i * kCols;
                            const float* yi = y + (r + i) * out + o0;
                            _mm512_store_ps(
                                ai, init ? _mm512_setzero_ps() : _mm512_maskz_loadu_ps(m0, yi));
                            _mm512_store_ps(ai + 16, init ? _mm512_setzero_ps()
                                                          : _mm512_maskz_loadu_ps(m1, yi + 16));
                        }
                        // Units of U blocks of one group; unit u + 1's tile dots are issued
                        // before unit u's fold.
                        auto issue = [&](size_t u) {
                            for (size_t j = 0; j < U; ++j) {
                                const size_t k = u * U + j;
                                tile_block(xq + k * kRows * kKb, bt + k * 2 * kBTile,
                                           cbuf[(u % 2) * kMaxUnit + j]);
                            }
                        };
                        const size_t n_units = nb / U;
                        issue(0);
                        for (size_t u = 0; u < n_units; ++u) {
                            if (u + 1 < n_units) issue(u + 1);
                            const size_t k = u * U, g = k / L.bpg;
                            const bool ends = (k + U) % L.bpg == 0;
                            fold_any(U, cbuf + (u % 2) * kMaxUnit, s + g * kCols, d + k * kRows,
                                     ends ? zs + g * kCols : nullptr, xs + g * kRows, rows, acc);
                        }
                        for (size_t i = 0; i < rows; ++i) {
                            __m512 v0 = _mm512_load_ps(acc + i * kCols),
                                   v1 = _mm512_load_ps(acc + i * kCols + 16);
                            if (last) {
                                // y = acc + bias, with 0 for a null bias as the VNNI path adds
                                // (so a -0 sum comes out as +0 there and here alike).
                                v0 = _mm512_add_ps(v0, bias ? _mm512_maskz_loadu_ps(m0, bias + o0)
                                                            : _mm512_setzero_ps());
                                v1 = _mm512_add_ps(v1,
                                                   bias ? _mm512_maskz_loadu_ps(m1, bias + o0 + 16)
                                                        : _mm512_setzero_ps());
                            }
                            float* yi = y + (r + i) * out + o0;
                            _mm512_mask_storeu_ps(yi, m0, v0);
                            _mm512_mask_storeu_ps(yi + 16, m1, v1);
                        }
                    }
                }
            }
        }
        amx::release();
    });
}

// y [n, out] = x . w^T + bias, pass by pass (pass_rows) through one thread_local set of row
// tiles.
void w4a8_gemm_amx(const float* x, size_t n, const PackedView& p, const w4a8::Layout& L,
                   const float* bias, float* y, ThreadPool& pool) {
    const size_t in = p.in;
    const size_t kc_max = L.gs * std::max<size_t>(1, kKc8 / L.gs);
    const size_t rc_rows =
        std::max<size_t>(1, kChunkBytes / (std::min(kc_max, in) * kRows)) * kRows;
    // Bytes per row: its x8, block scales and group sums.
    const size_t row_bytes = in + (L.nblk + L.groups) * sizeof(float);
    // One pass: 384 rows, 4.8 MiB at in = 11008; 3072 rows at in = 2048.
    const size_t pass = pass_rows(rc_rows, row_bytes);
    const size_t rows = (std::min(n, pass) + kRows - 1) / kRows * kRows;
    thread_local AlignedBuffer pack_buf;
    const size_t q_bytes = rows * in, d_floats = rows * L.nblk;
    uint8_t* pb = pack_buf.grow(rows * row_bytes);
    const RowTiles X{reinterpret_cast<int8_t*>(pb), reinterpret_cast<float*>(pb + q_bytes),
                     reinterpret_cast<float*>(pb + q_bytes) + d_floats};
    for (size_t r0 = 0; r0 < n; r0 += pass)
        w4a8_pass(x + r0 * in, std::min(pass, n - r0), p, L, bias, y + r0 * p.out, X, kc_max,
                  rc_rows, pool);
}

}  // namespace

void w4a8_amx(const float* x, size_t n, const PackedView& p, const float* bias, float* y,
              const W4A8Scratch& s, ThreadPool& pool) {
    const w4a8::Layout L(p);
    if (n < kAmxMinRows || L.kb != kKb) {
        w4a8_avx512(x, n, p, bias, y, s, pool);
        return;
    }
    w4a8_gemm_amx(x, n, p, L, bias, y, pool);
}

}  // namespace lancet::kernels::detail
