// The one place that picks a kernel ISA: run-time CPU detection, LANCET_ISA, forcing for tests.
#pragma once

#include <string>

#include "core/thread_pool.h"

namespace lancet::kernels {

enum class Isa { Scalar, Avx2, Avx512 };

const char* isa_name(Isa isa);  // "scalar", "avx2", "avx512"
bool cpu_supports(Isa isa);     // what this CPU (and OS) can run
Isa best_isa();                 // the fastest supported
// The ISA kernels use now: forced one, else $LANCET_ISA (scalar|avx2|avx512; lancet::Error if
// unknown or unsupported by this CPU), else best_isa().
Isa active_isa();
// Forces a path (tests, bench). lancet::Error if the CPU lacks it.
void force_isa(Isa isa);
// Back to $LANCET_ISA / best_isa().
void clear_forced_isa();

// One line for start-up: "ISA avx2+fma, 2 threads".
std::string runtime_description(const ThreadPool& pool);

}  // namespace lancet::kernels
