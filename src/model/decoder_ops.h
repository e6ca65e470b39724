// The f32 building blocks of the fast decoder (RMSNorm, q/k norm, M-RoPE, timestep features,
// SwiGLU, masked GQA attention over a KV cache), exposed so tests can check each against the
// float64 reference.
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <vector>

#include "core/thread_pool.h"
#include "model/positions.h"

namespace lancet::ops {

// Rows of x [n, dim]: y = x * rsqrt(mean(x^2) + eps) * w (f32; Lance casts the normalized value
// to the activation dtype before the weight, an identity here). y may alias x.
void rms_norm(const float* x, size_t n, size_t dim, const float* w, float eps, float* y);

// cos/sin of the hd/2 M-RoPE angles of one position (computed in double, stored f32).
void mrope_angles(const RopePosition& pos, size_t hd, const std::array<int, 3>& section,
                  double theta, float* cos, float* sin);
// Rotates `heads` consecutive head vectors of one token in place (rotate-half form).
void apply_rope(float* x, size_t heads, size_t hd, const float* cos, const float* sin);

// TimestepEmbedder features of t: [cos(t f_k)] ++ [sin(t f_k)], dim values.
void timestep_features(float t, size_t dim, float* out);

// out[i] = silu(gate[i]) * up[i]
void silu_mul(const float* gate, const float* up, size_t n, float* out);
// x[i] = silu(x[i])
void silu(float* x, size_t n);

// Who may attend whom, for a chunk of n tokens appended after n_cached cached ones (spec §2.5 with
// bottom-right-aligned causality): a cached key is visible unless it lies in a noise split; chunk
// keys follow the split rules inside the chunk.
struct ChunkMask {
    size_t n_cached = 0;
    const uint8_t* cached_hidden = nullptr;  // [n_cached]: 1 = in a noise split
    const int32_t* split_of = nullptr;       // [n]: chunk index -> split
    const SplitMode* modes = nullptr;        // per split
    const int32_t* split_end = nullptr;      // per split: one past its last chunk index
};

// Per-thread buffers of attention(), grown once and reused.
struct AttentionScratch {
    std::vector<std::vector<float>> per_share;
    std::vector<size_t> dense_end;  // per chunk token: keys below are all visible
};

// Masked GQA attention with scale 1/sqrt(hd). q [n, nh*hd]: row r is chunk token q_index[r]
// (nullptr: r). k, v: per kv head g the keys of all positions 0..n_cached+n-1 at
// k + (g*kv_stride + a)*hd. out [n, nh*hd] in q's row order.
void attention(const float* q, size_t n, const int32_t* q_index, const float* k, const float* v,
               size_t kv_stride, size_t nh, size_t nkv, size_t hd, const ChunkMask& mask,
               float* out, AttentionScratch& scratch, ThreadPool& pool);

namespace detail {
// Tile primitives (scalar and AVX2 builds): s[r*nk+j] = q_r . k_j; acc[r*hd+d] += sum_j
// p[r*nk+j] v[j*hd+d]; p[i] = exp(p[i] - m) in place, returning the sum (p = -inf gives 0).
struct AttnKernels {
    void (*scores)(const float* q, size_t nq, const float* k, size_t nk, size_t hd, float* s);
    void (*pv)(const float* p, size_t nq, const float* v, size_t nk, size_t hd, float* acc);
    float (*exp_sum)(float* p, size_t n, float m);
};
AttnKernels attn_kernels_scalar();
AttnKernels attn_kernels_avx2();
}  // namespace detail

}  // namespace lancet::ops
