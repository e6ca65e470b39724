// Synthetic activation statistics: per decoder layer path, rows shaped like each linear's input,
// accumulated and written like recorded ones.
#include "pipeline/stats_synth.h"

#include <algorithm>
#include <cmath>
#include <vector>

#include "core/error.h"
#include "core/log.h"
#include "core/rng.h"
#include "core/thread_pool.h"
#include "io/output_dir.h"
#include "kernels/gemm.h"
#include "model/lance_checkpoint.h"
#include "model/lance_tensors.h"
#include "quant/act_stats.h"
#include "quant/stats_file.h"

namespace lancet {

using quant::LinearStats;
using quant::StatsAccumulator;

namespace {

std::vector<float> load_f32(const LanceCheckpoint& ck, const std::string& name) {
    const TensorView v = ck.tensor(name);
    std::vector<float> r = to_f32(v);
    ck.release(v);
    return r;
}

// x[t, i] = z * g[i] for n rows.
std::vector<float> normed_rows(Rng& rng, int64_t n, const std::vector<float>& g) {
    const size_t in = g.size();
    std::vector<float> x(static_cast<size_t>(n) * in);
    for (int64_t t = 0; t < n; ++t)
        for (size_t i = 0; i < in; ++i) x[t * in + i] = static_cast<float>(rng.normal()) * g[i];
    return x;
}

// Y = X Wᵀ (+ b), [n, out], rows split over the default pool.
std::vector<float> project(const std::vector<float>& x, int64_t n, int in,
                           const std::vector<float>& w, int out, const std::vector<float>* bias) {
    std::vector<float> y(static_cast<size_t>(n) * out);
    parallel_chunks(default_pool(), n, 16, [&](int64_t t0, int64_t t1) {
        kernels::gemm_nt(t1 - t0, out, in, &x[t0 * in], in, w.data(), in, &y[t0 * out], out, false);
        if (bias)
            for (int64_t t = t0; t < t1; ++t)
                for (int o = 0; o < out; ++o) y[t * out + o] += (*bias)[o];
    });
    return y;
}

LinearStats accumulate(const std::vector<float>& x, int64_t n, int in, int capacity,
                       uint64_t seed) {
    StatsAccumulator acc(in, capacity, seed);
    acc.add_rows(x.data(), n, in);
    return acc.stats();
}

}  // namespace

void synth_stats(const SynthStatsOptions& opt) {
    if (opt.tokens <= 0) fail("stats synth: --tokens must be positive");
    if (opt.rows < 0) fail("stats synth: --rows must be >= 0");
    if (opt.out.empty()) fail("stats synth: no output file given (-o FILE)");
    auto ck = LanceCheckpoint::open(opt.model);
    check_not_source(opt.out);
    if (ck->kind() != CheckpointKind::Original)
        fail(opt.model, ": already quantized; synthetic statistics need the original weights");
    const LanceConfig& c = ck->config();
    const int h = c.hidden_size, I = c.intermediate_size, qd = c.q_dim(), hd = c.head_dim();
    const int n_heads = c.num_attention_heads, per_kv = n_heads / c.num_key_value_heads;
    const int64_t n = opt.tokens;
    const int64_t n_rows = std::min<int64_t>(opt.rows, n);

    quant::StatsFileWriter w(opt.out, {"synthetic"}, opt.rows);
    for (int i = 0; i < c.num_hidden_layers; ++i)
        for (int gen = 0; gen < (opt.und_only ? 1 : 2); ++gen) {
            const PathNames names = path_names(i, gen == 1);
            for (PathLinear l : kAllPathLinears)
                w.declare(names[l], static_cast<int>(linear_input_width(c, linear_input(l))),
                          n_rows);
        }
    for (int i = 0; i < c.num_hidden_layers; ++i) {
        for (int gen = 0; gen < (opt.und_only ? 1 : 2); ++gen) {
            const PathNames nm = path_names(i, gen == 1);
            const auto& names = nm.linear;  // q k v o gate up down
            Rng rng(name_hash(opt.seed, names[0]));
            // q/k/v input, and v for the o_proj input.
            const std::vector<float> g_in = load_f32(*ck, nm.input_norm);
            const std::vector<float> x = normed_rows(rng, n, g_in);
            const LinearStats qkv = accumulate(x, n, h, opt.rows, name_hash(opt.seed, names[1]));
            for (int k = 0; k < 3; ++k) w.write(names[k], qkv);
            const std::vector<float> wv = load_f32(*ck, nm.weight(PathLinear::V));
            const std::vector<float> bv = load_f32(*ck, nm.bias(PathLinear::V));
            const int kvd = c.kv_dim();
            const std::vector<float> v = project(x, n, h, wv, kvd, &bv);
            // Attention-like mixing: each query head of token t averages its kv head's values over
            // itself and three earlier (random) tokens.
            std::vector<float> o(static_cast<size_t>(n) * qd);
            constexpr int kMix = 4;
            for (int64_t t = 0; t < n; ++t)
                for (int hq = 0; hq < n_heads; ++hq) {
                    const int kvh = hq / per_kv;
                    float* dst = &o[t * qd + hq * hd];
                    for (int m = 0; m < kMix; ++m) {
                        const int64_t j = m == 0 ? t : static_cast<int64_t>(rng.below(t + 1));
                        const float* src = &v[j * kvd + kvh * hd];
                        for (int d = 0; d < hd; ++d) dst[d] += src[d] / kMix;
                    }
                }
            w.write(names[3], accumulate(o, n, qd, opt.rows, name_hash(opt.seed, names[3])));
            // gate/up input and the down_proj input silu(gate) * up.
            const std::vector<float> g_post = load_f32(*ck, nm.post_norm);
            const std::vector<float> x2 = normed_rows(rng, n, g_post);
            const LinearStats gu = accumulate(x2, n, h, opt.rows, name_hash(opt.seed, names[4]));
            w.write(names[4], gu);
            w.write(names[5], gu);
            std::vector<float> gate =
                project(x2, n, h, load_f32(*ck, nm.weight(PathLinear::Gate)), I, nullptr);
            const std::vector<float> up =
                project(x2, n, h, load_f32(*ck, nm.weight(PathLinear::Up)), I, nullptr);
            for (size_t k = 0; k < gate.size(); ++k) {
                const float a = gate[k];
                gate[k] = a / (1.0f + std::exp(-a)) * up[k];
            }
            w.write(names[6], accumulate(gate, n, I, opt.rows, name_hash(opt.seed, names[6])));
        }
        log_debug("stats synth: layer ", i + 1, " of ", c.num_hidden_layers);
    }
    w.finish();
}

}  // namespace lancet
