// Checks the scalar float-format conversions against definitions computed independently in double.
#include "core/numeric.h"

#include <gtest/gtest.h>

#include <cmath>
#include <random>

namespace lancet {
namespace {

// bf16 round-to-nearest-even, derived from the value rather than the bit trick.
double bf16_reference(double v) {
    if (v == 0 || !std::isfinite(v)) return v;
    int e;
    std::frexp(v, &e);                          // v = m * 2^e, 0.5 <= |m| < 1
    const double ulp = std::ldexp(1.0, e - 8);  // 8 significant bits
    return std::nearbyint(v / ulp) * ulp;
}

TEST(Numeric, Bf16RoundTripMatchesReference) {
    std::mt19937 rng(1);
    std::normal_distribution<float> dist(0.0f, 3.0f);
    for (int i = 0; i < 100000; ++i) {
        const float f = dist(rng) * std::ldexp(1.0f, static_cast<int>(rng() % 40) - 20);
        ASSERT_EQ(static_cast<double>(round_bf16(f)), bf16_reference(f)) << f;
    }
    // Ties go to even: 1 + 2^-8 lies halfway between 1 and 1 + 2^-7.
    EXPECT_EQ(round_bf16(1.0f + std::ldexp(1.0f, -8)), 1.0f);
    EXPECT_EQ(round_bf16(1.0f + 3 * std::ldexp(1.0f, -8)), 1.0f + std::ldexp(1.0f, -6));
    EXPECT_TRUE(std::isnan(round_bf16(NAN)));
}

TEST(Numeric, F16RoundTripExhaustive) {
    for (uint32_t h = 0; h < 0x10000; ++h) {
        const float f = f16_to_f32(static_cast<uint16_t>(h));
        if (std::isnan(f)) continue;
        ASSERT_EQ(f32_to_f16(f), h) << std::hex << h;
    }
    EXPECT_EQ(f16_to_f32(0x3c00), 1.0f);
    EXPECT_EQ(f16_to_f32(0x0001), std::ldexp(1.0f, -24));
    EXPECT_EQ(f32_to_f16(65520.0f), 0x7c00);
    EXPECT_EQ(f32_to_f16(1.0f + std::ldexp(1.0f, -11)), 0x3c00);  // tie to even
}

TEST(Numeric, Fp8Decode) {
    EXPECT_EQ(f8e4m3_to_f32(0x38), 1.0f);
    EXPECT_EQ(f8e4m3_to_f32(0x7e), 448.0f);
    EXPECT_EQ(f8e4m3_to_f32(0x01), std::ldexp(1.0f, -9));
    EXPECT_TRUE(std::isnan(f8e4m3_to_f32(0x7f)));
    EXPECT_EQ(f8e5m2_to_f32(0x3c), 1.0f);
    EXPECT_EQ(f8e5m2_to_f32(0xc0), -2.0f);
}

}  // namespace
}  // namespace lancet
