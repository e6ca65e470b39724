// Checks ThreadPool partitioning: every item exactly once, static shares, nested calls run inline.
#include "core/thread_pool.h"

#include <gtest/gtest.h>

#include <atomic>
#include <vector>

#include "core/error.h"

namespace lancet {
namespace {

TEST(ThreadPool, EveryItemExactlyOnce) {
    for (size_t threads : {1, 2, 3, 5}) {
        ThreadPool pool(threads);
        ASSERT_EQ(pool.size(), threads);
        for (size_t n : {0, 1, 2, 7, 64, 1001})
            for (size_t grain : {1, 4}) {
                std::vector<std::atomic<int>> hits(n);
                pool.parallel_for(
                    n,
                    [&](size_t b, size_t e) {
                        EXPECT_LT(b, e);
                        EXPECT_TRUE(b % grain == 0) << b;
                        for (size_t i = b; i < e; ++i) hits[i]++;
                    },
                    grain);
                for (size_t i = 0; i < n; ++i)
                    ASSERT_EQ(hits[i].load(), 1)
                        << "threads " << threads << " n " << n << " i " << i;
            }
    }
}

TEST(ThreadPool, SharesAreStaticAndRunOnce) {
    ThreadPool pool(4);
    for (int rep = 0; rep < 200; ++rep) {  // many back-to-back jobs: spin and sleep paths
        std::vector<std::atomic<int>> seen(4);
        pool.run([&](size_t share, size_t n_shares) {
            EXPECT_EQ(n_shares, 4u);
            seen[share]++;
        });
        for (auto& s : seen) ASSERT_EQ(s.load(), 1);
    }
}

TEST(ThreadPool, NestedCallsRunInline) {
    ThreadPool pool(3);
    std::atomic<int> total{0};
    pool.parallel_for(3, [&](size_t, size_t) {
        pool.parallel_for(10, [&](size_t b, size_t e) { total += int(e - b); });
    });
    EXPECT_EQ(total.load(), 30);
}

TEST(ThreadPool, DefaultPoolFollowsSetting) {
    set_default_threads(3);
    EXPECT_EQ(default_pool().size(), 3u);
    set_default_threads(0);
    EXPECT_EQ(default_pool().size(), hardware_threads());
}

TEST(ThreadPool, AbsurdThreadCountsAreErrors) {
    // 100000 threads used to abort the process (std::system_error out of a half-built pool).
    EXPECT_THROW(ThreadPool(ThreadPool::kMaxThreads + 1), Error);
    EXPECT_THROW(set_default_threads(static_cast<size_t>(-1)), Error);
    EXPECT_EQ(default_pool().size(), hardware_threads());  // the setting is left unchanged
}

}  // namespace
}  // namespace lancet
