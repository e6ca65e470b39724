// The out-of-line parts of bench_util.h.
#include "cli/bench_util.h"

#include <sys/resource.h>
#include <time.h>

#include "kernels/probe.h"

namespace lancet::cli {

double median(std::vector<double> v) {
    std::sort(v.begin(), v.end());
    const size_t m = v.size() / 2;
    return v.size() % 2 ? v[m] : 0.5 * (v[m - 1] + v[m]);
}

double fma_peak_gflops(ThreadPool& pool) {
    return measure_peak(
        pool, [](size_t it, size_t t) { return kernels::probe_fma(it, 1.0f + float(t)); });
}

double amx_bf16_peak_gflops(ThreadPool& pool) {
    // One TDPBF16PS does far more work than one vector FMA: fewer iterations for the same time.
    return measure_peak(pool, [](size_t it, size_t t) {
        return kernels::probe_amx_bf16(it / 16, 1.0f + float(t));
    });
}

double cpu_seconds() {
    timespec t{};
    clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &t);
    return double(t.tv_sec) + 1e-9 * double(t.tv_nsec);
}

double peak_rss_mib() {
    rusage u{};
    getrusage(RUSAGE_SELF, &u);
    return static_cast<double>(u.ru_maxrss) / 1024.0;
}

}  // namespace lancet::cli
