// ThreadPool: a fixed set of workers with static partitioning, so results never depend on timing.
#pragma once

#include <algorithm>
#include <atomic>
#include <cstddef>
#include <cstdint>
#include <exception>
#include <mutex>
#include <thread>
#include <vector>

namespace lancet {

// n threads in all, the caller included (it runs share 0). Work is split statically: share t of
// T gets items [n*t/T, n*(t+1)/T), so which thread computes an item depends only on the count, and
// kernels that compute each output with a fixed instruction sequence give bit-identical results
// for any thread count. Workers spin briefly after a job (decode issues many small jobs back to
// back) and then sleep on a futex.
class ThreadPool {
  public:
    static constexpr size_t kMaxThreads = 1024;  // more is a typo, not a machine

    // Fails (lancet::Error) above kMaxThreads or when the system cannot start the threads.
    explicit ThreadPool(size_t n_threads);
    ~ThreadPool();
    ThreadPool(const ThreadPool&) = delete;
    ThreadPool& operator=(const ThreadPool&) = delete;

    size_t size() const { return n_threads_; }

    // Calls fn(share, n_shares) once for every share 0..size()-1, share 0 on the calling thread,
    // and returns when all have finished. fn must not throw. A call from inside a job (nested)
    // runs all shares on the current thread, in order.
    template <typename F>
    void run(F&& fn) {
        run_erased(&invoke<std::remove_reference_t<F>>, &fn);
    }

    // Splits [0, n_items) into size() contiguous ranges (in units of `grain` items, so a range
    // never splits a block) and calls fn(begin, end) for each non-empty one.
    template <typename F>
    void parallel_for(size_t n_items, F&& fn, size_t grain = 1) {
        const size_t units = (n_items + grain - 1) / grain;
        if (units <= 1 || n_threads_ == 1) {
            if (n_items > 0) fn(size_t{0}, n_items);
            return;
        }
        run([&](size_t t, size_t nt) {
            const size_t b = units * t / nt * grain;
            const size_t e = std::min(n_items, units * (t + 1) / nt * grain);
            if (b < e) fn(b, e);
        });
    }

  private:
    using Thunk = void (*)(void* ctx, size_t share, size_t n_shares);
    template <typename F>
    static void invoke(void* ctx, size_t share, size_t n_shares) {
        (*static_cast<F*>(ctx))(share, n_shares);
    }
    void run_erased(Thunk thunk, void* ctx);
    void worker(size_t share);

    size_t n_threads_;
    std::vector<std::thread> workers_;
    std::mutex run_mutex_;  // one job at a time when several outside threads share the pool
    Thunk thunk_ = nullptr;
    void* ctx_ = nullptr;
    std::atomic<uint32_t> generation_{0};  // bumped to start a job
    std::atomic<uint32_t> pending_{0};     // workers still running the current job
    std::atomic<bool> stop_{false};
};

// Number of CPUs this process may run on (at least 1).
size_t hardware_threads();

// The process-wide pool every kernel uses unless given one; created on first use with
// hardware_threads() threads, or the count set before by set_default_threads.
ThreadPool& default_pool();
// Replaces the default pool with one of n threads (0 = hardware_threads()). Not thread-safe
// against concurrent kernels: call it at start-up (the CLI's -t/--threads).
void set_default_threads(size_t n);

}  // namespace lancet

namespace lancet {

// Calls fn(begin, end) on the chunks [c * chunk, min(n, (c + 1) * chunk)) of [0, n), each share of
// `pool` taking a contiguous run of whole chunks. Chunk boundaries depend only on n and chunk, so
// work that writes only its own chunk's outputs is bit-identical for any thread count. Unlike
// ThreadPool::run, fn may throw: after every share has finished, the exception of the failing
// range that starts first is rethrown (so which error is reported does not depend on timing).
template <typename F>
void parallel_chunks(ThreadPool& pool, int64_t n, int64_t chunk, F&& fn) {
    if (n <= 0) return;
    chunk = chunk < 1 ? 1 : chunk;
    const size_t n_chunks = static_cast<size_t>((n + chunk - 1) / chunk);
    std::mutex mu;
    std::exception_ptr first;
    size_t first_at = n_chunks;
    pool.parallel_for(n_chunks, [&](size_t c0, size_t c1) {
        try {
            for (size_t c = c0; c < c1; ++c)
                fn(static_cast<int64_t>(c) * chunk,
                   std::min(n, static_cast<int64_t>(c + 1) * chunk));
        } catch (...) {
            std::lock_guard<std::mutex> lock(mu);
            if (c0 < first_at) {
                first_at = c0;
                first = std::current_exception();
            }
        }
    });
    if (first) std::rethrow_exception(first);
}

}  // namespace lancet
