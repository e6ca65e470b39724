// Rng: the one seeded random generator (splitmix64). Its sequence is fixed by its definition, so
// synthetic checkpoints, calibration samples and sampling seeds mean the same on every compiler
// and standard library.
#pragma once

#include <cmath>
#include <cstdint>
#include <string_view>

namespace lancet {

// splitmix64 stream; normals by Box-Muller (std:: distributions differ between libraries).
class Rng {
  public:
    explicit Rng(uint64_t seed) : state_(seed) {}
    uint64_t next_u64() {
        uint64_t z = (state_ += 0x9e3779b97f4a7c15ull);
        z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
        z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
        return z ^ (z >> 31);
    }
    // Uniform integer in [0, n), n > 0 (multiply-shift; the bias is below 2^-64 * n).
    uint64_t below(uint64_t n) {
        return static_cast<uint64_t>((static_cast<unsigned __int128>(next_u64()) * n) >> 64);
    }
    // Uniform in (0, 1).
    double uniform() { return (static_cast<double>(next_u64() >> 11) + 0.5) * 0x1.0p-53; }
    // Uniform in [0, 1) with 53 and with 24 random bits.
    double unit_double() { return static_cast<double>(next_u64() >> 11) * 0x1.0p-53; }
    float unit_float() { return static_cast<float>(next_u64() >> 40) * 0x1p-24f; }
    double normal() {
        if (has_spare_) {
            has_spare_ = false;
            return spare_;
        }
        const double r = std::sqrt(-2.0 * std::log(uniform()));
        const double t = 6.283185307179586 * uniform();
        spare_ = r * std::sin(t);
        has_spare_ = true;
        return r * std::cos(t);
    }

  private:
    uint64_t state_;
    double spare_ = 0;
    bool has_spare_ = false;
};

// FNV-1a of `name` keyed by `seed`: a stream seed per tensor or linear that depends on its name,
// not on the order things are visited in.
inline uint64_t name_hash(uint64_t seed, std::string_view name) {
    uint64_t h = 1469598103934665603ull ^ seed;
    for (unsigned char c : name) h = (h ^ c) * 1099511628211ull;
    return h;
}

}  // namespace lancet
