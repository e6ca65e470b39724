// INT4 packing, the spec §1.1 min-max quantizer, and dequantization of the INT4/INT5/NVFP4 layouts.
#include "quant/q4.h"

#include <algorithm>
#include <cmath>
#include <cstring>

#if defined(__SSE2__)
#include <emmintrin.h>
#endif

#include "core/error.h"
#include "core/numeric.h"
#include "core/thread_pool.h"

namespace lancet::quant {

void pack_int4(const uint8_t* codes, int64_t n, uint8_t* packed) {
    for (int64_t j = 0; j < n / 2; ++j)
        packed[j] = static_cast<uint8_t>((codes[2 * j] & 0xf) | ((codes[2 * j + 1] & 0xf) << 4));
}

void unpack_int4(const uint8_t* packed, int64_t n, uint8_t* codes) {
    for (int64_t j = 0; j < n / 2; ++j) {
        codes[2 * j] = packed[j] & 0xf;
        codes[2 * j + 1] = packed[j] >> 4;
    }
}

namespace {

void check_scales(const std::vector<uint16_t>& scales, int n_groups, const char* what,
                  const char* tensor) {
    for (size_t k = 0; k < scales.size(); ++k) {
        const float s = bf16_to_f32(scales[k]);
        if (!std::isfinite(s) || s < 0)
            fail(what, ": ", tensor, "[", k / n_groups, ", ", k % n_groups, "] = ", s,
                 " is not a finite non-negative scale");
    }
}

void check_shapes(int out, int in, int gs, const char* what) {
    if (out <= 0 || in <= 0 || gs <= 0 || in % gs != 0)
        fail(what, ": bad quantized shape out=", out, " in=", in, " group_size=", gs);
}

}  // namespace

void validate(const QuantizedMatrix& q, const char* what) {
    check_shapes(q.out, q.in, q.group_size, what);
    if (q.in % 2 != 0) fail(what, ": in=", q.in, " is odd; INT4 packs two columns per byte");
    const size_t ng = q.n_groups();
    if (q.qweight.size() != static_cast<size_t>(q.out) * (q.in / 2))
        fail(what, ": qweight has ", q.qweight.size(), " bytes, expected ", q.out, "x", q.in / 2);
    if (q.scales.size() != q.out * ng || q.zeros.size() != q.out * ng)
        fail(what, ": scales/zeros have ", q.scales.size(), "/", q.zeros.size(),
             " entries, expected ", q.out, "x", ng);
    for (size_t k = 0; k < q.zeros.size(); ++k)
        if (q.zeros[k] > 15)
            fail(what, ": zeros[", k / ng, ", ", k % ng, "] = ", int(q.zeros[k]),
                 " is outside 0..15");
    check_scales(q.scales, static_cast<int>(ng), what, "scales");
}

void dequantize_row(const QuantizedMatrix& q, int o, float* dst, bool round_to_bf16) {
    const uint8_t* row = q.qweight.data() + static_cast<size_t>(o) * (q.in / 2);
    const int ng = q.n_groups();
    for (int g = 0; g < ng; ++g) {
        const float s = bf16_to_f32(q.scales[static_cast<size_t>(o) * ng + g]);
        const int z = q.zeros[static_cast<size_t>(o) * ng + g];
        for (int i = g * q.group_size; i < (g + 1) * q.group_size; ++i) {
            const int c = (i & 1) ? (row[i / 2] >> 4) : (row[i / 2] & 0xf);
            const float v = static_cast<float>(c - z) * s;
            dst[i] = round_to_bf16 ? round_bf16(v) : v;
        }
    }
}

std::vector<float> dequantize(const QuantizedMatrix& q, bool round_to_bf16) {
    std::vector<float> w(static_cast<size_t>(q.out) * q.in);
    for (int o = 0; o < q.out; ++o)
        dequantize_row(q, o, w.data() + static_cast<size_t>(o) * q.in, round_to_bf16);
    return w;
}

int seed_group_size(int in, int requested) {
    if (in % requested == 0) return requested;
    for (int g : {128, 64, 32, 16})
        if (in % g == 0) return g;
    return in;
}

int choose_group_size(int in, int requested) {
    if (requested != 32 && requested != 64 && requested != 128)
        fail("group size ", requested, " is not supported (use 32, 64 or 128)");
    if (in <= 0 || in % 2 != 0)
        fail("input width ", in, " cannot be INT4-packed (it must be even and positive)");
    for (int g : {128, 64, 32, 16})
        if (g <= requested && in % g == 0) return g;
    return in;
}

int check_group_size(int in, int gs) {
    if (in <= 0 || in % 2 != 0)
        fail("input width ", in, " cannot be INT4-packed (it must be even and positive)");
    if (gs <= 0 || in % gs != 0) fail("group size ", gs, " does not divide the input width ", in);
    return gs;
}

namespace {

// nearbyint for the default FE_TONEAREST mode without a libm call (baseline x86-64 has no
// roundss): adding 1.5 * 2^23 leaves no fraction bits, so the hardware add rounds half to even.
// Exact for |t| < 2^22; larger values (only from degenerate 1e-8 scales) take nearbyint.
inline float round_half_even(float t) {
    // Without -ffast-math the compiler may not fold (t + b) - b, which is not t in IEEE math.
    constexpr float b = 12582912.0f;
    if (std::fabs(t) < 4194304.0f) return (t + b) - b;
    return std::nearbyint(t);
}

}  // namespace

void group_grid(float m, float mx, const GroupQuantOptions& opt, uint16_t* scale_bf16,
                float* code_scale, float* zero) {
    if (opt.clip_ratio != 1.0f) {
        m *= opt.clip_ratio;
        mx *= opt.clip_ratio;
    }
    // Same operation order as the seed's torch code: (M - m) / 15, floored at 1e-8.
    const float scale = std::max((mx - m) / 15.0f, 1e-8f);
    *scale_bf16 = f32_to_bf16(scale);
    const float sc = opt.codes_from_stored_scale ? bf16_to_f32(*scale_bf16) : scale;
    *code_scale = sc;
    // Round half to even, like torch.round.
    *zero = std::clamp(round_half_even(-m / sc), 0.0f, 15.0f);
}

void quantize_group(const float* w, int n, const GroupQuantOptions& opt, uint8_t* codes,
                    uint16_t* scale_bf16, uint8_t* zero, float* deq) {
    float m = w[0], mx = w[0];
    int i0 = 0;
#if defined(__SSE2__)
    if (n >= 4) {
        __m128 vmin = _mm_loadu_ps(w), vmax = vmin;
        for (i0 = 4; i0 + 4 <= n; i0 += 4) {
            const __m128 v = _mm_loadu_ps(w + i0);
            vmin = _mm_min_ps(vmin, v);
            vmax = _mm_max_ps(vmax, v);
        }
        alignas(16) float lo[4], hi[4];
        _mm_store_ps(lo, vmin);
        _mm_store_ps(hi, vmax);
        m = std::min(std::min(lo[0], lo[1]), std::min(lo[2], lo[3]));
        mx = std::max(std::max(hi[0], hi[1]), std::max(hi[2], hi[3]));
    }
#endif
    for (int i = i0; i < n; ++i) {
        m = std::min(m, w[i]);
        mx = std::max(mx, w[i]);
    }
    uint16_t stored;
    float sc, zf;
    group_grid(m, mx, opt, &stored, &sc, &zf);
    const float stored_f = bf16_to_f32(stored);
    const int z = static_cast<int>(zf);
    int i = 0;
#if defined(__SSE2__)
    // The same IEEE operations four at a time: divide, add the zero, round (the 1.5 * 2^23 trick,
    // which the clamp makes safe for any magnitude), clamp, and (code - zero) * stored scale.
    const __m128 vsc = _mm_set1_ps(sc), vz = _mm_set1_ps(zf), vb = _mm_set1_ps(12582912.0f),
                 v0 = _mm_setzero_ps(), v15 = _mm_set1_ps(15.0f), vs = _mm_set1_ps(stored_f);
    for (; i + 4 <= n; i += 4) {
        __m128 t = _mm_add_ps(_mm_div_ps(_mm_loadu_ps(w + i), vsc), vz);
        t = _mm_sub_ps(_mm_add_ps(t, vb), vb);
        t = _mm_min_ps(_mm_max_ps(t, v0), v15);
        const __m128i ci = _mm_cvttps_epi32(t);
        const __m128i c8 = _mm_packus_epi16(_mm_packs_epi32(ci, ci), _mm_setzero_si128());
        const uint32_t packed = static_cast<uint32_t>(_mm_cvtsi128_si32(c8));
        std::memcpy(codes + i, &packed, 4);
        if (deq) _mm_storeu_ps(deq + i, _mm_mul_ps(_mm_sub_ps(t, vz), vs));
    }
#endif
    for (; i < n; ++i) {
        const float t = std::clamp(round_half_even(w[i] / sc + zf), 0.0f, 15.0f);
        codes[i] = static_cast<uint8_t>(t);
        if (deq) deq[i] = static_cast<float>(codes[i] - z) * stored_f;
    }
    *scale_bf16 = stored;
    *zero = static_cast<uint8_t>(z);
}

QuantizedMatrix quantize_rtn(const float* w, int out, int in, const RtnOptions& opt) {
    QuantizedMatrix q;
    q.out = out;
    q.in = in;
    q.group_size = check_group_size(in, opt.group_size);
    if (out <= 0) fail("cannot quantize a matrix with ", out, " rows");
    const int gs = q.group_size, ng = in / gs;
    q.qweight.resize(static_cast<size_t>(out) * (in / 2));
    q.scales.resize(static_cast<size_t>(out) * ng);
    q.zeros.resize(static_cast<size_t>(out) * ng);
    parallel_chunks(default_pool(), out, 64, [&](int64_t o0, int64_t o1) {
        std::vector<float> buf(gs);
        std::vector<uint8_t> codes(in);
        for (int64_t o = o0; o < o1; ++o) {
            const float* row = w + o * in;
            for (int i = 0; i < in; ++i)
                if (!std::isfinite(row[i]))
                    fail("weight [", o, ", ", i, "] = ", row[i], " is not finite");
            for (int g = 0; g < ng; ++g) {
                for (int i = 0; i < gs; ++i) {
                    const float v = row[g * gs + i];
                    buf[i] = opt.round_input_to_bf16 ? round_bf16(v) : v;
                }
                GroupQuantOptions go;
                go.codes_from_stored_scale = opt.codes_from_stored_scale;
                if (opt.clip) go.clip_ratio = opt.clip[o * ng + g];
                quantize_group(buf.data(), gs, go, codes.data() + g * gs, &q.scales[o * ng + g],
                               &q.zeros[o * ng + g], nullptr);
            }
            pack_int4(codes.data(), in, q.qweight.data() + o * (in / 2));
        }
    });
    return q;
}

QuantizedMatrix quantize_rtn_clip_search(size_t out, size_t in,
                                         const std::function<void(size_t, float*)>& row,
                                         ThreadPool& pool) {
    constexpr size_t kGs = 64;
    const size_t gs = in % kGs == 0 ? kGs : static_cast<size_t>(choose_group_size(int(in), 64));
    const size_t ng = in / gs;
    QuantizedMatrix q;
    q.out = static_cast<int>(out);
    q.in = static_cast<int>(in);
    q.group_size = static_cast<int>(gs);
    q.qweight.resize(out * in / 2);
    q.scales.resize(out * ng);
    q.zeros.resize(out * ng);
    pool.parallel_for(out, [&](size_t o0, size_t o1) {
        std::vector<uint8_t> codes(in), cand(gs);
        std::vector<float> deq(gs), w(in);
        for (size_t o = o0; o < o1; ++o) {
            row(o, w.data());
            for (size_t g = 0; g < ng; ++g) {
                const float* src = &w[g * gs];
                double best = -1;
                for (int c = 0; c <= 4; ++c) {
                    GroupQuantOptions go;
                    go.clip_ratio = 1.0f - 0.05f * float(c);
                    go.codes_from_stored_scale = true;
                    uint16_t sc;
                    uint8_t z;
                    quantize_group(src, int(gs), go, cand.data(), &sc, &z, deq.data());
                    double err = 0;
                    for (size_t i = 0; i < gs; ++i)
                        err += double(deq[i] - src[i]) * double(deq[i] - src[i]);
                    if (best < 0 || err < best) {
                        best = err;
                        std::copy(cand.begin(), cand.end(), codes.begin() + g * gs);
                        q.scales[o * ng + g] = sc;
                        q.zeros[o * ng + g] = z;
                    }
                }
            }
            pack_int4(codes.data(), int64_t(in), &q.qweight[o * (in / 2)]);
        }
    });
    return q;
}

// ---- INT5 ----

void validate(const Int5Matrix& q, const char* what) {
    check_shapes(q.out, q.in, q.group_size, what);
    const size_t ng = q.in / q.group_size;
    if (q.qweight.size() != static_cast<size_t>(q.out) * q.in)
        fail(what, ": INT5 qweight has ", q.qweight.size(), " bytes, expected ", q.out, "x", q.in);
    if (q.scales.size() != q.out * ng || q.zeros.size() != q.out * ng)
        fail(what, ": INT5 scales/zeros have ", q.scales.size(), "/", q.zeros.size(),
             " entries, expected ", q.out, "x", ng);
    for (size_t k = 0; k < q.qweight.size(); ++k)
        if (q.qweight[k] > 31)
            fail(what, ": INT5 qweight[", k / q.in, ", ", k % q.in, "] = ", int(q.qweight[k]),
                 " is outside 0..31");
    for (size_t k = 0; k < q.zeros.size(); ++k)
        if (q.zeros[k] > 31)
            fail(what, ": INT5 zeros[", k / ng, ", ", k % ng, "] = ", int(q.zeros[k]),
                 " is outside 0..31");
    check_scales(q.scales, static_cast<int>(ng), what, "scales");
}

std::vector<float> dequantize(const Int5Matrix& q, bool round_to_bf16) {
    const int ng = q.in / q.group_size;
    std::vector<float> w(static_cast<size_t>(q.out) * q.in);
    for (int o = 0; o < q.out; ++o)
        for (int i = 0; i < q.in; ++i) {
            const size_t g = static_cast<size_t>(o) * ng + i / q.group_size;
            const float v =
                static_cast<float>(q.qweight[static_cast<size_t>(o) * q.in + i] - q.zeros[g]) *
                bf16_to_f32(q.scales[g]);
            w[static_cast<size_t>(o) * q.in + i] = round_to_bf16 ? round_bf16(v) : v;
        }
    return w;
}

Int5Matrix quantize_int5_rtn(const float* w, int out, int in, int requested) {
    if (out <= 0 || in <= 0 || requested <= 0)
        fail("cannot INT5-quantize a ", out, "x", in, " matrix with group size ", requested);
    Int5Matrix q;
    q.out = out;
    q.in = in;
    q.group_size = in;
    if (in % requested == 0) {
        q.group_size = requested;
    } else {
        for (int g : {64, 32, 16})
            if (in % g == 0) {
                q.group_size = g;
                break;
            }
    }
    const int gs = q.group_size, ng = in / gs;
    q.qweight.resize(static_cast<size_t>(out) * in);
    q.scales.resize(static_cast<size_t>(out) * ng);
    q.zeros.resize(static_cast<size_t>(out) * ng);
    for (int o = 0; o < out; ++o)
        for (int g = 0; g < ng; ++g) {
            const float* src = w + static_cast<size_t>(o) * in + g * gs;
            float m = 0, mx = 0;
            for (int i = 0; i < gs; ++i) {
                if (!std::isfinite(src[i]))
                    fail("weight [", o, ", ", g * gs + i, "] = ", src[i], " is not finite");
                const float v = round_bf16(src[i]);
                m = i == 0 ? v : std::min(m, v);
                mx = i == 0 ? v : std::max(mx, v);
            }
            const float scale = std::max((mx - m) / 31.0f, 1e-8f);
            const float zf = std::clamp(round_half_even(-m / scale), 0.0f, 31.0f);
            for (int i = 0; i < gs; ++i) {
                const float t =
                    std::clamp(round_half_even(round_bf16(src[i]) / scale + zf), 0.0f, 31.0f);
                q.qweight[static_cast<size_t>(o) * in + g * gs + i] = static_cast<uint8_t>(t);
            }
            q.scales[static_cast<size_t>(o) * ng + g] = f32_to_bf16(scale);
            q.zeros[static_cast<size_t>(o) * ng + g] = static_cast<uint8_t>(zf);
        }
    return q;
}

// ---- NVFP4 ----

uint8_t f32_to_e4m3fn(float v) {
    if (!(v >= 0.0f) || !std::isfinite(v)) fail("E4M3 conversion of ", v);
    // Subnormals are multiples of 2^-9 below 2^-6; rint of v * 2^9 rounds half to even, and a
    // result of 8 is the bit pattern of the smallest normal, 2^-6.
    if (v < 0x1p-6f) return static_cast<uint8_t>(std::nearbyint(v * 512.0f));
    int e;
    const float f = std::frexp(v, &e);  // v = f * 2^e, f in [0.5, 1)
    int exp = e - 1;                    // v = (2f) * 2^exp, 2f in [1, 2)
    int mant = static_cast<int>(std::nearbyint((2.0f * f - 1.0f) * 8.0f));
    if (mant == 8) mant = 0, ++exp;
    const int biased = exp + 7;
    if (biased > 15 || (biased == 15 && mant == 7)) return 0x7f;  // NaN: E4M3FN has no infinity
    return static_cast<uint8_t>((biased << 3) | mant);
}

Nvfp4Matrix quantize_nvfp4(const float* w, int out, int in, std::vector<uint8_t>* scales_fp8) {
    if (out <= 0 || in <= 0 || in % 16 != 0)
        fail("cannot NVFP4-quantize a ", out, "x", in, " matrix (in must be a multiple of 16)");
    Nvfp4Matrix q;
    q.out = out;
    q.in = in;
    const int nb = in / 16;
    q.qweight.assign(static_cast<size_t>(out) * (in / 2), 0);
    q.scales_bf16.resize(static_cast<size_t>(out) * nb);
    if (scales_fp8) scales_fp8->resize(static_cast<size_t>(out) * nb);
    for (int o = 0; o < out; ++o)
        for (int b = 0; b < nb; ++b) {
            const float* src = w + static_cast<size_t>(o) * in + b * 16;
            float v[16], amax = 0;
            for (int i = 0; i < 16; ++i) {
                if (!std::isfinite(src[i]))
                    fail("weight [", o, ", ", b * 16 + i, "] = ", src[i], " is not finite");
                v[i] = round_bf16(src[i]);
                amax = std::max(amax, std::fabs(v[i]));
            }
            const float scale = std::max(amax / 6.0f, 1e-8f);
            for (int i = 0; i < 16; ++i) {
                const float a = std::min(std::fabs(v[i] / scale), 6.0f);
                int best = 0;
                for (int k = 1; k < 8; ++k)  // strict: a tie keeps the lower index
                    if (std::fabs(a - kE2m1Table[k]) < std::fabs(a - kE2m1Table[best])) best = k;
                const int code = best | (v[i] < 0 ? 8 : 0);
                const size_t col = static_cast<size_t>(b) * 16 + i;
                q.qweight[static_cast<size_t>(o) * (in / 2) + col / 2] |=
                    static_cast<uint8_t>(code << (4 * (col & 1)));
            }
            q.scales_bf16[static_cast<size_t>(o) * nb + b] = f32_to_bf16(scale);
            if (scales_fp8) (*scales_fp8)[static_cast<size_t>(o) * nb + b] = f32_to_e4m3fn(scale);
        }
    return q;
}

void validate(const Nvfp4Matrix& q, const char* what) {
    check_shapes(q.out, q.in, q.block_size, what);
    if (q.in % 2 != 0) fail(what, ": NVFP4 in=", q.in, " is odd");
    const size_t nb = q.in / q.block_size;
    if (q.qweight.size() != static_cast<size_t>(q.out) * (q.in / 2))
        fail(what, ": NVFP4 qweight has ", q.qweight.size(), " bytes, expected ", q.out, "x",
             q.in / 2);
    if (q.scales_bf16.size() != q.out * nb)
        fail(what, ": NVFP4 scales_bf16 has ", q.scales_bf16.size(), " entries, expected ", q.out,
             "x", nb);
    check_scales(q.scales_bf16, static_cast<int>(nb), what, "scales_bf16");
}

std::vector<float> dequantize(const Nvfp4Matrix& q, bool round_to_bf16) {
    const int nb = q.in / q.block_size;
    std::vector<float> w(static_cast<size_t>(q.out) * q.in);
    for (int o = 0; o < q.out; ++o)
        for (int i = 0; i < q.in; ++i) {
            const uint8_t b = q.qweight[static_cast<size_t>(o) * (q.in / 2) + i / 2];
            const int c = (i & 1) ? (b >> 4) : (b & 0xf);
            const float mag =
                kE2m1Table[c & 7] *
                bf16_to_f32(q.scales_bf16[static_cast<size_t>(o) * nb + i / q.block_size]);
            const float v = (c & 8) ? -mag : mag;
            w[static_cast<size_t>(o) * q.in + i] = round_to_bf16 ? round_bf16(v) : v;
        }
    return w;
}

}  // namespace lancet::quant
