// The per-ISA linear kernels behind dispatch (internal to src/kernels).
#pragma once

#include <algorithm>
#include <cstddef>
#include <cstdint>

#include "core/thread_pool.h"
#include "kernels/dispatch.h"
#include "kernels/linear.h"

namespace lancet::kernels {
struct OpContext;
}

namespace lancet::kernels::detail {

// Batches of at most this many rows take the streaming (GEMV) kernels, which convert each weight
// tile in registers per row group; larger batches dequantize a tile once into an L1 panel and run
// a register-blocked GEMM over it.
constexpr size_t kGemvMaxRows = 8;
// GEMM blocking: K chunk (panel depth) and rows of x per pass (x chunk kKc*kNc*4 bytes in L2).
constexpr size_t kKc = 256;
constexpr size_t kNc = 256;
// The GEMM kernels that copy x into their own layout (bf16-rounded rows, int8 row blocks; AMX and
// AVX-512 W4A8) run the rows in passes: as many of their row chunks (the rows that share one
// weight panel) as fit kPassBytes of copy, at least one, so the copy is bounded by the layer's
// width, not by n. A pass boundary falls on a row chunk boundary, so each panel is still built
// once per row chunk, and each output's arithmetic is the same whichever pass its row is in.
constexpr size_t kPassBytes = size_t{8} << 20;
inline size_t pass_rows(size_t chunk_rows, size_t row_bytes) {
    return std::max<size_t>(1, kPassBytes / (chunk_rows * row_bytes)) * chunk_rows;
}

// Scratch floats linear() must pass for this call (Q4, Int5 and Nvfp4 GEMV: scaled x and
// per-group sums of x).
size_t scratch_floats(size_t n, const PackedView& w);

using LinearFn = void (*)(const float* x, size_t n, const PackedView& w, const float* bias,
                          float* y, float* scratch, ThreadPool& pool);

void linear_scalar(const float* x, size_t n, const PackedView& w, const float* bias, float* y,
                   float* scratch, ThreadPool& pool);
void linear_avx2(const float* x, size_t n, const PackedView& w, const float* bias, float* y,
                 float* scratch, ThreadPool& pool);
void linear_avx512(const float* x, size_t n, const PackedView& w, const float* bias, float* y,
                   float* scratch, ThreadPool& pool);

// W4A8 (ActMode::Int8, Q4 weights only). linear_w4a8() hands each kernel buffers for the
// quantized activations: q = int8 [n][in], each 8-column chunk stored as its even columns then its
// odd ones (x0 x2 x4 x6 x1 x3 x5 x7: the order the Q4 word's low and high nibbles come out in, so
// one 32-bit broadcast pairs with a masked nibble plane); d = f32 [n][in / kb] block scales;
// xs = f32 [n][groups] (XS_g of linear.h). The kernel quantizes x into them, then multiplies.
struct W4A8Scratch {
    int8_t* q;
    float* d;
    float* xs;
};
using W4A8Fn = void (*)(const float* x, size_t n, const PackedView& w, const float* bias, float* y,
                        const W4A8Scratch& s, ThreadPool& pool);
void w4a8_scalar(const float* x, size_t n, const PackedView& w, const float* bias, float* y,
                 const W4A8Scratch& s, ThreadPool& pool);
void w4a8_avx2(const float* x, size_t n, const PackedView& w, const float* bias, float* y,
               const W4A8Scratch& s, ThreadPool& pool);
void w4a8_avx512(const float* x, size_t n, const PackedView& w, const float* bias, float* y,
                 const W4A8Scratch& s, ThreadPool& pool);
// AMX tiles (linear_amx.cc) for n >= kAmxMinRows and activation blocks of 32 (group sizes that are
// multiples of 32); anything else runs w4a8_avx512. Bit-identical to it. Below 64 rows the
// zero-padded half of a 32-row tile costs more than the tiles save (measured: n = 16 and 48 run
// at 0.82-0.96x of the VNNI kernel, n >= 64 at 1.04-1.21x).
constexpr size_t kAmxMinRows = 64;
void w4a8_amx(const float* x, size_t n, const PackedView& w, const float* bias, float* y,
              const W4A8Scratch& s, ThreadPool& pool);

// BF16 weights x bf16-rounded activations (Bf16Act::Bf16, linear.h) with vdpbf16ps: rounds x
// itself (n rows of in f32) and multiplies. AVX-512 BF16 only.
using Bf16DotFn = void (*)(const float* x, size_t n, const PackedView& w, const float* bias,
                           float* y, ThreadPool& pool);
void bf16dot_avx512(const float* x, size_t n, const PackedView& w, const float* bias, float* y,
                    ThreadPool& pool);
// The AMX tier of the same (linear_bf16_amx.cc): TDPBF16PS tiles for n >= kAmxBf16MinRows (every
// GEMM size; measured 2-5x vdpbf16ps at n = 9-32), bf16dot_avx512 below. Same arithmetic (exact
// products, f32 sums), another summation order.
constexpr size_t kAmxBf16MinRows = kGemvMaxRows + 1;
void bf16dot_amx(const float* x, size_t n, const PackedView& w, const float* bias, float* y,
                 ThreadPool& pool);

// INT4 (Q4) weights x bf16 activations (ActMode::Bf16, linear.h), n > kGemvMaxRows. AMX
// (linear_bf16_amx.cc): each 32-output panel dequantized into the TDPBF16PS pair layout, then the
// tiles of bf16dot_amx, for n >= kAmxQ4Bf16MinRows; below that q4bf16_chunked(Isa::Avx512).
using Q4Bf16Fn = Bf16DotFn;
constexpr size_t kAmxQ4Bf16MinRows = kGemvMaxRows + 1;
void q4bf16_amx(const float* x, size_t n, const PackedView& w, const float* bias, float* y,
                ThreadPool& pool);
// The portable form on the kernels of `isa` (linear.cc): blocks of outputs dequantized to bf16
// (w̃), then bf16dot_kernel(isa) on them or, where there is none, x and w̃ as f32 through
// linear_kernel(isa); the results are scattered into y.
void q4bf16_chunked(Isa isa, const float* x, size_t n, const PackedView& w, const float* bias,
                    float* y, ThreadPool& pool);

constexpr size_t kW4A8MaxOuts = 8;
// One weight of a fused W4A8 GEMV: y [n, w.out] = x · wᵀ + bias (bias nullable).
struct W4A8Out {
    PackedView w;
    const float* bias;
    float* y;
};
// Several W4A8 GEMVs (n <= kGemvMaxRows) of one x [n, in] whose weights share in and the group
// size (q/k/v, gate/up; at most kW4A8MaxOuts): x quantized once into s, and every weight's block
// pairs in one pool job. Each y is bit-identical to the single-weight kernel's.
using W4A8ManyFn = void (*)(const float* x, size_t n, const W4A8Out* outs, size_t count,
                            const W4A8Scratch& s, ThreadPool& pool);
void w4a8_gemv_many_avx2(const float* x, size_t n, const W4A8Out* outs, size_t count,
                         const W4A8Scratch& s, ThreadPool& pool);
void w4a8_gemv_many_avx512(const float* x, size_t n, const W4A8Out* outs, size_t count,
                           const W4A8Scratch& s, ThreadPool& pool);
// The AVX2 tier's W4A8 kernels built with AVX-VNNI (linear_avxvnni.cc): what w4a8_kernel and
// w4a8_gemv_many_kernel return for Isa::Avx2 when avx_vnni() is true, bit-identical to the
// plain AVX2 ones (w4a8_avx2, w4a8_gemv_many_avx2), which tests call directly to compare.
void w4a8_avxvnni(const float* x, size_t n, const PackedView& w, const float* bias, float* y,
                  const W4A8Scratch& s, ThreadPool& pool);
void w4a8_gemv_many_avxvnni(const float* x, size_t n, const W4A8Out* outs, size_t count,
                            const W4A8Scratch& s, ThreadPool& pool);
// The GEMV kernels' output step: nr rows of a block pair's result tile out [nr][16] (block b in
// columns 0-7, block bb in 8-15; bb == b for an odd tail, written once) stored to y [.., n_out]
// from row r0 on, with the bias added and the zero padding of the last block dropped.
inline void store_block_pair(const float* out, size_t nr, size_t r0, size_t b, size_t bb,
                             size_t n_out, const float* bias, float* y) {
    for (size_t half = 0; half < (bb != b ? 2u : 1u); ++half) {
        const size_t blk = b + half;
        const size_t cols =
            n_out - blk * kRowBlock < kRowBlock ? n_out - blk * kRowBlock : kRowBlock;
        for (size_t r = 0; r < nr; ++r) {
            float* yr = y + (r0 + r) * n_out + blk * kRowBlock;
            const float* o = out + r * 16 + half * 8;
            for (size_t j = 0; j < cols; ++j)
                yr[j] = o[j] + (bias ? bias[blk * kRowBlock + j] : 0.0f);
        }
    }
}
// Whether this CPU (and OS) runs AVX-VNNI (CPUID.(7,1):EAX bit 4) on top of the AVX2 tier;
// decided once (dispatch.cc).
bool avx_vnni();

}  // namespace lancet::kernels::detail

