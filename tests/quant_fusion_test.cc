// Checks that folding AWQ scales leaves the network function unchanged (in float64): RMSNorm into
// q/k/v, v_proj into o_proj through a full GQA attention, and up_proj into down_proj via SwiGLU.
#include <gtest/gtest.h>

#include <cmath>
#include <random>
#include <vector>

#include "quant/fusion.h"

namespace lancet::quant {
namespace {

using Vec = std::vector<double>;

struct Gen {
    std::mt19937 rng;
    explicit Gen(uint32_t seed) : rng(seed) {}
    double nz(double sd = 1.0) {  // non-zero normal
        std::normal_distribution<double> nd(0.0, sd);
        double v = nd(rng);
        return v == 0 ? sd : v;
    }
    Vec vec(size_t n, double sd = 1.0) {
        Vec v(n);
        for (auto& x : v) x = nz(sd);
        return v;
    }
    // Scales spread over [0.1, 10] (float, as the search produces them).
    std::vector<float> scales(size_t n) {
        std::uniform_real_distribution<double> ud(std::log(0.1), std::log(10.0));
        std::vector<float> s(n);
        for (auto& x : s) x = static_cast<float>(std::exp(ud(rng)));
        return s;
    }
};

// y[t, o] = sum_i x[t, i] w[o, i] + b[o]
Vec linear(const Vec& x, int n, int in, const Vec& w, int out, const Vec* b = nullptr) {
    Vec y(static_cast<size_t>(n) * out);
    for (int t = 0; t < n; ++t)
        for (int o = 0; o < out; ++o) {
            double s = b ? (*b)[o] : 0.0;
            for (int i = 0; i < in; ++i) s += x[t * in + i] * w[o * in + i];
            y[t * out + o] = s;
        }
    return y;
}

Vec rms_norm(const Vec& x, int n, int d, const Vec& g) {
    Vec y(x.size());
    for (int t = 0; t < n; ++t) {
        double ss = 0;
        for (int i = 0; i < d; ++i) ss += x[t * d + i] * x[t * d + i];
        const double r = 1.0 / std::sqrt(ss / d + 1e-6);
        for (int i = 0; i < d; ++i) y[t * d + i] = x[t * d + i] * r * g[i];
    }
    return y;
}

double max_rel_diff(const Vec& a, const Vec& b) {
    double num = 0, den = 0;
    for (size_t i = 0; i < a.size(); ++i) {
        num = std::max(num, std::fabs(a[i] - b[i]));
        den = std::max(den, std::fabs(b[i]));
    }
    return num / den;
}

TEST(QuantFusion, NormIntoQkvKeepsFunction) {
    Gen g(1);
    const int n = 5, d = 48, out = 40;
    Vec x = g.vec(n * d), gam = g.vec(d), w = g.vec(out * d), b = g.vec(out);
    const auto s = g.scales(d);
    const Vec ref = linear(rms_norm(x, n, d, gam), n, d, w, out, &b);
    Vec gam2 = gam, w2 = w;
    fuse_scale_into_norm(gam2.data(), s.data(), d);
    scale_weight_columns(w2.data(), out, d, s.data());
    const Vec got = linear(rms_norm(x, n, d, gam2), n, d, w2, out, &b);
    // Two f64 roundings per term (g/s, w*s) and a d-term dot: ~d * 2^-52 relative.
    EXPECT_LT(max_rel_diff(got, ref), 1e-9);
    EXPECT_GT(max_rel_diff(gam2, gam), 0.1);  // the scales really changed the weights
}

// Full GQA attention block output: softmax(q kᵀ / sqrt(hd)) v per query head, then o_proj.
Vec attention(const Vec& x, int n, int hidden, int nh, int nkv, int hd, const Vec& wq,
              const Vec& bq, const Vec& wk, const Vec& bk, const Vec& wv, const Vec& bv,
              const Vec& wo) {
    const Vec q = linear(x, n, hidden, wq, nh * hd, &bq);
    const Vec k = linear(x, n, hidden, wk, nkv * hd, &bk);
    const Vec v = linear(x, n, hidden, wv, nkv * hd, &bv);
    Vec ctx(static_cast<size_t>(n) * nh * hd, 0.0);
    for (int h = 0; h < nh; ++h) {
        const int kvh = h / (nh / nkv);
        for (int t = 0; t < n; ++t) {
            Vec p(t + 1);
            double mx = -1e300;
            for (int u = 0; u <= t; ++u) {  // causal
                double sc = 0;
                for (int e = 0; e < hd; ++e)
                    sc += q[t * nh * hd + h * hd + e] * k[u * nkv * hd + kvh * hd + e];
                p[u] = sc / std::sqrt(static_cast<double>(hd));
                mx = std::max(mx, p[u]);
            }
            double z = 0;
            for (auto& v2 : p) z += (v2 = std::exp(v2 - mx));
            for (int u = 0; u <= t; ++u)
                for (int e = 0; e < hd; ++e)
                    ctx[t * nh * hd + h * hd + e] += p[u] / z * v[u * nkv * hd + kvh * hd + e];
        }
    }
    return linear(ctx, n, nh * hd, wo, hidden);
}

TEST(QuantFusion, VIntoOThroughGqaAttentionKeepsFunction) {
    Gen g(2);
    const int n = 6, hidden = 32, nh = 4, nkv = 2, hd = 8;
    Vec x = g.vec(n * hidden), wq = g.vec(nh * hd * hidden, 0.3), bq = g.vec(nh * hd),
        wk = g.vec(nkv * hd * hidden, 0.3), bk = g.vec(nkv * hd), wv = g.vec(nkv * hd * hidden),
        bv = g.vec(nkv * hd), wo = g.vec(hidden * nh * hd);
    const auto s_kv = g.scales(nkv * hd);
    const Vec ref = attention(x, n, hidden, nh, nkv, hd, wq, bq, wk, bk, wv, bv, wo);
    const std::vector<int> tie = gqa_tie_map(nh, nkv, hd);
    std::vector<float> s(nh * hd);
    for (int i = 0; i < nh * hd; ++i) s[i] = s_kv[tie[i]];
    Vec wv2 = wv, bv2 = bv, wo2 = wo;
    scale_weight_rows_inverse(wv2.data(), bv2.data(), nkv * hd, hidden, s_kv.data());
    scale_weight_columns(wo2.data(), hidden, nh * hd, s.data());
    const Vec got = attention(x, n, hidden, nh, nkv, hd, wq, bq, wk, bk, wv2, bv2, wo2);
    EXPECT_LT(max_rel_diff(got, ref), 1e-9);
    EXPECT_GT(max_rel_diff(bv2, bv), 0.1);
    // Query heads 0,1 read kv head 0 and heads 2,3 kv head 1.
    EXPECT_EQ(tie[1 * hd + 3], 3);
    EXPECT_EQ(tie[2 * hd + 3], hd + 3);
}

TEST(QuantFusion, UpIntoDownThroughSwigluKeepsFunction) {
    Gen g(3);
    const int n = 5, hidden = 24, inter = 40;
    Vec x = g.vec(n * hidden), wg = g.vec(inter * hidden, 0.3), wu = g.vec(inter * hidden),
        wd = g.vec(hidden * inter);
    const auto s = g.scales(inter);
    auto mlp = [&](const Vec& up_w, const Vec& down_w) {
        const Vec a = linear(x, n, hidden, wg, inter), u = linear(x, n, hidden, up_w, inter);
        Vec hmid(a.size());
        for (size_t i = 0; i < a.size(); ++i) hmid[i] = a[i] / (1 + std::exp(-a[i])) * u[i];
        return linear(hmid, n, inter, down_w, hidden);
    };
    const Vec ref = mlp(wu, wd);
    Vec wu2 = wu, wd2 = wd;
    scale_weight_rows_inverse<double>(wu2.data(), nullptr, inter, hidden, s.data());
    scale_weight_columns(wd2.data(), hidden, inter, s.data());
    EXPECT_LT(max_rel_diff(mlp(wu2, wd2), ref), 1e-9);
}

}  // namespace
}  // namespace lancet::quant
