// ThreadPool: a fixed set of workers that claim a job's chunks dynamically, with chunk boundaries
// fixed in advance, so results never depend on timing and a slow worker never holds up the rest.
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

// n threads in all, the caller included. A job is a fixed list of chunks (shares of run(),
// ranges of parallel_for) whose boundaries depend only on the job's size and the thread count;
// the caller and the workers claim chunks one at a time through an atomic counter, so which
// thread computes a chunk depends on timing but what it computes does not: kernels that compute
// each output with a fixed instruction sequence give bit-identical results for any thread count
// and any schedule. A worker that is descheduled or slow (another process on its core) simply
// claims fewer chunks; the caller never waits for a worker that has not started, only for a
// chunk already claimed. Waits are adaptive: a short spin, then sched_yield, then a futex sleep,
// so idle or preempted threads do not burn the cores the working ones need; a worker that keeps
// finding nothing left to claim sleeps at once, and sleeping workers are woken only for jobs
// whose remaining chunks are worth the wake-up.
class ThreadPool {
  public:
    static constexpr size_t kMaxThreads = 1024;  // more is a typo, not a machine
    // parallel_for splits into up to this many ranges per thread, so that the other threads can
    // take over a slow thread's remaining ranges.
    static constexpr size_t kChunksPerThread = 4;

    // Fails (lancet::Error) above kMaxThreads or when the system cannot start the threads.
    explicit ThreadPool(size_t n_threads);
    ~ThreadPool();
    ThreadPool(const ThreadPool&) = delete;
    ThreadPool& operator=(const ThreadPool&) = delete;

    size_t size() const { return n_threads_; }
    // Jobs handed to the workers so far (run()/parallel_for calls of more than one chunk on a
    // pool of more than one thread, not nested); what `bench decode` counts per token.
    uint64_t jobs_dispatched() const { return jobs_.load(std::memory_order_relaxed); }

    // Calls fn(share, n_shares) once for every share 0..size()-1 (n_shares == size()), each on
    // whichever thread claims it (the calling thread takes part), and returns when all have
    // finished. No two calls with the same share overlap, so per-share scratch indexed by share
    // is safe. fn must not throw. A call from inside a job (nested) runs all shares on the
    // current thread, in order.
    template <typename F>
    void run(F&& fn) {
        run_erased(&invoke<std::remove_reference_t<F>>, &fn, n_threads_);
    }

    // Splits [0, n_items) into contiguous ranges in units of `grain` items (a range never splits
    // a block), at most kChunksPerThread * size() of them, and calls fn(begin, end) once for each.
    // The ranges depend only on n_items, grain and size(); fn must not throw.
    template <typename F>
    void parallel_for(size_t n_items, F&& fn, size_t grain = 1) {
        const size_t units = (n_items + grain - 1) / grain;
        if (units <= 1 || n_threads_ == 1) {
            if (n_items > 0) fn(size_t{0}, n_items);
            return;
        }
        const size_t chunks = std::min(units, kChunksPerThread * n_threads_);
        run_chunks(chunks, [&](size_t c, size_t nc) {
            const size_t b = units * c / nc * grain;
            const size_t e = std::min(n_items, units * (c + 1) / nc * grain);
            if (b < e) fn(b, e);
        });
    }

    // Calls fn(item) once for every item of [0, n_items). Each thread (a share of run()) walks
    // one contiguous range of about n_items / size() items from its front, so each thread reads
    // one sequential stream; a thread whose range is done takes the back half of what is left of
    // another's range as its own and goes on there (so a late, slow or descheduled thread delays
    // the job by at most the item it is running, and a thread left alone still walks long forward
    // runs). For jobs of a few hundred microseconds that stream from memory (the n = 1 GEMVs),
    // where every extra range start costs a hardware-prefetcher ramp. Which thread runs an item
    // depends on timing, what it computes does not; fn must not throw.
    template <typename F>
    void parallel_ranges(size_t n_items, F&& fn) {
        const size_t T = std::min(n_threads_, n_items);
        if (T <= 1) {
            for (size_t i = 0; i < n_items; ++i) fn(i);
            return;
        }
        if (n_items >= (uint64_t{1} << 32) || T > kMaxRangeShares) {
            // Beyond the range words' reach: parallel_for's claimed chunks instead.
            parallel_for(n_items, [&](size_t b, size_t e) {
                for (size_t i = b; i < e; ++i) fn(i);
            });
            return;
        }
        // Range s: [front, back) in one word (front << 32 | back), taken at the front by the
        // thread that owns it and cut at the back by the others; one cache line each.
        struct alignas(64) Range {
            std::atomic<uint64_t> fb;
        };
        Range ranges[kMaxRangeShares];
        for (size_t s = 0; s < T; ++s)
            ranges[s].fb.store((uint64_t(n_items * s / T) << 32) | (n_items * (s + 1) / T),
                               std::memory_order_relaxed);
        run([&](size_t share, size_t) {
            if (share >= T) return;
            Range& mine = ranges[share];
            for (;;) {
                for (;;) {  // the own range, front to back
                    uint64_t w = mine.fb.load(std::memory_order_relaxed);
                    const uint64_t f = w >> 32, b = w & 0xffffffffu;
                    if (f >= b) break;
                    if (mine.fb.compare_exchange_weak(w, ((f + 1) << 32) | b,
                                                      std::memory_order_relaxed))
                        fn(size_t(f));
                }
                bool took = false;  // the back half of the first range with items left
                for (size_t k = 1; k < T && !took; ++k) {
                    Range& r = ranges[(share + k) % T];
                    for (;;) {
                        uint64_t w = r.fb.load(std::memory_order_relaxed);
                        const uint64_t f = w >> 32, b = w & 0xffffffffu;
                        if (f >= b) break;
                        const uint64_t mid = f + (b - f) / 2;
                        if (r.fb.compare_exchange_weak(w, (f << 32) | mid,
                                                       std::memory_order_relaxed)) {
                            // Nobody else writes an empty range: others only cut non-empty ones.
                            mine.fb.store((mid << 32) | b, std::memory_order_relaxed);
                            took = true;
                            break;
                        }
                    }
                }
                if (!took) return;
            }
        });
    }
    // parallel_ranges falls back to parallel_for's chunks above this many threads.
    static constexpr size_t kMaxRangeShares = 64;

