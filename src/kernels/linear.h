// LinearWeight and linear(): the one weight type and the one call behind every nn.Linear.
#pragma once

#include <cstddef>
#include <cstdint>

#include "core/aligned_buffer.h"
#include "core/thread_pool.h"
#include "kernels/dispatch.h"

namespace lancet::kernels {

enum class WeightType { F32, BF16, Q4, Int5, Nvfp4 };
const char* weight_type_name(WeightType t);

// A weight as it is stored in a checkpoint (not owned). Row-major [out, in], y = x·Wᵀ + b.
//  F32:  f32 = float[out*in].        BF16: bf16 = uint16 bits[out*in].
//  Q4 (published AWQ INT4): qweight = U8 [out, in/2], the byte at (o, j) holds column 2j in its
//  low nibble and 2j+1 in its high nibble; scales = BF16 [out, in/gs]; zeros = U8 [out, in/gs],
//  one byte per group, 0..15. w[o,i] = (q[o,i] - zero[o,i/gs]) * scale[o,i/gs].
//  Int5 (spec §1.2): qweight = U8 [out, in], one code 0..31 per byte (not packed); scales = BF16
//  and zeros = U8 (0..31) [out, in/gs]. w[o,i] = (q[o,i] - zero[o,i/gs]) * scale[o,i/gs].
//  Nvfp4 (spec §1.3): qweight = U8 [out, in/2] in the Q4 nibble order; each code is E2M1, bit 3
//  the sign and bits 0-2 an index into {0, 0.5, 1, 1.5, 2, 3, 4, 6}; scales = scales_bf16 =
//  BF16 [out, in/16], one per block of 16 columns (group_size = 16). No per-tensor global scale
//  exists (the spec's writer has none) and the file's scales_fp8 copy is never read.
//  w[o,i] = (code & 8 ? -1 : 1) * table[code & 7] * scale[o, i/16].
struct WeightView {
    WeightType type = WeightType::F32;
    size_t out = 0, in = 0;
    size_t group_size = 0;  // Q4, Int5; 16 for Nvfp4
    const float* f32 = nullptr;
    const uint16_t* bf16 = nullptr;
    const uint8_t* qweight = nullptr;
    const uint16_t* scales = nullptr;
    const uint8_t* zeros = nullptr;

