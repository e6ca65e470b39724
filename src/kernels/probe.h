// Machine-limit probes for `lancet bench`: streaming read, FMA and int8 dot throughput on the
// active ISA.
#pragma once

#include <cstddef>

namespace lancet::kernels {

// Sums n floats (n % 32 == 0) with independent vector accumulators: a pure streaming read.
float probe_read(const float* p, size_t n);
// Runs `iters` iterations of independent register-only FMA chains; returns the flops executed.
double probe_fma(size_t iters, float seed);
// Runs `iters` iterations of register-only int8 dot products (two vpmaddubsw into i16 adds, the
// W4A8 kernels' inner step); returns the integer ops (multiply + add per byte pair).
double probe_int8(size_t iters, int seed);

}  // namespace lancet::kernels