  private:
    using Thunk = void (*)(void* ctx, size_t chunk, size_t n_chunks);
    template <typename F>
    static void invoke(void* ctx, size_t chunk, size_t n_chunks) {
        (*static_cast<F*>(ctx))(chunk, n_chunks);
    }
    template <typename F>
    void run_chunks(size_t n_chunks, F&& fn) {
        run_erased(&invoke<std::remove_reference_t<F>>, &fn, n_chunks);
    }
    void run_erased(Thunk thunk, void* ctx, size_t n_chunks);
    // Claims and runs chunks of job `gen` until none is left; returns how many it ran and sets
    // n_chunks to the job's count when it ran any.
    uint32_t claim_and_run(uint32_t gen, uint32_t& n_chunks);
    void worker();

    size_t n_threads_;
    std::vector<std::thread> workers_;
    std::mutex run_mutex_;  // one job at a time when several outside threads share the pool
    uint32_t gen_ = 0;      // the caller's job counter (under run_mutex_)

    // The current job's function, published by the release store of ticket_ and read only after
    // a successful claim (the job cannot end before the claimed chunk does). Atomics (relaxed)
    // because a worker late for one job may race with the set-up of the next.
    std::atomic<Thunk> thunk_{nullptr};
    std::atomic<void*> ctx_{nullptr};
    // generation (32 bits) | chunk count (16) | next unclaimed chunk (16), claimed by
    // compare-exchange: a claim succeeds only for the job, and within the count, the claimer saw.
    std::atomic<uint64_t> ticket_{0};
    std::atomic<uint32_t> done_{0};             // chunks of the current job finished (futex word)
    std::atomic<uint32_t> caller_sleeping_{0};  // the caller waits on done_ in the kernel
    std::atomic<uint32_t> job_seq_{0};          // generation of the newest job (futex word)
    std::atomic<uint32_t> sleepers_{0};         // workers waiting on job_seq_ in the kernel
    std::atomic<bool> stop_{false};
    std::atomic<uint64_t> jobs_{0};
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

// Calls fn(begin, end) on the chunks [c * chunk, min(n, (c + 1) * chunk)) of [0, n), the pool's
// ranges each taking a contiguous run of whole chunks. Chunk boundaries depend only on n and
// chunk, so work that writes only its own chunk's outputs is bit-identical for any thread count.
// Unlike ThreadPool::run, fn may throw: a range stops at its first failing chunk, and after every
// range has finished the exception of the lowest failing chunk is rethrown (it always runs, as no
// chunk before it in its range failed), so which error is reported depends neither on timing nor
// on the thread count.
template <typename F>
void parallel_chunks(ThreadPool& pool, int64_t n, int64_t chunk, F&& fn) {
    if (n <= 0) return;
    chunk = chunk < 1 ? 1 : chunk;
    const size_t n_chunks = static_cast<size_t>((n + chunk - 1) / chunk);
    std::mutex mu;
    std::exception_ptr first;
    size_t first_at = n_chunks;
    pool.parallel_for(n_chunks, [&](size_t c0, size_t c1) {
        size_t c = c0;
        try {
            for (; c < c1; ++c)
                fn(static_cast<int64_t>(c) * chunk,
                   std::min(n, static_cast<int64_t>(c + 1) * chunk));
        } catch (...) {
            std::lock_guard<std::mutex> lock(mu);
            if (c < first_at) {
                first_at = c;
                first = std::current_exception();
            }
        }
    });
    if (first) std::rethrow_exception(first);
}

}  // namespace lancet
