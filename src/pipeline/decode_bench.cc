// Prefill/decode timing and per-token weight bytes (see decode_bench.h).
#include "pipeline/decode_bench.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <string>
#include <vector>

#include "core/error.h"
#include "kernels/linear.h"

namespace lancet {

namespace {

uint64_t stored_bytes(const LanceCheckpoint& ck, const std::string& name) {
    const TensorEntry& e = ck.main().entry(name);
    return e.end - e.begin;
}

double median(std::vector<double> v) {
    std::sort(v.begin(), v.end());
    const size_t m = v.size() / 2;
    return v.size() % 2 ? v[m] : 0.5 * (v[m - 1] + v[m]);
}

}  // namespace

std::string weight_format_label(const LanceCheckpoint& ck) {
    if (const AwqMeta* q = ck.quant_meta())
        return std::string(quant_format_name(q->format)) + " g" + std::to_string(q->group_size);
    const std::string probe = path_names(0, false).weight(PathLinear::Gate);
    return ck.has_tensor(probe) ? std::string(dtype_name(ck.tensor(probe).dtype)) : "original";
}

DecodeWeightBytes decode_weight_bytes(const LanceCheckpoint& ck) {
    DecodeWeightBytes b;
    // expected() already lists an AWQ linear as its qweight/scales/zeros, so summing the stored
    // entries counts what the file holds.
    for (const TensorSpec& s : ck.expected()) {
        if (s.component == Component::LlmUnd) {
            (s.kind == TensorKind::Norm ? b.norms : b.linears) += stored_bytes(ck, s.name);
        } else if (s.component == Component::LmHead) {
            b.lm_head += stored_bytes(ck, s.name);
        } else if (s.component == Component::Embedding) {
            const uint64_t rows = static_cast<uint64_t>(s.shape.at(0));
            b.embedding_row += stored_bytes(ck, s.name) / rows;
        }
    }
    return b;
}

namespace {

// The run whose time is closest to the median (its own split, not one mixed from other runs).
size_t median_index(const std::vector<double>& v, double med) {
    return std::min_element(
               v.begin(), v.end(),
               [&](double a, double b) { return std::abs(a - med) < std::abs(b - med); }) -
           v.begin();
}

// A prompt of n random ids below `limit` at text positions 0..n-1.
Batch random_prompt(size_t n, uint64_t seed, uint64_t limit) {
    Batch prompt;
    uint64_t s = seed;
    for (size_t i = 0; i < n; ++i) {
        s = s * 6364136223846793005ull + 1442695040888963407ull;
        prompt.token_ids.push_back(static_cast<int64_t>((s >> 33) % limit));
        const int64_t p = static_cast<int64_t>(i);
        prompt.positions.push_back({p, p, p});
    }
    return prompt;
}

void check_lengths(const LanceConfig& cfg, size_t n, size_t m, int reps) {
    if (n < 1) fail("bench decode: --prompt-tokens must be >= 1");
    if (reps < 1) fail("bench decode: --reps must be >= 1");
    // Compared without n + m, which wraps for a huge (e.g. "-1" parsed as size_t) count.
    const size_t ctx = static_cast<size_t>(cfg.max_position_embeddings);
    if (cfg.max_position_embeddings > 0 && (n > ctx || m > ctx - n))
        fail("bench decode: ", n, " prompt + ", m, " decoded tokens exceed the context (",
             cfg.max_position_embeddings, ")");
}

}  // namespace

StreamsBenchResult bench_decode_streams(DecoderSession& dec, const DecodeBenchOptions& opt,
                                        size_t streams) {
    const size_t n = opt.prompt_tokens, m = opt.decode_tokens;
    check_lengths(dec.config(), n, m, opt.reps);
    if (streams < 1) fail("bench decode: --streams must be >= 1");
    const uint64_t limit = static_cast<uint64_t>(dec.logits_limit());
    const size_t V = static_cast<size_t>(dec.config().vocab_size);
    std::vector<Batch> prompts;
    std::vector<KvCache> caches;
    for (size_t s = 0; s < streams; ++s) {
        prompts.push_back(random_prompt(n, opt.seed + 7919 * s, limit));
        caches.push_back(dec.make_cache(n + m));
    }
    Outputs out;
    ForwardOptions fo;
    fo.logits = LogitRows::Last;
    fo.velocity = false;
    std::vector<int64_t> ids(streams);
    std::vector<RopePosition> pos(streams);
    std::vector<DecodeItem> items(streams);
    std::vector<double> decs, lins;
    kernels::set_linear_timing(true);
    for (int r = 0; r < opt.reps; ++r) {
        for (size_t s = 0; s < streams; ++s) {
            caches[s].clear();
            dec.forward(prompts[s], &caches[s], true, out, fo);
            const float* row = out.logits.data();
            ids[s] = std::max_element(row, row + limit) - row;
            items[s] = {std::span<const int64_t>(&ids[s], 1),
                        std::span<const RopePosition>(&pos[s], 1), &caches[s]};
        }
        kernels::reset_linear_seconds();
        const auto t0 = std::chrono::steady_clock::now();
        for (size_t i = 0; i < m; ++i) {
            const int64_t p = static_cast<int64_t>(n + i);
            for (size_t s = 0; s < streams; ++s) pos[s] = {p, p, p};
            dec.decode_step(items, out);
            for (size_t s = 0; s < streams; ++s) {
                const float* row = out.logits.data() + s * V;
                ids[s] = std::max_element(row, row + limit) - row;
            }
        }
        decs.push_back(
            std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
        lins.push_back(kernels::linear_seconds());
    }
    kernels::set_linear_timing(false);
    StreamsBenchResult res;
    res.streams = streams;
    res.decode_s = median(decs);
    res.decode_linear_s = lins[median_index(decs, res.decode_s)];
    res.decode_tps = m ? static_cast<double>(streams * m) / res.decode_s : 0.0;
    return res;
}

DecodeBenchResult bench_decode(DecoderSession& dec, const DecodeBenchOptions& opt) {
    const size_t n = opt.prompt_tokens, m = opt.decode_tokens;
    check_lengths(dec.config(), n, m, opt.reps);
    const uint64_t limit = static_cast<uint64_t>(dec.logits_limit());
    const Batch prompt = random_prompt(n, opt.seed, limit);
    KvCache cache = dec.make_cache(n + m);
    Outputs out;
    ForwardOptions fo;
    fo.logits = LogitRows::Last;
    fo.velocity = false;
    Batch step;
    step.token_ids.resize(1);
    step.positions.resize(1);
    using Clock = std::chrono::steady_clock;
    std::vector<double> pre, decs, lins, jobs;
    const ThreadPool& pool = dec.context().threads();
    kernels::set_linear_timing(true);
    for (int r = 0; r < opt.reps; ++r) {
        cache.clear();
        const auto t0 = Clock::now();
        dec.forward(prompt, &cache, true, out, fo);
        const auto t1 = Clock::now();
        kernels::reset_linear_seconds();
        const uint64_t j0 = pool.jobs_dispatched();
        for (size_t i = 0; i < m; ++i) {
            const float* row = out.logits.data();
            const int64_t next = std::max_element(row, row + limit) - row;
            const int64_t p = static_cast<int64_t>(n + i);
            step.token_ids[0] = next;
            step.positions[0] = {p, p, p};
            dec.forward(step, &cache, true, out, fo);
        }
        const auto t2 = Clock::now();
        pre.push_back(std::chrono::duration<double>(t1 - t0).count());
        decs.push_back(std::chrono::duration<double>(t2 - t1).count());
        lins.push_back(kernels::linear_seconds());
        jobs.push_back(m ? double(pool.jobs_dispatched() - j0) / double(m) : 0.0);
    }
    kernels::set_linear_timing(false);
    DecodeBenchResult res;
    res.prefill_s = median(pre);
    res.decode_s = median(decs);
    // The linear share of the median run (not the median of the shares, which may mix runs).
    const size_t mid = median_index(decs, res.decode_s);
    res.decode_linear_s = lins[mid];
    res.decode_jobs_per_token = jobs[mid];
    res.prefill_tps = static_cast<double>(n) / res.prefill_s;
    res.decode_tps = m ? static_cast<double>(m) / res.decode_s : 0.0;
    return res;
}

}  // namespace lancet
