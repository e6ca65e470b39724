// Implementation of the sampler.
#include "pipeline/sampler.h"

#include <algorithm>
#include <cmath>
#include <limits>

#include "core/error.h"

namespace lancet {

Sampler::Sampler(const SamplerOptions& opt) : opt_(opt), rng_(opt.seed ^ 0x853c49e6748fea9bull) {
    // NaN passes every range check by comparison, so finiteness is tested explicitly.
    if (!std::isfinite(opt.temperature) || opt.temperature < 0.0f)
        fail("sampler: temperature must be a finite number >= 0, got ", opt.temperature);
    if (!std::isfinite(opt.top_p) || opt.top_p < 0.0f || opt.top_p > 1.0f)
        fail("sampler: top_p must be in [0, 1], got ", opt.top_p);
    if (opt.top_k < 0) fail("sampler: top_k must be >= 0, got ", opt.top_k);
}

int32_t Sampler::sample(const float* logits, int n) {
    int32_t best = 0;
    for (int i = 1; i < n; ++i)
        if (logits[i] > logits[best]) best = i;
    if (opt_.temperature <= 0.0f) return best;

    cand_.clear();
    for (int i = 0; i < n; ++i)
        if (std::isfinite(logits[i])) cand_.emplace_back(logits[i], i);
    // Highest first; ties by id so the order never depends on the sort implementation.
    auto by_logit = [](const auto& a, const auto& b) {
        return a.first != b.first ? a.first > b.first : a.second < b.second;
    };
    size_t keep = cand_.size();
    if (opt_.top_k > 0 && static_cast<size_t>(opt_.top_k) < keep) {
        keep = static_cast<size_t>(opt_.top_k);
        std::partial_sort(cand_.begin(), cand_.begin() + keep, cand_.end(), by_logit);
    } else {
        std::sort(cand_.begin(), cand_.end(), by_logit);
    }
    cand_.resize(keep);
    const double top = cand_.front().first;
    std::vector<double> p(keep);
    double sum = 0;
    for (size_t i = 0; i < keep; ++i)
        sum += p[i] = std::exp((cand_[i].first - top) / opt_.temperature);
    if (opt_.top_p < 1.0f) {
        double acc = 0;
        size_t cut = keep;
        for (size_t i = 0; i < keep; ++i) {
            acc += p[i] / sum;
            if (acc >= opt_.top_p) {
                cut = i + 1;
                break;
            }
        }
        keep = cut;
        sum = 0;
        for (size_t i = 0; i < keep; ++i) sum += p[i];
    }
    const double r = rng_.unit_double() * sum;
    double acc = 0;
    for (size_t i = 0; i < keep; ++i) {
        acc += p[i];
        if (r < acc) return cand_[i].second;
    }
    return cand_[keep - 1].second;
}

void log_softmax(const float* logits, int n, double* out) {
    double mx = -std::numeric_limits<double>::infinity();
    for (int i = 0; i < n; ++i) mx = std::max(mx, static_cast<double>(logits[i]));
    double sum = 0;
    for (int i = 0; i < n; ++i) sum += std::exp(static_cast<double>(logits[i]) - mx);
    const double lse = mx + std::log(sum);
    for (int i = 0; i < n; ++i) out[i] = static_cast<double>(logits[i]) - lse;
}

}  // namespace lancet
