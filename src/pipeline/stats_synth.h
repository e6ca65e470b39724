// `lancet stats synth`: activation statistics for a checkpoint without running it.
#pragma once

#include <cstdint>
#include <string>

namespace lancet {

// Statistics from SYNTHETIC activations consistent with a (synth) checkpoint, without running the
// model (tests, quick runs; `lancet calibrate` records the real ones). Per decoder layer path,
// with z ~ N(0, 1):
//   q/k/v input      x = z ⊙ g_input_norm           (the structure of an RMSNorm output)
//   gate/up input    x = z' ⊙ g_post_attention_norm
//   o_proj input     per query head, the mean of a few random tokens' v = W_v x + b_v rows of its
//                    kv head (attention-like mixing, shared by nothing across query heads)
//   down_proj input  silu(W_gate x') ⊙ (W_up x')
struct SynthStatsOptions {
    std::string model;  // checkpoint folder
    std::string out;
    int64_t tokens = 1024;  // tokens per linear
    int rows = 512;         // reservoir capacity
    uint64_t seed = 1;
    // Only the und path (as the seed's x2t-only calibration): gen linears get no statistics.
    bool und_only = false;
};
void synth_stats(const SynthStatsOptions& opt);

}  // namespace lancet
