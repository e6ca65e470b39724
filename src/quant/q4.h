// The published AWQ INT4 weight format (spec awq-checkpoint-format.md §1.1): packing, the min-max
// round-to-nearest quantizer, dequantization, and decode-only INT5 (§1.2) and NVFP4 (§1.3) layouts.
#pragma once

#include <cstddef>
#include <cstdint>
#include <functional>
#include <vector>

namespace lancet {
class ThreadPool;
}

namespace lancet::quant {

// One quantized nn.Linear weight [out, in] in the published layout.
struct QuantizedMatrix {
    int out = 0, in = 0, group_size = 0;
    // [out, in/2]: byte (o, j) holds column 2j in its low nibble and column 2j+1 in its high
    // nibble.
    std::vector<uint8_t> qweight;
    // [out, in/gs]: bf16 bit patterns of the per-(row, group) step size.
    std::vector<uint16_t> scales;
    // [out, in/gs]: integer zero-points 0..15, one byte per group (not packed).
    std::vector<uint8_t> zeros;

    int n_groups() const { return group_size > 0 ? in / group_size : 0; }
    uint8_t code(int o, int i) const {
        const uint8_t b = qweight[static_cast<size_t>(o) * (in / 2) + i / 2];
        return (i & 1) ? (b >> 4) : (b & 0xf);
    }
};

// Packs n codes (n even, values 0..15) two per byte, even index in the low nibble.
void pack_int4(const uint8_t* codes, int64_t n, uint8_t* packed);
// The inverse: n codes from n/2 bytes.
void unpack_int4(const uint8_t* packed, int64_t n, uint8_t* codes);

// Checks shapes and value ranges (zeros <= 15, finite non-negative scales); throws lancet::Error
// naming `what` and the first offending position.
void validate(const QuantizedMatrix& q, const char* what);

// w = (q - z) * scale. (q - z) is an integer in [-15, 15] (4 bits) and the scale a bf16 (8
// significant bits), so the product has at most 12 significant bits and is exact in f32. The seed
// runtime rounds that product to bf16 (spec §1.1): pass round_to_bf16 to reproduce its weights.
std::vector<float> dequantize(const QuantizedMatrix& q, bool round_to_bf16 = false);
void dequantize_row(const QuantizedMatrix& q, int o, float* dst, bool round_to_bf16 = false);

// Group size the published quantizer used: first divisor of `in` among 128, 64, 32, 16, else
// `in` itself. Note it can pick a LARGER group than requested (spec §7.8).
int seed_group_size(int in, int requested);
// Lancet's choice: `requested` (32, 64 or 128) if it divides `in`, else the largest of 128, 64,
// 32, 16 that is <= requested and divides `in`, else `in`. Never larger than requested unless
// nothing smaller divides. Throws on an unsupported request or an odd `in` (nibble packing).
int choose_group_size(int in, int requested);
// The quantizers take the group size decided by their caller (the quantize plan, through
// choose_group_size) and only check it: positive, dividing `in`, `in` even. Returns gs.
int check_group_size(int in, int gs);

// How one group is turned into codes.
struct GroupQuantOptions {
    // Shrinks the range to [m*r, M*r] before computing scale and zero (AWQ auto-clip); 1.0 is the
    // spec quantizer bit for bit.
    float clip_ratio = 1.0f;
    // false: codes use the fp32 scale and the bf16 rounding is stored, exactly as the seed does.
    // true: the scale is rounded to bf16 first and zero and codes are chosen against the stored
    // value, so dequantization reproduces what the codes were chosen for (spec §7.5).
    bool codes_from_stored_scale = false;
};

// The grid quantize_group gives a group whose values span [mn, mx]: the stored bf16 scale, the
// scale the codes are chosen against (*code_scale) and the zero-point as a float (0..15).
void group_grid(float mn, float mx, const GroupQuantOptions& opt, uint16_t* scale_bf16,
                float* code_scale, float* zero);

// Quantizes one group of n values (already in f32). Writes n codes, the stored bf16 scale and the
// zero; if deq is non-null also writes the dequantized values (exact f32, see dequantize).
void quantize_group(const float* w, int n, const GroupQuantOptions& opt, uint8_t* codes,
                    uint16_t* scale_bf16, uint8_t* zero, float* deq);

struct RtnOptions {
    int group_size = 64;  // the group size used (must divide in; see choose_group_size)
    // The seed casts the checkpoint to bf16 before quantizing (spec §1.1, §3.4); true reproduces
    // its files bit for bit. false quantizes the given f32 values as they are.
    bool round_input_to_bf16 = true;
    bool codes_from_stored_scale = false;
    // Optional per-(row, group) clip ratios [out * in/gs] (nullptr: all 1.0).
    const float* clip = nullptr;
};

// Min-max RTN of a row-major [out, in] f32 matrix per spec §1.1. The chosen group size is in the
// result (callers warn when it differs from the request). Throws on non-finite weights.
QuantizedMatrix quantize_rtn(const float* w, int out, int in, const RtnOptions& opt);

// Min-max RTN of an [out, in] matrix with a clip search per (row, group), the INT4 g64 form
// DecoderOptions::LmHead::Int4 gives a bf16 lm_head: the group size is 64 when it divides `in`,
// else choose_group_size(in, 64); per group, clip ratios 1.0, 0.95, ..., 0.80 with codes chosen
// against the stored bf16 scale, keeping the ratio of least squared weight error. `row(o, dst)`
// writes row o in f32 to dst [in]; it is called once per row from the pool's threads, so no f32
// copy of the whole matrix is held.
QuantizedMatrix quantize_rtn_clip_search(size_t out, size_t in,
                                         const std::function<void(size_t, float*)>& row,
                                         ThreadPool& pool);

// ---- Decode-only formats of the seed's other quantizers ----

// INT5 (spec §1.2): qweight U8 [out, in], one code 0..31 per byte (NOT packed; 8 bits/weight),
// scales bf16 and zeros U8 (0..31) [out, in/gs]. Same (q - z) * scale rule as INT4; the product of
// a 6-bit integer and a bf16 is exact in f32.
struct Int5Matrix {
    int out = 0, in = 0, group_size = 0;
    std::vector<uint8_t> qweight, zeros;
    std::vector<uint16_t> scales;
};
void validate(const Int5Matrix& q, const char* what);
std::vector<float> dequantize(const Int5Matrix& q, bool round_to_bf16 = false);
// The seed's INT5 writer (spec §1.2): the group size is `requested` if it divides `in`, else the
// first of 64, 32, 16 that does, else `in`; the spec §1.1 min-max quantizer with 31 levels on the
// bf16-rounded weight (scale = max((M - m) / 31, 1e-8), zero = clamp(round(-m / scale), 0, 31),
// q = clamp(round(w / scale + zero), 0, 31), round half to even, codes from the fp32 scale, the
// bf16 rounding of it stored). Throws on non-finite weights.
Int5Matrix quantize_int5_rtn(const float* w, int out, int in, int requested_group_size = 64);

// NVFP4 as the seed wrote it (spec §1.3): E2M1 nibbles in the INT4 nibble order, bit 3 the sign,
// bits 0-2 an index into {0, 0.5, 1, 1.5, 2, 3, 4, 6} (so code 8 is -0); one bf16 scale per block
// of 16 along `in` from `scales_bf16` [out, in/16]. Quirks: there is no per-tensor global scale,
// the `scales_fp8` copy is never read by the seed runtime (and is mostly E4M3 subnormals), so
// decoding uses scales_bf16 only. Table value x bf16 scale is exact in f32.
struct Nvfp4Matrix {
    int out = 0, in = 0, block_size = 16;
    std::vector<uint8_t> qweight;       // [out, in/2]
    std::vector<uint16_t> scales_bf16;  // [out, in/block_size]
};
void validate(const Nvfp4Matrix& q, const char* what);
std::vector<float> dequantize(const Nvfp4Matrix& q, bool round_to_bf16 = false);
// The seed's NVFP4 writer (spec §1.3) on the bf16-rounded weight: per block of 16 along `in`,
// scale = max(max|w| / 6, 1e-8) in fp32; each w / scale (the unrounded scale), clamped to
// magnitude <= 6, takes the nearest table entry (ties to the lower index), bit 3 = (w < 0); the
// scale is stored as bf16 (scales_bf16) and as float8 E4M3FN bits (scales_fp8). `in` must be a
// multiple of 16. Throws on non-finite weights.
Nvfp4Matrix quantize_nvfp4(const float* w, int out, int in, std::vector<uint8_t>* scales_fp8);
// float8 E4M3FN bits of a finite non-negative value (round to nearest even, subnormals down to
// 2^-9; above 464 the value is not representable and the NaN pattern 0x7f is returned).
uint8_t f32_to_e4m3fn(float v);
// The E2M1 magnitude table, indexed by code & 7.
inline constexpr float kE2m1Table[8] = {0.0f, 0.5f, 1.0f, 1.5f, 2.0f, 3.0f, 4.0f, 6.0f};

}  // namespace lancet::quant
