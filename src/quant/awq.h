// The AWQ search for one fusion group (spec §3.2, improved per §7.3): per-input-channel scales
// s = a^α chosen by the group's output error on recorded activation rows, then a per-(row, group)
// clipping search, producing the quantized consumers and an error report.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "quant/act_stats.h"
#include "quant/q4.h"

namespace lancet {
class ThreadPool;
}

namespace lancet::quant {

// One linear reading the group's shared input: f32 master weight [out, in], row-major.
struct AwqConsumer {
    std::string name;
    const float* w = nullptr;
    int out = 0;
};

struct AwqOptions {
    int group_size = 64;        // the group size used (must divide in; see choose_group_size)
    bool search_scales = true;  // false: s = 1 (clipping only)
    bool clip = true;           // per-(row, group) range-shrink search
    // true: coordinate descent over the groups of each row on that row's exact output error
    // (cross-group terms included; never increases any row's search error; ~3.5k flop/weight).
    // false: each group judged by its own contribution dᵀH_g d + 2dᵀH_gΔ_g, as AutoAWQ's
    // auto-clip does (~0.8k flop/weight); the group-level RTN fallback still guarantees the
    // result is no worse than RTN on the search (report) rows.
    bool clip_exact = false;
    int alpha_steps = 20;  // α over {0, 1/steps, ..., 1}
    // Evaluate every other α first, then the two neighbours of the best: steps/2 + 3 evaluations.
    bool alpha_coarse_to_fine = true;
    // Clip ratios tried per group; 1.0 (no clipping) is always a candidate.
    std::vector<float> clip_ratios = {1.0f, 0.95f, 0.9f, 0.85f, 0.8f, 0.75f,
                                      0.7f, 0.65f, 0.6f, 0.55f, 0.5f};
    // Output rows (over all consumers, proportional to their sizes, evenly spaced) on which α is
    // ranked; 0 = all. The loss is linear in rows, so a sample ranks α nearly as well.
    int alpha_sample_rows = 256;
    // Output rows per consumer (evenly spaced) on which the RTN and AWQ errors are measured for
    // the report and the RTN-fallback check; 0 = all rows (exact, ~2x the cost of the search on
    // large layers).
    int report_sample_rows = 256;
    // Recorded row i is held out (never used for any choice) when i % heldout_every ==
    // heldout_every - 1; 4 gives the 3/4 : 1/4 split. 0 = no held-out rows.
    int heldout_every = 4;
    // Without recorded rows: this many Gaussian rows scaled per channel by mean|x| (as the seed).
    int synthetic_rows = 512;
    uint64_t synthetic_seed = 0xC0DE;
    // Choose codes against the stored bf16 scale (spec §7.5); the RTN baseline stays seed-exact.
    bool codes_from_stored_scale = true;
    // Error feedback after the scale and clip search (quant/gptq.h), with H = XsᵀXs from the
    // search rows (X scaled by the chosen s, as the folded weights see it):
    //   None: the AWQ result as before; Gptq: GPTQ of W itself (s = 1, the scales are measured
    //   but not applied); AwqGptq: GPTQ of W·diag(s) with the AWQ scales.
    enum class Feedback { None, Gptq, AwqGptq } feedback = Feedback::None;
    double gptq_damp = 0.01;
    bool gptq_act_order = false;  // GptqOptions::act_order
    // GPTQ's H from the statistics' full XᵀX (LinearStats::hessian, over every calibration input)
    // when they carry one, less the held-out rows' share; otherwise (or false) from the search
    // rows of the sample.
    bool gptq_full_hessian = true;
    // With feedback on: also run the other GPTQ variant, so every result carries the RTN, AWQ,
    // GPTQ and AWQ+GPTQ errors (the report's comparison; one more GPTQ per consumer).
    bool compare = true;
    // Pool for the row-parallel work; nullptr = default_pool(). Results are bit-identical for any
    // pool size.
    ThreadPool* pool = nullptr;
};

// Relative output error ||ΔY|| / ||Y|| over the search rows and over the held-out rows (NaN when
// there are none), with the underlying squared sums so callers can aggregate. Sums run over the
// report rows of each consumer (AwqOptions::report_sample_rows).
struct RelErr {
    double search = 0, heldout = 0;
    double e2_search = 0, e2_heldout = 0;  // sum of squared output errors
};

struct AwqConsumerResult {
    std::string name;
    QuantizedMatrix q;        // quantized W * diag(s) (or the RTN result on fallback)
    std::vector<float> clip;  // [out, n_groups] chosen ratio per (row, group)
    RelErr rtn, awq;          // seed RTN of W vs the result, both against the f32 W
    // With feedback: GPTQ with s = 1 and with the AWQ scales (NaN when not run); `awq` then
    // stays the scale+clip stage's error and `result` is the error of q.
    RelErr gptq, awq_gptq, result;
    double y2_search = 0, y2_heldout = 0;  // ||Y||^2 on each row set
};

struct AwqResult {
    float alpha = 0;            // chosen exponent (0 also on fallback)
    int group_size = 0;         // the group size actually used
    std::vector<float> s;       // [in] per-input-channel scale, expanded through the tie map
    std::vector<float> s_free;  // [n_free] the free scales (== s without a tie map)
    std::vector<AwqConsumerResult> consumers;
    RelErr rtn, awq;                // over all consumers: sum of e2 over sum of y2
    RelErr gptq, awq_gptq, result;  // as in AwqConsumerResult
    // What q holds: "rtn", "awq", "gptq" or "awq-gptq".
    std::string chosen = "awq";
    bool rtn_fallback = false;    // the search was worse than RTN on the search rows; RTN kept
    bool synthetic_rows = false;  // no recorded rows: Gaussian rows were used
    bool full_hessian = false;    // GPTQ's H was the statistics' full XᵀX
    int n_search_rows = 0, n_heldout_rows = 0;
    std::vector<std::pair<float, double>> alpha_losses;  // (α, sampled search loss) evaluated
    double seconds = 0;
    double seconds_gptq = 0;  // of which the error feedback (H, factorisation, sweeps, report)
};

// Runs the search. All consumers read the same input of width `in`; `stats` gives mean|x| per
// channel and the recorded rows (may be null: then s = 1 and unit Gaussian rows). `tie`, if
// given, maps each of the `in` channels to one of n_free shared scales (see gqa_tie_map); the
// statistic of a free scale is the mean of its channels' mean|x|. Scales are normalised to
// geometric mean 1 over the free entries: s_t = exp(α (log a_t - mean log a)), so α = 0 is the
// identity. Throws lancet::Error on inconsistent shapes or non-finite weights.
AwqResult awq_search(const std::vector<AwqConsumer>& consumers, int in, const LinearStats* stats,
                     const AwqOptions& opt, const std::vector<int>* tie = nullptr);

// A group with no statistics (spec §1.1, scheme asym_int4_grouped_no_awq): the seed's plain RTN of
// every consumer, s = 1, no clipping, nothing searched. The errors are NaN (there are no rows to
// measure them on).
AwqResult rtn_group(const std::vector<AwqConsumer>& consumers, int in, const AwqOptions& opt);

}  // namespace lancet::quant
