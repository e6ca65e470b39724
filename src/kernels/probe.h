// Machine-limit probes for `lancet bench`: streaming read, FMA, int8 dot and bf16 dot throughput
// on the active ISA. Each peak probe is meant to run once per thread (pool.run), with enough
// independent chains to reach the instruction's documented throughput.
#pragma once

#include <cstddef>

namespace lancet::kernels {

// Sums n floats (n % 32 == 0) with independent vector accumulators: a pure streaming read.
float probe_read(const float* p, size_t n);
// Runs `iters` iterations of independent register-only FMA chains; returns the flops executed.
double probe_fma(size_t iters, float seed);
// Runs `iters` iterations of register-only int8 dot products (AVX-512: vpdpbusd; AVX2: two
// vpmaddubsw into i16 adds, the W4A8 kernels' inner step); returns the integer ops (multiply +
// add per byte pair).
double probe_int8(size_t iters, int seed);
// Runs `iters` iterations of register-only bf16 dot products (vdpbf16ps); returns the flops
// (multiply + add per bf16 pair), or 0 when the active ISA has no bf16 dot instruction.
double probe_bf16(size_t iters, float seed);
// Runs `iters` iterations of AMX int8 tile dot products (TDPBSUD, 4 independent 16 x 16 int32
// tiles, K = 64 bytes) when the active ISA is Amx; returns the integer ops (multiply + add per
// byte pair, 2 x 16 x 16 x 64 per instruction), or 0 on other ISAs.
double probe_amx_int8(size_t iters, int seed);
// The same with TDPBF16PS (bf16 pairs, f32 C tiles, K = 32 pairs): flops (multiply + add per
// bf16 pair, 2 x 16 x 16 x 32 per instruction), or 0 on other ISAs.
double probe_amx_bf16(size_t iters, float seed);
// The instruction the int8 probe times on the active ISA ("vpdpbusd", "2 vpmaddubsw + vpaddw").
const char* probe_int8_name();

}  // namespace lancet::kernels
