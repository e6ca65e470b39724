#include "quant/awq_synth.h"

#include <algorithm>
#include <cstddef>

namespace lancet::quant {

std::vector<float> heavy_tailed_weights(Rng& rng, int out, int in, float sd) {
    std::vector<float> w(static_cast<size_t>(out) * in);
    for (auto& v : w) v = sd * static_cast<float>(rng.normal());
    for (int o = 0; o < out; ++o)
        if (rng.uniform() < 0.05)
            for (int i = 0; i < in; ++i)
                if (rng.uniform() < 0.02) w[static_cast<size_t>(o) * in + i] *= 8.0f;
    return w;
}

LinearStats outlier_activations(Rng& rng, int in, int tokens, int capacity) {
    std::vector<float> chan(in, 1.0f);
    const int n_out = std::max(2, in * 3 / 200);
    for (int k = 0; k < n_out; ++k)
        chan[rng.below(in)] = static_cast<float>(20 + 80 * rng.uniform());
    StatsAccumulator acc(in, capacity, rng.next_u64());
    std::vector<float> x(in);
    for (int t = 0; t < tokens; ++t) {
        const double tok = 0.5 + rng.uniform();
        for (int i = 0; i < in; ++i) x[i] = static_cast<float>(rng.normal() * chan[i] * tok);
        acc.add_rows(x.data(), 1, in);
    }
    return acc.stats();
}

}  // namespace lancet::quant