    static WeightView from_f32(const float* w, size_t out, size_t in);
    static WeightView from_bf16(const uint16_t* w, size_t out, size_t in);
    static WeightView from_awq_int4(const uint8_t* qweight, const uint16_t* scales,
                                    const uint8_t* zeros, size_t out, size_t in, size_t group_size);
    static WeightView from_awq_int5(const uint8_t* qweight, const uint16_t* scales,
                                    const uint8_t* zeros, size_t out, size_t in, size_t group_size);
    static WeightView from_nvfp4(const uint8_t* qweight, const uint16_t* scales_bf16, size_t out,
                                 size_t in);
};

// NVFP4: the block size and the E2M1 magnitudes, indexed by code & 7 (bit 3 is the sign).
constexpr size_t kNvfp4Block = 16;
inline constexpr float kE2m1Magnitude[8] = {0.0f, 0.5f, 1.0f, 1.5f, 2.0f, 3.0f, 4.0f, 6.0f};

// w[o, i] of a view, exactly (the Q4/Int5 product (q - z) * scale and the Nvfp4 product
// table * scale are exact in f32 and double).
double weight_ref(const WeightView& w, size_t o, size_t i);

// The repacked layout the kernels read, as plain data (the per-ISA files see only this, so no
// inline code is shared between translation units compiled for different ISAs).
// Output rows are grouped in blocks of kRowBlock = 8 (the last block zero-padded):
//  F32:  float    data[n_blocks][in][8]       (8 consecutive rows of one column)
//  BF16: uint16_t data[n_blocks][in][8]
//  Q4:   uint8_t  data[n_blocks][in/8][8][4]  the 32-bit word of row r in chunk c holds columns
//        8c..8c+7 in nibbles 0..7 (bits 4t..4t+3 = column 8c+t), so one 32-byte load is an
//        8-row x 8-column tile and a mask plus an int->float convert extracts a column;
//        uint16_t scales[n_blocks][in/gs][8] (bf16 bits), uint8_t zeros[n_blocks][in/gs][8].
//        Scales stay bf16 and zeros u8 so the repacked weight streams as few bytes as the file.
//  Int5: uint8_t data[n_blocks][in/4][8][4]  one code per byte as in the file: the 32-bit word
//        of row r in chunk c holds columns 4c..4c+3 in bytes 0..3 (bits 8t..8t+7 = column 4c+t),
//        so one 32-byte load is an 8-row x 4-column tile and a byte mask plus an int->float
//        convert extracts a column (codes <= 31 keep the top byte's word positive);
//        scales and zeros as Q4.
//  Nvfp4: uint8_t data[n_blocks][in/8][8][4]  the Q4 word layout (nibble t of row r's word in
//        chunk c = the code of column 8c+t, as in the file); uint16_t scales[n_blocks][in/16][8]
//        (bf16 bits of scales_bf16); no zeros. Kernels decode a code through a 16-entry table.
struct PackedView {
    WeightType type;
    size_t out, in, group_size, n_blocks;
    const void* data;
    const uint16_t* scales;
    const uint8_t* zeros;
};

constexpr size_t kRowBlock = 8;

// A weight repacked once, at construction, into PackedView's layout on 2 MiB pages. Limits
// (checked, lancet::Error otherwise): out, in >= 1; Q4 needs group_size a multiple of 8 that
// divides in (the checkpoints use 32, 64, 128) and zeros in 0..15; Int5 needs the same group
// sizes (the spec's writer uses 64, 32 or 16) and codes and zeros in 0..31; Nvfp4 needs in a
// multiple of 16.
class LinearWeight {
  public:
    LinearWeight() = default;
    explicit LinearWeight(const WeightView& v);
    static LinearWeight from_f32(const float* w, size_t out, size_t in) {
        return LinearWeight(WeightView::from_f32(w, out, in));
    }
    static LinearWeight from_bf16(const uint16_t* w, size_t out, size_t in) {
        return LinearWeight(WeightView::from_bf16(w, out, in));
    }
    static LinearWeight from_awq_int4(const uint8_t* qweight, const uint16_t* scales,
                                      const uint8_t* zeros, size_t out, size_t in,
                                      size_t group_size) {
        return LinearWeight(WeightView::from_awq_int4(qweight, scales, zeros, out, in, group_size));
    }
    static LinearWeight from_awq_int5(const uint8_t* qweight, const uint16_t* scales,
                                      const uint8_t* zeros, size_t out, size_t in,
                                      size_t group_size) {
        return LinearWeight(WeightView::from_awq_int5(qweight, scales, zeros, out, in, group_size));
    }
    static LinearWeight from_nvfp4(const uint8_t* qweight, const uint16_t* scales_bf16, size_t out,
                                   size_t in) {
        return LinearWeight(WeightView::from_nvfp4(qweight, scales_bf16, out, in));
    }

    WeightType type() const { return type_; }
    size_t out() const { return out_; }
    size_t in() const { return in_; }
    size_t group_size() const { return group_size_; }
    size_t n_blocks() const { return (out_ + kRowBlock - 1) / kRowBlock; }

    // Row o of the weight as f32, decoded from the repacked layout (exact).
    void dequantize_row(size_t o, float* dst) const;
    // Bytes of the weight in its published format (what "weight GB/s" is measured against).
    size_t file_bytes() const;
    PackedView packed() const;
    // A deep copy (benchmarks cycle through copies so that weights stream from DRAM, not cache).
    LinearWeight clone() const;

