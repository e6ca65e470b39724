// Checks activation statistics: per-channel mean/max against double sums, reservoir sampling
// (contents, determinism, uniform inclusion) and token-weighted merging.
#include <gtest/gtest.h>

#include <cmath>
#include <random>
#include <set>

#include "core/error.h"
#include "quant/act_stats.h"

namespace lancet::quant {
namespace {

// Row t has value t + 1 + channel / 1000 (non-zero, identifies the row).
std::vector<float> numbered_rows(int64_t t0, int64_t n, int in) {
    std::vector<float> x(n * in);
    for (int64_t t = 0; t < n; ++t)
        for (int i = 0; i < in; ++i)
            x[t * in + i] =
                ((t0 + t) % 2 ? -1.0f : 1.0f) * (static_cast<float>(t0 + t + 1) + i / 1000.0f);
    return x;
}
int64_t row_id(const LinearStats& s, int64_t r) {
    return std::lround(std::fabs(s.rows[r * s.in])) - 1;
}

TEST(QuantStats, MeanAndMaxMatchDoubleSums) {
    std::mt19937 rng(2);
    std::normal_distribution<float> nd(0.0f, 1.0f);
    const int in = 24;
    StatsAccumulator acc(in, 16);
    std::vector<double> sum(in, 0.0), mx(in, 0.0);
    int64_t total = 0;
    for (int call = 0; call < 5; ++call) {
        const int n = 7 + call * 3;
        std::vector<float> x(n * in);
        for (int t = 0; t < n; ++t)
            for (int i = 0; i < in; ++i) {
                float v = nd(rng) * (i == 3 ? 50.0f : 1.0f);
                if (v == 0.0f) v = 0.5f;
                x[t * in + i] = v;
                sum[i] += std::fabs(v);
                mx[i] = std::max(mx[i], static_cast<double>(std::fabs(v)));
            }
        acc.add_rows(x.data(), n, in);
        total += n;
    }
    const LinearStats s = acc.stats();
    EXPECT_EQ(s.n_tokens, total);
    EXPECT_EQ(s.n_rows(), 16);
    for (int i = 0; i < in; ++i) {
        // One f32 rounding of a double quotient.
        EXPECT_NEAR(s.mean_abs[i], sum[i] / total, sum[i] / total * 1e-7) << i;
        EXPECT_EQ(s.max_abs[i], static_cast<float>(mx[i])) << i;
    }
}

TEST(QuantStats, ReservoirKeepsAllRowsUntilFull) {
    const int in = 3;
    StatsAccumulator acc(in, 10);
    auto x = numbered_rows(0, 6, in);
    acc.add_rows(x.data(), 6, in);
    const LinearStats s = acc.stats();
    ASSERT_EQ(s.n_rows(), 6);
    EXPECT_EQ(s.rows, x);
}

TEST(QuantStats, ReservoirIsDeterministicAndUniform) {
    const int in = 2, n = 40, cap = 10, trials = 2000;
    std::vector<int> hits(n, 0);
    for (int seed = 0; seed < trials; ++seed) {
        StatsAccumulator acc(in, cap, seed);
        for (int64_t t0 = 0; t0 < n; t0 += 8) {
            auto x = numbered_rows(t0, 8, in);
            acc.add_rows(x.data(), 8, in);
        }
        const LinearStats s = acc.stats();
        ASSERT_EQ(s.n_rows(), cap);
        std::set<int64_t> ids;
        for (int r = 0; r < cap; ++r) ids.insert(row_id(s, r));
        ASSERT_EQ(ids.size(), static_cast<size_t>(cap));  // without replacement
        for (int64_t id : ids) {
            ASSERT_GE(id, 0);
            ASSERT_LT(id, n);
            hits[id]++;
        }
        if (seed == 7) {  // same calls, same seed: same sample
            StatsAccumulator again(in, cap, seed);
            for (int64_t t0 = 0; t0 < n; t0 += 8) {
                auto x = numbered_rows(t0, 8, in);
                again.add_rows(x.data(), 8, in);
            }
            EXPECT_EQ(again.stats().rows, s.rows);
        }
    }
    // Each row is kept with probability cap/n = 1/4: mean 500, sd ~19.4; allow 5 sd.
    for (int id = 0; id < n; ++id) EXPECT_NEAR(hits[id], trials * cap / n, 97) << id;
}

TEST(QuantStats, MergeWeightsByTokensAndSamplesTheUnion) {
    const int in = 4;
    const int64_t na = 30, nb = 90;
    int from_a = 0, total_rows = 0;
    for (uint64_t seed = 0; seed < 300; ++seed) {
        StatsAccumulator a(in, 12, 1), b(in, 12, 2), all(in, 12, 3);
        auto xa = numbered_rows(0, na, in), xb = numbered_rows(na, nb, in);
        a.add_rows(xa.data(), na, in);
        b.add_rows(xb.data(), nb, in);
        all.add_rows(xa.data(), na, in);
        all.add_rows(xb.data(), nb, in);
        const LinearStats m = merge(a.stats(), b.stats(), 12, seed);
        const LinearStats ref = all.stats();
        ASSERT_EQ(m.n_tokens, na + nb);
        ASSERT_EQ(m.n_rows(), 12);
        for (int i = 0; i < in; ++i) {
            ASSERT_NEAR(m.mean_abs[i], ref.mean_abs[i], ref.mean_abs[i] * 3e-7);
            ASSERT_EQ(m.max_abs[i], ref.max_abs[i]);
        }
        std::set<int64_t> ids;
        for (int r = 0; r < 12; ++r) {
            const int64_t id = row_id(m, r);
            ids.insert(id);
            from_a += id < na;
            ++total_rows;
        }
        ASSERT_EQ(ids.size(), 12u);
        if (seed == 0) {
            EXPECT_EQ(merge(a.stats(), b.stats(), 12, 0).rows, m.rows);
        }
    }
    // A quarter of the union's tokens come from a: expect 900 of 3600 rows, sd ~ 26.
    EXPECT_NEAR(from_a, total_rows / 4, 130);
}

TEST(QuantStats, MergeOfSmallReservoirsKeepsEverything) {
    const int in = 2;
    StatsAccumulator a(in, 8), b(in, 8);
    auto xa = numbered_rows(0, 3, in), xb = numbered_rows(3, 4, in);
    a.add_rows(xa.data(), 3, in);
    b.add_rows(xb.data(), 4, in);
    const LinearStats m = merge(a.stats(), b.stats(), 8);
    ASSERT_EQ(m.n_rows(), 7);
    std::set<int64_t> ids;
    for (int r = 0; r < 7; ++r) ids.insert(row_id(m, r));
    EXPECT_EQ(ids, (std::set<int64_t>{0, 1, 2, 3, 4, 5, 6}));
}

TEST(QuantStats, RejectsBadInput) {
    StatsAccumulator acc(4);
    std::vector<float> x(8, 1.0f);
    EXPECT_THROW(acc.add_rows(x.data(), 2, 3), Error);
    x[5] = INFINITY;
    EXPECT_THROW(acc.add_rows(x.data(), 2, 4), Error);
    LinearStats a, b;
    a.in = 3;
    b.in = 4;
    EXPECT_THROW(merge(a, b), Error);
}

// Items spread over shards in any order reduce to exactly what one accumulator over every item
// in order gives: the same means (bits), maxima, counts, and the same rows in the same order.
TEST(QuantStats, ShardsReduceToOneAccumulatorExactly) {
    std::mt19937 rng(5);
    std::normal_distribution<float> nd(0.0f, 1.0f);
    const int in = 7, cap = 20, items = 11;
    std::vector<std::vector<float>> rows(items);
    for (int i = 0; i < items; ++i) {
        rows[i].resize(static_cast<size_t>(3 + 4 * i) * in);
        for (float& v : rows[i]) v = nd(rng) * (1.0f + static_cast<float>(i));
    }
    auto add_item = [&](StatsAccumulator& a, int i) {
        a.begin_item(i);
        const int64_t n = static_cast<int64_t>(rows[i].size()) / in;
        a.add_rows(rows[i].data(), 2, in);  // any chunking of an item's rows
        a.add_rows(rows[i].data() + 2 * in, n - 2, in);
    };
    StatsAccumulator one(in, cap, 42);
    for (int i = 0; i < items; ++i) add_item(one, i);
    const LinearStats want = one.stats(true);
    ASSERT_EQ(want.n_rows(), cap);
    for (int world : {2, 3, 5}) {
        std::vector<StatsAccumulator> shard;
        for (int r = 0; r < world; ++r) shard.emplace_back(in, cap, 42);
        for (int i = items - 1; i >= 0; --i) add_item(shard[i % world], i);  // reversed order
        std::vector<LinearStats> parts;
        for (auto& a : shard) parts.push_back(a.stats(true));
        std::vector<const LinearStats*> ptrs;
        for (int r = world - 1; r >= 0; --r) ptrs.push_back(&parts[r]);
        const LinearStats got = reduce_exact(ptrs, cap);
        EXPECT_EQ(got.n_tokens, want.n_tokens);
        EXPECT_EQ(got.mean_abs, want.mean_abs);  // bitwise: exact integer sums
        EXPECT_EQ(got.max_abs, want.max_abs);
        EXPECT_EQ(got.rows, want.rows);
        EXPECT_EQ(got.row_keys, want.row_keys);
        EXPECT_EQ(got.sum_abs_q32, want.sum_abs_q32);
    }
    // The mean is the exact mean rounded once (to 2^-32 per value, then to f32).
    std::vector<double> sum(in, 0.0);
    for (const auto& r : rows)
        for (size_t k = 0; k < r.size(); ++k) sum[k % in] += std::fabs(r[k]);
    for (int i = 0; i < in; ++i)
        EXPECT_NEAR(want.mean_abs[i], sum[i] / want.n_tokens, sum[i] / want.n_tokens * 2e-7) << i;
    // The same item in two parts is refused; a part without the exact state too.
    const LinearStats dup = want;
    EXPECT_THROW(reduce_exact({&want, &dup}, cap), Error);
    const LinearStats plain = one.stats(false);
    EXPECT_THROW(reduce_exact({&plain}, cap), Error);
}

}  // namespace
}  // namespace lancet::quant