namespace lancet::kernels::detail {
// The vdpbf16ps kernel for an ISA; nullptr where the ISA has none (scalar, AVX2: bf16_rows rounds
// x to bf16 and runs that ISA's f32 kernel on it, the same products and f32 sums).
Bf16DotFn bf16dot_kernel(Isa isa);
// Bf16Act::Bf16 on dense rows of a BF16 weight with the kernels of `isa`.
void bf16_rows(Isa isa, const float* x, size_t n, const LinearWeight& w, const float* bias,
               float* y, ThreadPool& pool);

// The kernel for an ISA (dispatch.cc; lancet::Error if this CPU lacks it).
LinearFn linear_kernel(Isa isa);
// INT4 x bf16 activations for n > kGemvMaxRows, or nullptr (then q4bf16_chunked).
Q4Bf16Fn q4bf16_kernel(Isa isa);
// ActMode::Bf16 on dense rows of a Q4 weight with the kernels of `isa`.
void q4_bf16_rows(Isa isa, const float* x, size_t n, const LinearWeight& w, const float* bias,
                  float* y, ThreadPool& pool);
W4A8Fn w4a8_kernel(Isa isa);
// The fused W4A8 GEMV of an ISA, or nullptr where it has none (callers then run the linears one
// by one).
W4A8ManyFn w4a8_gemv_many_kernel(Isa isa);

// Q4 -> BF16 (repacked layout) for the naive baseline; nullptr: use the portable loop.
using DequantBf16Fn = void (*)(const PackedView& p, uint16_t* dst, ThreadPool& pool);
void dequant_bf16_avx2(const PackedView& p, uint16_t* dst, ThreadPool& pool);
DequantBf16Fn dequant_bf16_kernel(Isa isa);

// linear() on dense rows: x [n, in], y [n, out], with ctx's ISA, activation mode and pool.
void linear_rows(const OpContext& ctx, const float* x, size_t n, const LinearWeight& w,
                 const float* bias, float* y);
// W4A8 on dense rows with the kernels of `isa`.
void w4a8_rows(Isa isa, const float* x, size_t n, const LinearWeight& w, const float* bias,
               float* y, ThreadPool& pool);
// The W4A8 scratch of linear.h for n rows of a weight of `in` columns and group size gs, in a
// buffer of the calling thread (grown, never shrunk).
W4A8Scratch w4a8_scratch(size_t n, size_t in, size_t gs);
}  // namespace lancet::kernels::detail
