// Folding AWQ input-channel scales into the neighbouring weights so the network's function is
// unchanged: norm weight / s with the consumers' columns * s, and the two row-scaled pairs
// v_proj -> o_proj (tied across the query heads of a GQA group) and up_proj -> down_proj.
#pragma once

#include <cstdint>
#include <vector>

#include "core/error.h"

namespace lancet::quant {

// RMSNorm output channel i feeds every consumer's column i: g[i] <- g[i] / s[i]. Computed in
// double and rounded once to T (callers storing bf16 round the result again, as the seed does).
template <typename T>
void fuse_scale_into_norm(T* g, const float* s, int n) {
    for (int i = 0; i < n; ++i) g[i] = static_cast<T>(static_cast<double>(g[i]) / s[i]);
}

// W <- W * diag(s) on the input side: column i times s[i] (an f32 x f32 product is exact in
// double, so this is one rounding to T).
template <typename T>
void scale_weight_columns(T* w, int64_t out, int64_t in, const float* s) {
    for (int64_t o = 0; o < out; ++o)
        for (int64_t i = 0; i < in; ++i)
            w[o * in + i] = static_cast<T>(static_cast<double>(w[o * in + i]) * s[i]);
}

// The producer side of a row-scaled pair: output row o (and bias[o], if any) divided by s[o].
template <typename T>
void scale_weight_rows_inverse(T* w, T* bias, int64_t out, int64_t in, const float* s) {
    for (int64_t o = 0; o < out; ++o) {
        for (int64_t i = 0; i < in; ++i)
            w[o * in + i] = static_cast<T>(static_cast<double>(w[o * in + i]) / s[o]);
        if (bias) bias[o] = static_cast<T>(static_cast<double>(bias[o]) / s[o]);
    }
}

// o_proj input channel (query head h, dim d) reads V of kv head h / (num_heads / num_kv_heads),
// dim d. Returns that channel's index into the [num_kv_heads * head_dim] free scales.
inline std::vector<int> gqa_tie_map(int num_heads, int num_kv_heads, int head_dim) {
    if (num_heads <= 0 || num_kv_heads <= 0 || head_dim <= 0 || num_heads % num_kv_heads != 0)
        fail("GQA tie: ", num_heads, " heads are not a multiple of ", num_kv_heads, " kv heads");
    const int per_kv = num_heads / num_kv_heads;
    std::vector<int> tie(static_cast<size_t>(num_heads) * head_dim);
    for (int h = 0; h < num_heads; ++h)
        for (int d = 0; d < head_dim; ++d) tie[h * head_dim + d] = (h / per_kv) * head_dim + d;
    return tie;
}

}  // namespace lancet::quant
