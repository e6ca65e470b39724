// Sliding-window perplexity and reference-vs-model KL / top-1 agreement (see perplexity.h).
#include "pipeline/perplexity.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <limits>

#include "core/error.h"
#include "core/log.h"
#include "pipeline/sampler.h"

namespace lancet {

namespace {

// First index of the largest value among logits[0, n).
int32_t argmax(const float* logits, size_t n) {
    size_t best = 0;
    for (size_t i = 1; i < n; ++i)
        if (logits[i] > logits[best]) best = i;
    return static_cast<int32_t>(best);
}

double mean_of(const std::vector<double>& v) {
    double s = 0;
    for (double x : v) s += x;
    return v.empty() ? 0.0 : s / static_cast<double>(v.size());
}

// Standard error of the mean: sample standard deviation (n - 1) / sqrt(n); 0 below 2 values.
double se_of(const std::vector<double>& v, double mean) {
    if (v.size() < 2) return 0.0;
    double ss = 0;
    for (double x : v) ss += (x - mean) * (x - mean);
    const double n = static_cast<double>(v.size());
    return std::sqrt(ss / (n - 1.0) / n);
}

}  // namespace

std::vector<ScoreWindow> perplexity_windows(size_t n_tokens, size_t ctx, size_t stride) {
    if (ctx < 2) fail("perplexity: ctx must be >= 2, got ", ctx);
    if (stride < 1 || stride >= ctx)
        fail("perplexity: stride must be in [1, ctx - 1] = [1, ", ctx - 1, "], got ", stride);
    std::vector<ScoreWindow> w;
    if (n_tokens < 2) return w;
    // Token 0 has no prediction; `scored` is the first token not scored yet.
    size_t begin = 0, scored = 1;
    while (true) {
        const size_t end = std::min(begin + ctx, n_tokens);
        w.push_back({begin, end, scored});
        scored = end;
        if (end == n_tokens) break;
        begin += stride;
        if (begin + ctx > n_tokens) begin = n_tokens - ctx;
    }
    return w;
}

PerplexityResult evaluate_perplexity(const std::vector<DecoderSession*>& decoders,
                                     const std::vector<int32_t>& tokens,
                                     const PerplexityOptions& opt, ThreadPool* pool) {
    if (decoders.empty()) fail("perplexity: no model");
    ThreadPool& tp = pool ? *pool : default_pool();
    const LanceConfig& ref_cfg = decoders[0]->config();
    for (size_t m = 1; m < decoders.size(); ++m)
        if (decoders[m]->config().vocab_size != ref_cfg.vocab_size)
            fail("perplexity: model ", m + 1, " has vocab_size ", decoders[m]->config().vocab_size,
                 " but model 1 has ", ref_cfg.vocab_size, " (models must share the vocabulary)");
    const size_t ctx = opt.ctx;
    const size_t stride = opt.stride ? opt.stride : ctx / 2;
    for (size_t m = 0; m < decoders.size(); ++m) {
        const int64_t max_pos = decoders[m]->config().max_position_embeddings;
        if (max_pos > 0 && ctx > static_cast<size_t>(max_pos))
            fail("perplexity: --ctx ", ctx, " exceeds model ", m + 1,
                 "'s context (max_position_embeddings ", max_pos, ")");
    }
    if (tokens.size() < 2)
        fail("perplexity: the text has ", tokens.size(), " token(s); at least 2 are needed");
    const std::vector<ScoreWindow> windows = perplexity_windows(tokens.size(), ctx, stride);
    size_t V = static_cast<size_t>(decoders[0]->logits_limit());
    if (opt.vocab_limit > 0) V = std::min(V, static_cast<size_t>(opt.vocab_limit));
    for (size_t i = 0; i < tokens.size(); ++i)
        if (tokens[i] < 0 || static_cast<size_t>(tokens[i]) >= V)
            fail("perplexity: token ", i, " has id ", tokens[i],
                 ", outside the scored vocabulary [0, ", V, ")");
    const size_t full_v = static_cast<size_t>(ref_cfg.vocab_size);
    const size_t n_scored = tokens.size() - 1;
    const size_t M = decoders.size();

    // Per scored token (index t - 1 for token t), per model: NLL; against the reference: KL and
    // agreement. Kept per token so the sums run in text order whatever the thread split.
    std::vector<std::vector<double>> nll(
        M, std::vector<double>(n_scored, std::numeric_limits<double>::quiet_NaN()));
    std::vector<std::vector<double>> kl(M, std::vector<double>(n_scored, 0.0));
    std::vector<std::vector<uint8_t>> agree(M, std::vector<uint8_t>(n_scored, 1));
    std::vector<int32_t> ref_top(n_scored);

    std::vector<double> seconds(M, 0.0);
    // Rows scored in all windows: equals n_scored exactly when the windows tile the text.
    size_t rows_scored = 0;
    Outputs ref_out, out;
    ForwardOptions fo;
    fo.logits = LogitRows::All;
    fo.velocity = false;
    Batch b;
    for (size_t wi = 0; wi < windows.size(); ++wi) {
        const ScoreWindow& w = windows[wi];
        const size_t len = w.end - w.begin;
        b.token_ids.assign(tokens.begin() + w.begin, tokens.begin() + w.end);
        b.is_gen.clear();
        // A plain text window: every M-RoPE axis is the sequential position from 0.
        b.positions.resize(len);
        for (size_t i = 0; i < len; ++i) {
            const int64_t p = static_cast<int64_t>(i);
            b.positions[i] = {p, p, p};
        }
        b.splits = {{static_cast<int64_t>(len), SplitMode::Causal}};
        // Row r of a window predicts token begin + r + 1; scored rows [r0, len - 1).
        const size_t r0 = w.first_scored - w.begin - 1, rows = len - 1 - r0;
        rows_scored += rows;
        log_debug("perplexity: window ", wi + 1, "/", windows.size(), " tokens [", w.begin, ", ",
                  w.end, "), scoring ", rows);
        for (size_t m = 0; m < M; ++m) {
            const auto t0 = std::chrono::steady_clock::now();
            Outputs& o = m == 0 ? ref_out : out;
            decoders[m]->forward(b, nullptr, false, o, fo);
            if (o.logit_rows != len)
                fail("perplexity: forward gave ", o.logit_rows, " logit rows for ", len, " tokens");
            tp.parallel_for(rows, [&](size_t rb, size_t re) {
                std::vector<double> lp_ref(V), lp(V);
                for (size_t r = r0 + rb; r < r0 + re; ++r) {
                    const size_t t = w.begin + r + 1;  // the predicted token
                    const size_t k = t - 1;            // its scored-token index
                    const float* ref_logits = ref_out.logits.data() + r * full_v;
                    log_softmax(ref_logits, static_cast<int>(V), lp_ref.data());
                    if (m == 0) {
                        nll[0][k] = -lp_ref[tokens[t]];
                        ref_top[k] = argmax(ref_logits, V);
                        continue;
                    }
                    const float* logits = o.logits.data() + r * full_v;
                    log_softmax(logits, static_cast<int>(V), lp.data());
                    nll[m][k] = -lp[tokens[t]];
                    // KL(P_ref || P_m) = sum_i p_i (log p_i - log q_i); p_i = 0 terms vanish.
                    double d = 0;
                    for (size_t i = 0; i < V; ++i) {
                        const double p = std::exp(lp_ref[i]);
                        if (p > 0) d += p * (lp_ref[i] - lp[i]);
                    }
                    kl[m][k] = d;
                    agree[m][k] = argmax(logits, V) == ref_top[k];
                }
            });
            seconds[m] +=
                std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
        }
    }

    PerplexityResult res;
    res.n_tokens = tokens.size();
    res.windows = windows.size();
    res.ctx = ctx;
    res.stride = stride;
    for (size_t m = 0; m < M; ++m) {
        ModelScore s;
        s.tokens = rows_scored;
        s.seconds = seconds[m];
        s.mean_nll = mean_of(nll[m]);
        s.nll_se = se_of(nll[m], s.mean_nll);
        s.ppl = std::exp(s.mean_nll);
        s.ppl_se = s.ppl * s.nll_se;
        if (m == 0) {
            const double nan = std::numeric_limits<double>::quiet_NaN();
            s.mean_kl = s.kl_se = s.kl_p99 = s.kl_max = s.top1_agree = nan;
        } else {
            s.mean_kl = mean_of(kl[m]);
            s.kl_se = se_of(kl[m], s.mean_kl);
            std::vector<double> sorted = kl[m];
            std::sort(sorted.begin(), sorted.end());
            // Nearest rank: the smallest value with at least 99% of the tokens at or below it.
            const size_t rank = static_cast<size_t>(std::ceil(0.99 * sorted.size()));
            s.kl_p99 = sorted[std::max<size_t>(rank, 1) - 1];
            s.kl_max = sorted.back();
            size_t same = 0;
            for (uint8_t a : agree[m]) same += a;
            s.top1_agree = static_cast<double>(same) / static_cast<double>(n_scored);
            if (opt.keep_token_kl) s.token_kl = std::move(kl[m]);
        }
        res.models.push_back(std::move(s));
    }
    return res;
}

}  // namespace lancet
