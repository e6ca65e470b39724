// Checks GPTQ against an independent float64 reference (the OBS form: the full inverse Hessian,
// downdated after each column, no Cholesky, no batching), its inverse factor, that it beats RTN on
// held-out correlated activations, and that its output is a valid published-format matrix.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdio>

#include "core/error.h"
#include "core/numeric.h"
#include "core/rng.h"
#include "quant/gptq.h"
#include "quant/q4.h"

namespace lancet::quant {
namespace {

// Rows of correlated activations: x = z A + per-channel offsets, A a random mixing matrix with a
// decaying spectrum, so XᵀX is far from diagonal (where error feedback has something to use).
std::vector<float> correlated_rows(Rng& rng, int n, int in, const std::vector<float>& mix) {
    std::vector<float> x(static_cast<size_t>(n) * in);
    std::vector<double> z(in);
    for (int t = 0; t < n; ++t) {
        for (auto& v : z) v = rng.normal();
        for (int i = 0; i < in; ++i) {
            double s = 0;
            for (int k = 0; k < in; ++k) s += z[k] * mix[static_cast<size_t>(k) * in + i];
            x[static_cast<size_t>(t) * in + i] = static_cast<float>(s);
        }
    }
    return x;
}

std::vector<float> mixing(Rng& rng, int in) {
    std::vector<float> m(static_cast<size_t>(in) * in);
    for (int k = 0; k < in; ++k)
        for (int i = 0; i < in; ++i)
            m[static_cast<size_t>(k) * in + i] =
                static_cast<float>(rng.normal() / (1.0 + 0.2 * k)) + (k == i ? 0.3f : 0.0f);
    return m;
}

std::vector<float> gaussian(Rng& rng, size_t n, float sd) {
    std::vector<float> w(n);
    for (auto& v : w) v = sd * static_cast<float>(rng.normal());
    return w;
}

// Float64 GPTQ in the OBS form: Hinv = (H + λI)⁻¹ by Gauss-Jordan; per column i, the group grid
// (when i starts a group) from the current weights, round, then w_j -= (w_i - q_i) Hinv_ij /
// Hinv_ii for j > i and Hinv <- Hinv - Hinv[:, i] Hinv[i, :] / Hinv_ii.
struct RefResult {
    std::vector<uint8_t> codes, zeros;
    std::vector<uint16_t> scales;
};
// With act_order the columns go by descending diag(H) (ties in original order) and every grid is
// fixed beforehand from the original weights.
RefResult reference_gptq(const std::vector<float>& w, int out, int in, const std::vector<float>& h,
                         int gs, double damp, bool act_order = false) {
    const size_t n = in;
    std::vector<size_t> perm(n);
    for (size_t i = 0; i < n; ++i) perm[i] = i;
    if (act_order)  // insertion sort: stable, plain
        for (size_t i = 1; i < n; ++i)
            for (size_t j = i; j > 0 && std::max(h[perm[j] * n + perm[j]], 0.0f) >
                                            std::max(h[perm[j - 1] * n + perm[j - 1]], 0.0f);
                 --j)
                std::swap(perm[j], perm[j - 1]);
    std::vector<double> a(n * n), inv(n * n, 0.0);
    double mean = 0;
    for (size_t i = 0; i < n; ++i)
        for (size_t j = 0; j < n; ++j) a[i * n + j] = h[perm[i] * n + perm[j]];
    for (size_t i = 0; i < n; ++i) {
        if (a[i * n + i] <= 0) a[i * n + i] = 1;
        mean += a[i * n + i];
    }
    mean /= in;
    for (size_t i = 0; i < n; ++i) {
        a[i * n + i] += damp * mean;
        inv[i * n + i] = 1;
    }
    for (size_t c = 0; c < n; ++c) {  // Gauss-Jordan with partial pivoting
        size_t p = c;
        for (size_t r = c + 1; r < n; ++r)
            if (std::fabs(a[r * n + c]) > std::fabs(a[p * n + c])) p = r;
        for (size_t k = 0; k < n; ++k) {
            std::swap(a[c * n + k], a[p * n + k]);
            std::swap(inv[c * n + k], inv[p * n + k]);
        }
        const double d = a[c * n + c];
        for (size_t k = 0; k < n; ++k) {
            a[c * n + k] /= d;
            inv[c * n + k] /= d;
        }
        for (size_t r = 0; r < n; ++r) {
            if (r == c) continue;
            const double f = a[r * n + c];
            if (f == 0) continue;
            for (size_t k = 0; k < n; ++k) {
                a[r * n + k] -= f * a[c * n + k];
                inv[r * n + k] -= f * inv[c * n + k];
            }
        }
    }
    RefResult res;
    const int ng = in / gs;
    res.codes.resize(static_cast<size_t>(out) * in);
    res.scales.resize(static_cast<size_t>(out) * ng);
    res.zeros.resize(static_cast<size_t>(out) * ng);
    std::vector<double> wd(w.size());  // columns in quantization order
    for (int o = 0; o < out; ++o)
        for (size_t i = 0; i < n; ++i) wd[o * n + i] = w[o * n + perm[i]];
    std::vector<double> scale(static_cast<size_t>(out) * ng), zero(scale.size());
    // The published grid: (max - min) / 15 floored at 1e-8, stored bf16, zero =
    // clamp(round(-min / stored), 0, 15), on the f32 values v[0..gs) of the group.
    auto grid = [&](int o, int g, auto v) {
        float mn = static_cast<float>(v(0)), mx = mn;
        for (int k = 0; k < gs; ++k) {
            mn = std::min(mn, static_cast<float>(v(k)));
            mx = std::max(mx, static_cast<float>(v(k)));
        }
        const uint16_t s16 = f32_to_bf16(std::max((mx - mn) / 15.0f, 1e-8f));
        const size_t at = static_cast<size_t>(o) * ng + g;
        scale[at] = bf16_to_f32(s16);
        zero[at] = std::clamp(std::nearbyint(-mn / scale[at]), 0.0, 15.0);
        res.scales[at] = s16;
        res.zeros[at] = static_cast<uint8_t>(zero[at]);
    };
    if (act_order)
        for (int o = 0; o < out; ++o)
            for (int g = 0; g < ng; ++g)
                grid(o, g, [&](int k) { return static_cast<double>(w[o * n + g * gs + k]); });
    for (size_t i = 0; i < n; ++i) {
        const size_t col = perm[i];
        const int g = static_cast<int>(col) / gs;
        for (int o = 0; o < out; ++o) {
            double* row = &wd[static_cast<size_t>(o) * in];
            if (!act_order && i % gs == 0) grid(o, g, [&](int k) { return row[i + k]; });
            const double sc = scale[static_cast<size_t>(o) * ng + g];
            const double z = zero[static_cast<size_t>(o) * ng + g];
            const double c = std::clamp(std::nearbyint(row[i] / sc + z), 0.0, 15.0);
            res.codes[static_cast<size_t>(o) * in + col] = static_cast<uint8_t>(c);
            const double e = (row[i] - (c - z) * sc) / inv[i * n + i];
            for (size_t j = i + 1; j < n; ++j) row[j] -= e * inv[i * n + j];
        }
        const double d = inv[i * n + i];
        for (size_t r = i + 1; r < n; ++r)
            for (size_t k = i + 1; k < n; ++k)
                inv[r * n + k] -= inv[r * n + i] * inv[i * n + k] / d;
    }
    return res;
}

// ||X (W - deq(Q))ᵀ|| / ||X Wᵀ|| in double.
double output_error(const std::vector<float>& x, int n, const std::vector<float>& w,
                    const QuantizedMatrix& q) {
    const std::vector<float> d = dequantize(q);
    double e2 = 0, y2 = 0;
    for (int t = 0; t < n; ++t)
        for (int o = 0; o < q.out; ++o) {
            double y = 0, e = 0;
            for (int i = 0; i < q.in; ++i) {
                const double xv = x[static_cast<size_t>(t) * q.in + i];
                y += xv * w[static_cast<size_t>(o) * q.in + i];
                e += xv *
                     (w[static_cast<size_t>(o) * q.in + i] - d[static_cast<size_t>(o) * q.in + i]);
            }
            e2 += e * e;
            y2 += y * y;
        }
    return std::sqrt(e2 / y2);
}

// H + λI = R Rᵀ, R upper, in float64 and unblocked: for j from the last index down,
// R_jj = sqrt(A_jj - Σ_{l>j} R_jl²), R_ij = (A_ij - Σ_{l>j} R_il R_jl) / R_jj for i < j.
std::vector<double> reference_factor(const std::vector<float>& h, int in, double lambda) {
    const size_t n = in;
    std::vector<double> r(n * n, 0.0);
    for (size_t jj = n; jj-- > 0;) {
        double d = h[jj * n + jj] + lambda;
        for (size_t l = jj + 1; l < n; ++l) d -= r[jj * n + l] * r[jj * n + l];
        r[jj * n + jj] = std::sqrt(d);
        for (size_t i = 0; i < jj; ++i) {
            double s = h[i * n + jj];
            for (size_t l = jj + 1; l < n; ++l) s -= r[i * n + l] * r[jj * n + l];
            r[i * n + jj] = s / r[jj * n + jj];
        }
    }
    return r;
}

TEST(Gptq, GramMatchesDoubleSums) {
    Rng rng(3);
    const int in = 96, n = 200;
    const std::vector<float> x = correlated_rows(rng, n, in, mixing(rng, in));
    const std::vector<float> h = gram_matrix(x.data(), n, in);
    double worst_h = 0;
    for (int i = 0; i < in; ++i)
        for (int j = 0; j < in; ++j) {
            double s = 0, mag = 0;
            for (int t = 0; t < n; ++t) {
                s += static_cast<double>(x[t * in + i]) * x[t * in + j];
                mag += std::fabs(static_cast<double>(x[t * in + i]) * x[t * in + j]);
            }
            worst_h = std::max(worst_h, std::fabs(s - h[i * in + j]) / (mag * n * 6e-8));
            EXPECT_EQ(h[i * in + j], h[j * in + i]);
        }
    EXPECT_LE(worst_h, 1.0) << "gram worst error in units of n*eps*sum|xx|";
}

TEST(Gptq, BlockedFactorMatchesFloat64Reference) {
    // Widths below, at and across the 128-wide panels (non-multiples included); fewer rows than
    // inputs for some, so the dampening carries the factorisation there.
    for (const auto& [in, n] : std::vector<std::pair<int, int>>{
             {5, 40}, {96, 200}, {128, 300}, {200, 150}, {300, 600}, {517, 400}}) {
        Rng rng(100 + in);
        const std::vector<float> x = correlated_rows(rng, n, in, mixing(rng, in));
        std::vector<float> h = gram_matrix(x.data(), n, in);
        const std::vector<float> h0 = h;
        const double damp = 0.01;
        const double lambda = gptq_factor(h.data(), in, damp);
        double mean = 0;
        for (int i = 0; i < in; ++i) mean += h0[i * in + i];
        mean /= in;
        EXPECT_DOUBLE_EQ(lambda, damp * mean);
        const std::vector<double> ref = reference_factor(h0, in, lambda);
        // Backward error of a Cholesky factorisation in f32 (with the f32 trailing updates):
        // |R Rᵀ - (H + λI)| <= γ (|R| |R|ᵀ) elementwise, γ ≈ (n + 2) u; and the forward error
        // against the float64 factor, relative to the column's diagonal entry.
        double worst_back = 0, worst_fwd = 0;
        for (int i = 0; i < in; ++i)
            for (int j = 0; j < in; ++j) {
                if (i > j) {
                    ASSERT_EQ(h[i * in + j], 0.0f) << "lower part at " << i << "," << j;
                }
                double s = 0, mag = 0;
                for (int l = std::max(i, j); l < in; ++l) {
                    s += static_cast<double>(h[i * in + l]) * h[j * in + l];
                    mag += std::fabs(static_cast<double>(h[i * in + l]) * h[j * in + l]);
                }
                const double a = h0[i * in + j] + (i == j ? lambda : 0.0);
                worst_back = std::max(worst_back,
                                      std::fabs(s - a) / ((in + 2) * std::ldexp(1.0, -24) * mag));
                if (i <= j)
                    worst_fwd = std::max(
                        worst_fwd, std::fabs(h[i * in + j] - ref[i * in + j]) / ref[j * in + j]);
            }
        std::printf("factor in=%d rows=%d: backward %.3f of the bound, forward %.2e\n", in, n,
                    worst_back, worst_fwd);
        EXPECT_LE(worst_back, 1.0) << "in " << in;
        EXPECT_LE(worst_fwd, 1e-3) << "in " << in;
    }
    // A non-finite H: an error, not a crash.
    std::vector<float> bad = {1, NAN, NAN, 1};
    EXPECT_THROW(gptq_factor(bad.data(), 2, 0.0), Error);
}

// from_rows: H through gptq_prepare_rows (the low-rank form when 2n < in).
void expect_matches_reference(int in, int out, int n, int gs, int block, uint64_t seed,
                              bool from_rows = false) {
    Rng rng(seed);
    const std::vector<float> x = correlated_rows(rng, n, in, mixing(rng, in));
    const std::vector<float> w = gaussian(rng, static_cast<size_t>(out) * in, 0.02f);
    const std::vector<float> h = gram_matrix(x.data(), n, in);
    GptqOptions go;
    go.group_size = gs;
    go.block = block;
    const QuantizedMatrix q =
        from_rows ? gptq_quantize(w.data(), out, in, gptq_prepare_rows(x.data(), n, in, go), go)
                  : gptq_quantize(w.data(), out, in, h.data(), go);
    const RefResult ref = reference_gptq(w, out, in, h, gs, go.damp);
    int64_t code_diff = 0, grid_diff = 0;
    std::vector<int> first_diff(out, -1);
    for (int o = 0; o < out; ++o)
        for (int i = 0; i < in; ++i) {
            const bool differs = q.code(o, i) != ref.codes[o * in + i];
            code_diff += differs;
            if (differs && first_diff[o] < 0) first_diff[o] = i;
        }
    for (size_t k = 0; k < ref.scales.size(); ++k)
        grid_diff += q.scales[k] != ref.scales[k] || q.zeros[k] != ref.zeros[k];
    int rows_diff = 0;
    for (int o = 0; o < out; ++o)
        if (first_diff[o] >= 0) {
            ++rows_diff;
            std::printf("  row %d differs from column %d on\n", o, first_diff[o]);
        }
    std::printf(
        "GPTQ%s in=%d block=%d vs f64 reference: %lld of %d codes (%d rows), %lld of %zu grids "
        "differ\n",
        from_rows ? " (rows)" : "", in, block, static_cast<long long>(code_diff), out * in,
        rows_diff, static_cast<long long>(grid_diff), ref.scales.size());
    // The reference's own codes as a matrix: its output error on held-out rows is not beaten.
    QuantizedMatrix qr = q;
    qr.scales = ref.scales;
    qr.zeros = ref.zeros;
    for (int o = 0; o < out; ++o) pack_int4(&ref.codes[o * in], in, &qr.qweight[o * (in / 2)]);
    const std::vector<float> xh = correlated_rows(rng, n, in, mixing(rng, in));
    const double eq = output_error(xh, n, w, q), er = output_error(xh, n, w, qr);
    std::printf("  held-out output error: %.6f (reference %.6f)\n", eq, er);
    EXPECT_LE(eq, er * 1.02);
    // f32 vs f64 arithmetic can flip a code that sits on a rounding tie; the flip then changes
    // that row's later columns (a different error to feed back), so a row either matches or
    // differs from one column on: allow a tie in one row out of ten.
    EXPECT_LE(rows_diff, std::max(1, out / 10))
        << code_diff << " of " << out * in << " codes differ";
}

TEST(Gptq, MatchesFloat64Reference) {
    expect_matches_reference(128, 24, 384, 32, 64, 11);   // two batches: the lazy update
    expect_matches_reference(192, 20, 300, 64, 128, 13);  // a last batch of half a block
    expect_matches_reference(320, 17, 500, 32, 96, 14);   // 3 1/3 batches (one tie, row 0)
    expect_matches_reference(320, 17, 500, 32, 64, 16);   // odd row count
    expect_matches_reference(96, 9, 60, 32, 128, 15);     // fewer rows than inputs, one batch
}

// H kept as its rows (2n < in): the semiseparable factor R_kj = x_kᵀ g̃_j R_jj against the dense
// blocked one, and the sweep against the float64 reference.
TEST(Gptq, RowsFactorMatchesDense) {
    for (const auto& [in, n] : std::vector<std::pair<int, int>>{{256, 60}, {517, 200}}) {
        Rng rng(300 + in);
        std::vector<float> x = correlated_rows(rng, n, in, mixing(rng, in));
        for (int t = 0; t < n; ++t) x[t * in + 7] = 0.0f;  // a dead channel
        GptqOptions go;
        const GptqHessian lr = gptq_prepare_rows(x.data(), n, in, go);
        ASSERT_EQ(lr.rank, n);
        const GptqHessian dn = gptq_prepare(gram_matrix(x.data(), n, in), in, go);
        ASSERT_EQ(dn.rank, 0);
        EXPECT_NEAR(lr.lambda, dn.lambda, 1e-5 * dn.lambda);
        double worst = 0;
        for (int k = 0; k < in; ++k)
            for (int j = k + 1; j < in; ++j) {
                double v = 0;
                for (int t = 0; t < n; ++t)
                    v += static_cast<double>(lr.xt[k * n + t]) *
                         lr.g[static_cast<size_t>(t) * in + j];
                worst = std::max(worst, std::fabs(v - dn.r[static_cast<size_t>(k) * in + j]));
            }
        std::printf("rows factor in=%d rank=%d: worst |R̃ - R̃_dense| %.2e\n", in, n, worst);
        EXPECT_LE(worst, 2e-3);
    }
}

TEST(Gptq, RowsMatchFloat64Reference) {
    expect_matches_reference(320, 17, 100, 32, 96, 31, true);
    expect_matches_reference(256, 24, 64, 64, 128, 32, true);
    expect_matches_reference(517 / 32 * 32, 9, 200, 32, 128, 33, true);
}

// row_scale quantizes against D (H + λI) D from H's own factor: the reference on that matrix.
TEST(Gptq, RowScaleMatchesRescaledReference) {
    Rng rng(21);
    const int in = 192, out = 16, n = 400, gs = 64;
    const std::vector<float> x = correlated_rows(rng, n, in, mixing(rng, in));
    const std::vector<float> w = gaussian(rng, static_cast<size_t>(out) * in, 0.02f);
    const std::vector<float> h = gram_matrix(x.data(), n, in);
    std::vector<float> d(in);
    for (auto& v : d) v = static_cast<float>(0.5 + rng.uniform() * 2.0);
    GptqOptions go;
    go.group_size = gs;
    const GptqHessian f = gptq_prepare(h, in, go);
    const QuantizedMatrix q = gptq_quantize(w.data(), out, in, f, go, d.data());
    std::vector<float> hd(h.size());
    for (int i = 0; i < in; ++i)
        for (int j = 0; j < in; ++j)
            hd[i * in + j] = static_cast<float>(
                (static_cast<double>(h[i * in + j]) + (i == j ? f.lambda : 0.0)) * d[i] * d[j]);
    const RefResult ref = reference_gptq(w, out, in, hd, gs, 0.0);
    int64_t code_diff = 0;
    for (int o = 0; o < out; ++o)
        for (int i = 0; i < in; ++i) code_diff += q.code(o, i) != ref.codes[o * in + i];
    std::printf("row-scaled GPTQ vs f64 reference: %lld of %d codes differ\n",
                static_cast<long long>(code_diff), out * in);
    EXPECT_LE(code_diff, out * in / 200);
}

TEST(Gptq, ActOrderMatchesFloat64Reference) {
    Rng rng(12);
    const int in = 128, out = 24, n = 384, gs = 32;
    // Channel magnitudes spread over 10x so the order by diag(H) is far from the identity.
    std::vector<float> x = correlated_rows(rng, n, in, mixing(rng, in));
    for (int t = 0; t < n; ++t)
        for (int i = 0; i < in; ++i) x[t * in + i] *= 0.3f + 3.0f * ((i * 37) % in) / in;
    const std::vector<float> w = gaussian(rng, static_cast<size_t>(out) * in, 0.02f);
    const std::vector<float> h = gram_matrix(x.data(), n, in);
    GptqOptions go;
    go.group_size = gs;
    go.block = 64;
    go.act_order = true;
    const QuantizedMatrix q = gptq_quantize(w.data(), out, in, h.data(), go);
    validate(q, "gptq act-order");
    const RefResult ref = reference_gptq(w, out, in, h, gs, go.damp, true);
    int64_t code_diff = 0, grid_diff = 0;
    for (int o = 0; o < out; ++o)
        for (int i = 0; i < in; ++i) code_diff += q.code(o, i) != ref.codes[o * in + i];
    for (size_t k = 0; k < ref.scales.size(); ++k)
        grid_diff += q.scales[k] != ref.scales[k] || q.zeros[k] != ref.zeros[k];
    std::printf("act-order GPTQ vs f64 reference: %lld of %d codes differ\n",
                static_cast<long long>(code_diff), out * in);
    EXPECT_LE(code_diff, out * in / 200);
    EXPECT_EQ(grid_diff, 0);  // fixed from the original weights: no arithmetic in between
    // The grids are the plain RTN grids, the codes not: RTN's output error is beaten.
    RtnOptions ro;
    ro.group_size = gs;
    ro.round_input_to_bf16 = false;
    ro.codes_from_stored_scale = true;
    const QuantizedMatrix r = quantize_rtn(w.data(), out, in, ro);
    EXPECT_EQ(r.scales, q.scales);
    EXPECT_LT(output_error(x, n, w, q), 0.8 * output_error(x, n, w, r));
}

TEST(Gptq, BeatsRtnOnHeldOutCorrelatedRows) {
    Rng rng(5);
    const int in = 256, out = 64, n_cal = 512, n_held = 256;
    const std::vector<float> mix = mixing(rng, in);
    const std::vector<float> xc = correlated_rows(rng, n_cal, in, mix);
    const std::vector<float> xh = correlated_rows(rng, n_held, in, mix);
    const std::vector<float> w = gaussian(rng, static_cast<size_t>(out) * in, 0.02f);
    const std::vector<float> h = gram_matrix(xc.data(), n_cal, in);
    for (int gs : {32, 64, 128}) {
        GptqOptions go;
        go.group_size = gs;
        const QuantizedMatrix q = gptq_quantize(w.data(), out, in, h.data(), go);
        validate(q, "gptq");
        RtnOptions ro;
        ro.group_size = gs;
        const QuantizedMatrix r = quantize_rtn(w.data(), out, in, ro);
        const double eg = output_error(xh, n_held, w, q), er = output_error(xh, n_held, w, r);
        std::printf("g%d held-out ||dY||/||Y||: GPTQ %.5f RTN %.5f\n", gs, eg, er);
        EXPECT_LT(eg, 0.8 * er) << "g" << gs << ": GPTQ " << eg << " vs RTN " << er;
        // With clip candidates as the grid choice it stays at least as good on held-out rows.
        go.clip_ratios = {1.0f, 0.95f, 0.9f, 0.85f, 0.8f};
        const QuantizedMatrix qc = gptq_quantize(w.data(), out, in, h.data(), go);
        EXPECT_LT(output_error(xh, n_held, w, qc), 0.8 * er) << "g" << gs << " with clip";
    }
}

TEST(Gptq, DeterministicAndRejectsBadInput) {
    Rng rng(8);
    const int in = 64, out = 8, n = 100;
    const std::vector<float> x = correlated_rows(rng, n, in, mixing(rng, in));
    std::vector<float> w = gaussian(rng, static_cast<size_t>(out) * in, 0.05f);
    std::vector<float> h = gram_matrix(x.data(), n, in);
    h[0] = 0;  // a dead channel is tolerated
    GptqOptions go;
    go.group_size = 32;
    const QuantizedMatrix a = gptq_quantize(w.data(), out, in, h.data(), go);
    const QuantizedMatrix b = gptq_quantize(w.data(), out, in, h.data(), go);
    EXPECT_EQ(a.qweight, b.qweight);
    EXPECT_EQ(a.scales, b.scales);
    w[5] = NAN;
    EXPECT_THROW(gptq_quantize(w.data(), out, in, h.data(), go), Error);
    w[5] = 0;
    go.group_size = 48;
    EXPECT_THROW(gptq_quantize(w.data(), out, in, h.data(), go), Error);
}

}  // namespace
}  // namespace lancet::quant
