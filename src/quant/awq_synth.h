// Synthetic layers for the AWQ search (`lancet bench awq`, the AWQ tests): weights with heavy
// tails and activations with a few large channels, the structure AWQ's scales exploit in trained
// models. Deterministic for a given Rng state.
#pragma once

#include <vector>

#include "core/rng.h"
#include "quant/act_stats.h"

namespace lancet::quant {

// [out, in] N(0, sd) weights where ~5% of the rows have 2% of their entries blown up 8x (the
// heavy tails of trained linears).
std::vector<float> heavy_tailed_weights(Rng& rng, int out, int in, float sd = 0.02f);

// Statistics (reservoir of `capacity` rows) of `tokens` input rows of width `in` where ~1.5% of
// the channels (at least 2) are 20-100x larger than the rest (the outlier channels AWQ
// protects); every token also gets its own magnitude.
LinearStats outlier_activations(Rng& rng, int in, int tokens, int capacity);

}  // namespace lancet::quant
