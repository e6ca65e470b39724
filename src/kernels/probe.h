// Machine-limit probes for `lancet bench`: streaming read and FMA throughput on the active ISA.
#pragma once

#include <cstddef>

namespace lancet::kernels {

// Sums n floats (n % 32 == 0) with independent vector accumulators: a pure streaming read.
float probe_read(const float* p, size_t n);
// Runs `iters` iterations of independent register-only FMA chains; returns the flops executed.
double probe_fma(size_t iters, float seed);

}  // namespace lancet::kernels
