// Token sampling from logits: greedy by default, or temperature with top-k / top-p, seeded.
#pragma once

#include <cstdint>
#include <vector>

#include "core/rng.h"

namespace lancet {

struct SamplerOptions {
    float temperature = 0.0f;  // 0: greedy (Lance's default, do_sample=False)
    int top_k = 0;             // 0: no limit
    float top_p = 1.0f;        // 1: no nucleus cut
    uint64_t seed = 42;
};

class Sampler {
  public:
    explicit Sampler(const SamplerOptions& opt);
    // Picks an id from logits[0, n). Entries at -inf (masked ids) are never chosen.
    int32_t sample(const float* logits, int n);

  private:
    SamplerOptions opt_;
    Rng rng_;  // splitmix64: a seed means the same draws everywhere
    std::vector<std::pair<float, int32_t>> cand_;
};

// log softmax of logits[0, n) in double, into out (n values).
void log_softmax(const float* logits, int n, double* out);

}  // namespace lancet
