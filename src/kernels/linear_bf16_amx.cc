// The AMX tier of the bf16-activation linears (Isa::Amx): bf16 x bf16 tile dot products with f32
// sums (TDPBF16PS: C[16 x 16 f32] += A[16 x 32 bf16] . B[16 pairs x 16 outputs x 2 bf16]).
//
// Unlike the W4A8 tiles (linear_amx.cc) nothing is folded per block: the weight is bf16 before it
// reaches a tile (BF16 weights as stored: Bf16Act::Bf16; INT4 dequantized to bf16 per panel
// straight from the nibbles: ActMode::Bf16), so the C tiles accumulate over the whole K chunk and
// are stored once. Used for every n above the GEMV sizes (n > 8; fewer than 32 rows run on
// zero-padded tiles, still 2-5x the vdpbf16ps kernels). The rows run in passes of whole row
// chunks (linear_kernels.h's pass_rows: 256 rows, 5.4 MiB at in = 11008; 1792 rows at in = 2048);
// each pass's x is rounded to bf16 once into a row-major copy (rows zero-padded to a multiple of
// 32, columns to a multiple of 32; the row stride is 64 bytes more than the row so that the 16 rows
// of an A tile do not all map onto the same L1 set), and A tiles load straight from it. B panels of
// 32 outputs x a K chunk are written once per (row chunk, panel) in the pair layout TDPBF16PS
// reads, into a per-thread buffer that stays in L2, and every 32-row tile of the chunk reuses them:
// 2 A tiles x 2 B tiles -> 4 C tiles (32 rows x 32 outputs) per 32 columns of K.
//
// Arithmetic (linear.h): each TDPBF16PS step adds the two exact products of a column pair to the
// f32 accumulator (RNE, denormal inputs and results flushed to zero, as vdpbf16ps). Every output
// is produced by one thread, its K order fixed by the chunking (which depends only on the shape),
// so results do not depend on the thread count; they agree with the vdpbf16ps kernels to f32
// summation order, not to the bit.
#include "kernels/linear_amx_impl.h"
#include "kernels/linear_bf16_x86_impl.h"

