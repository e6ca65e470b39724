// ThreadPool implementation: a generation-tagged ticket to claim chunks, a countdown of finished
// chunks, and spin-then-yield-then-futex waits on both sides.
#include "core/thread_pool.h"

#include <linux/futex.h>
#include <sched.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <climits>
#include <memory>
#include <system_error>

#if defined(__x86_64__)
#include <immintrin.h>
#endif

#include "core/error.h"

namespace lancet {
namespace {

static_assert(ThreadPool::kMaxThreads * ThreadPool::kChunksPerThread < (1u << 16),
              "chunk counts must fit the ticket's 16-bit fields");
static_assert(sizeof(std::atomic<uint32_t>) == sizeof(uint32_t));

// Waiting, in three steps. A decode step issues dozens of sub-millisecond jobs back to back, so a
// thread first spins (a few microseconds: the next job or the last chunk is usually that close);
// then it yields the core for a while (still quick to react on an idle machine, but a thread that
// was descheduled from this core, a pool worker holding a chunk or another process, gets to run);
// then it sleeps on a futex, so that an idle program or a loaded machine loses no core to it.
constexpr int kSpinIterations = 256;
constexpr auto kYieldFor = std::chrono::microseconds(50);
// Waking a sleeping worker costs the caller a system call and the worker tens of microseconds
// before it runs, so for jobs of several chunks per thread the caller wakes them only once the
// remaining chunks, at the pace of the ones it ran, amount to more than this; tiny jobs (a small
// model's decode step) are then run by whoever is awake, and sleeping workers cost nothing.
constexpr auto kWakeWorth = std::chrono::microseconds(20);
// A worker that found nothing left to claim in this many jobs in a row (jobs too small to share,
// or a worker too slow to get there first) sleeps at once instead of spinning for the next one,
// so on a loaded machine it stops taking CPU time from the threads doing the work.
constexpr int kMissesBeforeSleep = 4;

inline void cpu_relax() {
#if defined(__x86_64__)
    _mm_pause();
#endif
}

uint32_t* futex_word(std::atomic<uint32_t>& a) { return reinterpret_cast<uint32_t*>(&a); }

void futex_wait(std::atomic<uint32_t>& a, uint32_t expected) {
    syscall(SYS_futex, futex_word(a), FUTEX_WAIT_PRIVATE, expected, nullptr, nullptr, 0);
}

void futex_wake(std::atomic<uint32_t>& a, int n) {
    syscall(SYS_futex, futex_word(a), FUTEX_WAKE_PRIVATE, n, nullptr, nullptr, 0);
}

// Spins, then yields, until `ready()`; returns false when the caller should go to sleep.
template <typename Ready>
bool spin_then_yield(Ready&& ready) {
    for (int i = 0; i < kSpinIterations; ++i) {
        if (ready()) return true;
        cpu_relax();
    }
    const auto until = std::chrono::steady_clock::now() + kYieldFor;
    do {
        if (ready()) return true;
        sched_yield();
    } while (std::chrono::steady_clock::now() < until);
    return ready();
}

constexpr uint64_t make_ticket(uint32_t gen, uint32_t n_chunks, uint32_t next) {
    return (uint64_t{gen} << 32) | (uint64_t{n_chunks} << 16) | next;
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
        for (size_t t = 1; t < n_threads_; ++t) workers_.emplace_back([this] { worker(); });
    } catch (const std::system_error& e) {
        // The destructor does not run for a half-built pool, and a joinable std::thread left
        // behind would terminate the program: stop and join the ones that did start.
        const size_t started = workers_.size() + 1;
        stop_.store(true, std::memory_order_seq_cst);
        job_seq_.fetch_add(1, std::memory_order_seq_cst);
        futex_wake(job_seq_, INT_MAX);
        for (auto& w : workers_) w.join();
        fail("threads: cannot start ", n_threads_, " threads (", started, " started): ", e.what());
    }
}

ThreadPool::~ThreadPool() {
    stop_.store(true, std::memory_order_seq_cst);
    job_seq_.fetch_add(1, std::memory_order_seq_cst);
    futex_wake(job_seq_, INT_MAX);
    for (auto& w : workers_) w.join();
}

uint32_t ThreadPool::claim_and_run(uint32_t gen, uint32_t& n_chunks) {
    uint32_t ran = 0;
    uint64_t t = ticket_.load(std::memory_order_acquire);
    for (;;) {
        const uint32_t n = static_cast<uint32_t>(t >> 16) & 0xffffu;
        const uint32_t next = static_cast<uint32_t>(t) & 0xffffu;
        if (static_cast<uint32_t>(t >> 32) != gen || next >= n) return ran;
        if (!ticket_.compare_exchange_weak(t, t + 1, std::memory_order_acq_rel,
                                           std::memory_order_acquire))
            continue;
        // The claim pins the job: it cannot finish (and its function change) before this chunk.
        thunk_.load(std::memory_order_relaxed)(ctx_.load(std::memory_order_relaxed), next, n);
        ++ran;
        n_chunks = n;
        ++t;  // the likely next value; a failed exchange reloads it
    }
}

void ThreadPool::run_erased(Thunk thunk, void* ctx, size_t n_chunks) {
    if (t_in_job || n_threads_ == 1 || n_chunks <= 1) {
        for (size_t c = 0; c < n_chunks; ++c) thunk(ctx, c, n_chunks);
        return;
    }
    std::lock_guard<std::mutex> lock(run_mutex_);
    jobs_.fetch_add(1, std::memory_order_relaxed);
    const uint32_t gen = ++gen_;
    const uint32_t n = static_cast<uint32_t>(n_chunks);
    thunk_.store(thunk, std::memory_order_relaxed);
    ctx_.store(ctx, std::memory_order_relaxed);
    done_.store(0, std::memory_order_relaxed);
    ticket_.store(make_ticket(gen, n, 0), std::memory_order_release);
    // Workers that spin or yield see the new job here; sleeping ones are woken below if the job
    // is worth it (seq_cst pairs this store and the load of sleepers_ with a worker's increment
    // of sleepers_ and its re-check of job_seq_).
    job_seq_.store(gen, std::memory_order_seq_cst);

    // The caller claims chunks like any worker, so a worker that is late or descheduled only
    // means the caller does more of the job.
    t_in_job = true;
    const auto start = std::chrono::steady_clock::now();
    // Shares of run() (one per thread) give no early measure of the job's size and the caller
    // would run the other shares before a late-woken worker arrived: wake at once for those.
    bool woken = n <= n_threads_;
    if (woken && sleepers_.load(std::memory_order_seq_cst) != 0) futex_wake(job_seq_, INT_MAX);
    uint32_t ran = 0;
    for (uint64_t t = ticket_.load(std::memory_order_acquire);;) {
        const uint32_t next = static_cast<uint32_t>(t) & 0xffffu;
        if (static_cast<uint32_t>(t >> 32) != gen || next >= n) break;
        if (!ticket_.compare_exchange_weak(t, t + 1, std::memory_order_acq_rel,
                                           std::memory_order_acquire))
            continue;
        thunk(ctx, next, n);
        ++ran;
        ++t;
        if (!woken && next + 1 < n) {
            const auto spent = std::chrono::steady_clock::now() - start;
            if (spent / ran * (n - next - 1) > kWakeWorth) {
                woken = true;
                if (sleepers_.load(std::memory_order_seq_cst) != 0) futex_wake(job_seq_, INT_MAX);
            }
        }
    }
    t_in_job = false;
    if (done_.fetch_add(ran, std::memory_order_acq_rel) + ran == n) return;

    // Every chunk is claimed; wait for the ones other threads still run.
    if (spin_then_yield([&] { return done_.load(std::memory_order_acquire) == n; })) return;
    caller_sleeping_.store(1, std::memory_order_seq_cst);
    for (uint32_t d; (d = done_.load(std::memory_order_seq_cst)) != n;) futex_wait(done_, d);
    caller_sleeping_.store(0, std::memory_order_relaxed);
}

void ThreadPool::worker() {
    uint32_t seen = 0;
    int misses = 0;   // jobs in a row with nothing left to claim
    t_in_job = true;  // a job's function calling the pool runs inline
    for (;;) {
        auto fresh = [&] { return job_seq_.load(std::memory_order_acquire) != seen; };
        if (!(misses < kMissesBeforeSleep ? spin_then_yield(fresh) : fresh())) {
            sleepers_.fetch_add(1, std::memory_order_seq_cst);
            while (job_seq_.load(std::memory_order_seq_cst) == seen) futex_wait(job_seq_, seen);
            sleepers_.fetch_sub(1, std::memory_order_relaxed);
        }
        // seen first, then stop_: the destructor stores stop_ before it bumps job_seq_, so a
        // worker that reads the bumped value also sees stop_. In the other order a worker woken
        // late for the pool's last job could pass the stop_ check, then take the destructor's
        // bump as a job and sleep on it, never to be woken (the destructor's join hung).
        seen = job_seq_.load(std::memory_order_acquire);
        if (stop_.load(std::memory_order_acquire)) return;
        uint32_t n = 0;
        const uint32_t ran = claim_and_run(seen, n);
        misses = ran != 0 ? 0 : misses + 1;
        // The thread whose chunks complete the job wakes the caller if it sleeps (seq_cst pairs
        // this add and load with the caller's store of caller_sleeping_ and its re-check).
        if (ran != 0 && done_.fetch_add(ran, std::memory_order_seq_cst) + ran == n &&
            caller_sleeping_.load(std::memory_order_seq_cst) != 0)
            futex_wake(done_, 1);
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