  private:
    WeightType type_ = WeightType::F32;
    size_t out_ = 0, in_ = 0, group_size_ = 0;
    // One buffer: the codes (or values), then, for the quantized types, the scales and zeros at
    // 64-byte aligned offsets, so that all of a weight sits on the same 2 MiB pages (AlignedBuffer
    // puts only buffers of 1 MiB and more there, and a layer's scales and zeros alone are far
    // smaller: on 4 KiB pages they cost a page walk and a restarted hardware prefetch every 4 KiB
    // of the n = 1 kernels' side streams).
    AlignedBuffer data_;
    size_t scales_at_ = 0, zeros_at_ = 0;  // byte offsets in data_ (0: none)
    const uint16_t* scales() const {
        return scales_at_ ? reinterpret_cast<const uint16_t*>(data_.data() + scales_at_) : nullptr;
    }
    const uint8_t* zeros() const { return zeros_at_ ? data_.data() + zeros_at_ : nullptr; }
    // Allocates data_ for code bytes plus scale and zero bytes (either may be 0).
    void allocate(size_t code_bytes, size_t scale_bytes, size_t zero_bytes);
    friend void dequantize_to_bf16(const LinearWeight& w, LinearWeight& dst, ThreadPool& pool);
    friend LinearWeight dequantize_to_bf16(const LinearWeight& w, ThreadPool& pool);
};

// How linear() treats the activations of an INT4 (Q4) weight (other weight types, Int5 and Nvfp4
// included, are always F32). F32: exact f32 activations, f32 accumulation (the accurate default).
// Int8 ("W4A8"): each row of x is quantized once per call in blocks of kb = gcd(group_size, 32)
// columns, symmetric round-to-nearest-even int8 with one f32 scale per block (d = max|x| / 127, x8
// = rint(x * (127 / max|x|)), each operation rounded in f32; x8 in [-127, 127]), and the u4 x s8
// products are summed exactly in integers; then, per output element, in this order:
//   acc = 0; for each group g: { for each block k of g: acc = fma(float(sum_k q*x8), s_g*d_k, acc);
//                               acc = fma(-(z_g*s_g), XS_g, acc) }   y = acc + bias
// with XS_g = sum over the blocks k of g of d_k * float(sum_k x8), accumulated by fma in block
// order. Every ISA evaluates exactly this, so W4A8 results are bit-identical across ISAs and
// thread counts. Error vs exact: |x - d*x8| <= d/2 per element (plus the f32 roundings). x must
// be finite.
// Bf16 ("bf16"): what Lance's PyTorch AWQ recipe computes (it dequantizes the INT4 weight into
// bf16 and runs F.linear in bf16): w̃ = bf16(w), w = (q - z)·s exact in f32 and rounded to
// nearest even; x̃ = bf16(x) (as Bf16Act::Bf16 below); y = Σ w̃·x̃ summed in f32, + bias. The
// products w̃·x̃ are exact in f32. On AMX (n >= kAmxQ4Bf16MinRows, linear_kernels.h) each panel of
// 32 outputs is dequantized straight into the TDPBF16PS pair layout; on AVX-512 (and AMX below
// that) blocks of outputs are dequantized to bf16 and run on vdpbf16ps; on AVX2 and scalar the
// bf16 values go through that ISA's f32 kernel. Batches of n <= kGemvMaxRows rows (decode) keep
// w unrounded (x̃ with the f32 INT4 GEMV: the weight streams as 4-bit codes, and |w - w̃| is only
// smaller). So ISAs and batch sizes agree to f32 summation order and w's rounding, not to the
// bit; every path is bit-identical across thread counts. Error vs exact: |w̃ - w| <= 2^-8 |w|
// and |x̃ - x| <= 2^-8 |x| per element (2^-8: the unit roundoff of bf16's 8 significand bits),
// so at most (2^-7 + 2^-16) Σ|w·x| per output, plus the
// f32 sum's (K + 2)·2^-24 Σ|w̃·x̃| and, from the tiles' and vdpbf16ps' flush of denormal inputs,
// 2^-126 (Σ|w| + Σ|x|). More accurate per element than Int8 (2^-8 relative vs d/2 absolute).
// Auto ("auto"): per call the faster of the two, by measurement (README, "INT4 with bf16
// activations"): Bf16 on the Amx ISA for n > kGemvMaxRows (the AMX bf16 tiles run 1.6-1.8x the
// W4A8 GEMM), Int8 otherwise (the decode GEMVs, and every n on ISAs without AMX, where vdpbf16ps
// is slower than the int8 dot). Each call's arithmetic is exactly that mode's.
enum class ActMode { F32, Int8, Bf16, Auto };
const char* act_mode_name(ActMode m);  // "f32", "int8", "bf16", "auto"
// The mode a call of n rows on `isa` runs for Auto (Int8 or Bf16); any other mode unchanged.
ActMode resolve_act_mode(ActMode m, Isa isa, size_t n);
// The mode linear() uses now: set_activation_mode()'s, else $LANCET_ACT (f32|int8|bf16|auto;
// lancet::Error if anything else), else F32. (Implemented in dispatch.cc, with the ISA choice.)
ActMode activation_mode();
void set_activation_mode(ActMode m);
void clear_activation_mode();  // back to $LANCET_ACT / F32

// How linear() and conv3d treat the activations of a BF16 weight (other types ignore it).
// F32: exact f32 activations, f32 accumulation (the accurate default). Bf16: each element of x is
// rounded once per call to bf16, x̃ = f32_to_bf16(x) (round to nearest even, as torch's
// .to(bfloat16); core/numeric.h), then the products w·x̃ (exact in f32: 8-bit by 8-bit
// significands) are summed in f32. On AVX-512 BF16 the sums run on vdpbf16ps, which adds the two
// products of each column pair (k, k+1) to an f32 accumulator and flushes denormal inputs and
// results to zero (on AMX, n > 8: TDPBF16PS tiles, the same per-pair steps); on scalar and
// AVX2 the same x̃ goes through that ISA's f32 kernel, so the paths agree to f32 summation order,
// not to the bit. Error vs exact: |x̃ - x| <= 2^-8 |x| per element (the bf16 unit roundoff), i.e. at
// most 2^-8 Σ|w·x| per output, plus the f32 sum's (K + 2)·2^-24 Σ|w·x̃| and, from the flush, 2^-126
// Σ|w|. Bit-identical across thread counts.
// Auto ("auto"): Bf16 where it runs on the AMX tiles (the Amx ISA, n > kGemvMaxRows: 6-7.5x
// vdpbf16ps and several times the f32 kernels), F32 otherwise (the GEMVs, where bf16 rounding
// saves no bytes, and every n without AMX). Each call's arithmetic is exactly that mode's.
enum class Bf16Act : uint8_t { F32, Bf16, Auto };
const char* bf16_act_name(Bf16Act m);  // "f32", "bf16", "auto"
// The mode a call of n rows on `isa` runs for Auto (F32 or Bf16); any other mode unchanged. A
// convolution (thousands of pixel rows) asks with n = SIZE_MAX.
Bf16Act resolve_bf16_act(Bf16Act m, Isa isa, size_t n);
// The mode linear() uses now: set_bf16_activation_mode()'s, else $LANCET_BF16_ACT
// (f32|bf16|auto; lancet::Error if anything else), else F32. (dispatch.cc.)
Bf16Act bf16_activation_mode();
void set_bf16_activation_mode(Bf16Act m);
void clear_bf16_activation_mode();  // back to $LANCET_BF16_ACT / F32

// y[n, out] = x[n, in] · Wᵀ + bias (bias nullable), f32 activations and accumulation (or W4A8 for
// Q4 weights when activation_mode() is Int8), on the kernel dispatch picked (dispatch.h). Each
// output element is computed by one thread with the same instructions for any thread count, so
// results are bit-identical across -t values.
void linear(const float* x, size_t n, const LinearWeight& w, const float* bias, float* y);
void linear(const float* x, size_t n, const LinearWeight& w, const float* bias, float* y,
            ThreadPool& pool);

// Wall time spent inside linear calls (every linear of the op layer and linear() above), summed
// over calls while enabled; for `bench decode`'s split of a token's time into the linears and the
// rest. Off by default (then a call costs one relaxed atomic load).
void set_linear_timing(bool on);
double linear_seconds();
void reset_linear_seconds();

// Reference: the same product in double precision, plain loops, straight from the file layout.
void linear_ref(const float* x, size_t n, const WeightView& w, const float* bias, double* y);

// Bf16Act::Bf16 explicitly, whatever bf16_activation_mode() says. BF16 weights only.
void linear_bf16act(const float* x, size_t n, const LinearWeight& w, const float* bias, float* y,
                    ThreadPool& pool);

// W4A8 (ActMode::Int8) explicitly, whatever activation_mode() says. Q4 weights only.
void linear_w4a8(const float* x, size_t n, const LinearWeight& w, const float* bias, float* y,
                 ThreadPool& pool);
// The W4A8 activation block (columns per int8 scale) for a group size: gcd(group_size, 32).
size_t w4a8_block(size_t group_size);

// The naive path the Python runtime takes (bench only): dequantize a Q4 weight to a BF16 weight,
// rounding (q - z) * scale to bf16 as torch does. Writes straight into the BF16 repacked layout.
LinearWeight dequantize_to_bf16(const LinearWeight& w, ThreadPool& pool);
// Same, into an existing BF16 weight of the same shape (so a benchmark can exclude allocation).
void dequantize_to_bf16(const LinearWeight& w, LinearWeight& dst, ThreadPool& pool);

}  // namespace lancet::kernels