namespace lancet::kernels::detail {
namespace {

using namespace amx_linear;

constexpr size_t kStep = 32;    // K per tile dot (bf16 elements)
constexpr size_t kBTile = 512;  // u16 of one B tile: 16 pairs x 16 outputs x 2
// Blocking (measured, README "BF16 activations on AMX"): a work item is a row chunk of kRt 32-row
// tiles x a group of kGroup panels; over each K chunk of kKc columns the chunk's bf16 rows (kRt x
// 32 x kKc x 2 bytes = 512 KiB) stay in L2 while the group's panels are built and run over them,
// and the group's C tiles wait in a per-thread buffer (kGroup x kRt x 4 KiB = 256 KiB) between
// K chunks. From memory, each weight byte is read once per row chunk and each bf16 row byte once
// per panel group: 256 flops per byte of either.
constexpr size_t kKc = 1024;
constexpr size_t kRt = 8;
constexpr size_t kGroup = 8;

// Tiles (amx::full_tiles: all 16 rows x 64 bytes): C 0-3 (rows 0-15 x outputs 0-15, 0-15 x
// 16-31, 16-31 x 0-15, 16-31 x 16-31), A 4, 5 (rows 0-15, 16-31 x 32 bf16), B 6, 7 (outputs
// 0-15, 16-31).

// The B panel of outputs 32 pp .. 32 pp + 31 over columns [k0, k0 + kc) (kc a multiple of 32) of
// a BF16 weight, from PackedView's [block][in][8] layout:
//   bt[(2 s + t) * 512 + 32 kp + 2 j + h] = w[32 pp + 16 t + j][k0 + 32 s + 2 kp + h]
// (B tile t of step s: row kp holds the pair (k, k + 1) of its 16 outputs). Columns past `in`
// and blocks past the last are zero.
void fill_bf16_panel(const PackedView& p, size_t pp, size_t k0, size_t kc, uint16_t* bt) {
    const size_t in = p.in;
    // u16 j of a B row from two blocks' 4 columns (a: block 2t, b: block 2t + 1; element c * 8 + r
    // = column c, row r): output j / 2, column h = j % 2 of the pair (+2 for the second row).
    alignas(64) uint16_t i0[32], i1[32];
    for (int j = 0; j < 32; ++j) {
        const int o = j / 2, h = j % 2;
        i0[j] = static_cast<uint16_t>((o < 8 ? 0 : 32) + h * 8 + o % 8);
        i1[j] = static_cast<uint16_t>(i0[j] + 16);
    }
    const __m512i idx0 = _mm512_load_si512(i0), idx1 = _mm512_load_si512(i1);
    for (size_t t = 0; t < 2; ++t) {
        const size_t ba = 4 * pp + 2 * t, bb = ba + 1;
        const uint16_t* w = static_cast<const uint16_t*>(p.data);
        const uint16_t* wa = ba < p.n_blocks ? w + ba * in * kRowBlock : nullptr;
        const uint16_t* wb = bb < p.n_blocks ? w + bb * in * kRowBlock : nullptr;
        const size_t full = in > k0 ? std::min(kc, (in - k0) / 4 * 4) : 0;
        uint16_t* dst = bt + t * kBTile;
        size_t k = 0;
        if (wa && wb) {
            for (; k < full; k += 4) {
                const __m512i a = _mm512_loadu_si512(wa + (k0 + k) * kRowBlock);
                const __m512i b = _mm512_loadu_si512(wb + (k0 + k) * kRowBlock);
                uint16_t* d = dst + (k / kStep) * 2 * kBTile + (k % kStep) / 2 * 32;
                _mm512_store_si512(d, _mm512_permutex2var_epi16(a, idx0, b));
                _mm512_store_si512(d + 32, _mm512_permutex2var_epi16(a, idx1, b));
            }
        }
        for (; k < kc; k += 4) {
            const size_t kg = k0 + k, valid = kg < in ? std::min<size_t>(4, in - kg) : 0;
            const __mmask32 m =
                valid == 4 ? ~__mmask32{0} : static_cast<__mmask32>((1u << (8 * valid)) - 1);
            const __m512i a = wa && valid ? _mm512_maskz_loadu_epi16(m, wa + kg * kRowBlock)
                                          : _mm512_setzero_si512();
            const __m512i b = wb && valid ? _mm512_maskz_loadu_epi16(m, wb + kg * kRowBlock)
                                          : _mm512_setzero_si512();
            uint16_t* d = dst + (k / kStep) * 2 * kBTile + (k % kStep) / 2 * 32;
            _mm512_store_si512(d, _mm512_permutex2var_epi16(a, idx0, b));
            _mm512_store_si512(d + 32, _mm512_permutex2var_epi16(a, idx1, b));
        }
    }
}

// The same panel of a Q4 weight, dequantized on the way (bf16x::q4_pairs: w̃ = bf16((q - z)·s)).
// in is a multiple of 8 (LinearWeight's Q4 limits), so 8-column chunks are whole or past in.
void fill_q4_panel(const PackedView& p, size_t pp, size_t k0, size_t kc, uint16_t* bt) {
    for (size_t t = 0; t < 2; ++t) {
        const size_t ba = 4 * pp + 2 * t;
        const bool has_a = ba < p.n_blocks, has_b = ba + 1 < p.n_blocks;
        for (size_t k = 0; k < kc; k += 8) {
            uint16_t* d = bt + ((k / kStep) * 2 + t) * kBTile + (k % kStep) / 2 * 32;
            if (has_a && k0 + k < p.in) {
                bf16x::q4_pairs(p, ba, has_b, (k0 + k) / 8, d, 32);
            } else {
                for (int u = 0; u < 4; ++u) _mm512_store_si512(d + 32 * u, _mm512_setzero_si512());
            }
        }
    }
}

// The 4 C tiles of one 32-row tile over `steps` K steps: A rows at a (ldx bf16 apart), B tiles
// at bt (fill_bf16_panel's layout). C starts at zero (first) or from acc [32][32] f32 and is
// stored back to acc.
inline void tile_rows(const uint16_t* a, size_t ldx, const uint16_t* bt, size_t steps, bool first,
                      float* acc) {
    const size_t sa = ldx * sizeof(uint16_t);
    if (first)
        amx::zero_c();
    else
        amx::load_c(acc, kCols);
    const uint16_t* a1 = a + 16 * ldx;
    for (size_t s = 0; s < steps; ++s) {
        LANCET_TILE_LOAD(4, a + s * kStep, sa);
        LANCET_TILE_LOAD(6, bt + s * 2 * kBTile, 64);
        LANCET_TILE_LOAD(7, bt + s * 2 * kBTile + kBTile, 64);
        LANCET_TILE_DPBF16PS(0, 4, 6);
        LANCET_TILE_DPBF16PS(1, 4, 7);
        LANCET_TILE_LOAD(5, a1 + s * kStep, sa);
        LANCET_TILE_DPBF16PS(2, 5, 6);
        LANCET_TILE_DPBF16PS(3, 5, 7);
    }
    amx::store_c(acc, kCols);
}

// y [n, out] = xt · Bᵀ + bias over the tiles. xt: bf16 rows of ldx elements, n rounded up to 32
// rows (zero past n) and kp columns (zero past in, kp a multiple of 32). fill(pp, k0, kc, bt)
// writes the B panel of panel pp over columns [k0, k0 + kc) in fill_bf16_panel's layout.
template <class Fill>
void gemm_tiles(const uint16_t* xt, size_t ldx, size_t n, size_t kp, const PackedView& p,
                const float* bias, float* y, ThreadPool& pool, const Fill& fill) {
    const size_t out = p.out, n_rt = (n + kRows - 1) / kRows, n_panels = (out + kCols - 1) / kCols;
    const size_t kc_max = std::min(kp, kKc);
    // Row tiles per chunk and panels per group (neither changes an output's arithmetic, only
    // how often B panels are rebuilt and bf16 rows reread): kRt and kGroup, smaller where that
    // gives every thread a few work items (narrow layers: the VAE's 32- to 128-channel convs).
    size_t rc_tiles = std::min(kRt, n_rt), group = std::min(kGroup, n_panels);
    auto items = [&] {
        return (n_rt + rc_tiles - 1) / rc_tiles * ((n_panels + group - 1) / group);
    };
    while (items() < 4 * pool.size() && (rc_tiles > 1 || group > 1)) {
        if (group > 1)
            group = (group + 1) / 2;
        else
            rc_tiles = (rc_tiles + 1) / 2;
    }
    const size_t n_rc = (n_rt + rc_tiles - 1) / rc_tiles, n_groups = (n_panels + group - 1) / group;
    pool.parallel_for(n_rc * n_groups, [&](size_t t0, size_t t1) {
        thread_local AlignedBuffer scratch;
        const size_t bt_bytes = kc_max / kStep * 2 * kBTile * sizeof(uint16_t);
        uint8_t* buf = scratch.grow(bt_bytes + group * rc_tiles * kRows * kCols * sizeof(float));
        uint16_t* bt = reinterpret_cast<uint16_t*>(buf);
        float* acc = reinterpret_cast<float*>(buf + bt_bytes);
        amx::load_config(amx::full_tiles());
        for (size_t t = t0; t < t1; ++t) {
            const size_t rc = t / n_groups, g = t % n_groups;
            const size_t rt0 = rc * rc_tiles, rt1 = std::min(n_rt, rt0 + rc_tiles);
            const size_t pp0 = g * group, pp1 = std::min(n_panels, pp0 + group);
            for (size_t k0 = 0; k0 < kp; k0 += kc_max) {
                const size_t kc = std::min(kc_max, kp - k0);
                const bool last = k0 + kc == kp;
                for (size_t pp = pp0; pp < pp1; ++pp) {
                    fill(pp, k0, kc, bt);
                    const size_t o0 = kCols * pp, cols = std::min(kCols, out - o0);
                    const auto [m0, m1] = panel_masks(cols);
                    const __m512 b0 = bias && last ? _mm512_maskz_loadu_ps(m0, bias + o0)
                                                   : _mm512_setzero_ps(),
                                 b1 = bias && last ? _mm512_maskz_loadu_ps(m1, bias + o0 + 16)
                                                   : _mm512_setzero_ps();
                    for (size_t rt = rt0; rt < rt1; ++rt) {
                        float* at = acc + ((pp - pp0) * rc_tiles + rt - rt0) * kRows * kCols;
                        tile_rows(xt + rt * kRows * ldx + k0, ldx, bt, kc / kStep, k0 == 0, at);
                        if (!last) continue;
                        // y = acc + bias (+0 for a null bias, as the vdpbf16ps kernels start
                        // from a zero bias row).
                        const size_t rows = std::min(kRows, n - rt * kRows);
                        for (size_t i = 0; i < rows; ++i) {
                            float* yi = y + (rt * kRows + i) * out + o0;
                            _mm512_mask_storeu_ps(
                                yi, m0, _mm512_add_ps(_mm512_load_ps(at + i * kCols), b0));
                            _mm512_mask_storeu_ps(
                                yi + 16, m1,
                                _mm512_add_ps(_mm512_load_ps(at + i * kCols + 16), b1));
                        }
                    }
                }
            }
        }
        amx::release();
    });
}

// x [n, in] rounded to bf16 (bf16x::round_row, the rounding of every bf16-activation path) into
// a thread_local buffer of rows ldx apart, n rounded up to 32 rows and in to kp columns, zeros
// (n at most one pass, so the buffer is bounded: linear_kernels.h's pass_rows).
const uint16_t* round_rows(const float* x, size_t n, size_t in, size_t kp, size_t ldx,
                           ThreadPool& pool) {
    thread_local AlignedBuffer xbuf;
    const size_t n_pad = (n + kRows - 1) / kRows * kRows;
    uint16_t* xt = reinterpret_cast<uint16_t*>(xbuf.grow(n_pad * ldx * sizeof(uint16_t)));
    auto rows = [&](size_t r0, size_t r1) {
        for (size_t r = r0; r < r1; ++r) {
            if (r < n)
                bf16x::round_row(x + r * in, in, xt + r * ldx, kp);
            else
                std::memset(xt + r * ldx, 0, kp * sizeof(uint16_t));
        }
    };
    if (n * in < (size_t{1} << 16))
        rows(0, n_pad);
    else
        pool.parallel_for(n_pad, rows);
    return xt;
}

// y [n, out] = bf16(x) · Bᵀ + bias, pass by pass (pass_rows). fill as for gemm_tiles.
template <class Fill>
void gemm_passes(const float* x, size_t n, const PackedView& p, const float* bias, float* y,
                 ThreadPool& pool, const Fill& fill) {
    const size_t kp = (p.in + kStep - 1) / kStep * kStep, ldx = kp + kStep;
    // A pass of one row chunk (in > 8160) gives gemm_tiles n_groups work items; where that is
    // under 4 per thread (many threads, few outputs) it splits the panel groups, so each bf16 row
    // chunk is reread by fewer panels. Not measured beyond this machine's 2 threads.
    const size_t pass = pass_rows(kRt * kRows, ldx * sizeof(uint16_t));
    for (size_t r0 = 0; r0 < n; r0 += pass) {
        const size_t nr = std::min(pass, n - r0);
        const uint16_t* xt = round_rows(x + r0 * p.in, nr, p.in, kp, ldx, pool);
        gemm_tiles(xt, ldx, nr, kp, p, bias, y + r0 * p.out, pool, fill);
    }
}

}  // namespace

void bf16dot_amx(const float* x, size_t n, const PackedView& p, const float* bias, float* y,
                 ThreadPool& pool) {
    if (n < kAmxBf16MinRows) {
        bf16dot_avx512(x, n, p, bias, y, pool);
        return;
    }
    gemm_passes(x, n, p, bias, y, pool, [&](size_t pp, size_t k0, size_t kc, uint16_t* bt) {
        fill_bf16_panel(p, pp, k0, kc, bt);
    });
}

void q4bf16_amx(const float* x, size_t n, const PackedView& p, const float* bias, float* y,
                ThreadPool& pool) {
    if (n < kAmxQ4Bf16MinRows) {
        q4bf16_chunked(Isa::Avx512, x, n, p, bias, y, pool);
        return;
    }
    gemm_passes(x, n, p, bias, y, pool, [&](size_t pp, size_t k0, size_t kc, uint16_t* bt) {
        fill_q4_panel(p, pp, k0, kc, bt);
    });
}

}  // namespace lancet::kernels::detail
