// Activation statistics: accumulation with a seeded reservoir sample, and token-weighted merging.
#include "quant/act_stats.h"

#include <algorithm>
#include <cmath>
#include <cstring>

#include "core/error.h"
#include "core/thread_pool.h"
#include "kernels/gemm.h"

namespace lancet::quant {

namespace {

// round(|x| 2^32) as an exact integer (x >= 0 and finite).
unsigned __int128 q32(float a) {
    const double d = static_cast<double>(a) * 0x1p32 + 0.5;
    if (d < 0x1p62) return static_cast<uint64_t>(d);
    if (d >= 0x1p120) fail("stats: activation ", a, " is too large to record");
    return static_cast<unsigned __int128>(d);
}

float mean_of(unsigned __int128 sum_q32, int64_t n) {
    return n > 0
               ? static_cast<float>(static_cast<double>(sum_q32) * 0x1p-32 / static_cast<double>(n))
               : 0.0f;
}

uint64_t mix64(uint64_t z) {
    z += 0x9e3779b97f4a7c15ull;
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

struct KeyLess {
    template <class A>
    bool operator()(const A& a, const A& b) const {
        if (a.priority != b.priority) return a.priority < b.priority;
        if (a.item != b.item) return a.item < b.item;
        return a.ordinal < b.ordinal;
    }
};

}  // namespace

uint64_t row_priority(uint64_t seed, int64_t item, int64_t ordinal) {
    return mix64(mix64(mix64(seed) ^ static_cast<uint64_t>(item)) ^ static_cast<uint64_t>(ordinal));
}

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
      seed_(seed),
      hessian_on_(hessian),
      sum_q32_(in > 0 ? in : 0, 0),
      max_abs_(in > 0 ? in : 0, 0.0f) {
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

void StatsAccumulator::begin_item(int64_t item) {
    item_ = item;
    ordinal_ = 0;
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
            sum_q32_[i] += q32(a);
            max_abs_[i] = std::max(max_abs_[i], a);
        }
        if (hessian_on_) {
            pending_.insert(pending_.end(), row, row + in);
            if (static_cast<int64_t>(pending_.size()) >= int64_t{kHessianBatch} * in_)
                flush_hessian();
        }
        // Bottom-k: keep the row when its priority beats the worst kept one.
        Kept k{row_priority(seed_, item_, ordinal_), item_, ordinal_, 0};
        ++ordinal_;
        if (static_cast<int64_t>(heap_.size()) < capacity_) {
            k.slot = static_cast<int64_t>(heap_.size());
            rows_.resize(static_cast<size_t>(k.slot + 1) * in_);
            heap_.push_back(k);
            std::push_heap(heap_.begin(), heap_.end(), KeyLess{});
        } else if (capacity_ > 0 && KeyLess{}(k, heap_.front())) {
            std::pop_heap(heap_.begin(), heap_.end(), KeyLess{});
            k.slot = heap_.back().slot;
            heap_.back() = k;
            std::push_heap(heap_.begin(), heap_.end(), KeyLess{});
        } else {
            continue;
        }
        std::memcpy(&rows_[k.slot * in_], row, sizeof(float) * in_);
    }
    n_tokens_ += n;
}

LinearStats StatsAccumulator::stats(bool exact) const {
    LinearStats s;
    s.in = in_;
    s.n_tokens = n_tokens_;
    s.mean_abs.resize(in_);
    for (int i = 0; i < in_; ++i) s.mean_abs[i] = mean_of(sum_q32_[i], n_tokens_);
    s.max_abs = max_abs_;
    std::vector<Kept> kept = heap_;
    std::sort(kept.begin(), kept.end(), [](const Kept& a, const Kept& b) {
        return a.item != b.item ? a.item < b.item : a.ordinal < b.ordinal;
    });
    s.rows.resize(kept.size() * in_);
    for (size_t r = 0; r < kept.size(); ++r)
        std::memcpy(&s.rows[r * in_], &rows_[kept[r].slot * in_], sizeof(float) * in_);
    if (exact) {
        s.sum_abs_q32.resize(static_cast<size_t>(in_) * 2);
        for (int i = 0; i < in_; ++i) {
            s.sum_abs_q32[2 * i] = static_cast<int64_t>(static_cast<uint64_t>(sum_q32_[i]));
            s.sum_abs_q32[2 * i + 1] =
                static_cast<int64_t>(static_cast<uint64_t>(sum_q32_[i] >> 64));
        }
        s.row_keys.resize(kept.size() * 3);
        for (size_t r = 0; r < kept.size(); ++r) {
            s.row_keys[3 * r] = static_cast<int64_t>(kept[r].priority);
            s.row_keys[3 * r + 1] = kept[r].item;
            s.row_keys[3 * r + 2] = kept[r].ordinal;
        }
    }
    if (hessian_on_) {
        flush_hessian();
        s.hessian = hessian_;
    }
    return s;
}

LinearStats reduce_exact(const std::vector<const LinearStats*>& parts, int capacity) {
    if (parts.empty()) fail("stats reduce: nothing to reduce");
    const int in = parts.front()->in;
    struct Cand {
        uint64_t priority;
        int64_t item, ordinal;
        const float* row;
    };
    std::vector<unsigned __int128> sum(in, 0);
    LinearStats r;
    r.in = in;
    r.max_abs.assign(in, 0.0f);
    std::vector<Cand> cand;
    // H's bits depend on the order rows were added in, so it cannot reduce byte-identically:
    // only a single part may carry one (calibrate refuses --hessian over several ranks).
    for (const LinearStats* p : parts)
        if (p->has_hessian() && parts.size() != 1)
            fail("stats reduce: a part holds a Hessian, which does not reduce across shards");
    if (parts.size() == 1) r.hessian = parts.front()->hessian;
    for (const LinearStats* p : parts) {
        if (p->in != in) fail("stats reduce: widths ", in, " and ", p->in, " differ");
        if (p->sum_abs_q32.size() != static_cast<size_t>(in) * 2 ||
            p->row_keys.size() != static_cast<size_t>(p->n_rows()) * 3)
            fail("stats reduce: a part holds no exact sums and row keys (not a partial file)");
        for (int i = 0; i < in; ++i) {
            sum[i] +=
                (static_cast<unsigned __int128>(static_cast<uint64_t>(p->sum_abs_q32[2 * i + 1]))
                 << 64) |
                static_cast<uint64_t>(p->sum_abs_q32[2 * i]);
            r.max_abs[i] = std::max(r.max_abs[i], p->max_abs[i]);
        }
        r.n_tokens += p->n_tokens;
        for (int64_t k = 0; k < p->n_rows(); ++k)
            cand.push_back({static_cast<uint64_t>(p->row_keys[3 * k]), p->row_keys[3 * k + 1],
                            p->row_keys[3 * k + 2], &p->rows[k * in]});
    }
    std::sort(cand.begin(), cand.end(), KeyLess{});
    for (size_t k = 1; k < cand.size(); ++k)
        if (cand[k].item == cand[k - 1].item && cand[k].ordinal == cand[k - 1].ordinal &&
            cand[k].priority == cand[k - 1].priority)
            fail("stats reduce: row ", cand[k].ordinal, " of item ", cand[k].item,
                 " appears in two parts (overlapping item sets)");
    if (cand.size() > static_cast<size_t>(std::max(capacity, 0)))
        cand.resize(std::max(capacity, 0));
    std::sort(cand.begin(), cand.end(), [](const Cand& a, const Cand& b) {
        return a.item != b.item ? a.item < b.item : a.ordinal < b.ordinal;
    });
    r.mean_abs.resize(in);
    r.sum_abs_q32.resize(static_cast<size_t>(in) * 2);
    for (int i = 0; i < in; ++i) {
        r.mean_abs[i] = mean_of(sum[i], r.n_tokens);
        r.sum_abs_q32[2 * i] = static_cast<int64_t>(static_cast<uint64_t>(sum[i]));
        r.sum_abs_q32[2 * i + 1] = static_cast<int64_t>(static_cast<uint64_t>(sum[i] >> 64));
    }
    r.rows.resize(cand.size() * in);
    r.row_keys.resize(cand.size() * 3);
    for (size_t k = 0; k < cand.size(); ++k) {
        std::memcpy(&r.rows[k * in], cand[k].row, sizeof(float) * in);
        r.row_keys[3 * k] = static_cast<int64_t>(cand[k].priority);
        r.row_keys[3 * k + 1] = cand[k].item;
        r.row_keys[3 * k + 2] = cand[k].ordinal;
    }
    return r;
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
