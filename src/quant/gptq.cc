// GPTQ for the published INT4 format: per-(row, group) asymmetric grids fixed when a group starts,
// column-by-column rounding with error feedback in the LDL form (the reverse Cholesky factor R of
// H + λI itself, no inverse), and lazy batch updates of the remaining columns through the f32 GEMM.
// The factorisation is blocked too: 128-wide panels whose trailing updates are GEMMs, so the work
// (in³/3 for the factor, out·in² for the sweep) runs at the GEMM's rate.
#include "quant/gptq.h"

#include <algorithm>
#include <cmath>
#include <cstring>

#include "core/error.h"
#include "core/numeric.h"
#include "core/thread_pool.h"
#include "kernels/gemm.h"

namespace lancet::quant {

namespace {

// Copies one triangle of the symmetric a [n, n] over the other (to_lower: upper -> lower), in
// 64 x 64 tiles so the strided side stays in cache.
void mirror(float* a, int64_t n, bool to_lower, ThreadPool& pool) {
    constexpr int64_t kT = 64;
    parallel_chunks(pool, (n + kT - 1) / kT, 1, [&](int64_t t0, int64_t) {
        const int64_t i0 = t0 * kT, i1 = std::min(n, i0 + kT);
        for (int64_t j0 = 0; j0 <= i0; j0 += kT)  // tile (i0, j0) of the lower triangle
            for (int64_t i = i0; i < i1; ++i)
                for (int64_t j = j0; j < std::min(i, j0 + kT); ++j) {
                    if (to_lower)
                        a[i * n + j] = a[j * n + i];
                    else
                        a[j * n + i] = a[i * n + j];
                }
    });
}

}  // namespace

std::vector<float> gram_matrix(const float* x, int64_t n, int in, ThreadPool* pool) {
    if (in <= 0 || n < 0) fail("gram matrix: bad shape [", n, ", ", in, "]");
    std::vector<float> h(static_cast<size_t>(in) * in, 0.0f);
    if (n == 0) return h;
    // Xᵀ [in, n], then the upper triangle Xᵀ X in row bands (the plain GEMM with B = X), mirrored.
    std::vector<float> xt(static_cast<size_t>(in) * n);
    for (int64_t t = 0; t < n; ++t)
        for (int i = 0; i < in; ++i) xt[static_cast<size_t>(i) * n + t] = x[t * in + i];
    ThreadPool& p = pool ? *pool : default_pool();
    parallel_chunks(p, in, 256, [&](int64_t i0, int64_t i1) {
        kernels::gemm_nn(i1 - i0, in - i0, n, &xt[static_cast<size_t>(i0) * n], n, x + i0, in,
                         &h[static_cast<size_t>(i0) * in + i0], in, false);
    });
    mirror(h.data(), in, true, p);
    return h;
}

namespace {

constexpr int kPanel = 128;  // factorisation panel width

// One attempt at H + λI = R Rᵀ in place (see gptq_factor): the upper triangle of a (diagonal
// included) is set from the lower one and diag + λ first, then overwritten by R. Returns false
// when a pivot is not positive.
bool try_factor(float* a, int n, const std::vector<double>& diag, double lambda, ThreadPool& pool) {
    const size_t ld = static_cast<size_t>(n);
    mirror(a, n, false, pool);
    for (int64_t i = 0; i < n; ++i) a[i * ld + i] = static_cast<float>(diag[i] + lambda);
    std::vector<double> blk(static_cast<size_t>(kPanel) * kPanel), inv(blk.size());
    std::vector<float> bt(static_cast<size_t>(kPanel) * kPanel);
    std::vector<float> x, xtn;  // the panel R[0:k0, K] [k0, m] and its negated transpose [m, k0]
    for (int k1 = n, k0; k1 > 0; k1 = k0) {
        k0 = std::max(0, k1 - kPanel);
        const int m = k1 - k0;
        // 1. The diagonal block (all later panels' updates applied) = R_KK R_KKᵀ, in double.
        for (int i = 0; i < m; ++i)
            for (int j = i; j < m; ++j) blk[i * m + j] = a[(k0 + i) * ld + k0 + j];
        for (int j = m - 1; j >= 0; --j) {
            double d = blk[j * m + j];
            for (int l = j + 1; l < m; ++l) d -= blk[j * m + l] * blk[j * m + l];
            if (!(d > 0) || !std::isfinite(d)) return false;
            const double rjj = std::sqrt(d);
            blk[j * m + j] = rjj;
            for (int i = 0; i < j; ++i) {
                double s = blk[i * m + j];
                for (int l = j + 1; l < m; ++l) s -= blk[i * m + l] * blk[j * m + l];
                blk[i * m + j] = s / rjj;
            }
        }
        for (int i = 0; i < m; ++i)
            for (int j = i; j < m; ++j)
                a[(k0 + i) * ld + k0 + j] = static_cast<float>(blk[i * m + j]);
        if (k0 == 0) break;
        // 2. The panel: A[i, K] = R[i, K] R_KKᵀ for i < k0, so R[i, K] = A[i, K] R_KK⁻ᵀ, one GEMM
        //    with the (small, double) inverse of R_KK as B[l, j] = (R_KK⁻¹)[j, l].
        std::fill(inv.begin(), inv.begin() + static_cast<size_t>(m) * m, 0.0);
        for (int j = 0; j < m; ++j) {  // column j of R_KK⁻¹ (upper): R_KK col = e_j, bottom-up
            inv[j * m + j] = 1.0 / blk[j * m + j];
            for (int i = j - 1; i >= 0; --i) {
                double s = 0;
                for (int l = i + 1; l <= j; ++l) s += blk[i * m + l] * inv[l * m + j];
                inv[i * m + j] = -s / blk[i * m + i];
            }
        }
        for (int l = 0; l < m; ++l)
            for (int j = 0; j < m; ++j) bt[l * m + j] = static_cast<float>(inv[j * m + l]);
        x.resize(static_cast<size_t>(k0) * m);
        xtn.resize(static_cast<size_t>(m) * k0);
        parallel_chunks(pool, k0, 64, [&](int64_t i0, int64_t i1) {
            kernels::gemm_nn(i1 - i0, m, m, a + i0 * ld + k0, n, bt.data(), m, &x[i0 * m], m,
                             false);
            for (int64_t i = i0; i < i1; ++i)
                for (int l = 0; l < m; ++l) {
                    a[i * ld + k0 + l] = x[i * m + l];
                    xtn[static_cast<size_t>(l) * k0 + i] = -x[i * m + l];
                }
        });
        // 3. The trailing block loses the panel's share: A[i, j] -= Σ_l R_il R_jl, i <= j < k0,
        //    in row bands (right of the band: one GEMM; the band's own square: the upper half).
        constexpr int kBand = 128;
        parallel_chunks(pool, k0, kBand, [&](int64_t i0, int64_t i1) {
            const int64_t b = i1 - i0;
            if (i1 < k0)
                kernels::gemm_nn(b, k0 - i1, m, &x[i0 * m], m, &xtn[i1], k0, a + i0 * ld + i1, n,
                                 true);
            std::vector<float> sq(static_cast<size_t>(b) * b);
            kernels::gemm_nn(b, b, m, &x[i0 * m], m, &xtn[i0], k0, sq.data(), b, false);
            for (int64_t i = 0; i < b; ++i)
                for (int64_t j = i; j < b; ++j) a[(i0 + i) * ld + i0 + j] += sq[i * b + j];
        });
    }
    return true;
}

}  // namespace

double gptq_factor(float* a, int in, double damp, ThreadPool* pool) {
    if (in <= 0) fail("GPTQ: input width ", in);
    if (!(damp >= 0) || !std::isfinite(damp)) fail("GPTQ: dampening ", damp);
    ThreadPool& p = pool ? *pool : default_pool();
    const size_t n = static_cast<size_t>(in);
    for (size_t i = 0; i < n * n; ++i)
        if (!std::isfinite(a[i])) fail("GPTQ: H has a non-finite entry at ", i / n, ", ", i % n);
    // The lower triangle keeps H (the retries restore the upper one from it); the diagonal here.
    std::vector<double> diag(n);
    double mean_diag = 0;
    for (size_t i = 0; i < n; ++i) {
        diag[i] = a[i * n + i] > 0 ? a[i * n + i] : 1.0;  // a dead channel: any value is as good
        mean_diag += diag[i];
    }
    mean_diag /= in;
    double lambda = damp * mean_diag;
    while (!try_factor(a, in, diag, lambda, p)) {
        if (lambda > 1e6 * mean_diag) fail("GPTQ: H is not positive definite even with damping");
        lambda = std::max(lambda * 10, 1e-6 * mean_diag);
    }
    for (size_t i = 1; i < n; ++i) std::fill(a + i * n, a + i * n + i, 0.0f);
    return lambda;
}

GptqHessian gptq_prepare(std::vector<float> h, int in, const GptqOptions& opt) {
    if (in <= 0 || h.size() != static_cast<size_t>(in) * in)
        fail("GPTQ: H of ", h.size(), " values for width ", in);
    ThreadPool& pool = opt.pool ? *opt.pool : default_pool();
    const size_t n = static_cast<size_t>(in);
    GptqHessian f;
    f.in = in;
    f.hdiag.resize(n);
    for (size_t i = 0; i < n; ++i) f.hdiag[i] = std::max(h[i * n + i], 0.0f);
    f.perm.resize(n);
    for (int i = 0; i < in; ++i) f.perm[i] = i;
    if (opt.act_order) {
        std::stable_sort(f.perm.begin(), f.perm.end(),
                         [&](int x, int y) { return f.hdiag[x] > f.hdiag[y]; });
        std::vector<float> hp(n * n);
        for (size_t i = 0; i < n; ++i)
            for (size_t j = 0; j < n; ++j) hp[i * n + j] = h[f.perm[i] * n + f.perm[j]];
        h.swap(hp);
    }
    f.lambda = gptq_factor(h.data(), in, opt.damp, &pool);
    // R̃ = R diag(1/R_jj): the sweep's weights w'_j = W_j + Σ_{k<j} (W_k - Q_k) R̃_kj.
    std::vector<float> rinv(n);
    for (size_t j = 0; j < n; ++j) rinv[j] = 1.0f / h[j * n + j];
    parallel_chunks(pool, in, 64, [&](int64_t i0, int64_t i1) {
        for (int64_t k = i0; k < i1; ++k) {
            float* row = &h[k * n];
            for (size_t j = k + 1; j < n; ++j) row[j] *= rinv[j];
            row[k] = 1.0f;
        }
    });
    f.r = std::move(h);
    return f;
}

GptqHessian gptq_prepare_rows(const float* x, int64_t ns, int in, const GptqOptions& opt) {
    if (in <= 0 || ns < 0) fail("GPTQ: rows of bad shape [", ns, ", ", in, "]");
    ThreadPool& pool = opt.pool ? *opt.pool : default_pool();
    if (ns == 0 || 2 * ns >= in) return gptq_prepare(gram_matrix(x, ns, in, &pool), in, opt);
    const size_t n = static_cast<size_t>(in), r = static_cast<size_t>(ns);
    for (size_t k = 0; k < r * n; ++k)
        if (!std::isfinite(x[k])) fail("GPTQ: calibration row ", k / n, " is not finite");
    GptqHessian f;
    f.in = in;
    f.rank = static_cast<int>(ns);
    // diag(H) as the dense path computes it (an f32 sum), dead channels, λ.
    f.hdiag.assign(n, 0.0f);
    for (size_t t = 0; t < r; ++t)
        for (size_t i = 0; i < n; ++i) f.hdiag[i] += x[t * n + i] * x[t * n + i];
    double mean_diag = 0;
    for (size_t i = 0; i < n; ++i) mean_diag += f.hdiag[i] > 0 ? f.hdiag[i] : 1.0;
    mean_diag /= in;
    f.lambda = opt.damp * mean_diag;
    f.perm.resize(n);
    for (int i = 0; i < in; ++i) f.perm[i] = i;
    if (opt.act_order)
        std::stable_sort(f.perm.begin(), f.perm.end(),
                         [&](int a, int b) { return f.hdiag[a] > f.hdiag[b]; });
    f.xt.resize(n * r);
    for (size_t k = 0; k < n; ++k)
        for (size_t t = 0; t < r; ++t) f.xt[k * r + t] = x[t * n + f.perm[k]];
    f.g.assign(r * n, 0.0f);
    // P = I - M over blocks from the last column down; gb: the block's g_j (unnormalised) rows.
    std::vector<float> p(r * r, 0.0f), yt(static_cast<size_t>(kPanel) * r),
        gb(static_cast<size_t>(kPanel) * r), gbt(r * kPanel);
    for (size_t t = 0; t < r; ++t) p[t * r + t] = 1.0f;
    for (int k1 = in, k0; k1 > 0; k1 = k0) {
        k0 = std::max(0, k1 - kPanel);
        const int m = k1 - k0;
        // Y_J = X_J P (rows: x_j P, P symmetric).
        parallel_chunks(pool, m, 16, [&](int64_t j0, int64_t j1) {
            kernels::gemm_nn(j1 - j0, ns, ns, &f.xt[(k0 + j0) * r], ns, p.data(), ns, &yt[j0 * r],
                             ns, false);
        });
        for (int jj = m - 1; jj >= 0; --jj) {
            const float* xj = &f.xt[(k0 + jj) * r];
            float* y = &yt[jj * r];
            for (int l = jj + 1; l < m; ++l) {  // the block's later g_l, not yet in P
                const float* gl = &gb[l * r];
                double a = 0;
                for (size_t t = 0; t < r; ++t) a += static_cast<double>(gl[t]) * xj[t];
                const float af = static_cast<float>(a);
                for (size_t t = 0; t < r; ++t) y[t] -= af * gl[t];
            }
            const size_t j = static_cast<size_t>(k0 + jj);
            double r2 = f.lambda + (f.hdiag[f.perm[j]] > 0 ? 0.0 : 1.0);
            for (size_t t = 0; t < r; ++t) r2 += static_cast<double>(xj[t]) * y[t];
            if (!(r2 > 0) || !std::isfinite(r2))
                fail("GPTQ: H is not positive definite even with damping (column ", j, ")");
            const double rjj = std::sqrt(r2);
            for (size_t t = 0; t < r; ++t) {
                gb[jj * r + t] = static_cast<float>(y[t] / rjj);
                f.g[t * n + j] = static_cast<float>(y[t] / r2);
            }
        }
        // P -= G_J G_Jᵀ.
        for (int l = 0; l < m; ++l)
            for (size_t t = 0; t < r; ++t) gbt[t * m + l] = -gb[l * r + t];
        parallel_chunks(pool, ns, 32, [&](int64_t t0, int64_t t1) {
            kernels::gemm_nn(t1 - t0, ns, m, &gbt[t0 * m], m, gb.data(), ns, &p[t0 * r], ns, true);
        });
    }
    return f;
}

QuantizedMatrix gptq_quantize(const float* w, int out, int in, const GptqHessian& f,
                              const GptqOptions& opt, const float* row_scale) {
    if (!w || out <= 0) fail("GPTQ: no weight");
    const bool lowrank = f.rank > 0;
    const int64_t nr = f.rank;
    if (f.in != in ||
        (lowrank ? f.xt.size() != static_cast<size_t>(in) * nr || f.g.size() != f.xt.size()
                 : f.r.size() != static_cast<size_t>(in) * in))
        fail("GPTQ: H prepared for width ", f.in, ", weight width ", in);
    const int gs = check_group_size(in, opt.group_size);
    const int ng = in / gs;
    const int64_t nw = static_cast<int64_t>(out) * in;
    for (int64_t k = 0; k < nw; ++k)
        if (!std::isfinite(w[k]))
            fail("GPTQ: weight [", k / in, ", ", k % in, "] = ", w[k], " is not finite");
    for (float c : opt.clip_ratios)
        if (!(c > 0.0f && c <= 1.0f)) fail("GPTQ: clip ratio ", c, " not in (0, 1]");
    ThreadPool& pool = opt.pool ? *opt.pool : default_pool();
    const size_t n = static_cast<size_t>(in);
    const std::vector<int>& perm = f.perm;
    // d[j]: row_scale of the j-th quantized column; hd: the grid weights diag(D H D).
    std::vector<float> d(n, 1.0f), hd = f.hdiag;
    const bool scaled = row_scale != nullptr;  // else d = 1: its divisions are left out (exact)
    if (row_scale)
        for (size_t j = 0; j < n; ++j) {
            const float s = row_scale[j];
            if (!(s > 0.0f) || !std::isfinite(s)) fail("GPTQ: row scale ", j, " = ", s);
            hd[j] *= s * s;
            d[j] = row_scale[perm[j]];
        }
    const int block = std::min(in, ((std::max(opt.block, 1) + gs - 1) / gs) * gs);
    // Inside a batch, sub-batches of 16 columns (a divisor of the group size, so a group's grid
    // always sees every earlier column's error).
    const int sub = gs % 16 == 0 ? 16 : gs;
    std::vector<float> ratios = opt.clip_ratios;
    if (ratios.empty()) ratios = {1.0f};

    QuantizedMatrix q;
    q.out = out;
    q.in = in;
    q.group_size = gs;
    q.qweight.resize(static_cast<size_t>(out) * (in / 2));
    q.scales.resize(static_cast<size_t>(out) * ng);
    q.zeros.resize(static_cast<size_t>(out) * ng);

    // The weights in quantization order (a copy only with act-order).
    std::vector<float> wperm;
    if (opt.act_order) {
        wperm.resize(static_cast<size_t>(nw));
        parallel_chunks(pool, out, 64, [&](int64_t o0, int64_t o1) {
            for (int64_t o = o0; o < o1; ++o)
                for (size_t j = 0; j < n; ++j) wperm[o * n + j] = w[o * n + perm[j]];
        });
    }
    const float* wq = opt.act_order ? wperm.data() : w;
    // c: Σ_{k<j} d_k (W_k - Q_k) R̃_kj, the corrections gathered so far (dense: [out, in]; low
    // rank: the batch's [out, block], from sx = Σ_{k<i1} d_k (W_k - Q_k) x_k [out, rank] at its
    // start); e: d_k (W_k - Q_k) of the current batch [out, block].
    const int64_t ldc = lowrank ? block : in;
    std::vector<float> c(static_cast<size_t>(out) * ldc, 0.0f), e(static_cast<size_t>(out) * block);
    std::vector<float> sx(lowrank ? static_cast<size_t>(out) * nr : 0, 0.0f);
    std::vector<uint8_t> codes(static_cast<size_t>(nw));
    // The grid of (row, group) [out, ng].
    std::vector<float> sc(static_cast<size_t>(out) * ng), zf(sc.size());
    // Fixes row o's grid for group g from the values v[0..gs) (original column g*gs + k).
    // The candidates' errors Σ_k hd_k (v_k - deq_k)² are summed in f32, four lanes (the grids
    // themselves are quantize_group's, through group_grid).
    auto choose_grid = [&](int64_t o, int g, const float* v, uint8_t*, float*) {
        float mn = v[0], mx = v[0];
        for (int k = 1; k < gs; ++k) {
            mn = std::min(mn, v[k]);
            mx = std::max(mx, v[k]);
        }
        const float* hg = &hd[static_cast<size_t>(g) * gs];
        float best = INFINITY;
        uint16_t best_s = 0;
        float best_sc = 0, best_z = 0;
        for (float ratio : ratios) {
            GroupQuantOptions go;
            go.clip_ratio = ratio;
            go.codes_from_stored_scale = true;
            uint16_t s16;
            float sc_r, z;
            group_grid(mn, mx, go, &s16, &sc_r, &z);
            float lane[4] = {0, 0, 0, 0};
            int k = 0;
            for (; k + 4 <= gs; k += 4)
                for (int l = 0; l < 4; ++l) {
                    const float x = v[k + l] / sc_r + z;
                    const float t = std::clamp((x + 12582912.0f) - 12582912.0f, 0.0f, 15.0f);
                    const float dv = v[k + l] - (t - z) * sc_r;
                    lane[l] += hg[k + l] * dv * dv;
                }
            for (; k < gs; ++k) {
                const float x = v[k] / sc_r + z;
                const float t = std::clamp((x + 12582912.0f) - 12582912.0f, 0.0f, 15.0f);
                const float dv = v[k] - (t - z) * sc_r;
                lane[0] += hg[k] * dv * dv;
            }
            const float err = (lane[0] + lane[1]) + (lane[2] + lane[3]);
            if (err < best) {
                best = err;
                best_s = s16;
                best_sc = sc_r;
                best_z = z;
            }
        }
        q.scales[o * ng + g] = best_s;
        q.zeros[o * ng + g] = static_cast<uint8_t>(best_z);
        sc[o * ng + g] = best_sc;
        zf[o * ng + g] = best_z;
    };
    // Row chunks: each runs the batch's columns on its rows, then its share of the GEMM.
    const int64_t rows = std::max<int64_t>(
        8, ((out + 4 * static_cast<int64_t>(pool.size()) - 1) / (4 * pool.size()) + 7) / 8 * 8);
    if (opt.act_order)  // grids from the original weights
        parallel_chunks(pool, out, rows, [&](int64_t o0, int64_t o1) {
            std::vector<uint8_t> gcodes(gs);
            std::vector<float> gdeq(gs);
            for (int64_t o = o0; o < o1; ++o)
                for (int g = 0; g < ng; ++g)
                    choose_grid(o, g, &w[o * in + g * gs], gcodes.data(), gdeq.data());
        });
    // The batch's diagonal block of R̃ (low rank: x_kᵀ g̃_j formed per batch) and the inverses
    // R̃_GG⁻¹ of its groups (unit upper triangular [gs, gs], float64 then f32): the grid choice's
    // weights of a starting group are v_G = W_G + (c_G R̃_GG⁻¹) / d.
    std::vector<float> dblk(lowrank ? static_cast<size_t>(block) * block : 0);
    std::vector<float> ginv(static_cast<size_t>(block / gs) * gs * gs);
    for (int i1 = 0; i1 < in; i1 += block) {
        const int i2 = std::min(in, i1 + block), bw = i2 - i1;
        // rb[(i - i1) * ldr + (j - i1)] = R̃_ij for i, j in the batch.
        const float* rb = lowrank ? dblk.data() : &f.r[static_cast<size_t>(i1) * n + i1];
        const int64_t ldr = lowrank ? block : in;
        if (lowrank) {
            kernels::gemm_nn(bw, bw, nr, &f.xt[static_cast<size_t>(i1) * nr], nr, &f.g[i1], in,
                             dblk.data(), block, false);
            for (int i = 0; i < bw; ++i) {
                for (int j = 0; j < i; ++j) dblk[i * block + j] = 0.0f;
                dblk[i * block + i] = 1.0f;
            }
        }
        if (!opt.act_order)
            parallel_chunks(pool, bw / gs, 1, [&](int64_t g0, int64_t) {
                std::vector<double> col(gs);
                const int64_t c0 = g0 * gs;
                float* inv = &ginv[static_cast<size_t>(g0) * gs * gs];
                for (int j = 0; j < gs; ++j) {  // column j: R̃_GG col = e_j, bottom-up
                    for (int i = j; i >= 0; --i) {
                        double acc = i == j ? 1.0 : 0.0;
                        for (int l = i + 1; l <= j; ++l)
                            acc -= rb[(c0 + i) * ldr + c0 + l] * col[l];
                        col[i] = acc;
                    }
                    for (int i = 0; i < gs; ++i)
                        inv[i * gs + j] = i <= j ? static_cast<float>(col[i]) : 0.0f;
                }
            });
        parallel_chunks(pool, out, rows, [&](int64_t o0, int64_t o1) {
            const int64_t b = o1 - o0;
            // cb[(o - o0) * ldc + (j - i1)]: row o's correction of column j in the batch.
            float* cb = lowrank ? &c[o0 * ldc] : &c[o0 * ldc + i1];
            if (lowrank)
                kernels::gemm_nn(b, bw, nr, &sx[o0 * nr], nr, &f.g[i1], in, cb, ldc, false);
            std::vector<uint8_t> gcodes(gs);
            std::vector<float> gdeq(gs), u(b * gs);
            // Sub-batches of `sub` columns; inside one, every row runs its columns on its own
            // (contiguous reads), the sub-batch's errors then reach the rest of the batch
            // through one GEMM.
            for (int s1 = 0; s1 < bw; s1 += sub) {
                const int s2 = std::min(bw, s1 + sub), i = i1 + s1;
                if (!opt.act_order && i % gs == 0) {
                    // The group's weights as GPTQ's inverse-factor form has them now (every
                    // earlier column's error applied, none of the group's own).
                    kernels::gemm_nn(b, gs, gs, cb + s1, ldc,
                                     &ginv[static_cast<size_t>(s1 / gs) * gs * gs], gs, u.data(),
                                     gs, false);
                    // (The rows' W segments are first read here: one pass with the loads
                    // independent of each other, then the grids.)
                    for (int64_t o = o0; o < o1; ++o) {
                        float* v = &u[(o - o0) * gs];
                        const float* wo = &wq[o * in + i];
                        if (o + 8 < o1)
                            for (int k = 0; k < gs; k += 16) __builtin_prefetch(wo + 8 * in + k);
                        if (scaled)
                            for (int k = 0; k < gs; ++k) v[k] = wo[k] + v[k] / d[i + k];
                        else
                            for (int k = 0; k < gs; ++k) v[k] += wo[k];
                    }
                    for (int64_t o = o0; o < o1; ++o)
                        choose_grid(o, i / gs, &u[(o - o0) * gs], gcodes.data(), gdeq.data());
                }
                // Eight rows side by side: their rounding chains (two divisions deep) overlap.
                for (int64_t oa = o0; oa < o1; oa += 8) {
                    const int nt = static_cast<int>(std::min<int64_t>(8, o1 - oa));
                    for (int ib = s1; ib < s2; ++ib) {
                        const int col = perm[i1 + ib], g = col / gs;
                        const float dd = d[i1 + ib];
                        float ek[8];
                        for (int t8 = 0; t8 < nt; ++t8) {
                            const int64_t o = oa + t8;
                            const float wo = wq[o * in + i1 + ib];
                            const float co = cb[(o - o0) * ldc + ib];
                            const float s = sc[o * ng + g], z = zf[o * ng + g];
                            const float wv = scaled ? wo + co / dd : wo + co;
                            // The same IEEE steps as quantize_group: divide, add the zero, round
                            // half to even (the 1.5 * 2^23 trick, which the clamp makes safe for
                            // any magnitude), clamp; (code - zero) * stored scale is exact in f32.
                            const float x = wv / s + z;
                            const float t =
                                std::clamp((x + 12582912.0f) - 12582912.0f, 0.0f, 15.0f);
                            codes[o * in + col] = static_cast<uint8_t>(t);
                            const float eo = wo - (t - z) * s;
                            ek[t8] = scaled ? eo * dd : eo;
                            e[o * block + ib] = ek[t8];
                        }
                        const float* ri = rb + ib * ldr;
                        for (int t8 = 0; t8 < nt; ++t8) {
                            float* crow = cb + (oa + t8 - o0) * ldc;
                            for (int j = ib + 1; j < s2; ++j) crow[j] += ek[t8] * ri[j];
                        }
                    }
                }
                if (s2 < bw)
                    kernels::gemm_nn(b, bw - s2, s2 - s1, &e[o0 * block + s1], block,
                                     rb + s1 * ldr + s2, ldr, cb + s2, ldc, true);
            }
            // The batch's errors reach the later columns at once: dense, C[:, i2:] += E
            // R̃[i1:i2, i2:]; low rank, sx += E X[i1:i2].
            if (lowrank)
                kernels::gemm_nn(b, nr, bw, &e[o0 * block], block,
                                 &f.xt[static_cast<size_t>(i1) * nr], nr, &sx[o0 * nr], nr, true);
            else if (i2 < in)
                kernels::gemm_nn(b, in - i2, bw, &e[o0 * block], block,
                                 &f.r[static_cast<size_t>(i1) * n + i2], in, &c[o0 * in + i2], in,
                                 true);
        });
    }
    parallel_chunks(pool, out, 64, [&](int64_t o0, int64_t o1) {
        for (int64_t o = o0; o < o1; ++o) pack_int4(&codes[o * in], in, &q.qweight[o * (in / 2)]);
    });
    return q;
}

QuantizedMatrix gptq_quantize(const float* w, int out, int in, const float* h,
                              const GptqOptions& opt) {
    if (!h || in <= 0) fail("GPTQ: no H");
    const GptqHessian f =
        gptq_prepare(std::vector<float>(h, h + static_cast<size_t>(in) * in), in, opt);
    return gptq_quantize(w, out, in, f, opt);
}

}  // namespace lancet::quant
