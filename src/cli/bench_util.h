// Timing, peak and memory measurements shared by the `lancet bench` subcommands (cmd_bench*.cc):
// one way to time a call, to measure a register-only probe's peak, and to read the peak RSS.
#pragma once

#include <algorithm>
#include <chrono>
#include <cstddef>
#include <vector>

#include "core/thread_pool.h"

namespace lancet::cli {

// The median of v (the mean of the middle two for an even count).
double median(std::vector<double> v);

// Median seconds per call of f over `reps` samples; each sample repeats the call until it lasts
// >= 2 ms so the tiny decode shapes are not dominated by clock resolution.
template <typename F>
double time_call(F&& f, int reps) {
    using Clock = std::chrono::steady_clock;
    auto t0 = Clock::now();
    f();  // warm-up: page faults, caches, pool wake-up
    const double once = std::chrono::duration<double>(Clock::now() - t0).count();
    const int calls = std::clamp(int(2e-3 / std::max(once, 1e-7)), 1, 1000);
    std::vector<double> samples;
    for (int r = 0; r < reps; ++r) {
        t0 = Clock::now();
        for (int c = 0; c < calls; ++c) f();
        samples.push_back(std::chrono::duration<double>(Clock::now() - t0).count() / calls);
    }
    return median(samples);
}

// Peak throughput of one register-only probe (ops per call returned by `probe(iters, thread)`),
// all pool threads at once, one probe per thread: the median of 3 timed runs after a warm-up, in
// G ops/s.
template <typename Probe>
double measure_peak(ThreadPool& pool, Probe&& probe) {
    using Clock = std::chrono::steady_clock;
    const size_t iters = size_t{4} << 20;
    std::vector<double> ops(pool.size());
    pool.run([&](size_t t, size_t) { ops[t] = probe(iters / 8, t); });
    std::vector<double> rates;
    for (int r = 0; r < 3; ++r) {
        const auto t0 = Clock::now();
        pool.run([&](size_t t, size_t) { ops[t] = probe(iters, t); });
        const double s = std::chrono::duration<double>(Clock::now() - t0).count();
        double total = 0;
        for (double f : ops) total += f;
        rates.push_back(total / s / 1e9);
    }
    return median(rates);
}

// The f32 FMA probe's peak over all pool threads (measure_peak of kernels::probe_fma), GFLOP/s.
double fma_peak_gflops(ThreadPool& pool);

// The AMX bf16 tiles' peak over all pool threads (measure_peak of kernels::probe_amx_bf16:
// TDPBF16PS on register tiles), GFLOP/s; call only where the active ISA is amx.
double amx_bf16_peak_gflops(ThreadPool& pool);

// CPU seconds of this process (all threads): on a shared, oversubscribed machine wall time
// counts other processes' turns, CPU time only this one's.
double cpu_seconds();

// Peak resident set of this process so far, MiB (Linux reports ru_maxrss in KiB).
double peak_rss_mib();

}  // namespace lancet::cli
