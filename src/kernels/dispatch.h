// The one place that picks a kernel ISA: run-time CPU detection, LANCET_ISA, forcing for tests.
#pragma once

#include <string>

#include "core/thread_pool.h"

namespace lancet::kernels {

// Amx is the Avx512 tier plus Intel AMX tiles: TDPBSUD for the W4A8 GEMM (n >= 64 rows, int8
// activation blocks of 32) and TDPBF16PS for the bf16-activation GEMMs (BF16 weights with
// Bf16Act::Bf16, INT4 with ActMode::Bf16; n > 8 rows); every other kernel of the Amx tier is the
// Avx512 one.
enum class Isa { Scalar, Avx2, Avx512, Amx };

const char* isa_name(Isa isa);  // "scalar", "avx2", "avx512", "amx"
// What this CPU (and OS) can run. Amx also needs the kernel's permission for the tile data state
// (arch_prctl(ARCH_REQ_XCOMP_PERM, XTILEDATA)), requested once per process by the first call
// that asks about Amx; every thread of the process shares it.
bool cpu_supports(Isa isa);
Isa best_isa();  // the fastest supported
// The ISA kernels use now: forced one, else $LANCET_ISA (scalar|avx2|avx512|amx; lancet::Error
// if unknown or unsupported by this CPU), else best_isa().
Isa active_isa();
// Forces a path (tests, bench). lancet::Error if the CPU lacks it.
void force_isa(Isa isa);
// Back to $LANCET_ISA / best_isa().
void clear_forced_isa();

// One line for start-up: "ISA avx2+fma, 2 threads".
std::string runtime_description(const ThreadPool& pool);

}  // namespace lancet::kernels
