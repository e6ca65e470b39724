// A plain float64 reference of Lance's decoder (spec §2): simple loops over a whole packed
// sequence with its attention mask, no KV cache, nothing shared with the fast path but the
// checkpoint reader. Tests compare DecoderSession against it.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "model/lance_checkpoint.h"
#include "model/positions.h"

namespace lancet::ref {

// y = x * rsqrt(mean(x^2) + eps) * w over one row of `dim`.
void rms_norm(const double* x, size_t dim, const double* w, double eps, double* y);

// M-RoPE on one head vector of `hd` values (rotate-half form, spec §2.6.3): frequency j < hd/2
// takes its angle from axis t, h or w by `section` (which sums to hd/2).
void mrope(double* x, size_t hd, const RopePosition& pos, const std::array<int, 3>& section,
           double theta);

// TimestepEmbedder's sinusoidal features of t (not x1000): [cos(t f_k)] ++ [sin(t f_k)],
// f_k = exp(-ln(10000) k / (dim/2)).
std::vector<double> timestep_features(double t, int dim);

// One PE3D row (spec §2.3.3), written independently of synth's pe3d_row.
std::vector<double> pe3d(int hidden, int64_t pos_id, int max_latent_size);

// The spec §2.5 mask over a packed sequence as [L*L] (row q, column k; 1 = q may attend k).
std::vector<uint8_t> attention_mask(const std::vector<Split>& splits);

// Masked GQA softmax attention with scale 1/sqrt(hd): q [L, nh*hd], k and v [L, nkv*hd] (rows of
// all L tokens), out [L, nh*hd]; q head j reads kv head j / (nh/nkv).
void attention(const double* q, const double* k, const double* v, size_t L, size_t nh, size_t nkv,
               size_t hd, const std::vector<uint8_t>& mask, double* out);

// get_rope_index re-derived from the spec: each vision_start followed by a video pad opens a
// block whose grid is the next entry of `latent_grids` (latent (t, h, w), so the merged grid is
// (t, h, w) with temporal step tokens_per_second).
std::vector<RopePosition> rope_index(const std::vector<int64_t>& ids,
                                     const std::vector<std::array<int64_t, 3>>& latent_grids,
                                     const LanceConfig& cfg);

struct Input {
    std::vector<int64_t> token_ids;       // [L]
    std::vector<uint8_t> is_gen;          // [L]
    std::vector<double> latents;          // [N, C]
    std::vector<double> timesteps;        // [N]
    std::vector<int64_t> pe3d_index;      // [N]
    std::vector<RopePosition> positions;  // [L]
    std::vector<Split> splits;
};

struct Output {
    std::vector<std::vector<double>> layer_out;  // per layer [L, H]
    std::vector<double> final_hidden;            // [L, H]
    std::vector<double> logits;                  // [n_und, vocab]; ids >= limit are -inf
    std::vector<double> velocity;                // [N, C]
};

// The dense weight of a linear as f64 [out*in]: plain tensors converted, AWQ INT4 dequantized as
// (q - zero) * scale.
std::vector<double> linear_weight(const LanceCheckpoint& ck, const std::string& base);

// The whole forward. `logits_limit` <= 0 means the vocab size.
Output forward(const LanceCheckpoint& ck, const Input& in, int64_t logits_limit = 0);

}  // namespace lancet::ref
