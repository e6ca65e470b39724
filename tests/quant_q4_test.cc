// Checks the INT4 format (packing, spec §1.1 RTN, dequantization) and the INT5/NVFP4 decoders
// against plain scalar definitions written out here independently.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <random>

#include "core/error.h"
#include "core/numeric.h"
#include "core/thread_pool.h"
#include "quant/q4.h"

namespace lancet::quant {
namespace {

// Round half to even without nearbyint, so the reference does not share the implementation's
// rounding call.
float round_half_even(float t) {
    const float f = std::floor(t);
    const float d = t - f;  // exact for |t| < 2^23
    if (d > 0.5f) return f + 1;
    if (d < 0.5f) return f;
    return std::fmod(f, 2.0f) == 0.0f ? f : f + 1;
}

struct RefGroup {
    std::vector<int> codes;
    float scale;  // fp32
    int zero;
};

// Spec §1.1 written out element by element, in fp32, in the seed's operation order.
RefGroup reference_group(const std::vector<float>& w) {
    float m = w[0], mx = w[0];
    for (float v : w) {
        if (v < m) m = v;
        if (v > mx) mx = v;
    }
    float scale = (mx - m) / 15.0f;
    if (scale < 1e-8f) scale = 1e-8f;
    float z = round_half_even(-m / scale);
    if (z < 0) z = 0;
    if (z > 15) z = 15;
    RefGroup r{{}, scale, static_cast<int>(z)};
    for (float v : w) {
        float q = round_half_even(v / scale + z);
        if (q < 0) q = 0;
        if (q > 15) q = 15;
        r.codes.push_back(static_cast<int>(q));
    }
    return r;
}

TEST(QuantQ4, PackKnownBytes) {
    const uint8_t codes[6] = {1, 2, 3, 4, 15, 0};
    uint8_t packed[3];
    pack_int4(codes, 6, packed);
    EXPECT_EQ(packed[0], 0x21);
    EXPECT_EQ(packed[1], 0x43);
    EXPECT_EQ(packed[2], 0x0F);
    uint8_t back[6];
    unpack_int4(packed, 6, back);
    for (int i = 0; i < 6; ++i) EXPECT_EQ(back[i], codes[i]);
}

TEST(QuantQ4, PackRoundTripRandom) {
    std::mt19937 rng(7);
    std::vector<uint8_t> codes(1000), packed(500), back(1000);
    for (auto& c : codes) c = rng() % 16;
    pack_int4(codes.data(), 1000, packed.data());
    unpack_int4(packed.data(), 1000, back.data());
    EXPECT_EQ(codes, back);
    // And the other way: every byte value survives unpack then pack.
    std::vector<uint8_t> all(256), codes2(512), repacked(256);
    for (int b = 0; b < 256; ++b) all[b] = static_cast<uint8_t>(b);
    unpack_int4(all.data(), 512, codes2.data());
    pack_int4(codes2.data(), 512, repacked.data());
    EXPECT_EQ(all, repacked);
}

// Quantizes with quantize_rtn and compares every code, scale and zero with the reference.
void expect_matches_reference(const std::vector<float>& w, int out, int in, int gs) {
    RtnOptions opt;
    opt.group_size = gs;
    const QuantizedMatrix q = quantize_rtn(w.data(), out, in, opt);
    ASSERT_EQ(q.group_size, gs);
    validate(q, "test");
    const int ng = in / gs;
    for (int o = 0; o < out; ++o)
        for (int g = 0; g < ng; ++g) {
            std::vector<float> grp(gs);
            for (int i = 0; i < gs; ++i) grp[i] = round_bf16(w[o * in + g * gs + i]);
            const RefGroup r = reference_group(grp);
            ASSERT_EQ(q.zeros[o * ng + g], r.zero) << o << "," << g;
            ASSERT_EQ(q.scales[o * ng + g], f32_to_bf16(r.scale)) << o << "," << g;
            for (int i = 0; i < gs; ++i)
                ASSERT_EQ(q.code(o, g * gs + i), r.codes[i]) << o << "," << g * gs + i;
        }
}

TEST(QuantQ4, RtnMatchesScalarReferenceOnRandomWeights) {
    std::mt19937 rng(11);
    std::normal_distribution<float> nd(0.0f, 0.02f);
    for (int gs : {32, 64, 128}) {
        const int out = 37, in = 256;
        std::vector<float> w(out * in);
        for (auto& v : w) v = nd(rng);
        // A few heavy-tailed entries so ranges differ between groups.
        for (int k = 0; k < 40; ++k) w[rng() % w.size()] *= 25.0f;
        expect_matches_reference(w, out, in, gs);
    }
}

TEST(QuantQ4, RtnExactTiesRoundToEven) {
    // scale = 0.9375 / 15 = 2^-4 exactly, and every w / scale + zero lands on k + 0.5.
    const int in = 32;
    std::vector<float> w(2 * in);
    // Row 0: m = -0.5, zero = 8; values (k + 0.5) * 2^-4 for k = -8..6 give code ties.
    for (int i = 0; i < in; ++i) w[i] = (static_cast<float>(i % 15 - 8) + 0.5f) * 0.0625f;
    w[0] = -0.5f;
    w[1] = 0.4375f;
    // Row 1: m = -8.5 * 2^-4, so -m / scale = 8.5 ties in the zero itself (to 8).
    for (int i = 0; i < in; ++i) w[in + i] = (static_cast<float>(i % 14 - 8) + 0.5f) * 0.0625f;
    w[in] = -0.53125f;
    w[in + 1] = -0.53125f + 0.9375f;
    RtnOptions opt;
    opt.group_size = 32;
    const QuantizedMatrix q = quantize_rtn(w.data(), 2, in, opt);
    EXPECT_EQ(q.zeros[0], 8);
    EXPECT_EQ(q.zeros[1], 8);
    EXPECT_EQ(bf16_to_f32(q.scales[0]), 0.0625f);
    // Row 0, column 2: (2 - 8 + 0.5) + 8 = 2.5 -> 2; column 3: 3.5 -> 4.
    EXPECT_EQ(q.code(0, 2), 2);
    EXPECT_EQ(q.code(0, 3), 4);
    expect_matches_reference(w, 2, in, 32);
}

TEST(QuantQ4, RtnSameSignGroupsClampZeroAndClip) {
    std::mt19937 rng(5);
    std::uniform_real_distribution<float> ud(0.5f, 1.5f);
    const int in = 64;
    std::vector<float> w(2 * in);
    for (int i = 0; i < in; ++i) w[i] = ud(rng);        // all positive: zero clamps to 0
    for (int i = 0; i < in; ++i) w[in + i] = -ud(rng);  // all negative: zero clamps to 15
    RtnOptions opt;
    opt.group_size = 64;
    const QuantizedMatrix q = quantize_rtn(w.data(), 2, in, opt);
    EXPECT_EQ(q.zeros[0], 0);
    EXPECT_EQ(q.zeros[1], 15);
    // With zero 0 the top of the range clips at code 15, below the group maximum.
    int clipped = 0;
    for (int i = 0; i < in; ++i) clipped += q.code(0, i) == 15;
    EXPECT_GT(clipped, 0);
    expect_matches_reference(w, 2, in, 64);
}

TEST(QuantQ4, DequantizeIsExactProductAndWithinHalfStep) {
    std::mt19937 rng(3);
    std::normal_distribution<float> nd(0.0f, 1.0f);
    const int out = 16, in = 128;
    std::vector<float> w(out * in);
    for (auto& v : w) v = nd(rng);
    RtnOptions opt;
    opt.group_size = 32;
    const QuantizedMatrix q = quantize_rtn(w.data(), out, in, opt);
    const std::vector<float> d = dequantize(q);
    for (int o = 0; o < out; ++o)
        for (int i = 0; i < in; ++i) {
            const int g = i / 32;
            const double s = bf16_to_f32(q.scales[o * 4 + g]);
            const double exact = (static_cast<double>(q.code(o, i)) - q.zeros[o * 4 + g]) * s;
            ASSERT_EQ(static_cast<double>(d[o * in + i]), exact);
            // Mixed-sign groups cover [m, M]: error is half a step plus the bf16 scale and input
            // roundings (<= 15 * 2^-9 steps, and 2^-9 relative of w).
            const double wb = round_bf16(w[o * in + i]);
            EXPECT_LE(std::abs(exact - wb), s * (0.5 + 15.0 / 512 + 1e-6) + 1e-7) << o << "," << i;
        }
    // The seed runtime's bf16 rounding of the product.
    const std::vector<float> db = dequantize(q, true);
    for (size_t k = 0; k < d.size(); ++k) ASSERT_EQ(db[k], round_bf16(d[k]));
}

TEST(QuantQ4, ClipRatioOneIsIdentityAndClipShrinksRange) {
    std::mt19937 rng(9);
    std::normal_distribution<float> nd(0.0f, 1.0f);
    std::vector<float> w(64);
    for (auto& v : w) v = nd(rng);
    uint8_t c1[64], c2[64], z1, z2;
    uint16_t s1, s2;
    GroupQuantOptions a, b;
    b.clip_ratio = 0.5f;
    quantize_group(w.data(), 64, a, c1, &s1, &z1, nullptr);
    quantize_group(w.data(), 64, b, c2, &s2, &z2, nullptr);
    const RefGroup r = reference_group(w);
    EXPECT_EQ(s1, f32_to_bf16(r.scale));
    EXPECT_NEAR(bf16_to_f32(s2), 0.5 * bf16_to_f32(s1), bf16_to_f32(s1) * 0.01);
}

// The clip-searching RTN (the INT4 lm_head): every (row, group) holds the candidate of least
// squared error among clip ratios 1.0 ... 0.80, each candidate built here by quantize_group and its
// error summed in double; the search must pick ratios below 1 on rows with outliers, and rows come
// only through the callback.
TEST(QuantQ4, ClipSearchKeepsTheLeastErrorRatioPerGroup) {
    for (const int in : {192, 96}) {  // g64, and 96 -> choose_group_size(96, 64) = 32
        const int out = 7, gs = in % 64 == 0 ? 64 : 32, ng = in / gs;
        std::mt19937 rng(11 + in);
        std::normal_distribution<float> nd(0.0f, 0.02f);
        std::vector<float> w(static_cast<size_t>(out) * in);
        for (auto& v : w) v = nd(rng);
        for (int o = 0; o < out; ++o) w[static_cast<size_t>(o) * in + (5 * o) % in] = 0.2f;
        std::vector<int> rows_seen(out, 0);
        const QuantizedMatrix q = quantize_rtn_clip_search(
            out, in,
            [&](size_t o, float* dst) {
                ++rows_seen[o];
                std::copy_n(&w[o * in], in, dst);
            },
            default_pool());
        for (int o = 0; o < out; ++o) EXPECT_EQ(rows_seen[o], 1) << o;
        ASSERT_EQ(q.group_size, gs);
        validate(q, "clip search");
        const std::vector<float> d = dequantize(q);
        int clipped = 0;
        for (int o = 0; o < out; ++o)
            for (int g = 0; g < ng; ++g) {
                const float* src = &w[static_cast<size_t>(o) * in + g * gs];
                double best = INFINITY;
                int best_c = -1;
                std::vector<uint8_t> codes(gs), best_codes;
                std::vector<float> deq(gs);
                uint16_t s, best_s = 0;
                uint8_t z, best_z = 0;
                for (int c = 0; c <= 4; ++c) {
                    GroupQuantOptions go;
                    go.clip_ratio = 1.0f - 0.05f * float(c);
                    go.codes_from_stored_scale = true;
                    quantize_group(src, gs, go, codes.data(), &s, &z, deq.data());
                    double e = 0;
                    for (int i = 0; i < gs; ++i) {
                        const double diff = double(deq[i]) - double(src[i]);
                        e += diff * diff;
                    }
                    if (e < best) best = e, best_c = c, best_codes = codes, best_s = s, best_z = z;
                }
                clipped += best_c > 0;
                EXPECT_EQ(q.scales[o * ng + g], best_s) << o << "," << g;
                EXPECT_EQ(q.zeros[o * ng + g], best_z) << o << "," << g;
                double e = 0;
                for (int i = 0; i < gs; ++i) {
                    EXPECT_EQ(q.code(o, g * gs + i), best_codes[i]) << o << "," << g << "," << i;
                    const double diff = double(d[o * in + g * gs + i]) - double(src[i]);
                    e += diff * diff;
                }
                EXPECT_EQ(e, best) << o << "," << g;
            }
        EXPECT_GT(clipped, 0) << "no group preferred a clip ratio below 1";
    }
}

TEST(QuantQ4, GroupSizeFallback) {
    EXPECT_EQ(choose_group_size(2048, 64), 64);
    EXPECT_EQ(choose_group_size(11008, 128), 128);
    EXPECT_EQ(choose_group_size(96, 64), 32);  // never larger than requested
    EXPECT_EQ(choose_group_size(96, 128), 32);
    EXPECT_EQ(choose_group_size(48, 32), 16);
    EXPECT_EQ(choose_group_size(10, 32), 10);  // nothing divides: one group per row
    EXPECT_EQ(seed_group_size(384, 64), 64);
    EXPECT_EQ(seed_group_size(384, 32), 32);
    EXPECT_EQ(seed_group_size(96, 64), 32);
    EXPECT_EQ(seed_group_size(384 + 128, 96), 128);  // the seed picks a larger group
    EXPECT_THROW(choose_group_size(2048, 48), Error);
    EXPECT_THROW(choose_group_size(33, 32), Error);
    // The quantizers only check the size the plan chose: no silent fallback below them.
    EXPECT_EQ(check_group_size(96, 32), 32);
    EXPECT_EQ(check_group_size(48, 16), 16);
    EXPECT_THROW(check_group_size(96, 64), Error);
    EXPECT_THROW(check_group_size(33, 33), Error);
    EXPECT_THROW(check_group_size(64, 0), Error);
}

TEST(QuantQ4, RejectsNonFiniteWeightsAndBadMatrices) {
    std::vector<float> w(64, 0.25f);
    w[17] = NAN;
    RtnOptions opt;
    opt.group_size = 32;
    EXPECT_THROW(quantize_rtn(w.data(), 2, 32, opt), Error);
    w[17] = 0.5f;
    QuantizedMatrix q = quantize_rtn(w.data(), 2, 32, opt);
    q.zeros[1] = 16;
    EXPECT_THROW(validate(q, "x"), Error);
    q.zeros[1] = 0;
    q.qweight.pop_back();
    EXPECT_THROW(validate(q, "x"), Error);
}

TEST(QuantQ4, Int5DecodeHandBuilt) {
    Int5Matrix m;
    m.out = 2;
    m.in = 4;
    m.group_size = 2;
    m.qweight = {0, 31, 16, 17, 5, 9, 30, 1};
    m.zeros = {16, 17, 0, 31};
    m.scales = {f32_to_bf16(0.25f), f32_to_bf16(3.0f), f32_to_bf16(1.5f), f32_to_bf16(0.125f)};
    validate(m, "int5");
    const std::vector<float> d = dequantize(m);
    const std::vector<float> want = {(0 - 16) * 0.25f,   (31 - 16) * 0.25f, (16 - 17) * 3.0f,
                                     (17 - 17) * 3.0f,   (5 - 0) * 1.5f,    (9 - 0) * 1.5f,
                                     (30 - 31) * 0.125f, (1 - 31) * 0.125f};
    EXPECT_EQ(d, want);
    m.qweight[3] = 32;
    EXPECT_THROW(validate(m, "int5"), Error);
}

TEST(QuantQ4, Nvfp4DecodeHandBuilt) {
    Nvfp4Matrix m;
    m.out = 1;
    m.in = 32;
    m.block_size = 16;
    std::vector<uint8_t> codes(32);
    for (int i = 0; i < 16; ++i) codes[i] = static_cast<uint8_t>(i);        // all 16 codes
    for (int i = 16; i < 32; ++i) codes[i] = static_cast<uint8_t>(31 - i);  // reversed
    m.qweight.resize(16);
    pack_int4(codes.data(), 32, m.qweight.data());
    m.scales_bf16 = {f32_to_bf16(0.375f), f32_to_bf16(2.0f)};
    validate(m, "nvfp4");
    const std::vector<float> d = dequantize(m);
    const float mag[8] = {0, 0.5f, 1, 1.5f, 2, 3, 4, 6};
    for (int i = 0; i < 32; ++i) {
        const int c = codes[i];
        const float s = i < 16 ? 0.375f : 2.0f;
        const float want = (c >= 8 ? -1.0f : 1.0f) * mag[c % 8] * s;
        EXPECT_EQ(d[i], want) << i;
    }
    EXPECT_TRUE(std::signbit(d[8]));  // code 8 decodes to -0
    m.scales_bf16.pop_back();
    EXPECT_THROW(validate(m, "nvfp4"), Error);
}

// Spec §1.2 written out: the §1.1 quantizer with 31 levels on the bf16-rounded group.
TEST(QuantQ4, Int5RtnMatchesScalarReference) {
    std::mt19937 rng(5);
    std::normal_distribution<float> nd(0.0f, 0.02f);
    const int out = 7, in = 96;
    std::vector<float> w(out * in);
    for (float& v : w) v = nd(rng);
    w[3] = 0.3f;  // an outlier
    for (int requested : {64, 32}) {
        const Int5Matrix q = quantize_int5_rtn(w.data(), out, in, requested);
        const int gs = requested == 64 ? 32 : 32;  // 96 % 64 != 0: the fallback takes 32
        ASSERT_EQ(q.group_size, gs);
        validate(q, "int5");
        const int ng = in / gs;
        for (int o = 0; o < out; ++o)
            for (int g = 0; g < ng; ++g) {
                std::vector<float> grp(gs);
                for (int i = 0; i < gs; ++i) grp[i] = round_bf16(w[o * in + g * gs + i]);
                float m = grp[0], mx = grp[0];
                for (float v : grp) m = std::min(m, v), mx = std::max(mx, v);
                float scale = (mx - m) / 31.0f;
                if (scale < 1e-8f) scale = 1e-8f;
                const float z = std::clamp(round_half_even(-m / scale), 0.0f, 31.0f);
                ASSERT_EQ(q.zeros[o * ng + g], int(z)) << o << ", " << g;
                ASSERT_EQ(q.scales[o * ng + g], f32_to_bf16(scale)) << o << ", " << g;
                for (int i = 0; i < gs; ++i) {
                    const float c = std::clamp(round_half_even(grp[i] / scale + z), 0.0f, 31.0f);
                    ASSERT_EQ(q.qweight[o * in + g * gs + i], int(c)) << o << ", " << g * gs + i;
                }
            }
        // Within half a step (plus the bf16 rounding of the scale) of the bf16 weight.
        const std::vector<float> d = dequantize(q);
        for (int o = 0; o < out; ++o)
            for (int i = 0; i < in; ++i) {
                const float s = bf16_to_f32(q.scales[o * ng + i / gs]);
                EXPECT_LE(std::fabs(d[o * in + i] - round_bf16(w[o * in + i])),
                          s * 0.5f + 31 * s / 256)
                    << o << ", " << i;
            }
    }
    EXPECT_EQ(quantize_int5_rtn(w.data(), 1, 40, 64).group_size, 40);  // nothing divides 40
    EXPECT_EQ(quantize_int5_rtn(w.data(), 1, 48, 64).group_size, 16);
    w[5] = NAN;
    EXPECT_THROW(quantize_int5_rtn(w.data(), out, in, 32), Error);
}

TEST(QuantQ4, E4m3fnBitPatterns) {
    EXPECT_EQ(f32_to_e4m3fn(0.0f), 0x00);
    EXPECT_EQ(f32_to_e4m3fn(1.0f), 0x38);
    EXPECT_EQ(f32_to_e4m3fn(448.0f), 0x7e);             // the largest finite value
    EXPECT_EQ(f32_to_e4m3fn(500.0f), 0x7f);             // not representable: NaN
    EXPECT_EQ(f32_to_e4m3fn(0x1p-9f), 0x01);            // smallest subnormal
    EXPECT_EQ(f32_to_e4m3fn(0x1p-6f), 0x08);            // smallest normal
    EXPECT_EQ(f32_to_e4m3fn(0x1p-6f * 0.9999f), 0x08);  // rounds up into the normals
    EXPECT_EQ(f32_to_e4m3fn(1.0625f), 0x38);            // tie between 1 and 1.125: even
    EXPECT_EQ(f32_to_e4m3fn(1.1875f), 0x3a);            // tie between 1.125 and 1.25: even
    EXPECT_EQ(f32_to_e4m3fn(1.96875f), 0x40);           // tie between 1.875 and 2: carries
    EXPECT_EQ(f32_to_e4m3fn(3 * 0x1p-10f), 0x02);       // 1.5 subnormal steps: even
    // Decode every finite pattern and encode it back.
    for (int b = 0; b < 0x7f; ++b) {
        const int e = b >> 3, m = b & 7;
        const float v = e == 0 ? std::ldexp(float(m), -9) : std::ldexp(1.0f + m / 8.0f, e - 7);
        EXPECT_EQ(f32_to_e4m3fn(v), b) << v;
    }
}

// Spec §1.3 by hand: one block whose max is 6 (scale 1), the ties of the argmin going to the lower
// index, and a small negative value coded as -0.
TEST(QuantQ4, Nvfp4QuantizerByHand) {
    const float w[16] = {6.0f,  -3.0f, 0.25f, 0.75f, 2.5f, 5.0f, -0.1f, 1.25f,
                         -6.0f, 1.75f, 3.5f,  -4.9f, 0.0f, 1.5f, -0.5f, 4.0f};
    std::vector<uint8_t> fp8;
    const Nvfp4Matrix q = quantize_nvfp4(w, 1, 16, &fp8);
    validate(q, "nvfp4");
    const int want[16] = {7, 8 | 5, 0, 1, 4, 6, 8 | 0, 2, 8 | 7, 3, 5, 8 | 6, 0, 3, 8 | 1, 6};
    std::vector<uint8_t> codes(16);
    unpack_int4(q.qweight.data(), 16, codes.data());
    for (int i = 0; i < 16; ++i) EXPECT_EQ(codes[i], want[i]) << i << ": " << w[i];
    EXPECT_EQ(q.scales_bf16[0], f32_to_bf16(1.0f));
    EXPECT_EQ(fp8[0], 0x38);
}

// On random weights: every element's code is the table entry nearest w / scale, so the decoded
// weight is within half the widest table gap (1, between 4 and 6) times the stored scale, plus the
// scale's bf16 rounding, of the bf16 weight; an all-zero block takes the 1e-8 floor.
TEST(QuantQ4, Nvfp4QuantizerOnRandomWeights) {
    std::mt19937 rng(9);
    std::normal_distribution<float> nd(0.0f, 0.02f);
    const int out = 5, in = 64;
    std::vector<float> w(out * in);
    for (float& v : w) v = nd(rng);
    for (int i = 16; i < 32; ++i) w[i] = 0.0f;
    std::vector<uint8_t> fp8;
    const Nvfp4Matrix q = quantize_nvfp4(w.data(), out, in, &fp8);
    validate(q, "nvfp4");
    const std::vector<float> d = dequantize(q);
    for (int o = 0; o < out; ++o)
        for (int b = 0; b < in / 16; ++b) {
            float amax = 0;
            for (int i = 0; i < 16; ++i)
                amax = std::max(amax, std::fabs(round_bf16(w[o * in + b * 16 + i])));
            const float scale = std::max(amax / 6.0f, 1e-8f);
            EXPECT_EQ(q.scales_bf16[o * (in / 16) + b], f32_to_bf16(scale));
            EXPECT_EQ(fp8[o * (in / 16) + b], f32_to_e4m3fn(scale));
            const float s = bf16_to_f32(q.scales_bf16[o * (in / 16) + b]);
            for (int i = 0; i < 16; ++i) {
                const size_t k = o * in + b * 16 + i;
                // The nearest table entry to |w| / scale (clamped to 6), first on a tie.
                const float a = std::min(std::fabs(round_bf16(w[k]) / scale), 6.0f);
                const float mag[8] = {0, 0.5f, 1, 1.5f, 2, 3, 4, 6};
                int best = 0;
                for (int t = 1; t < 8; ++t)
                    if (std::fabs(a - mag[t]) < std::fabs(a - mag[best])) best = t;
                const uint8_t byte = q.qweight[k / 2];
                const int code = k % 2 ? byte >> 4 : byte & 15;
                EXPECT_EQ(code, best | (round_bf16(w[k]) < 0 ? 8 : 0)) << o << ", " << b * 16 + i;
                // Half the widest gap (4 to 6) times the scale, plus the scale's bf16 rounding.
                EXPECT_LE(std::fabs(d[k] - round_bf16(w[k])), s + 6 * std::fabs(s - scale))
                    << o << ", " << b * 16 + i;
            }
        }
    EXPECT_THROW(quantize_nvfp4(w.data(), 1, 40, nullptr), Error);
    w[3] = INFINITY;
    EXPECT_THROW(quantize_nvfp4(w.data(), out, in, nullptr), Error);
}

}  // namespace
}  // namespace lancet::quant
