// Checks ThreadPool partitioning: every item exactly once, ranges fixed by the sizes alone, shares
// run once each, a stalled worker's chunks taken over by the caller, parallel_ranges' forward
// runs and take-overs, nested calls run inline, and parallel_chunks reporting the same error for
// any thread count.
#include "core/thread_pool.h"

#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <mutex>
#include <set>
#include <string>
#include <thread>
#include <utility>
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

TEST(ThreadPool, RangesDependOnlyOnTheSizes) {
    // Which thread runs a range depends on timing; the ranges themselves must not, or kernels
    // that compute each range's outputs in a fixed order would not be bit-identical run to run.
    for (size_t threads : {2, 3}) {
        ThreadPool pool(threads);
        for (size_t n : {2, 5, 64, 1001}) {
            std::set<std::pair<size_t, size_t>> first;
            for (int rep = 0; rep < 50; ++rep) {
                std::mutex mu;
                std::set<std::pair<size_t, size_t>> ranges;
                pool.parallel_for(n, [&](size_t b, size_t e) {
                    std::lock_guard<std::mutex> lock(mu);
                    ranges.emplace(b, e);
                });
                EXPECT_LE(ranges.size(), ThreadPool::kChunksPerThread * threads);
                if (rep == 0)
                    first = ranges;
                else
                    ASSERT_EQ(ranges, first) << "threads " << threads << " n " << n;
            }
        }
    }
}

