// Activation statistics: accumulation with a seeded reservoir sample, and token-weighted merging.
#include "quant/act_stats.h"

#include <algorithm>
#include <cmath>
#include <cstring>

#include "core/error.h"
#include "core/thread_pool.h"
#include "kernels/gemm.h"

namespace lancet::quant {

std::vector<float> unpack_symmetric(const std::vector<double>& packed, int in) {
    if (static_cast<int64_t>(packed.size()) != packed_size(in))
        fail("packed symmetric matrix: ", packed.size(), " values for width ", in);
    std::vector<float> h(static_cast<size_t>(in) * in);
    for (int i = 0; i < in; ++i) {
        const double* row = &packed[packed_index(in, i, i)];
        for (int j = i; j < in; ++j)
            h[static_cast<size_t>(i) * in + j] = h[static_cast<size_t>(j) * in + i] =
                static_cast<float>(row[j - i]);
    }
    return h;
}

StatsAccumulator::StatsAccumulator(int in, int capacity, uint64_t seed, bool hessian)
    : in_(in),
      capacity_(capacity),
      hessian_on_(hessian),
      rng_(seed),
      sum_abs_(in, 0.0),
      max_abs_(in, 0.0f) {
    if (in <= 0 || capacity < 0)
        fail("stats accumulator: bad width ", in, " or capacity ", capacity);
    if (hessian_on_) hessian_.assign(static_cast<size_t>(packed_size(in)), 0.0);
}

void StatsAccumulator::flush_hessian() const {
    const int64_t m = static_cast<int64_t>(pending_.size()) / in_;
    if (m == 0) return;
    // Xᵀ [in, m]; band [i0, i1) of H's rows gets Xᵀ[i0..i1) · Xᵀ[i0..in)ᵀ (its upper part only).
    std::vector<float> xt(static_cast<size_t>(in_) * m);
    for (int64_t t = 0; t < m; ++t)
        for (int i = 0; i < in_; ++i) xt[static_cast<size_t>(i) * m + t] = pending_[t * in_ + i];
    constexpr int64_t kBand = 32;
    parallel_chunks(default_pool(), in_, kBand, [&](int64_t i0, int64_t i1) {
        const int64_t w = in_ - i0;
        std::vector<float> c(static_cast<size_t>((i1 - i0) * w));
        kernels::gemm_nt(i1 - i0, w, m, &xt[static_cast<size_t>(i0) * m], m,
                         &xt[static_cast<size_t>(i0) * m], m, c.data(), w, false);
        for (int64_t i = i0; i < i1; ++i) {
            double* dst = &hessian_[packed_index(in_, static_cast<int>(i), static_cast<int>(i))];
            const float* src = &c[(i - i0) * w + (i - i0)];
            for (int64_t j = 0; j < in_ - i; ++j) dst[j] += src[j];
        }
    });
    pending_.clear();
}

void StatsAccumulator::add_rows(const float* x, int64_t n, int in) {
    if (in != in_) fail("stats: rows of width ", in, " added to statistics of width ", in_);
    for (int64_t t = 0; t < n; ++t) {
        const float* row = x + t * in;
        for (int i = 0; i < in; ++i)
            if (!std::isfinite(row[i]))
                fail("stats: activation [", t, ", ", i, "] = ", row[i], " is not finite");
        for (int i = 0; i < in; ++i) {
            const float a = std::fabs(row[i]);
            sum_abs_[i] += a;
            max_abs_[i] = std::max(max_abs_[i], a);
        }
        // Algorithm R: row number k (0-based) replaces a uniform slot with probability cap/(k+1).
        const int64_t k = n_tokens_ + t;
        int64_t slot = -1;
        if (k < capacity_) {
            slot = k;
            rows_.resize(static_cast<size_t>(k + 1) * in_);
        } else {
            const uint64_t j = rng_.below(static_cast<uint64_t>(k + 1));
            if (j < static_cast<uint64_t>(capacity_)) slot = static_cast<int64_t>(j);
        }
        if (slot >= 0) std::memcpy(&rows_[slot * in_], row, sizeof(float) * in_);
        if (hessian_on_) {
            pending_.insert(pending_.end(), row, row + in);
            if (static_cast<int64_t>(pending_.size()) >= int64_t{kHessianBatch} * in_)
                flush_hessian();
        }
    }
    n_tokens_ += n;
}

LinearStats StatsAccumulator::stats() const {
    LinearStats s;
    s.in = in_;
    s.n_tokens = n_tokens_;
    s.mean_abs.resize(in_);
    for (int i = 0; i < in_; ++i)
        s.mean_abs[i] = n_tokens_ > 0 ? static_cast<float>(sum_abs_[i] / n_tokens_) : 0.0f;
    s.max_abs = max_abs_;
    s.rows = rows_;
    if (hessian_on_) {
        flush_hessian();
        s.hessian = hessian_;
    }
    return s;
}

LinearStats merge(const LinearStats& a, const LinearStats& b, int capacity, uint64_t seed) {
    if (a.in != b.in) fail("stats merge: widths ", a.in, " and ", b.in, " differ");
    const int in = a.in;
    LinearStats r;
    r.in = in;
    r.n_tokens = a.n_tokens + b.n_tokens;
    r.mean_abs.assign(in, 0.0f);
    r.max_abs.assign(in, 0.0f);
    for (int i = 0; i < in; ++i) {
        if (r.n_tokens > 0)
            r.mean_abs[i] = static_cast<float>((static_cast<double>(a.mean_abs[i]) * a.n_tokens +
                                                static_cast<double>(b.mean_abs[i]) * b.n_tokens) /
                                               static_cast<double>(r.n_tokens));
        r.max_abs[i] = std::max(a.max_abs[i], b.max_abs[i]);
    }
    if (a.has_hessian() && b.has_hessian()) {
        if (a.hessian.size() != b.hessian.size())
            fail("stats merge: Hessians of ", a.hessian.size(), " and ", b.hessian.size(),
                 " values");
        r.hessian.resize(a.hessian.size());
        for (size_t i = 0; i < r.hessian.size(); ++i) r.hessian[i] = a.hessian[i] + b.hessian[i];
    }
    // Size of the merged sample: a truncated reservoir (fewer rows than tokens) caps it.
    int64_t k = std::min<int64_t>(capacity, r.n_tokens);
    if (a.n_rows() < a.n_tokens) k = std::min(k, a.n_rows());
    if (b.n_rows() < b.n_tokens) k = std::min(k, b.n_rows());
    Rng rng(seed ^ (static_cast<uint64_t>(a.n_tokens) * 0x9e3779b97f4a7c15ull) ^
            static_cast<uint64_t>(b.n_tokens));
    // Random order within each reservoir, so taking a prefix is a uniform subsample.
    auto shuffled = [&](const LinearStats& s) {
        std::vector<int64_t> idx(s.n_rows());
        for (size_t i = 0; i < idx.size(); ++i) idx[i] = static_cast<int64_t>(i);
        for (size_t i = idx.size(); i > 1; --i) std::swap(idx[i - 1], idx[rng.below(i)]);
        return idx;
    };
    const std::vector<int64_t> ia = shuffled(a), ib = shuffled(b);
    r.rows.resize(static_cast<size_t>(k) * in);
    int64_t rem_a = a.n_tokens, rem_b = b.n_tokens, ta = 0, tb = 0;
    for (int64_t t = 0; t < k; ++t) {
        // Draw the next row of the union without replacement: it is one of a's tokens with
        // probability rem_a / (rem_a + rem_b).
        const bool from_a =
            rng.below(static_cast<uint64_t>(rem_a + rem_b)) < static_cast<uint64_t>(rem_a);
        const float* src = from_a ? &a.rows[ia[ta++] * in] : &b.rows[ib[tb++] * in];
        (from_a ? rem_a : rem_b)--;
        std::memcpy(&r.rows[t * in], src, sizeof(float) * in);
    }
    return r;
}

}  // namespace lancet::quant
