// Scalar conversions between f32 and the 16- and 8-bit float formats checkpoints store.
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>

namespace lancet {

inline uint32_t f32_bits(float f) {
    uint32_t u;
    std::memcpy(&u, &f, 4);
    return u;
}
inline float f32_from_bits(uint32_t u) {
    float f;
    std::memcpy(&f, &u, 4);
    return f;
}

inline float bf16_to_f32(uint16_t h) { return f32_from_bits(static_cast<uint32_t>(h) << 16); }

// Round to nearest, ties to even, as PyTorch's .to(torch.bfloat16) does; NaN stays a quiet NaN.
inline uint16_t f32_to_bf16(float f) {
    uint32_t u = f32_bits(f);
    if ((u & 0x7fffffffu) > 0x7f800000u) return static_cast<uint16_t>((u >> 16) | 0x40);
    u += 0x7fffu + ((u >> 16) & 1u);
    return static_cast<uint16_t>(u >> 16);
}

// The f32 value of f after a round trip through bf16.
inline float round_bf16(float f) { return bf16_to_f32(f32_to_bf16(f)); }

inline float f16_to_f32(uint16_t h) {
    const uint32_t sign = static_cast<uint32_t>(h & 0x8000u) << 16;
    const uint32_t exp = (h >> 10) & 0x1fu;
    const uint32_t man = h & 0x3ffu;
    if (exp == 0) {
        const float v = std::ldexp(static_cast<float>(man), -24);
        return sign ? -v : v;
    }
    if (exp == 31) return f32_from_bits(sign | 0x7f800000u | (man << 13));
    return f32_from_bits(sign | ((exp + 112) << 23) | (man << 13));
}

// Round to nearest even; overflow goes to infinity.
inline uint16_t f32_to_f16(float f) {
    const uint32_t u = f32_bits(f);
    const uint16_t sign = static_cast<uint16_t>((u >> 16) & 0x8000u);
    const uint32_t au = u & 0x7fffffffu;
    if (au > 0x7f800000u) return sign | 0x7e00u;
    if (au >= 0x477ff000u) return sign | 0x7c00u;  // rounds to >= 65520: infinity
    if (au < 0x38800000u) {                        // subnormal half (or zero)
        const float a = f32_from_bits(au);
        return sign | static_cast<uint16_t>(std::nearbyint(a * 16777216.0f));
    }
    uint32_t r = au + 0xfffu + ((au >> 13) & 1u);
    return sign | static_cast<uint16_t>((r - (112u << 23)) >> 13);
}

// float8 E4M3FN (no infinities; 0x7f/0xff are NaN) and E5M2 (IEEE-like), decode only.
inline float f8e4m3_to_f32(uint8_t b) {
    const bool neg = b & 0x80;
    const int exp = (b >> 3) & 0xf;
    const int man = b & 0x7;
    float v;
    if (exp == 0xf && man == 0x7) return NAN;
    if (exp == 0)
        v = std::ldexp(static_cast<float>(man), -9);
    else
        v = std::ldexp(1.0f + man / 8.0f, exp - 7);
    return neg ? -v : v;
}
inline float f8e5m2_to_f32(uint8_t b) { return f16_to_f32(static_cast<uint16_t>(b) << 8); }

}  // namespace lancet
