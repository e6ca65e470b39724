// LinearWeight repacking, the linear() entry point, the double-precision reference, naive dequant.
#include "kernels/linear.h"

#include <algorithm>
#include <atomic>
#include <cstring>
#include <numeric>
#include <vector>

#include "core/error.h"
#include "core/numeric.h"
#include "kernels/linear_kernels.h"
#include "kernels/ops.h"

namespace lancet::kernels {

const char* weight_type_name(WeightType t) {
    switch (t) {
        case WeightType::F32:
            return "f32";
        case WeightType::BF16:
            return "bf16";
        case WeightType::Q4:
            return "int4";
        case WeightType::Int5:
            return "int5";
        case WeightType::Nvfp4:
            return "nvfp4";
    }
    return "?";
}

WeightView WeightView::from_f32(const float* w, size_t out, size_t in) {
    WeightView v;
    v.type = WeightType::F32;
    v.out = out;
    v.in = in;
    v.f32 = w;
    return v;
}

WeightView WeightView::from_bf16(const uint16_t* w, size_t out, size_t in) {
    WeightView v;
    v.type = WeightType::BF16;
    v.out = out;
    v.in = in;
    v.bf16 = w;
    return v;
}

WeightView WeightView::from_awq_int4(const uint8_t* qweight, const uint16_t* scales,
                                     const uint8_t* zeros, size_t out, size_t in,
                                     size_t group_size) {
    WeightView v;
    v.type = WeightType::Q4;
    v.out = out;
    v.in = in;
    v.group_size = group_size;
    v.qweight = qweight;
    v.scales = scales;
    v.zeros = zeros;
    return v;
}

WeightView WeightView::from_awq_int5(const uint8_t* qweight, const uint16_t* scales,
                                     const uint8_t* zeros, size_t out, size_t in,
                                     size_t group_size) {
    WeightView v = from_awq_int4(qweight, scales, zeros, out, in, group_size);
    v.type = WeightType::Int5;
    return v;
}

WeightView WeightView::from_nvfp4(const uint8_t* qweight, const uint16_t* scales_bf16, size_t out,
                                  size_t in) {
    WeightView v;
    v.type = WeightType::Nvfp4;
    v.out = out;
    v.in = in;
    v.group_size = kNvfp4Block;
    v.qweight = qweight;
    v.scales = scales_bf16;
    return v;
}

namespace {

inline unsigned file_nibble(const WeightView& w, size_t o, size_t i) {
    return (w.qweight[o * (w.in / 2) + i / 2] >> (4 * (i & 1))) & 0xfu;
}

// The per-group asymmetric formats (INT4, INT5): their tensors, a group size that is a multiple of
// 8 dividing `in`, and every zero-point within the code range 0..max_zero.
void check_grouped_codes(const WeightView& v, const char* kind, const char* zero_label,
                         int max_zero) {
    if (!v.qweight || !v.scales || !v.zeros) fail("linear weight: ", kind, " tensors missing");
    const size_t gs = v.group_size;
    if (gs == 0 || gs % 8 != 0 || v.in % gs != 0)
        fail("linear weight: ", kind, " group size ", gs,
             " must be a multiple of 8 dividing in=", v.in);
    const size_t groups = v.in / gs;
    for (size_t o = 0; o < v.out; ++o)
        for (size_t g = 0; g < groups; ++g)
            if (v.zeros[o * groups + g] > max_zero)
                fail("linear weight: ", zero_label, " ", int(v.zeros[o * groups + g]), " at row ",
                     o, ", group ", g, " is outside 0..", max_zero);
}

void check_view(const WeightView& v) {
    if (v.out == 0 || v.in == 0) fail("linear weight: empty shape [", v.out, ", ", v.in, "]");
    switch (v.type) {
        case WeightType::F32:
            if (!v.f32) fail("linear weight: f32 data missing");
            break;
        case WeightType::BF16:
            if (!v.bf16) fail("linear weight: bf16 data missing");
            break;
        case WeightType::Q4:
            check_grouped_codes(v, "int4", "zero-point", 15);
            break;
        case WeightType::Int5:
            check_grouped_codes(v, "int5", "int5 zero-point", 31);
            break;
        case WeightType::Nvfp4:
            if (!v.qweight || !v.scales) fail("linear weight: nvfp4 tensors missing");
            if (v.group_size != kNvfp4Block || v.in % kNvfp4Block != 0)
                fail("linear weight: nvfp4 needs in=", v.in, " to be a multiple of ", kNvfp4Block,
                     " (block size ", v.group_size, ")");
            break;
    }
}

// The first code above 31 of an Int5 view, as a one-line error (called when the repack saw one).
[[noreturn]] void fail_int5_code(const WeightView& v) {
    for (size_t k = 0; k < v.out * v.in; ++k)
        if (v.qweight[k] > 31)
            fail("linear weight: int5 code ", int(v.qweight[k]), " at row ", k / v.in, ", column ",
                 k % v.in, " is outside 0..31");
    fail("linear weight: int5 code outside 0..31");
}

}  // namespace

double weight_ref(const WeightView& w, size_t o, size_t i) {
    switch (w.type) {
        case WeightType::F32:
            return w.f32[o * w.in + i];
        case WeightType::BF16:
            return bf16_to_f32(w.bf16[o * w.in + i]);
        case WeightType::Q4: {
            const size_t groups = w.in / w.group_size, g = i / w.group_size;
            const double s = bf16_to_f32(w.scales[o * groups + g]);
            return (double(file_nibble(w, o, i)) - double(w.zeros[o * groups + g])) * s;
        }
        case WeightType::Int5: {
            const size_t groups = w.in / w.group_size, g = i / w.group_size;
            const double s = bf16_to_f32(w.scales[o * groups + g]);
            return (double(w.qweight[o * w.in + i]) - double(w.zeros[o * groups + g])) * s;
        }
        case WeightType::Nvfp4: {
            const unsigned c = file_nibble(w, o, i);
            const double s = bf16_to_f32(w.scales[o * (w.in / kNvfp4Block) + i / kNvfp4Block]);
            return (c & 8 ? -1.0 : 1.0) * double(kE2m1Magnitude[c & 7]) * s;
        }
    }
    return 0;
}

LinearWeight::LinearWeight(const WeightView& v)
    : type_(v.type),
      out_(v.out),
      in_(v.in),
      group_size_(v.type == WeightType::Q4 || v.type == WeightType::Int5 ||
                          v.type == WeightType::Nvfp4
                      ? v.group_size
                      : 0) {
    check_view(v);
    const size_t nb = n_blocks(), in = in_;
    ThreadPool& pool = default_pool();
    switch (type_) {
        case WeightType::F32: {
            data_ = AlignedBuffer(nb * in * kRowBlock * sizeof(float));
            float* d = data_.as<float>();
            pool.parallel_for(nb, [&](size_t b0, size_t b1) {
                for (size_t b = b0; b < b1; ++b)
                    for (size_t r = 0; r < kRowBlock && b * kRowBlock + r < out_; ++r) {
                        const float* src = v.f32 + (b * kRowBlock + r) * in;
                        for (size_t i = 0; i < in; ++i) d[(b * in + i) * kRowBlock + r] = src[i];
                    }
            });
            break;
        }
        case WeightType::BF16: {
            data_ = AlignedBuffer(nb * in * kRowBlock * sizeof(uint16_t));
            uint16_t* d = data_.as<uint16_t>();
            pool.parallel_for(nb, [&](size_t b0, size_t b1) {
                for (size_t b = b0; b < b1; ++b)
                    for (size_t r = 0; r < kRowBlock && b * kRowBlock + r < out_; ++r) {
                        const uint16_t* src = v.bf16 + (b * kRowBlock + r) * in;
                        for (size_t i = 0; i < in; ++i) d[(b * in + i) * kRowBlock + r] = src[i];
                    }
            });
            break;
        }
        case WeightType::Q4: {
            const size_t chunks = in / 8, groups = in / group_size_;
            allocate(nb * chunks * kRowBlock * 4, nb * groups * kRowBlock * sizeof(uint16_t),
                     nb * groups * kRowBlock);
            uint32_t* d = data_.as<uint32_t>();
            uint16_t* s = reinterpret_cast<uint16_t*>(data_.data() + scales_at_);
            uint8_t* z = data_.data() + zeros_at_;
            pool.parallel_for(nb, [&](size_t b0, size_t b1) {
                for (size_t b = b0; b < b1; ++b)
                    for (size_t r = 0; r < kRowBlock && b * kRowBlock + r < out_; ++r) {
                        const size_t o = b * kRowBlock + r;
                        for (size_t c = 0; c < chunks; ++c) {
                            uint32_t word = 0;
                            for (unsigned t = 0; t < 8; ++t)
                                word |= uint32_t(file_nibble(v, o, 8 * c + t)) << (4 * t);
                            d[(b * chunks + c) * kRowBlock + r] = word;
                        }
                        for (size_t g = 0; g < groups; ++g) {
                            s[(b * groups + g) * kRowBlock + r] = v.scales[o * groups + g];
                            z[(b * groups + g) * kRowBlock + r] = v.zeros[o * groups + g];
                        }
                    }
            });
            break;
        }
        case WeightType::Int5: {
            const size_t chunks = in / 4, groups = in / group_size_;
            allocate(nb * chunks * kRowBlock * 4, nb * groups * kRowBlock * sizeof(uint16_t),
                     nb * groups * kRowBlock);
            uint32_t* d = data_.as<uint32_t>();
            uint16_t* s = reinterpret_cast<uint16_t*>(data_.data() + scales_at_);
            uint8_t* z = data_.data() + zeros_at_;
            std::atomic<bool> bad{false};
            pool.parallel_for(nb, [&](size_t b0, size_t b1) {
                uint8_t any = 0;  // OR of every code: > 31 iff some code is
                for (size_t b = b0; b < b1; ++b)
                    for (size_t r = 0; r < kRowBlock && b * kRowBlock + r < out_; ++r) {
                        const size_t o = b * kRowBlock + r;
                        const uint8_t* row = v.qweight + o * in;
                        for (size_t c = 0; c < chunks; ++c) {
                            uint32_t word = 0;
                            for (unsigned t = 0; t < 4; ++t) {
                                any |= row[4 * c + t];
                                word |= uint32_t(row[4 * c + t]) << (8 * t);
                            }
                            d[(b * chunks + c) * kRowBlock + r] = word;
                        }
                        for (size_t g = 0; g < groups; ++g) {
                            s[(b * groups + g) * kRowBlock + r] = v.scales[o * groups + g];
                            z[(b * groups + g) * kRowBlock + r] = v.zeros[o * groups + g];
                        }
                    }
                if (any > 31) bad = true;
            });
            if (bad) fail_int5_code(v);
            break;
        }
        case WeightType::Nvfp4: {
            const size_t chunks = in / 8, blocks = in / kNvfp4Block;
            allocate(nb * chunks * kRowBlock * 4, nb * blocks * kRowBlock * sizeof(uint16_t), 0);
            uint32_t* d = data_.as<uint32_t>();
            uint16_t* s = reinterpret_cast<uint16_t*>(data_.data() + scales_at_);
            pool.parallel_for(nb, [&](size_t b0, size_t b1) {
                for (size_t b = b0; b < b1; ++b)
                    for (size_t r = 0; r < kRowBlock && b * kRowBlock + r < out_; ++r) {
                        const size_t o = b * kRowBlock + r;
                        // Four file bytes are already one word: nibble t = column 8c+t.
                        const uint8_t* row = v.qweight + o * (in / 2);
                        for (size_t c = 0; c < chunks; ++c) {
                            uint32_t word = 0;
                            for (unsigned t = 0; t < 4; ++t)
                                word |= uint32_t(row[4 * c + t]) << (8 * t);
                            d[(b * chunks + c) * kRowBlock + r] = word;
                        }
                        for (size_t k = 0; k < blocks; ++k)
                            s[(b * blocks + k) * kRowBlock + r] = v.scales[o * blocks + k];
                    }
            });
            break;
        }
    }
}

namespace {
// Row r of row block b of a repacked zero-point weight whose 32-bit words hold 32 / bits codes of
// `bits` bits each (Q4: 8 of 4; Int5: 4 of 8, one code per byte), as (q - z) * s.
void dequantize_zero_point_row(const uint32_t* data, const uint16_t* scales, const uint8_t* zeros,
                               size_t b, size_t r, size_t in, size_t gs, unsigned bits,
                               float* dst) {
    const size_t per_word = 32 / bits, chunks = in / per_word, groups = in / gs;
    const uint32_t mask = (1u << bits) - 1;
    for (size_t i = 0; i < in; ++i) {
        const uint32_t word = data[(b * chunks + i / per_word) * kRowBlock + r];
        const size_t at = (b * groups + i / gs) * kRowBlock + r;
        const float s = bf16_to_f32(scales[at]);
        const float z = zeros[at];
        dst[i] = (float((word >> (bits * (i % per_word))) & mask) - z) * s;
    }
}
}  // namespace

void LinearWeight::dequantize_row(size_t o, float* dst) const {
    const size_t b = o / kRowBlock, r = o % kRowBlock, in = in_;
    switch (type_) {
        case WeightType::F32: {
            const float* d = data_.as<float>();
            for (size_t i = 0; i < in; ++i) dst[i] = d[(b * in + i) * kRowBlock + r];
            break;
        }
        case WeightType::BF16: {
            const uint16_t* d = data_.as<uint16_t>();
            for (size_t i = 0; i < in; ++i) dst[i] = bf16_to_f32(d[(b * in + i) * kRowBlock + r]);
            break;
        }
        case WeightType::Q4:
            dequantize_zero_point_row(data_.as<uint32_t>(), scales(), zeros(), b, r, in,
                                      group_size_, 4, dst);
            break;
        case WeightType::Int5:
            dequantize_zero_point_row(data_.as<uint32_t>(), scales(), zeros(), b, r, in,
                                      group_size_, 8, dst);
            break;
        case WeightType::Nvfp4: {
            const size_t chunks = in / 8, blocks = in / kNvfp4Block;
            const uint32_t* d = data_.as<uint32_t>();
            for (size_t i = 0; i < in; ++i) {
                const unsigned c =
                    (d[(b * chunks + i / 8) * kRowBlock + r] >> (4 * (i % 8))) & 0xfu;
                const float s =
                    bf16_to_f32(scales()[(b * blocks + i / kNvfp4Block) * kRowBlock + r]);
                const float m = kE2m1Magnitude[c & 7] * s;
                dst[i] = c & 8 ? -m : m;
            }
            break;
        }
    }
}

size_t LinearWeight::file_bytes() const {
    switch (type_) {
        case WeightType::F32:
            return out_ * in_ * 4;
        case WeightType::BF16:
            return out_ * in_ * 2;
        case WeightType::Q4:
            return out_ * in_ / 2 + out_ * (in_ / group_size_) * 3;
        case WeightType::Int5:
            return out_ * in_ + out_ * (in_ / group_size_) * 3;
        case WeightType::Nvfp4:
            // The published file stores each block scale twice (scales_fp8 and scales_bf16).
            return out_ * in_ / 2 + out_ * (in_ / kNvfp4Block) * 3;
    }
    return 0;
}

PackedView LinearWeight::packed() const {
    return PackedView{type_, out_, in_, group_size_, n_blocks(), data_.data(), scales(), zeros()};
}

LinearWeight LinearWeight::clone() const {
    LinearWeight c;
    c.type_ = type_;
    c.out_ = out_;
    c.in_ = in_;
    c.group_size_ = group_size_;
    auto copy = [](const AlignedBuffer& src) {
        AlignedBuffer dst(src.size());
        if (src.size()) std::memcpy(dst.data(), src.data(), src.size());
        return dst;
    };
    c.data_ = copy(data_);
    c.scales_at_ = scales_at_;
    c.zeros_at_ = zeros_at_;
    return c;
}

void LinearWeight::allocate(size_t code_bytes, size_t scale_bytes, size_t zero_bytes) {
    auto up64 = [](size_t b) { return (b + 63) / 64 * 64; };
    scales_at_ = scale_bytes ? up64(code_bytes) : 0;
    zeros_at_ = zero_bytes ? up64(code_bytes) + up64(scale_bytes) : 0;
    data_ = AlignedBuffer(up64(code_bytes) + up64(scale_bytes) + zero_bytes);
}

namespace detail {
size_t scratch_floats(size_t n, const PackedView& w) {
    const bool factored =
        w.type == WeightType::Q4 || w.type == WeightType::Int5 || w.type == WeightType::Nvfp4;
    if (!factored || n > kGemvMaxRows) return 0;
    return n * w.in + n * (w.in / w.group_size);
}
}  // namespace detail

size_t w4a8_block(size_t group_size) { return std::gcd(group_size, size_t{32}); }

namespace detail {
void w4a8_rows(Isa isa, const float* x, size_t n, const LinearWeight& w, const float* bias,
               float* y, ThreadPool& pool) {
    if (w.type() != WeightType::Q4)
        fail("linear_w4a8: weight is ", weight_type_name(w.type()), ", not int4");
    if (n == 0) return;
    w4a8_kernel(isa)(x, n, w.packed(), bias, y, w4a8_scratch(n, w.in(), w.group_size()), pool);
}

W4A8Scratch w4a8_scratch(size_t n, size_t in, size_t gs) {
    const size_t q_floats = (n * in + 63) / 64 * 16;
    const size_t d_floats = n * (in / w4a8_block(gs)), xs_floats = n * (in / gs);
    // An AlignedBuffer, not a vector: its large buffers are mmap'ed, so pages that a kernel never
    // writes (the AMX and AVX-512 GEMMs with 32-column blocks quantize into their own bounded row
    // tiles; the AVX-512 one uses only its first pass's rows for other blocks) stay unallocated.
    thread_local AlignedBuffer scratch;
    float* f = reinterpret_cast<float*>(scratch.grow((q_floats + d_floats + xs_floats) * 4));
    return W4A8Scratch{reinterpret_cast<int8_t*>(f), f + q_floats, f + q_floats + d_floats};
}
}  // namespace detail

namespace detail {
void bf16_rows(Isa isa, const float* x, size_t n, const LinearWeight& w, const float* bias,
               float* y, ThreadPool& pool) {
    if (w.type() != WeightType::BF16)
        fail("bf16 activations: weight is ", weight_type_name(w.type()), ", not bf16");
    if (n == 0) return;
    if (const Bf16DotFn fn = bf16dot_kernel(isa)) {
        fn(x, n, w.packed(), bias, y, pool);
        return;
    }
    // No vdpbf16ps on this path: the f32 kernel on x rounded to bf16 (the same products, exact
    // in f32, summed in f32).
    thread_local std::vector<float> xr;
    if (xr.size() < n * w.in()) xr.resize(n * w.in());
    for (size_t i = 0; i < n * w.in(); ++i) xr[i] = round_bf16(x[i]);
    linear_kernel(isa)(xr.data(), n, w.packed(), bias, y, nullptr, pool);
}
}  // namespace detail

namespace detail {
namespace {
// Q4 -> bf16 in the BF16 repacked layout, w̃ = f32_to_bf16((q - z) * s) (the product exact in
// f32): the portable form of DequantBf16Fn.
void dequant_bf16_portable(const PackedView& p, uint16_t* d, ThreadPool& pool) {
    const size_t in = p.in, chunks = in / 8, groups = in / p.group_size, gs = p.group_size;
    const uint32_t* q = static_cast<const uint32_t*>(p.data);
    pool.parallel_for(p.n_blocks, [&](size_t b0, size_t b1) {
        for (size_t b = b0; b < b1; ++b)
            for (size_t c = 0; c < chunks; ++c) {
                const size_t g = 8 * c / gs;
                for (size_t r = 0; r < kRowBlock; ++r) {
                    const uint32_t word = q[(b * chunks + c) * kRowBlock + r];
                    // As torch: (q - z) in bf16 (exact), times the bf16 scale, rounded to bf16.
                    const float s = bf16_to_f32(p.scales[(b * groups + g) * kRowBlock + r]);
                    const float z = p.zeros[(b * groups + g) * kRowBlock + r];
                    for (size_t t = 0; t < 8; ++t)
                        d[(b * in + 8 * c + t) * kRowBlock + r] =
                            f32_to_bf16((float((word >> (4 * t)) & 0xfu) - z) * s);
                }
            }
    });
}

}  // namespace

void q4bf16_chunked(Isa isa, const float* x, size_t n, const PackedView& p, const float* bias,
                    float* y, ThreadPool& pool) {
    const size_t in = p.in, out = p.out, chunks = in / 8, groups = in / p.group_size;
    // Row blocks per pass: their w̃ within ~4 MiB (at least 4 blocks, 32 outputs), so the buffer
    // is bounded whatever the weight's size.
    const size_t nbc = std::max<size_t>(4, (size_t{4} << 20) / (in * kRowBlock * 2));
    const DequantBf16Fn dq = dequant_bf16_kernel(isa);
    const Bf16DotFn dot = bf16dot_kernel(isa);
    thread_local AlignedBuffer wbuf, wfbuf, ybuf, xbuf;
    const float* xr = x;
    if (!dot) {  // the f32 kernel on x̃ = bf16(x), rounded once
        float* xb = reinterpret_cast<float*>(xbuf.grow(n * in * sizeof(float)));
        for (size_t i = 0; i < n * in; ++i) xb[i] = round_bf16(x[i]);
        xr = xb;
    }
    for (size_t b0 = 0; b0 < p.n_blocks; b0 += nbc) {
        const size_t b1 = std::min(p.n_blocks, b0 + nbc), nb = b1 - b0;
        const size_t o0 = b0 * kRowBlock, oc = std::min(out - o0, nb * kRowBlock);
        const PackedView q{WeightType::Q4,
                           oc,
                           in,
                           p.group_size,
                           nb,
                           static_cast<const uint32_t*>(p.data) + b0 * chunks * kRowBlock,
                           p.scales + b0 * groups * kRowBlock,
                           p.zeros + b0 * groups * kRowBlock};
        uint16_t* wb = reinterpret_cast<uint16_t*>(wbuf.grow(nb * in * kRowBlock * 2));
        if (dq)
            dq(q, wb, pool);
        else
            dequant_bf16_portable(q, wb, pool);
        const bool whole = nb == p.n_blocks;
        float* yc = whole ? y : reinterpret_cast<float*>(ybuf.grow(n * oc * sizeof(float)));
        const float* bc = bias ? bias + o0 : nullptr;
        if (dot) {
            dot(x, n, PackedView{WeightType::BF16, oc, in, 0, nb, wb, nullptr, nullptr}, bc, yc,
                pool);
        } else {
            float* wf = reinterpret_cast<float*>(wfbuf.grow(nb * in * kRowBlock * 4));
            for (size_t i = 0; i < nb * in * kRowBlock; ++i) wf[i] = bf16_to_f32(wb[i]);
            linear_kernel(isa)(xr, n,
                               PackedView{WeightType::F32, oc, in, 0, nb, wf, nullptr, nullptr}, bc,
                               yc, nullptr, pool);
        }
        if (!whole)
            for (size_t r = 0; r < n; ++r)
                std::memcpy(y + r * out + o0, yc + r * oc, oc * sizeof(float));
    }
}

void q4_bf16_rows(Isa isa, const float* x, size_t n, const LinearWeight& w, const float* bias,
                  float* y, ThreadPool& pool) {
    if (w.type() != WeightType::Q4)
        fail("bf16 activations for int4: weight is ", weight_type_name(w.type()), ", not int4");
    if (n == 0) return;
    const PackedView p = w.packed();
    if (n <= kGemvMaxRows) {
        // Decode: x̃ through the f32 INT4 GEMV, w unrounded (linear.h: within the same bound).
        thread_local std::vector<float> xr, scratch;
        if (xr.size() < n * w.in()) xr.resize(n * w.in());
        for (size_t i = 0; i < n * w.in(); ++i) xr[i] = round_bf16(x[i]);
        const size_t need = scratch_floats(n, p);
        if (scratch.size() < need) scratch.resize(need);
        linear_kernel(isa)(xr.data(), n, p, bias, y, scratch.data(), pool);
        return;
    }
    if (const Q4Bf16Fn fn = q4bf16_kernel(isa)) {
        fn(x, n, p, bias, y, pool);
        return;
    }
    q4bf16_chunked(isa, x, n, p, bias, y, pool);
}
}  // namespace detail

void linear_bf16act(const float* x, size_t n, const LinearWeight& w, const float* bias, float* y,
                    ThreadPool& pool) {
    detail::bf16_rows(active_isa(), x, n, w, bias, y, pool);
}

void linear_w4a8(const float* x, size_t n, const LinearWeight& w, const float* bias, float* y,
                 ThreadPool& pool) {
    detail::w4a8_rows(active_isa(), x, n, w, bias, y, pool);
}

// The process-default entry points: thin wrappers over the op layer's linear with the process
// ISA and activation mode.
void linear(const float* x, size_t n, const LinearWeight& w, const float* bias, float* y,
            ThreadPool& pool) {
    const OpContext ctx{&pool, active_isa(), activation_mode(), bf16_activation_mode()};
    detail::linear_rows(ctx, x, n, w, bias, y);
}

void linear(const float* x, size_t n, const LinearWeight& w, const float* bias, float* y) {
    linear(x, n, w, bias, y, default_pool());
}

void linear_ref(const float* x, size_t n, const WeightView& w, const float* bias, double* y) {
    std::vector<double> row(w.in);
    for (size_t o = 0; o < w.out; ++o) {
        for (size_t i = 0; i < w.in; ++i) row[i] = weight_ref(w, o, i);
        for (size_t r = 0; r < n; ++r) {
            double acc = bias ? double(bias[o]) : 0.0;
            for (size_t i = 0; i < w.in; ++i) acc += double(x[r * w.in + i]) * row[i];
            y[r * w.out + o] = acc;
        }
    }
}

void dequantize_to_bf16(const LinearWeight& w, LinearWeight& dst, ThreadPool& pool) {
    if (w.type_ != WeightType::Q4) fail("dequantize_to_bf16: weight is not int4");
    if (dst.type_ != WeightType::BF16 || dst.out_ != w.out_ || dst.in_ != w.in_)
        fail("dequantize_to_bf16: destination is not a bf16 weight of the same shape");
    if (auto fn = detail::dequant_bf16_kernel(active_isa())) {
        fn(w.packed(), dst.data_.as<uint16_t>(), pool);
        return;
    }
    detail::dequant_bf16_portable(w.packed(), dst.data_.as<uint16_t>(), pool);
}

LinearWeight dequantize_to_bf16(const LinearWeight& w, ThreadPool& pool) {
    LinearWeight dst;
    dst.type_ = WeightType::BF16;
    dst.out_ = w.out();
    dst.in_ = w.in();
    dst.data_ = AlignedBuffer(w.n_blocks() * w.in() * kRowBlock * sizeof(uint16_t));
    dequantize_to_bf16(w, dst, pool);
    return dst;
}

}  // namespace lancet::kernels
