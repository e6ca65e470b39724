// ThreadPool implementation: generation counter to start jobs, countdown to finish them.
#include "core/thread_pool.h"

#include <sched.h>

#include <algorithm>
#include <memory>
#include <system_error>

#if defined(__x86_64__)
#include <immintrin.h>
#endif

#include "core/error.h"

namespace lancet {
namespace {

// About 30-60 us of spinning before sleeping: long enough to cover the gap between the linears of
// one decode step, short enough not to burn a core when the program is idle.
constexpr int kSpinIterations = 1 << 11;

inline void cpu_relax() {
#if defined(__x86_64__)
    _mm_pause();
#endif
}

thread_local bool t_in_job = false;

std::mutex g_default_mutex;
std::unique_ptr<ThreadPool> g_default_pool;
size_t g_default_threads = 0;

}  // namespace

ThreadPool::ThreadPool(size_t n_threads) : n_threads_(std::max<size_t>(1, n_threads)) {
    if (n_threads_ > kMaxThreads)
        fail("threads: ", n_threads, " requested, at most ", kMaxThreads, " are allowed");
    workers_.reserve(n_threads_ - 1);
    try {
        for (size_t t = 1; t < n_threads_; ++t) workers_.emplace_back([this, t] { worker(t); });
    } catch (const std::system_error& e) {
        // The destructor does not run for a half-built pool, and a joinable std::thread left
        // behind would terminate the program: stop and join the ones that did start.
        const size_t started = workers_.size() + 1;
        stop_.store(true, std::memory_order_release);
        generation_.fetch_add(1, std::memory_order_acq_rel);
        generation_.notify_all();
        for (auto& w : workers_) w.join();
        fail("threads: cannot start ", n_threads_, " threads (", started, " started): ", e.what());
    }
}

ThreadPool::~ThreadPool() {
    stop_.store(true, std::memory_order_release);
    generation_.fetch_add(1, std::memory_order_acq_rel);
    generation_.notify_all();
    for (auto& w : workers_) w.join();
}

void ThreadPool::run_erased(Thunk thunk, void* ctx) {
    if (t_in_job || n_threads_ == 1) {
        for (size_t t = 0; t < n_threads_; ++t) thunk(ctx, t, n_threads_);
        return;
    }
    std::lock_guard<std::mutex> lock(run_mutex_);
    thunk_ = thunk;
    ctx_ = ctx;
    pending_.store(static_cast<uint32_t>(n_threads_ - 1), std::memory_order_relaxed);
    generation_.fetch_add(1, std::memory_order_release);
    generation_.notify_all();

    t_in_job = true;
    thunk(ctx, 0, n_threads_);
    t_in_job = false;

    for (int i = 0; i < kSpinIterations; ++i) {
        if (pending_.load(std::memory_order_acquire) == 0) return;
        cpu_relax();
    }
    for (uint32_t p; (p = pending_.load(std::memory_order_acquire)) != 0;) pending_.wait(p);
}

void ThreadPool::worker(size_t share) {
    uint32_t seen = 0;
    t_in_job = true;
    for (;;) {
        uint32_t g = generation_.load(std::memory_order_acquire);
        for (int i = 0; g == seen && i < kSpinIterations; ++i) {
            cpu_relax();
            g = generation_.load(std::memory_order_acquire);
        }
        while (g == seen) {
            generation_.wait(seen, std::memory_order_acquire);
            g = generation_.load(std::memory_order_acquire);
        }
        seen = g;
        if (stop_.load(std::memory_order_acquire)) return;
        thunk_(ctx_, share, n_threads_);
        if (pending_.fetch_sub(1, std::memory_order_acq_rel) == 1) pending_.notify_one();
    }
}

size_t hardware_threads() {
    cpu_set_t set;
    if (sched_getaffinity(0, sizeof(set), &set) == 0) {
        const int n = CPU_COUNT(&set);
        if (n > 0) return static_cast<size_t>(n);
    }
    return std::max(1u, std::thread::hardware_concurrency());
}

ThreadPool& default_pool() {
    std::lock_guard<std::mutex> lock(g_default_mutex);
    if (!g_default_pool) {
        g_default_pool = std::make_unique<ThreadPool>(g_default_threads ? g_default_threads
                                                                        : hardware_threads());
    }
    return *g_default_pool;
}

void set_default_threads(size_t n) {
    if (n > ThreadPool::kMaxThreads)
        fail("threads: ", n, " requested, at most ", ThreadPool::kMaxThreads, " are allowed");
    std::lock_guard<std::mutex> lock(g_default_mutex);
    g_default_threads = n;
    g_default_pool.reset();
}

}  // namespace lancet
