// AWQ for one decoder-layer path (the und or the gen expert) on in-memory f32 weights: the four
// fusion groups of spec §3.1 plus the v_proj->o_proj and up_proj->down_proj pairs of §7.2.
#pragma once

#include <vector>

#include "quant/act_stats.h"
#include "quant/awq.h"

namespace lancet::quant {

// One path's weights, row-major [out, in] like nn.Linear. Fusion edits them in place: the norms
// (g / s), v_proj rows and bias and up_proj rows (/ s). The caller stores the edited norms (bf16
// in the published format) and the biases, and writes the quantized linears from the result.
struct LayerWeights {
    int hidden = 0, intermediate = 0, num_heads = 0, num_kv_heads = 0, head_dim = 0;
    std::vector<float> input_norm, post_norm;   // [hidden]
    std::vector<float> q, k, v;                 // [heads*hd | kv*hd, hidden]
    std::vector<float> q_bias, k_bias, v_bias;  // may be empty
    std::vector<float> o;                       // [hidden, heads*hd]
    std::vector<float> gate, up;                // [intermediate, hidden]
    std::vector<float> down;                    // [hidden, intermediate]
    // The group size of each fusion group's linears, decided by the caller for its input width
    // (choose_group_size); quantize_layer uses these, not AwqOptions::group_size.
    struct GroupSizes {
        int qkv = 64, o = 64, gate_up = 64, down = 64;
    } group_size;
};

// Input statistics of the linears: q/k/v share one input, gate/up another. A null pointer means
// the group was never calibrated: it gets the seed's plain RTN (rtn_group) and its norm or
// producer is left unchanged (spec §1.1 asym_int4_grouped_no_awq).
struct LayerStats {
    const LinearStats* qkv = nullptr;
    const LinearStats* o = nullptr;
    const LinearStats* gate_up = nullptr;
    const LinearStats* down = nullptr;
};

// The pairs the seed left unscaled; on by default. Off: that linear gets the clipping search only.
struct LayerSwitches {
    bool fuse_o_v = true;
    bool fuse_down_up = true;
};

struct LayerResult {
    AwqResult qkv;      // consumers q, k, v; s folded into input_norm
    AwqResult gate_up;  // consumers gate, up; s folded into post_norm
    AwqResult o;        // consumer o; s (tied per kv head) folded into v rows and bias
    AwqResult down;     // consumer down; s folded into up rows
};

// Runs o and down first (their scales edit v and up), then q/k/v and gate/up on the edited
// weights. A per-row scaling of v or up does not change their quantization (min-max RTN is
// scale-equivariant per row up to bf16 rounding), only which values are stored.
LayerResult quantize_layer(LayerWeights& w, const LayerStats& stats, const AwqOptions& opt,
                           const LayerSwitches& sw = {});

}  // namespace lancet::quant
