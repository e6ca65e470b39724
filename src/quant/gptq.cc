// GPTQ for the published INT4 format: per-(row, group) asymmetric grids fixed when a group starts,
// column-by-column rounding with error feedback through the Cholesky factor of H⁻¹, and lazy
// batch updates of the remaining columns through the f32 GEMM.
#include "quant/gptq.h"

#include <algorithm>
#include <cmath>
#include <cstring>

#include "core/error.h"
#include "core/numeric.h"
#include "core/thread_pool.h"
#include "kernels/gemm.h"

namespace lancet::quant {

std::vector<float> gram_matrix(const float* x, int64_t n, int in, ThreadPool* pool) {
    if (in <= 0 || n < 0) fail("gram matrix: bad shape [", n, ", ", in, "]");
    // Xᵀ [in, n], then Xᵀ (Xᵀ)ᵀ with the NT GEMM, in row bands.
    std::vector<float> xt(static_cast<size_t>(in) * n);
    for (int64_t t = 0; t < n; ++t)
        for (int i = 0; i < in; ++i) xt[static_cast<size_t>(i) * n + t] = x[t * in + i];
    std::vector<float> h(static_cast<size_t>(in) * in, 0.0f);
    if (n == 0) return h;
    ThreadPool& p = pool ? *pool : default_pool();
    parallel_chunks(p, in, 64, [&](int64_t i0, int64_t i1) {
        kernels::gemm_nt(i1 - i0, in, n, &xt[static_cast<size_t>(i0) * n], n, xt.data(), n,
                         &h[static_cast<size_t>(i0) * in], in, false);
    });
    return h;
}

std::vector<float> gptq_inverse_factor(const float* h, int in, double damp, ThreadPool* pool) {
    if (in <= 0) fail("GPTQ: input width ", in);
    ThreadPool& p = pool ? *pool : default_pool();
    const size_t n = static_cast<size_t>(in);
    std::vector<double> a(n * n);
    double mean_diag = 0;
    for (size_t i = 0; i < n * n; ++i) {
        a[i] = h[i];
        if (!std::isfinite(a[i])) fail("GPTQ: H has a non-finite entry at ", i / n, ", ", i % n);
    }
    for (size_t i = 0; i < n; ++i) {
        if (a[i * n + i] <= 0) a[i * n + i] = 1.0;  // a dead channel: any value is as good
        mean_diag += a[i * n + i];
    }
    mean_diag /= in;
    // H = R Rᵀ with R upper triangular (the Cholesky factorisation run from the last index
    // down); then H⁻¹ = R⁻ᵀ R⁻¹, so U = R⁻¹ is the upper factor with Uᵀ U = H⁻¹.
    std::vector<double> r(n * n);
    for (double lambda = damp * mean_diag;; lambda *= 10) {
        bool ok = true;
        std::fill(r.begin(), r.end(), 0.0);
        for (int j = in - 1; j >= 0 && ok; --j) {
            const double* rj = &r[j * n];
            double d = a[j * n + j] + lambda;
            for (int k = j + 1; k < in; ++k) d -= rj[k] * rj[k];
            if (!(d > 0)) {
                ok = false;
                break;
            }
            const double rjj = std::sqrt(d);
            r[j * n + j] = rjj;
            // Rows i < j of column j are independent of each other.
            parallel_chunks(p, j, 256, [&](int64_t i0, int64_t i1) {
                for (int64_t i = i0; i < i1; ++i) {
                    const double* ri = &r[i * n];
                    double s = a[i * n + j];
                    for (int k = j + 1; k < in; ++k) s -= ri[k] * rj[k];
                    r[i * n + j] = s / rjj;
                }
            });
        }
        if (ok) break;
        if (lambda > 1e6 * mean_diag) fail("GPTQ: H is not positive definite even with damping");
    }
    // U = R⁻¹ (upper), one column at a time: R U = I, solved bottom-up; columns are independent.
    std::vector<float> u(n * n, 0.0f);
    parallel_chunks(p, in, 16, [&](int64_t j0, int64_t j1) {
        std::vector<double> col(n);
        for (int64_t j = j0; j < j1; ++j) {
            col[j] = 1.0 / r[j * n + j];
            for (int64_t i = j - 1; i >= 0; --i) {
                double s = 0;
                const double* ri = &r[i * n];
                for (int64_t k = i + 1; k <= j; ++k) s += ri[k] * col[k];
                col[i] = -s / ri[i];
            }
            for (int64_t i = 0; i <= j; ++i) u[i * n + j] = static_cast<float>(col[i]);
        }
    });
    return u;
}

QuantizedMatrix gptq_quantize(const float* w, int out, int in, const float* h,
                              const GptqOptions& opt) {
    if (!w || out <= 0) fail("GPTQ: no weight");
    const int gs = check_group_size(in, opt.group_size);
    const int ng = in / gs;
    const int64_t nw = static_cast<int64_t>(out) * in;
    for (int64_t k = 0; k < nw; ++k)
        if (!std::isfinite(w[k]))
            fail("GPTQ: weight [", k / in, ", ", k % in, "] = ", w[k], " is not finite");
    for (float c : opt.clip_ratios)
        if (!(c > 0.0f && c <= 1.0f)) fail("GPTQ: clip ratio ", c, " not in (0, 1]");
    ThreadPool& pool = opt.pool ? *opt.pool : default_pool();
    std::vector<float> hdiag(in);
    for (int i = 0; i < in; ++i) hdiag[i] = std::max(h[static_cast<size_t>(i) * in + i], 0.0f);
    // perm[j]: the original column quantized j-th (identity without act-order; ties keep the
    // original order, so the result is deterministic).
    std::vector<int> perm(in);
    for (int i = 0; i < in; ++i) perm[i] = i;
    std::vector<float> hp;  // H permuted, when act-order
    if (opt.act_order) {
        std::stable_sort(perm.begin(), perm.end(),
                         [&](int x, int y) { return hdiag[x] > hdiag[y]; });
        hp.resize(static_cast<size_t>(in) * in);
        for (int i = 0; i < in; ++i)
            for (int j = 0; j < in; ++j)
                hp[static_cast<size_t>(i) * in + j] =
                    h[static_cast<size_t>(perm[i]) * in + perm[j]];
    }
    const std::vector<float> u =
        gptq_inverse_factor(opt.act_order ? hp.data() : h, in, opt.damp, &pool);
    const int block = std::min(in, ((std::max(opt.block, 1) + gs - 1) / gs) * gs);
    std::vector<float> ratios = opt.clip_ratios;
    if (ratios.empty()) ratios = {1.0f};

    QuantizedMatrix q;
    q.out = out;
    q.in = in;
    q.group_size = gs;
    q.qweight.resize(static_cast<size_t>(out) * (in / 2));
    q.scales.resize(static_cast<size_t>(out) * ng);
    q.zeros.resize(static_cast<size_t>(out) * ng);

    // Rows are independent given U: each work item runs the whole column sweep on its rows.
    constexpr int64_t kRows = 16;
    parallel_chunks(pool, out, kRows, [&](int64_t o0, int64_t o1) {
        const int64_t b = o1 - o0;
        std::vector<float> wr(w + o0 * in, w + o1 * in);  // [b, in], updated in place
        std::vector<uint8_t> codes(b * in), gcodes(gs);
        std::vector<float> err(b * block), gdeq(gs);
        // The grid of (row, group) [b, ng]; without act-order only the current group's is read.
        std::vector<float> sc(b * ng), zf(b * ng);
        // Fixes every row's grid for group g from the weights at wr[r * in + c0 ...].
        auto choose_grid = [&](int g, int c0) {
            for (int64_t r = 0; r < b; ++r) {
                double best = INFINITY;
                uint16_t best_s = 0;
                uint8_t best_z = 0;
                for (float ratio : ratios) {
                    GroupQuantOptions go;
                    go.clip_ratio = ratio;
                    go.codes_from_stored_scale = true;
                    uint16_t s16;
                    uint8_t z;
                    quantize_group(&wr[r * in + c0], gs, go, gcodes.data(), &s16, &z, gdeq.data());
                    double e = 0;
                    for (int k = 0; k < gs; ++k) {
                        const double d = wr[r * in + c0 + k] - gdeq[k];
                        e += hdiag[g * gs + k] * d * d;
                    }
                    if (e < best) {
                        best = e;
                        best_s = s16;
                        best_z = z;
                    }
                }
                q.scales[(o0 + r) * ng + g] = best_s;
                q.zeros[(o0 + r) * ng + g] = best_z;
                sc[r * ng + g] = bf16_to_f32(best_s);
                zf[r * ng + g] = best_z;
            }
        };
        if (opt.act_order) {
            // Grids from the original weights, then the weights into quantization order.
            for (int g = 0; g < ng; ++g) choose_grid(g, g * gs);
            for (int64_t r = 0; r < b; ++r)
                for (int j = 0; j < in; ++j) wr[r * in + j] = w[(o0 + r) * in + perm[j]];
        }
        for (int i1 = 0; i1 < in; i1 += block) {
            const int i2 = std::min(in, i1 + block);
            for (int i = i1; i < i2; ++i) {
                // Without act-order a group's grid is chosen when it starts, from the weights as
                // the earlier columns' errors have left them.
                if (!opt.act_order && i % gs == 0) choose_grid(i / gs, i);
                const int col = perm[i], g = col / gs;
                const float* ui = &u[static_cast<size_t>(i) * in];
                const float uii = ui[i];
                for (int64_t r = 0; r < b; ++r) {
                    float* row = &wr[r * in];
                    const float s = sc[r * ng + g], z = zf[r * ng + g];
                    // The same IEEE steps as quantize_group: divide, add the zero, round half to
                    // even, clamp; (code - zero) * stored scale is exact in f32.
                    const float t = std::clamp(std::nearbyint(row[i] / s + z), 0.0f, 15.0f);
                    codes[r * in + col] = static_cast<uint8_t>(t);
                    const float deq = (t - z) * s;
                    const float e = (row[i] - deq) / uii;
                    err[r * block + (i - i1)] = -e;
                    for (int j = i + 1; j < i2; ++j) row[j] -= e * ui[j];
                }
            }
            // The batch's errors reach the later columns at once: W[:, i2:] -= E U[i1:i2, i2:].
            if (i2 < in)
                kernels::gemm_nn(b, in - i2, i2 - i1, err.data(), block,
                                 &u[static_cast<size_t>(i1) * in + i2], in, &wr[i2], in, true);
        }
        for (int64_t r = 0; r < b; ++r)
            pack_int4(&codes[r * in], in, &q.qweight[(o0 + r) * (in / 2)]);
    });
    return q;
}

}  // namespace lancet::quant
