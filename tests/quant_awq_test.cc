// Checks the AWQ search on synthetic layers with planted outlier channels: never worse than RTN
// on the search rows, clearly better on held-out rows, reported errors recomputed independently,
// identity and determinism properties, and bad-input errors.
#include <gtest/gtest.h>

#include <cmath>

#include "core/error.h"
#include "core/numeric.h"
#include "core/rng.h"
#include "core/thread_pool.h"
#include "quant/awq.h"
#include "quant/awq_layer.h"
#include "quant/awq_synth.h"
#include "quant/fusion.h"

namespace lancet::quant {
namespace {

AwqOptions exact_options() {
    AwqOptions o;
    o.report_sample_rows = 0;  // errors on every row
    o.alpha_sample_rows = 0;   // rank α on every row
    return o;
}

TEST(QuantAwq, LayerWithOutliersBeatsRtn) {
    Rng rng(42);
    LayerWeights w;
    w.hidden = 256;
    w.intermediate = 512;
    w.num_heads = 4;
    w.num_kv_heads = 2;
    w.head_dim = 64;
    const int qd = 256, kvd = 128;
    w.input_norm.assign(256, 1.0f);
    w.post_norm.assign(256, 1.0f);
    for (auto& v : w.input_norm) v = static_cast<float>(0.5 + rng.uniform());
    for (auto& v : w.post_norm) v = static_cast<float>(0.5 + rng.uniform());
    w.q = heavy_tailed_weights(rng, qd, 256);
    w.k = heavy_tailed_weights(rng, kvd, 256);
    w.v = heavy_tailed_weights(rng, kvd, 256);
    w.v_bias.resize(kvd);
    for (auto& v : w.v_bias) v = 0.1f * static_cast<float>(rng.normal());
    w.o = heavy_tailed_weights(rng, 256, qd);
    w.gate = heavy_tailed_weights(rng, 512, 256);
    w.up = heavy_tailed_weights(rng, 512, 256);
    w.down = heavy_tailed_weights(rng, 256, 512);
    const LinearStats s_qkv = outlier_activations(rng, 256, 1024, 256),
                      s_o = outlier_activations(rng, qd, 1024, 256),
                      s_gu = outlier_activations(rng, 256, 1024, 256),
                      s_d = outlier_activations(rng, 512, 1024, 256);
    const std::vector<float> v_before = w.v, norm_before = w.input_norm;
    const LayerResult r = quantize_layer(w, {&s_qkv, &s_o, &s_gu, &s_d}, exact_options());

    double rtn_sum = 0, awq_sum = 0;
    int n_linears = 0;
    for (const AwqResult* g : {&r.qkv, &r.gate_up, &r.o, &r.down}) {
        EXPECT_LE(g->awq.e2_search, g->rtn.e2_search) << g->consumers[0].name;
        EXPECT_EQ(g->n_search_rows, 192);
        EXPECT_EQ(g->n_heldout_rows, 64);
        for (const auto& c : g->consumers) {
            rtn_sum += c.rtn.heldout;
            awq_sum += c.awq.heldout;
            ++n_linears;
            std::printf(
                "  %-10s alpha %.2f  RTN %.4f / %.4f   AWQ %.4f / %.4f (search / held-out)\n",
                c.name.c_str(), g->alpha, c.rtn.search, c.rtn.heldout, c.awq.search, c.awq.heldout);
        }
    }
    ASSERT_EQ(n_linears, 7);
    EXPECT_LE(awq_sum / n_linears, 0.6 * rtn_sum / n_linears);
    // The searches really scaled: o's scales edited v (rows) and qkv's the input norm.
    EXPECT_GT(r.o.alpha, 0.0f);
    EXPECT_GT(r.qkv.alpha, 0.0f);
    EXPECT_NE(w.v, v_before);
    for (int i = 0; i < 256; ++i)
        ASSERT_FLOAT_EQ(w.input_norm[i], static_cast<float>(norm_before[i] / double(r.qkv.s[i])));
    // o's scale is tied per kv head: query heads 0,1 share kv head 0's 64 scales.
    for (int d = 0; d < 64; ++d) {
        EXPECT_EQ(r.o.s[d], r.o.s[64 + d]);
        EXPECT_EQ(r.o.s[128 + d], r.o.s[192 + d]);
    }
}

// Recomputes a consumer's held-out error in double from the stored matrix alone.
TEST(QuantAwq, ReportedErrorMatchesIndependentRecomputation) {
    Rng rng(7);
    const int out = 96, in = 192;
    const std::vector<float> w = heavy_tailed_weights(rng, out, in);
    const LinearStats st = outlier_activations(rng, in, 600, 128);
    const AwqResult r = awq_search({{"lin", w.data(), out}}, in, &st, exact_options());
    ASSERT_FALSE(r.rtn_fallback);
    const std::vector<float> deq = dequantize(r.consumers[0].q);
    double e2 = 0, y2 = 0;
    for (int64_t t = 3; t < st.n_rows(); t += 4) {  // the held-out rows
        const float* x = &st.rows[t * in];
        for (int o = 0; o < out; ++o) {
            double y = 0, yq = 0;
            for (int i = 0; i < in; ++i) {
                y += double(x[i]) * w[o * in + i];
                yq += double(x[i]) / r.s[i] * deq[o * in + i];
            }
            e2 += (y - yq) * (y - yq);
            y2 += y * y;
        }
    }
    // f32 products/sums in the search: relative agreement to ~1e-4 is ample.
    EXPECT_NEAR(r.consumers[0].awq.heldout, std::sqrt(e2 / y2), 1e-4 * std::sqrt(e2 / y2));
    EXPECT_LT(r.awq.heldout, r.rtn.heldout);
}

TEST(QuantAwq, NoSearchNoClipIsSeedRtn) {
    Rng rng(9);
    const int out = 40, in = 128;
    std::vector<float> w = heavy_tailed_weights(rng, out, in);
    for (auto& v : w) v = round_bf16(v);
    const LinearStats st = outlier_activations(rng, in, 300, 64);
    AwqOptions o = exact_options();
    o.search_scales = false;
    o.clip = false;
    o.codes_from_stored_scale = false;
    const AwqResult r = awq_search({{"lin", w.data(), out}}, in, &st, o);
    RtnOptions ro;
    ro.group_size = 64;
    const QuantizedMatrix q = quantize_rtn(w.data(), out, in, ro);
    EXPECT_EQ(r.consumers[0].q.qweight, q.qweight);
    EXPECT_EQ(r.consumers[0].q.scales, q.scales);
    EXPECT_EQ(r.consumers[0].q.zeros, q.zeros);
    for (float s : r.s) EXPECT_EQ(s, 1.0f);
    EXPECT_DOUBLE_EQ(r.awq.e2_search, r.rtn.e2_search);
}

TEST(QuantAwq, ClippingNeverHurtsOnSearchRows) {
    Rng rng(11);
    const int out = 64, in = 256;
    const std::vector<float> w = heavy_tailed_weights(rng, out, in);
    const LinearStats st = outlier_activations(rng, in, 500, 128);
    AwqOptions o = exact_options();
    o.search_scales = false;
    o.clip_exact = true;  // coordinate descent on the exact row error: monotone by construction
    const AwqResult with = awq_search({{"lin", w.data(), out}}, in, &st, o);
    o.clip = false;
    const AwqResult without = awq_search({{"lin", w.data(), out}}, in, &st, o);
    EXPECT_LE(with.awq.e2_search, without.awq.e2_search * (1 + 1e-5));
    int clipped = 0;
    for (float c : with.consumers[0].clip) clipped += c < 1.0f;
    EXPECT_GT(clipped, 0);
    // The default block-diagonal judgement also helps here, and both help on held-out rows.
    o.clip = true;
    o.clip_exact = false;
    const AwqResult approx = awq_search({{"lin", w.data(), out}}, in, &st, o);
    EXPECT_LT(approx.awq.e2_search, without.awq.e2_search);
    EXPECT_LT(approx.awq.e2_heldout, without.awq.e2_heldout);
    EXPECT_LT(with.awq.e2_heldout, without.awq.e2_heldout);
}

TEST(QuantAwq, DeterministicAcrossThreadCounts) {
    Rng rng(13);
    const int out = 70, in = 128;
    const std::vector<float> w1 = heavy_tailed_weights(rng, out, in),
                             w2 = heavy_tailed_weights(rng, 30, in);
    const LinearStats st = outlier_activations(rng, in, 400, 128);
    AwqOptions o;
    ThreadPool one(1), three(3);
    o.pool = &one;
    const AwqResult a = awq_search({{"a", w1.data(), out}, {"b", w2.data(), 30}}, in, &st, o);
    o.pool = &three;
    const AwqResult b = awq_search({{"a", w1.data(), out}, {"b", w2.data(), 30}}, in, &st, o);
    EXPECT_EQ(a.alpha, b.alpha);
    for (int c = 0; c < 2; ++c) {
        EXPECT_EQ(a.consumers[c].q.qweight, b.consumers[c].q.qweight);
        EXPECT_EQ(a.consumers[c].q.scales, b.consumers[c].q.scales);
        EXPECT_EQ(a.consumers[c].q.zeros, b.consumers[c].q.zeros);
    }
    EXPECT_EQ(a.awq.e2_heldout, b.awq.e2_heldout);
}

TEST(QuantAwq, WithoutRowsUsesSyntheticRowsAndWithoutStatsKeepsIdentity) {
    Rng rng(17);
    const int out = 32, in = 64;
    const std::vector<float> w = heavy_tailed_weights(rng, out, in);
    LinearStats st = outlier_activations(rng, in, 200, 64);
    st.rows.clear();  // only mean |x| recorded: the seed's Gaussian fallback
    const AwqResult r = awq_search({{"lin", w.data(), out}}, in, &st, AwqOptions{});
    EXPECT_TRUE(r.synthetic_rows);
    EXPECT_EQ(r.n_search_rows + r.n_heldout_rows, 512);
    EXPECT_LE(r.awq.e2_search, r.rtn.e2_search);
    const AwqResult none = awq_search({{"lin", w.data(), out}}, in, nullptr, AwqOptions{});
    for (float s : none.s) EXPECT_EQ(s, 1.0f);
}

TEST(QuantAwq, RejectsBadInput) {
    std::vector<float> w(32 * 64, 0.01f);
    LinearStats st;
    st.in = 48;
    st.mean_abs.assign(48, 1.0f);
    EXPECT_THROW(awq_search({{"lin", w.data(), 32}}, 64, &st, AwqOptions{}), Error);
    w[5] = NAN;
    EXPECT_THROW(awq_search({{"lin", w.data(), 32}}, 64, nullptr, AwqOptions{}), Error);
    EXPECT_THROW(awq_search({}, 64, nullptr, AwqOptions{}), Error);
    AwqOptions bad;
    bad.group_size = 48;
    w[5] = 0.5f;
    EXPECT_THROW(awq_search({{"lin", w.data(), 32}}, 64, nullptr, bad), Error);
}

}  // namespace
}  // namespace lancet::quant