TEST(ThreadPool, SharesRunOnceEach) {
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

TEST(ThreadPool, StalledWorkerChunksAreTakenOver) {
    // The first chunk a worker claims stalls until every other chunk is done (a descheduled
    // worker). With static halves the caller would do its half and wait; with claimed chunks it
    // does everything but the stalled chunk. Jobs where the caller ran every chunk before the
    // worker woke prove nothing, so the experiment repeats until a worker took part.
    ThreadPool pool(2);
    const auto caller = std::this_thread::get_id();
    const size_t n = 64;
    bool worker_took_part = false;
    for (int rep = 0; rep < 10000 && !worker_took_part; ++rep) {
        std::atomic<size_t> done{0}, by_caller{0}, stalled_size{0};
        std::atomic<bool> stalled{false};
        pool.parallel_for(n, [&](size_t b, size_t e) {
            if (std::this_thread::get_id() != caller && !stalled.exchange(true)) {
                stalled_size = e - b;
                // Bounded only so that a broken pool fails instead of hanging the suite.
                const auto give_up = std::chrono::steady_clock::now() + std::chrono::seconds(60);
                while (done.load() < n - (e - b) && std::chrono::steady_clock::now() < give_up)
                    std::this_thread::yield();
            }
            volatile size_t work = 0;  // a few microseconds per chunk, time for a worker to join
            for (size_t i = 0; i < 20000; ++i) work = work + i;
            if (std::this_thread::get_id() == caller) by_caller += e - b;
            done += e - b;
        });
        ASSERT_EQ(done.load(), n);
        if (stalled.load()) {
            worker_took_part = true;
            // Everything but the stalled chunk was done by the caller, not waiting for its share.
            EXPECT_EQ(by_caller.load(), n - stalled_size.load());
            EXPECT_GT(by_caller.load(), n / 2);
        }
    }
    EXPECT_TRUE(worker_took_part);
}

TEST(ThreadPool, ParallelRangesRunEveryItemOnceInForwardRuns) {
    {  // more threads than range words: parallel_for's chunks, still every item once
        ThreadPool pool(ThreadPool::kMaxRangeShares + 3);
        std::vector<std::atomic<int>> hits(1001);
        std::atomic<int> calls{0};
        pool.parallel_ranges(hits.size(), [&](size_t i) {
            hits[i]++;
            calls++;
        });
        for (const auto& h : hits) ASSERT_EQ(h.load(), 1);
        EXPECT_EQ(calls.load(), 1001);
    }
    for (size_t threads : {1, 2, 3, 5})
        for (int rep = 0; rep < 20; ++rep) {
            ThreadPool pool(threads);
            for (size_t n : {0, 1, 2, 3, 7, 64, 1001}) {
                std::vector<std::atomic<int>> hits(n);
                std::mutex mu;
                std::vector<std::vector<size_t>> order;  // items in the order each thread ran them
                std::vector<std::thread::id> ids;
                pool.parallel_ranges(n, [&](size_t i) {
                    ASSERT_LT(i, n);
                    hits[i]++;
                    std::lock_guard<std::mutex> lock(mu);
                    const auto id = std::this_thread::get_id();
                    size_t t = 0;
                    while (t < ids.size() && ids[t] != id) ++t;
                    if (t == ids.size()) {
                        ids.push_back(id);
                        order.emplace_back();
                    }
                    order[t].push_back(i);
                });
                for (size_t i = 0; i < n; ++i)
                    ASSERT_EQ(hits[i].load(), 1)
                        << "threads " << threads << " n " << n << " i " << i;
                // A thread walks forward except where it jumps to a range it took over, and a
                // take-over moves half of what is left there, so backward jumps are few (a thread
                // taking another's items one at a time from the back would jump on every item).
                if (n < 1000) continue;
                for (const auto& o : order) {
                    size_t back = 0;
                    for (size_t k = 1; k < o.size(); ++k) back += o[k] < o[k - 1];
                    EXPECT_LE(back, n / 8) << "threads " << threads << " n " << n;
                }
            }
        }
}

TEST(ThreadPool, ParallelRangesTakeOverAStalledThreadsRange) {
    // A worker stalls on its first item until every other item is done (a descheduled thread):
    // the caller must run the rest of the worker's range, not wait for it.
    ThreadPool pool(2);
    const auto caller = std::this_thread::get_id();
    const size_t n = 64;
    bool worker_took_part = false;
    for (int rep = 0; rep < 10000 && !worker_took_part; ++rep) {
        std::atomic<size_t> done{0}, by_caller{0};
        std::atomic<bool> stalled{false};
        std::vector<size_t> caller_order;
        pool.parallel_ranges(n, [&](size_t i) {
            if (std::this_thread::get_id() != caller && !stalled.exchange(true)) {
                // Bounded only so that a broken pool fails instead of hanging the suite.
                const auto give_up = std::chrono::steady_clock::now() + std::chrono::seconds(60);
                while (done.load() < n - 1 && std::chrono::steady_clock::now() < give_up)
                    std::this_thread::yield();
            }
            volatile size_t work = 0;  // a few microseconds per item, time for a worker to join
            for (size_t i = 0; i < 20000; ++i) work = work + i;
            if (std::this_thread::get_id() == caller) {
                by_caller++;
                caller_order.push_back(i);
            }
            done++;
        });
        ASSERT_EQ(done.load(), n);
        if (stalled.load()) {
            worker_took_part = true;
            EXPECT_EQ(by_caller.load(), n - 1);
            // The caller took the stalled range over in halves, each walked forward: about
            // log2(n / 2) backward jumps, where taking single items from the back makes n / 2.
            size_t back = 0;
            for (size_t k = 1; k < caller_order.size(); ++k)
                back += caller_order[k] < caller_order[k - 1];
            EXPECT_LE(back, 6u);
        }
    }
    EXPECT_TRUE(worker_took_part);
}

TEST(ThreadPool, ParallelChunksReportsTheLowestFailingChunk) {
    // Chunks 5 and 40 fail; whatever the thread count and schedule, chunk 5's error is reported.
    for (size_t threads : {1, 2, 3}) {
        ThreadPool pool(threads);
        for (int rep = 0; rep < 20; ++rep) {
            std::string what;
            try {
                parallel_chunks(pool, 100, 2, [&](int64_t b, int64_t) {
                    if (b == 10 || b == 80) fail("chunk at ", b);
                });
            } catch (const Error& e) {
                what = e.what();
            }
            ASSERT_EQ(what, "chunk at 10") << "threads " << threads;
        }
    }
}

TEST(ThreadPool, NestedCallsRunInline) {
    ThreadPool pool(3);
    std::atomic<int> total{0}, items{0};
    pool.parallel_for(3, [&](size_t, size_t) {
        pool.parallel_for(10, [&](size_t b, size_t e) { total += int(e - b); });
        pool.parallel_ranges(10, [&](size_t) { items++; });
    });
    EXPECT_EQ(total.load(), 30);
    EXPECT_EQ(items.load(), 30);
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
