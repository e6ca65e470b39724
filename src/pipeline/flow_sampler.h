// Lance's rectified-flow sampler (spec §3.1, §2.7.1): the shifted time grid, text CFG with the
// global norm clamp, Euler steps on the generated latent rows only, and the KV-cache schedule
// (the condition prefix prefilled once into a conditional and an unconditional cache, then each
// step re-running only the noisy block against both caches without appending).
//
// Numerics: by default the latent state, the combined velocity and every CFG / Euler operation
// are rounded to bf16 after each step, as Lance computes them in bf16 (pitfall 7); the model
// itself runs in f32 activations (see decoder.h). `bf16_state = false` keeps everything in f32.
#pragma once

#include <cstdint>
#include <functional>
#include <vector>

#include "core/error.h"
#include "model/decoder.h"
#include "model/positions.h"

namespace lancet {

// One generation sequence as the sampler takes it: the conditional token list split by split.
struct GenSequence {
    // token_ids, is_gen, positions (conditional M-RoPE ids), splits (exactly one Noise split,
    // the target), pe3d_index; latents = the initial state of every gen row in token order
    // ([N, C]: noise for generated rows, the clean latent for conditioning rows). timesteps are
    // set by the sampler (0 for clean rows). `embeddings` must be null.
    Batch batch;
    std::vector<uint8_t> gen_rows;   // [N] 1 = generated (t from 1, updated), 0 = clean (t = 0)
    std::vector<uint8_t> cfg_drop;   // [L] 1 = left out of the unconditional branch
    std::vector<Modality> modality;  // [L] (re-anchoring of the unconditional positions)
    std::vector<VisionGrid> grids;   // every vision block's get_rope_index grid, in order
    // Input embeddings of the und <|video_pad|> rows (ViT blocks), [n_vit_rows, hidden] in order.
    std::vector<float> vit_rows;
    // Positions of the unconditional token list (cfg_drop rows removed). Empty: get_rope_index
    // over that list, then shift_position_ids when the sequence has a Full split (Lance re-runs
    // both, §2.7.1 step 2).
    std::vector<RopePosition> uncond_positions;
};

// get_rope_index over `ids` and, when `splits` has a Full split (editing), shift_position_ids.
std::vector<RopePosition> gen_positions(const std::vector<int64_t>& ids,
                                        const std::vector<VisionGrid>& grids,
                                        const std::vector<Modality>& modality,
                                        const std::vector<Split>& splits, const LanceConfig& cfg);

// Modality labels derived from the splits (for sequences read from a file): a Noise split is
// Target, a Full split with gen rows Source, a Full split of und rows Vit, cfg_drop rows Caption,
// the rest Text.
std::vector<Modality> derive_modality(const Batch& b, const std::vector<uint8_t>& cfg_drop);

struct FlowSamplerOptions {
    int steps = 30;
    double shift = 3.5;
    double cfg = 4.0;              // text CFG scale; 1 = no unconditional branch
    double cfg_interval_lo = 0.4;  // CFG active for lo < sigma <= hi
    double cfg_interval_hi = 1.0;
    bool bf16_state = true;  // round state and updates to bf16 (Lance)
    // Lance's KV path fills the unconditional cache with the conditional position ids (spec
    // §2.7.1 step 4, pitfall 4); false uses the unconditional ids there too (the consistent
    // variant, what Lance's non-KV path computes).
    bool uncond_cache_cond_positions = true;
    // false: Lance's non-KV path, the whole sequence (conditional and unconditional) every step.
    // Needs uncond_cache_cond_positions = false to mean the same thing as the cached path.
    bool kv_cache = true;
    // With the KV cache, a CFG step runs the conditional and the unconditional noisy block as
    // one stacked forward (DecoderSession::forward_chunks: each weight read once for both);
    // false: two forwards, one per branch (the same velocities; for checking and timing).
    bool cfg_batch = true;
    bool keep_trajectory = false;  // fill SampleResult::xs / vs
    // Sees every linear input of every forward (prefill and steps, both branches): calibration
    // records gen-path statistics from real trajectories through it.
    ActivationObserver observer;
    // After every step: step index (0-based), steps, seconds since the first step began.
    std::function<void(int, int, double)> on_step;
    // Checked before every step; true stops the run with SampleCancelled
    // (a server job whose client cancelled it).
    std::function<bool()> cancelled;
};

// Thrown by flow_sample when FlowSamplerOptions::cancelled answers true.
struct SampleCancelled : Error {
    SampleCancelled() : Error("sampling cancelled") {}
};

struct SampleResult {
    std::vector<float> x;                // [N, C] final state of every gen row
    std::vector<std::vector<float>> xs;  // per step k: the state after step k [N, C]
    std::vector<std::vector<float>> vs;  // per step k: the combined velocity [N, C] (0 off-target)
    double prefill_seconds = 0;
    std::vector<double> step_seconds;
    int forwards = 0;  // noisy-block (or full-sequence) forwards; a stacked CFG pair counts 2
    int cfg_steps = 0;
};

// sigma_k = s u_k / (1 + (s - 1) u_k), u_k = 1 - k / steps, k = 0..steps (steps + 1 values),
// rounded to f32 (Lance's grid is an f32 tensor).
std::vector<float> flow_time_grid(int steps, double shift);
bool cfg_active(float sigma, const FlowSamplerOptions& o);

// v = v_u + g (v_c - v_u), then v *= clamp(|v_c| / (|v| + 1e-8), 0, 1) with global Frobenius
// norms over all n values; each operation rounded to bf16 when `bf16`. vc, vu, out: [n].
void cfg_combine(const float* vc, const float* vu, size_t n, double g, bool bf16, float* out);
// x <- x - v dt on the rows with gen[r] = 1 (rows of C values); bf16: v dt and the difference
// are rounded to bf16.
void euler_step(float* x, const float* v, const uint8_t* gen, size_t rows, size_t C, float dt,
                bool bf16);

// Initial noise: `n` standard normals from Rng(seed) drawn in order (Box–Muller on splitmix64,
// core/rng.h), so a seed gives the same values on every machine, compiler and thread count.
std::vector<float> flow_noise(uint64_t seed, size_t n);

// Runs the sampler. The decoder must hold the gen path.
SampleResult flow_sample(DecoderSession& dec, const GenSequence& seq, const FlowSamplerOptions& o);

// Checks a GenSequence's shapes and rules (one Noise split, gen rows generated only inside it,
// nothing dropped inside it, one ViT row per und pad); Error naming `where`.
void check_gen_sequence(const GenSequence& seq, const LanceConfig& cfg, const char* where);

// The one range check of the sampler settings (every command that takes them calls it): steps
// in 1..1000, shift a finite number in (0, 1000], cfg a finite number in [0, 100]. Errors read
// "<where>: <flag>steps must be ..." (flag "--" for command-line options).
void check_sampler_settings(int steps, double shift, double cfg, const std::string& where,
                            const char* flag = "");

namespace ref {
// float64 references of the sampler arithmetic (plain loops from the spec's formulas).
std::vector<double> flow_time_grid(int steps, double shift);
void cfg_combine(const double* vc, const double* vu, size_t n, double g, double* out);
}  // namespace ref

}  // namespace lancet
