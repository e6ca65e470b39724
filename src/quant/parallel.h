// A tiny deterministic parallel-for over index ranges, local to the quantizer until the shared
// thread pool lands.
#pragma once

#include <algorithm>
#include <cstdint>
#include <exception>
#include <thread>
#include <vector>

namespace lancet::quant {

// Number of worker threads to use when the caller passes 0.
inline int default_threads() {
    const unsigned n = std::thread::hardware_concurrency();
    return n == 0 ? 1 : static_cast<int>(n);
}

// Calls f(begin, end) on disjoint chunks covering [0, n), with the chunk boundaries a function of
// n and `chunk` only (never of timing), so any per-index work that writes only its own outputs is
// bit-identical for every thread count. Chunks are handed out round-robin by index: thread t takes
// chunks t, t + T, ... The first exception thrown by any chunk is rethrown after all threads join.
template <typename F>
void parallel_for(int64_t n, int64_t chunk, int threads, F&& f) {
    if (n <= 0) return;
    chunk = std::max<int64_t>(1, chunk);
    const int64_t n_chunks = (n + chunk - 1) / chunk;
    int t_count = threads > 0 ? threads : default_threads();
    t_count = static_cast<int>(std::min<int64_t>(t_count, n_chunks));
    auto run = [&](int t, std::exception_ptr* err) {
        try {
            for (int64_t c = t; c < n_chunks; c += t_count)
                f(c * chunk, std::min(n, (c + 1) * chunk));
        } catch (...) {
            *err = std::current_exception();
        }
    };
    std::vector<std::exception_ptr> errors(t_count);
    if (t_count == 1) {
        run(0, &errors[0]);
    } else {
        std::vector<std::thread> pool;
        pool.reserve(t_count - 1);
        for (int t = 1; t < t_count; ++t) pool.emplace_back(run, t, &errors[t]);
        run(0, &errors[0]);
        for (auto& th : pool) th.join();
    }
    for (auto& e : errors)
        if (e) std::rethrow_exception(e);
}

}  // namespace lancet::quant
