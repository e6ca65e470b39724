// AWQ scale search and clipping search for one fusion group, measured by the output error
// ||X Wᵀ - (X/s) Q(W s)ᵀ||² of every consumer on recorded activation rows.
#include "quant/awq.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstring>
#include <limits>

#include "core/error.h"
#include "core/rng.h"
#include "core/thread_pool.h"
#include "kernels/gemm.h"
#include "quant/gptq.h"

namespace lancet::quant {
namespace {

constexpr int64_t kRowChunk = 32;  // output rows per parallel work item

double sum_squares(const float* v, int64_t n) {
    double s = 0;
    for (int64_t i = 0; i < n; ++i) s += static_cast<double>(v[i]) * v[i];
    return s;
}

// Squared sums of the four kinds a work item produces; combined in item order (deterministic).
struct Sq {
    double y2s = 0, e2s = 0, y2h = 0, e2h = 0;
};

// x * diag(1 / s) for every row.
std::vector<float> divide_columns(const std::vector<float>& x, int in,
                                  const std::vector<float>& s) {
    std::vector<float> r(x.size());
    const int64_t n = static_cast<int64_t>(x.size()) / in;
    for (int64_t t = 0; t < n; ++t)
        for (int i = 0; i < in; ++i) r[t * in + i] = x[t * in + i] / s[i];
    return r;
}

double rel(double e2, double y2) {
    if (y2 > 0) return std::sqrt(e2 / y2);
    return e2 > 0 ? std::numeric_limits<double>::infinity() : 0.0;
}

void finish_rel(RelErr& r, double y2s, double y2h, bool have_heldout) {
    r.search = rel(r.e2_search, y2s);
    r.heldout = have_heldout ? rel(r.e2_heldout, y2h) : std::numeric_limits<double>::quiet_NaN();
}

// Quantizes rows [o0, o1) of W * diag(s) group by group at clip ratio 1 and returns
// Δ = W s - dequant (row-major, [o1 - o0, in]); also the codes, scales and zeros.
void quantize_rows(const float* w, int in, int gs, const std::vector<float>& s, int64_t o0,
                   int64_t o1, bool stored_scale, std::vector<float>& ws, std::vector<float>& deq,
                   std::vector<uint8_t>& codes, std::vector<uint16_t>& scales,
                   std::vector<uint8_t>& zeros) {
    const int ng = in / gs;
    const int64_t b = o1 - o0;
    ws.resize(b * in);
    deq.resize(b * in);
    codes.resize(b * in);
    scales.resize(b * ng);
    zeros.resize(b * ng);
    GroupQuantOptions go;
    go.codes_from_stored_scale = stored_scale;
    for (int64_t r = 0; r < b; ++r) {
        const float* row = w + (o0 + r) * in;
        for (int i = 0; i < in; ++i) ws[r * in + i] = row[i] * s[i];
        for (int g = 0; g < ng; ++g)
            quantize_group(&ws[r * in + g * gs], gs, go, &codes[r * in + g * gs],
                           &scales[r * ng + g], &zeros[r * ng + g], &deq[r * in + g * gs]);
    }
}

}  // namespace

AwqResult awq_search(const std::vector<AwqConsumer>& consumers, int in, const LinearStats* stats,
                     const AwqOptions& opt, const std::vector<int>* tie) {
    const auto t_start = std::chrono::steady_clock::now();
    if (consumers.empty()) fail("AWQ search: no consumers");
    if (in <= 0) fail("AWQ search: input width ", in);
    for (const auto& c : consumers) {
        if (!c.w || c.out <= 0) fail("AWQ search: consumer ", c.name, " has no weight");
        const int64_t n = static_cast<int64_t>(c.out) * in;
        for (int64_t k = 0; k < n; ++k)
            if (!std::isfinite(c.w[k]))
                fail(c.name, ": weight [", k / in, ", ", k % in, "] = ", c.w[k], " is not finite");
    }
    if (stats) {
        if (stats->in != in || stats->mean_abs.size() != static_cast<size_t>(in) ||
            stats->rows.size() % in != 0)
            fail("AWQ search (", consumers[0].name, "): statistics have width ", stats->in,
                 ", the weights ", in);
        for (float v : stats->mean_abs)
            if (!std::isfinite(v) || v < 0)
                fail("AWQ search (", consumers[0].name, "): mean_abs has a bad value ", v);
    }
    std::vector<int> identity;
    if (tie && tie->size() != static_cast<size_t>(in))
        fail("AWQ search: tie map has ", tie->size(), " entries for width ", in);
    int n_free = in;
    if (tie) {
        n_free = 0;
        for (int t : *tie) {
            if (t < 0 || t >= in) fail("AWQ search: tie map entry ", t, " out of range");
            n_free = std::max(n_free, t + 1);
        }
    } else {
        identity.resize(in);
        for (int i = 0; i < in; ++i) identity[i] = i;
        tie = &identity;
    }

    AwqResult res;
    const int gs = check_group_size(in, opt.group_size);
    const int ng = in / gs;
    res.group_size = gs;
    ThreadPool& pool = opt.pool ? *opt.pool : default_pool();

    // ---- activation magnitude and rows ----
    const bool have_stats = stats && stats->n_tokens > 0;
    std::vector<double> a(in, 1.0);
    if (have_stats)
        for (int i = 0; i < in; ++i) a[i] = stats->mean_abs[i];
    std::vector<float> x;
    if (stats && stats->n_rows() > 0) {
        x = stats->rows;
    } else {
        res.synthetic_rows = true;
        const int n = std::max(1, opt.synthetic_rows);
        x.resize(static_cast<size_t>(n) * in);
        Rng rng(opt.synthetic_seed);
        for (auto& v : x) v = static_cast<float>(rng.normal());
        for (int t = 0; t < n; ++t)
            for (int i = 0; i < in; ++i)
                x[static_cast<size_t>(t) * in + i] *= static_cast<float>(a[i]);
    }
    std::vector<float> xs, xh;  // search rows, held-out rows
    {
        const int64_t n = static_cast<int64_t>(x.size()) / in;
        for (int64_t t = 0; t < n; ++t) {
            const bool held =
                opt.heldout_every > 0 && t % opt.heldout_every == opt.heldout_every - 1;
            auto& dst = held ? xh : xs;
            dst.insert(dst.end(), x.begin() + t * in, x.begin() + (t + 1) * in);
        }
    }
    const int ns = static_cast<int>(xs.size() / in), nh = static_cast<int>(xh.size() / in);
    if (ns == 0) fail("AWQ search (", consumers[0].name, "): no activation rows to search on");
    res.n_search_rows = ns;
    res.n_heldout_rows = nh;

    // Free-scale statistic, floored so log() stays finite for dead channels.
    std::vector<double> a_free(n_free, 0.0), cnt(n_free, 0.0);
    for (int i = 0; i < in; ++i) {
        a_free[(*tie)[i]] += a[i];
        cnt[(*tie)[i]] += 1;
    }
    double amax = 0;
    for (int t = 0; t < n_free; ++t) {
        if (cnt[t] > 0) a_free[t] /= cnt[t];
        amax = std::max(amax, a_free[t]);
    }
    const bool search = opt.search_scales && have_stats && amax > 0;
    std::vector<double> la(n_free, 0.0);
    if (search) {
        double mean = 0;
        for (int t = 0; t < n_free; ++t) {
            la[t] = std::log(std::max(a_free[t], amax * 1e-5));
            mean += la[t];
        }
        mean /= n_free;
        for (auto& v : la) v -= mean;
    }
    auto scales_for = [&](double alpha, std::vector<float>* s_free) {
        std::vector<float> sf(n_free), s(in);
        for (int t = 0; t < n_free; ++t) sf[t] = static_cast<float>(std::exp(alpha * la[t]));
        for (int i = 0; i < in; ++i) s[i] = sf[(*tie)[i]];
        if (s_free) *s_free = sf;
        return s;
    };

    // ---- seed RTN baseline and ||Y|| (on the report rows) ----
    // Errors are reported on every row, or on an evenly spaced subset when report_sample_rows
    // is set; the RTN-fallback comparison uses the same rows for both sides.
    auto report_stride = [&](int out) -> int64_t {
        if (opt.report_sample_rows <= 0 || out <= opt.report_sample_rows) return 1;
        return (out + opt.report_sample_rows - 1) / opt.report_sample_rows;
    };
    auto report_rows = [&](int out) {
        std::vector<int64_t> r;
        for (int64_t o = 0; o < out; o += report_stride(out)) r.push_back(o);
        return r;
    };
    res.consumers.resize(consumers.size());
    for (size_t c = 0; c < consumers.size(); ++c) {
        const AwqConsumer& con = consumers[c];
        AwqConsumerResult& cr = res.consumers[c];
        cr.name = con.name;
        RtnOptions ro;
        ro.group_size = opt.group_size;
        cr.q = quantize_rtn(con.w, con.out, in, ro);
        const std::vector<int64_t> rows = report_rows(con.out);
        const int64_t n_rep = static_cast<int64_t>(rows.size());
        std::vector<Sq> parts((n_rep + kRowChunk - 1) / kRowChunk);
        parallel_chunks(pool, n_rep, kRowChunk, [&](int64_t j0, int64_t j1) {
            const int64_t b = j1 - j0;
            std::vector<float> wr(b * in), dw(b * in), out(b * std::max(ns, nh));
            for (int64_t r = 0; r < b; ++r) {
                const int64_t o = rows[j0 + r];
                std::memcpy(&wr[r * in], con.w + o * in, sizeof(float) * in);
                dequantize_row(cr.q, static_cast<int>(o), &dw[r * in]);
            }
            for (int64_t k = 0; k < b * in; ++k) dw[k] = wr[k] - dw[k];
            Sq& p = parts[j0 / kRowChunk];
            kernels::gemm_nt(b, ns, in, wr.data(), in, xs.data(), in, out.data(), ns, false);
            p.y2s = sum_squares(out.data(), b * ns);
            kernels::gemm_nt(b, ns, in, dw.data(), in, xs.data(), in, out.data(), ns, false);
            p.e2s = sum_squares(out.data(), b * ns);
            if (nh > 0) {
                kernels::gemm_nt(b, nh, in, wr.data(), in, xh.data(), in, out.data(), nh, false);
                p.y2h = sum_squares(out.data(), b * nh);
                kernels::gemm_nt(b, nh, in, dw.data(), in, xh.data(), in, out.data(), nh, false);
                p.e2h = sum_squares(out.data(), b * nh);
            }
        });
        for (const Sq& p : parts) {
            cr.y2_search += p.y2s;
            cr.y2_heldout += p.y2h;
            cr.rtn.e2_search += p.e2s;
            cr.rtn.e2_heldout += p.e2h;
        }
    }

    // ---- α search on a sample of output rows ----
    double best_alpha = 0;
    if (search) {
        int64_t total_out = 0;
        for (const auto& c : consumers) total_out += c.out;
        // Evenly spaced sample rows of each consumer, weighted so the sum estimates the full loss.
        struct Item {
            int c;
            std::vector<int64_t> rows;
            double weight;
        };
        std::vector<Item> items;  // work items of up to 8 rows of one consumer
        for (size_t c = 0; c < consumers.size(); ++c) {
            const int out = consumers[c].out;
            int64_t k = out;
            if (opt.alpha_sample_rows > 0 && total_out > opt.alpha_sample_rows)
                k = std::clamp<int64_t>(
                    std::llround(static_cast<double>(opt.alpha_sample_rows) * out / total_out),
                    std::min(out, 8), out);
            for (int64_t j0 = 0; j0 < k; j0 += 8) {
                Item it{static_cast<int>(c), {}, static_cast<double>(out) / k};
                for (int64_t j = j0; j < std::min(k, j0 + 8); ++j)
                    it.rows.push_back((2 * j + 1) * out / (2 * k));
                items.push_back(std::move(it));
            }
        }
        auto loss = [&](double alpha) {
            const std::vector<float> s = scales_for(alpha, nullptr);
            const std::vector<float> xss = divide_columns(xs, in, s);
            std::vector<double> parts(items.size(), 0.0);
            parallel_chunks(
                pool, static_cast<int64_t>(items.size()), 1, [&](int64_t p0, int64_t p1) {
                    std::vector<float> ws, deq, delta, e;
                    std::vector<uint8_t> codes, zeros;
                    std::vector<uint16_t> scl;
                    for (int64_t p = p0; p < p1; ++p) {
                        const Item& it = items[p];
                        const int64_t m = static_cast<int64_t>(it.rows.size());
                        delta.resize(m * in);
                        for (int64_t j = 0; j < m; ++j) {
                            quantize_rows(consumers[it.c].w, in, gs, s, it.rows[j], it.rows[j] + 1,
                                          opt.codes_from_stored_scale, ws, deq, codes, scl, zeros);
                            for (int i = 0; i < in; ++i) delta[j * in + i] = ws[i] - deq[i];
                        }
                        e.resize(m * ns);
                        kernels::gemm_nt(m, ns, in, delta.data(), in, xss.data(), in, e.data(), ns,
                                         false);
                        parts[p] = it.weight * sum_squares(e.data(), m * ns);
                    }
                });
            double total = 0;
            for (double v : parts) total += v;
            res.alpha_losses.push_back({static_cast<float>(alpha), total});
            return total;
        };
        const int steps = std::max(1, opt.alpha_steps);
        std::vector<double> evaluated(steps + 1, std::numeric_limits<double>::quiet_NaN());
        auto eval = [&](int k) {
            if (k < 0 || k > steps || !std::isnan(evaluated[k])) return;
            evaluated[k] = loss(static_cast<double>(k) / steps);
        };
        const int stride = opt.alpha_coarse_to_fine && steps >= 4 ? 2 : 1;
        for (int k = 0; k <= steps; k += stride) eval(k);
        if (stride > 1) eval(steps);
        auto argmin = [&] {
            int best = 0;  // ties keep the smaller α
            for (int k = 1; k <= steps; ++k)
                if (!std::isnan(evaluated[k]) && evaluated[k] < evaluated[best]) best = k;
            return best;
        };
        if (stride > 1) {
            const int b = argmin();
            eval(b - 1);
            eval(b + 1);
        }
        best_alpha = static_cast<double>(argmin()) / steps;
    }

    // ---- quantize with the chosen scales, clipping search per (row, group) ----
    res.alpha = static_cast<float>(best_alpha);
    res.s = scales_for(best_alpha, &res.s_free);
    const std::vector<float> xss = divide_columns(xs, in, res.s);
    const std::vector<float> xhs = divide_columns(xh, in, res.s);
    std::vector<float> ratios = {1.0f};
    if (opt.clip)
        for (float r : opt.clip_ratios) {
            if (!(r > 0.0f && r <= 1.0f)) fail("AWQ search: clip ratio ", r, " not in (0, 1]");
            if (r != 1.0f) ratios.push_back(r);
        }
    const int K = static_cast<int>(ratios.size());
    // Xsᵀ [in, ns] and the per-group Gram blocks H_g = Xs_gᵀ Xs_g [gs, gs].
    std::vector<float> xst, gram;
    if (K > 1) {
        xst.resize(static_cast<size_t>(in) * ns);
        for (int t = 0; t < ns; ++t)
            for (int i = 0; i < in; ++i)
                xst[static_cast<size_t>(i) * ns + t] = xss[static_cast<size_t>(t) * in + i];
        gram.resize(static_cast<size_t>(ng) * gs * gs);
        parallel_chunks(pool, ng, 1, [&](int64_t g0, int64_t g1) {
            for (int64_t g = g0; g < g1; ++g) {
                const float* blk = &xst[static_cast<size_t>(g) * gs * ns];
                kernels::gemm_nt(gs, gs, ns, blk, ns, blk, ns,
                                 &gram[static_cast<size_t>(g) * gs * gs], gs, false);
            }
        });
    }

    std::vector<AwqConsumerResult> awq(consumers.size());
    // With error feedback the clipped AWQ matrices are only measured (the report's AWQ column and
    // the RTN check, both on the report rows) unless GPTQ's result is not kept: the search runs
    // on those rows first, on every row only when its matrices are needed.
    const bool clip_report_only = opt.feedback != AwqOptions::Feedback::None;
    auto clip_search = [&](bool report_only) {
        for (size_t c = 0; c < consumers.size(); ++c) {
            const AwqConsumer& con = consumers[c];
            AwqConsumerResult& cr = awq[c];
            cr.q.out = con.out;
            cr.q.in = in;
            cr.q.group_size = gs;
            cr.q.qweight.resize(static_cast<size_t>(con.out) * (in / 2));
            cr.q.scales.resize(static_cast<size_t>(con.out) * ng);
            cr.q.zeros.resize(static_cast<size_t>(con.out) * ng);
            cr.clip.assign(static_cast<size_t>(con.out) * ng, 1.0f);
            const std::vector<int64_t> rep = report_rows(con.out);
            std::vector<Sq> parts(report_only ? rep.size() : (con.out + kRowChunk - 1) / kRowChunk);
            auto rows_body = [&](int64_t o0, int64_t o1, Sq& p) {
                const int64_t b = o1 - o0;
                std::vector<float> ws, deq;
                std::vector<uint8_t> codes, zeros;
                std::vector<uint16_t> scl;
                quantize_rows(con.w, in, gs, res.s, o0, o1, opt.codes_from_stored_scale, ws, deq,
                              codes, scl, zeros);
                std::vector<float> delta(b * in);
                for (int64_t k = 0; k < b * in; ++k) delta[k] = ws[k] - deq[k];
                // E = Δ Xsᵀ: every row's output error on the search rows, kept current as groups
                // change.
                // Only the exact mode needs it during the search; otherwise it is computed at the
                // end for the report rows.
                const bool exact = opt.clip_exact;
                std::vector<float> e(b * ns);
                if (exact || K == 1)
                    kernels::gemm_nt(b, ns, in, delta.data(), in, xss.data(), in, e.data(), ns,
                                     false);
                if (K > 1) {
                    const int kc = K - 1;
                    std::vector<float> gvec(b * gs), d(b * kc * gs), t(b * kc * gs),
                        cand_deq(b * kc * gs), dbest(b * gs);
                    std::vector<uint8_t> cand_codes(b * kc * gs), cand_zero(b * kc);
                    std::vector<uint16_t> cand_scale(b * kc);
                    for (int g = 0; g < ng; ++g) {
                        // Linear term: Xs_gᵀ e for each row (exact), or H_g Δ_g, the part of it
                        // that comes from this group alone (block-diagonal: cross-group terms,
                        // zero-mean for independent rounding errors, are dropped).
                        if (exact)
                            kernels::gemm_nt(b, gs, ns, e.data(), ns,
                                             &xst[static_cast<size_t>(g) * gs * ns], ns,
                                             gvec.data(), gs, false);
                        else
                            kernels::gemm_nn(b, gs, gs, delta.data() + g * gs, in,
                                             &gram[static_cast<size_t>(g) * gs * gs], gs,
                                             gvec.data(), gs, false);
                        for (int64_t r = 0; r < b; ++r)
                            for (int k = 0; k < kc; ++k) {
                                GroupQuantOptions go;
                                go.clip_ratio = ratios[k + 1];
                                go.codes_from_stored_scale = opt.codes_from_stored_scale;
                                const int64_t slot = r * kc + k;
                                quantize_group(&ws[r * in + g * gs], gs, go, &cand_codes[slot * gs],
                                               &cand_scale[slot], &cand_zero[slot],
                                               &cand_deq[slot * gs]);
                                // Change of Δ on this group when switching to candidate k.
                                for (int i = 0; i < gs; ++i)
                                    d[slot * gs + i] =
                                        deq[r * in + g * gs + i] - cand_deq[slot * gs + i];
                            }
                        // Quadratic term dᵀ H_g d.
                        kernels::gemm_nn(b * kc, gs, gs, d.data(), gs,
                                         &gram[static_cast<size_t>(g) * gs * gs], gs, t.data(), gs,
                                         false);
                        bool any = false;
                        std::fill(dbest.begin(), dbest.end(), 0.0f);
                        for (int64_t r = 0; r < b; ++r) {
                            int best = -1;
                            double best_change = 0;  // keeping the current range changes nothing
                            for (int k = 0; k < kc; ++k) {
                                const float* dk = &d[(r * kc + k) * gs];
                                const float* tk = &t[(r * kc + k) * gs];
                                double lin = 0, quad = 0;
                                for (int i = 0; i < gs; ++i) {
                                    lin += static_cast<double>(gvec[r * gs + i]) * dk[i];
                                    quad += static_cast<double>(tk[i]) * dk[i];
                                }
                                const double change = 2 * lin + quad;
                                if (change < best_change) {
                                    best_change = change;
                                    best = k;
                                }
                            }
                            if (best < 0) continue;
                            any = true;
                            const int64_t slot = r * kc + best;
                            std::memcpy(&dbest[r * gs], &d[slot * gs], sizeof(float) * gs);
                            std::memcpy(&codes[r * in + g * gs], &cand_codes[slot * gs], gs);
                            std::memcpy(&deq[r * in + g * gs], &cand_deq[slot * gs],
                                        sizeof(float) * gs);
                            for (int i = 0; i < gs; ++i)
                                delta[r * in + g * gs + i] =
                                    ws[r * in + g * gs + i] - deq[r * in + g * gs + i];
                            scl[r * ng + g] = cand_scale[slot];
                            zeros[r * ng + g] = cand_zero[slot];
                            cr.clip[(o0 + r) * ng + g] = ratios[best + 1];
                        }
                        // e += Xs_g d for the rows that changed.
                        if (any && exact)
                            kernels::gemm_nt(b, ns, gs, dbest.data(), gs, xss.data() + g * gs, in,
                                             e.data(), ns, true);
                    }
                }
                const int64_t stride = report_stride(con.out);
                std::vector<float> drep;
                for (int64_t r = 0; r < b; ++r)
                    if ((o0 + r) % stride == 0) {
                        if (exact || K == 1) p.e2s += sum_squares(&e[r * ns], ns);
                        drep.insert(drep.end(), delta.begin() + r * in,
                                    delta.begin() + (r + 1) * in);
                    }
                const int64_t nrep = static_cast<int64_t>(drep.size()) / in;
                if (!(exact || K == 1) && nrep > 0) {
                    std::vector<float> es(nrep * ns);
                    kernels::gemm_nt(nrep, ns, in, drep.data(), in, xss.data(), in, es.data(), ns,
                                     false);
                    p.e2s = sum_squares(es.data(), nrep * ns);
                }
                if (nh > 0 && nrep > 0) {
                    std::vector<float> eh(nrep * nh);
                    kernels::gemm_nt(nrep, nh, in, drep.data(), in, xhs.data(), in, eh.data(), nh,
                                     false);
                    p.e2h = sum_squares(eh.data(), nrep * nh);
                }
                for (int64_t r = 0; r < b; ++r)
                    pack_int4(&codes[r * in], in, &cr.q.qweight[(o0 + r) * (in / 2)]);
                std::memcpy(&cr.q.scales[o0 * ng], scl.data(), sizeof(uint16_t) * b * ng);
                std::memcpy(&cr.q.zeros[o0 * ng], zeros.data(), b * ng);
            };
            if (report_only)
                parallel_chunks(
                    pool, static_cast<int64_t>(rep.size()), 1,
                    [&](int64_t j0, int64_t) { rows_body(rep[j0], rep[j0] + 1, parts[j0]); });
            else
                parallel_chunks(pool, con.out, kRowChunk, [&](int64_t o0, int64_t o1) {
                    rows_body(o0, o1, parts[o0 / kRowChunk]);
                });
            RelErr& e_awq = res.consumers[c].awq;
            e_awq = {};
            for (const Sq& p : parts) {
                e_awq.e2_search += p.e2s;
                e_awq.e2_heldout += p.e2h;
            }
        }
    };
    clip_search(clip_report_only);

    // ---- totals, and the guarantee: never worse than RTN on the search rows ----
    double y2s = 0, y2h = 0;
    for (auto& cr : res.consumers) {
        y2s += cr.y2_search;
        y2h += cr.y2_heldout;
        res.rtn.e2_search += cr.rtn.e2_search;
        res.rtn.e2_heldout += cr.rtn.e2_heldout;
        res.awq.e2_search += cr.awq.e2_search;
        res.awq.e2_heldout += cr.awq.e2_heldout;
    }
    if (res.awq.e2_search > res.rtn.e2_search) {
        res.rtn_fallback = true;
        res.alpha = 0;
        res.s.assign(in, 1.0f);
        res.s_free.assign(n_free, 1.0f);
        res.awq = res.rtn;
        for (auto& cr : res.consumers) {
            cr.awq = cr.rtn;
            cr.clip.assign(static_cast<size_t>(cr.q.out) * ng, 1.0f);
        }
    } else {
        for (size_t c = 0; c < consumers.size(); ++c) {
            res.consumers[c].q = std::move(awq[c].q);
            res.consumers[c].clip = std::move(awq[c].clip);
        }
    }
    res.chosen = res.rtn_fallback ? "rtn" : "awq";
    const double nan = std::numeric_limits<double>::quiet_NaN();
    res.gptq = res.awq_gptq = {nan, nan, nan, nan};
    res.result = res.awq;
    for (auto& cr : res.consumers) {
        cr.gptq = cr.awq_gptq = res.gptq;
        cr.result = cr.awq;
    }

    // ---- error feedback (GPTQ) on W·diag(s), H from the search rows as the weights see them ----
    if (opt.feedback != AwqOptions::Feedback::None) {
        const auto t_gptq = std::chrono::steady_clock::now();
        // Output error of q (quantized W·diag(s)) on the report rows, search and held-out; q
        // holds either every row or (subset) the report rows only, in order.
        auto measure = [&](const AwqConsumer& con, const QuantizedMatrix& q, bool subset,
                           const std::vector<float>& s, const std::vector<float>& xs_s,
                           const std::vector<float>& xh_s) {
            const std::vector<int64_t> rows = report_rows(con.out);
            const int64_t n_rep = static_cast<int64_t>(rows.size());
            std::vector<Sq> parts((n_rep + kRowChunk - 1) / kRowChunk);
            parallel_chunks(pool, n_rep, kRowChunk, [&](int64_t j0, int64_t j1) {
                const int64_t b = j1 - j0;
                std::vector<float> dw(b * in), e(b * std::max(ns, nh));
                for (int64_t r = 0; r < b; ++r) {
                    const int64_t o = rows[j0 + r];
                    dequantize_row(q, static_cast<int>(subset ? j0 + r : o), &dw[r * in]);
                    for (int i = 0; i < in; ++i)
                        dw[r * in + i] = con.w[o * in + i] * s[i] - dw[r * in + i];
                }
                Sq& p = parts[j0 / kRowChunk];
                kernels::gemm_nt(b, ns, in, dw.data(), in, xs_s.data(), in, e.data(), ns, false);
                p.e2s = sum_squares(e.data(), b * ns);
                if (nh > 0) {
                    kernels::gemm_nt(b, nh, in, dw.data(), in, xh_s.data(), in, e.data(), nh,
                                     false);
                    p.e2h = sum_squares(e.data(), b * nh);
                }
            });
            RelErr r;
            for (const Sq& p : parts) {
                r.e2_search += p.e2s;
                r.e2_heldout += p.e2h;
            }
            return r;
        };
        const bool full_h = opt.gptq_full_hessian && stats && stats->has_hessian() &&
                            !res.synthetic_rows && stats->n_tokens > 0;
        if (full_h && static_cast<int64_t>(stats->hessian.size()) != packed_size(in))
            fail("AWQ search (", consumers[0].name, "): Hessian of ", stats->hessian.size(),
                 " values for width ", in);
        res.full_hessian = full_h;
        const bool plain = opt.feedback == AwqOptions::Feedback::Gptq;
        const std::vector<float> ones(in, 1.0f);
        // The chosen variant's scales, and the other one's (the report's comparison).
        const std::vector<float>& s_ch = plain ? ones : res.s;
        const std::vector<float>& s_ot = plain ? res.s : ones;
        GptqOptions go;
        go.group_size = gs;
        go.damp = opt.gptq_damp;
        go.act_order = opt.gptq_act_order;
        go.pool = &pool;
        if (opt.clip) go.clip_ratios = ratios;
        // H as the chosen variant's scaled weights see it, factored once for all consumers.
        const std::vector<float> xs_ch = divide_columns(xs, in, s_ch);
        const std::vector<float> xh_ch = divide_columns(xh, in, s_ch);
        GptqHessian hf;
        {
            std::vector<float> h;
            if (full_h) {
                // Every input's XᵀX less the held-out rows' (they are inputs too, and must stay
                // unseen by every choice), in double, then as the scaled weights see it:
                // H_ij / (s_i s_j).
                const std::vector<float> hh =
                    nh > 0 ? gram_matrix(xh.data(), nh, in, &pool) : std::vector<float>();
                h.resize(static_cast<size_t>(in) * in);
                for (int i = 0; i < in; ++i) {
                    const double* row = &stats->hessian[packed_index(in, i, i)];
                    for (int j = i; j < in; ++j) {
                        double v = row[j - i];
                        if (nh > 0) v -= hh[static_cast<size_t>(i) * in + j];
                        v /= static_cast<double>(s_ch[i]) * static_cast<double>(s_ch[j]);
                        h[static_cast<size_t>(i) * in + j] = h[static_cast<size_t>(j) * in + i] =
                            static_cast<float>(v);
                    }
                }
                hf = gptq_prepare(std::move(h), in, go);
            } else {
                // H = XsᵀXs of the search rows, kept as the rows where they are fewer than half
                // the inputs (down_proj: in·ns² work instead of in³/3).
                hf = gptq_prepare_rows(xs_ch.data(), ns, in, go);
            }
        }
        std::vector<RelErr> e_ch(consumers.size()), e_ot(consumers.size());
        std::vector<QuantizedMatrix> q_ch;
        RelErr t_ch, t_ot;
        {
            for (size_t c = 0; c < consumers.size(); ++c) {
                const AwqConsumer& con = consumers[c];
                std::vector<float> ws(static_cast<size_t>(con.out) * in);
                for (int64_t o = 0; o < con.out; ++o)
                    for (int i = 0; i < in; ++i) ws[o * in + i] = con.w[o * in + i] * s_ch[i];
                q_ch.push_back(gptq_quantize(ws.data(), con.out, in, hf, go));
                e_ch[c] = measure(con, q_ch.back(), false, s_ch, xs_ch, xh_ch);
                t_ch.e2_search += e_ch[c].e2_search;
                t_ch.e2_heldout += e_ch[c].e2_heldout;
            }
        }
        if (opt.compare) {
            // The other variant on the report rows only (all the report reads), from the same
            // factor: its H is D H_ch D with D = diag(s_ch / s_ot).
            std::vector<float> d(in);
            for (int i = 0; i < in; ++i) d[i] = s_ch[i] / s_ot[i];
            const std::vector<float> xs_s = divide_columns(xs, in, s_ot);
            const std::vector<float> xh_s = divide_columns(xh, in, s_ot);
            for (size_t c = 0; c < consumers.size(); ++c) {
                const AwqConsumer& con = consumers[c];
                const std::vector<int64_t> rows = report_rows(con.out);
                std::vector<float> ws(rows.size() * in);
                for (size_t j = 0; j < rows.size(); ++j)
                    for (int i = 0; i < in; ++i) ws[j * in + i] = con.w[rows[j] * in + i] * s_ot[i];
                const QuantizedMatrix q =
                    gptq_quantize(ws.data(), static_cast<int>(rows.size()), in, hf, go, d.data());
                e_ot[c] = measure(con, q, true, s_ot, xs_s, xh_s);
                t_ot.e2_search += e_ot[c].e2_search;
                t_ot.e2_heldout += e_ot[c].e2_heldout;
            }
        }
        (plain ? res.gptq : res.awq_gptq) = t_ch;
        if (opt.compare) (plain ? res.awq_gptq : res.gptq) = t_ot;
        for (size_t c = 0; c < consumers.size(); ++c) {
            (plain ? res.consumers[c].gptq : res.consumers[c].awq_gptq) = e_ch[c];
            if (opt.compare) (plain ? res.consumers[c].awq_gptq : res.consumers[c].gptq) = e_ot[c];
        }
        // Kept unless worse than RTN on the search rows (the rows it was fitted to).
        if (t_ch.e2_search <= res.rtn.e2_search) {
            res.chosen = plain ? "gptq" : "awq-gptq";
            res.result = t_ch;
            res.rtn_fallback = false;
            if (plain) {
                res.alpha = 0;
                res.s.assign(in, 1.0f);
                res.s_free.assign(n_free, 1.0f);
            }
            for (size_t c = 0; c < consumers.size(); ++c) {
                res.consumers[c].q = std::move(q_ch[c]);
                res.consumers[c].result = e_ch[c];
                res.consumers[c].clip.assign(static_cast<size_t>(consumers[c].out) * ng, 1.0f);
            }
        } else if (clip_report_only && !res.rtn_fallback) {
            // Not kept: the AWQ matrices on every row after all.
            clip_search(false);
            for (size_t c = 0; c < consumers.size(); ++c) {
                res.consumers[c].q = std::move(awq[c].q);
                res.consumers[c].clip = std::move(awq[c].clip);
            }
        }
        res.seconds_gptq =
            std::chrono::duration<double>(std::chrono::steady_clock::now() - t_gptq).count();
    }

    const bool have_h = nh > 0;
    for (RelErr* r : {&res.rtn, &res.awq, &res.gptq, &res.awq_gptq, &res.result})
        if (!std::isnan(r->e2_search)) finish_rel(*r, y2s, y2h, have_h);
    for (auto& cr : res.consumers)
        for (RelErr* r : {&cr.rtn, &cr.awq, &cr.gptq, &cr.awq_gptq, &cr.result})
            if (!std::isnan(r->e2_search)) finish_rel(*r, cr.y2_search, cr.y2_heldout, have_h);
    res.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t_start).count();
    return res;
}

AwqResult rtn_group(const std::vector<AwqConsumer>& consumers, int in, const AwqOptions& opt) {
    if (consumers.empty()) fail("RTN group: no consumers");
    const auto t_start = std::chrono::steady_clock::now();
    const double nan = std::numeric_limits<double>::quiet_NaN();
    AwqResult res;
    res.group_size = check_group_size(in, opt.group_size);
    res.s.assign(in, 1.0f);
    res.s_free = res.s;
    res.rtn = {nan, nan, nan, nan};
    res.awq = res.gptq = res.awq_gptq = res.result = res.rtn;
    res.chosen = "rtn";
    for (const AwqConsumer& con : consumers) {
        if (!con.w || con.out <= 0) fail("RTN group: consumer ", con.name, " has no weight");
        AwqConsumerResult cr;
        cr.name = con.name;
        RtnOptions ro;
        ro.group_size = opt.group_size;
        cr.q = quantize_rtn(con.w, con.out, in, ro);
        cr.clip.assign(static_cast<size_t>(con.out) * cr.q.n_groups(), 1.0f);
        cr.rtn = res.rtn;
        cr.awq = cr.gptq = cr.awq_gptq = cr.result = res.rtn;
        res.consumers.push_back(std::move(cr));
    }
    res.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t_start).count();
    return res;
}

}  // namespace lancet::quant
