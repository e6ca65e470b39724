// Error-feedback (GPTQ-style) quantization of one linear into the published INT4 format (spec
// awq-checkpoint-format.md §1.1): columns are quantized in order and each column's rounding error
// is spread over the columns not yet quantized, weighted by the inverse of the input Gram matrix
// H = XᵀX, so the output error ||X (W - Q)ᵀ|| rather than the weight error is what is minimised.
#pragma once

#include <cstdint>
#include <vector>

#include "quant/q4.h"

namespace lancet {
class ThreadPool;
}

namespace lancet::quant {

struct GptqOptions {
    int group_size = 64;  // checked with check_group_size
    // Dampening λ = damp · mean(diag H) added to the diagonal (and x10 retries while the
    // Cholesky factorisation fails): keeps H invertible when the rows are fewer than `in`.
    double damp = 0.01;
    // Columns per lazy batch: the error of a batch reaches the later columns through one GEMM.
    // Rounded up to a multiple of the group size (a group's grid must see current weights).
    int block = 128;
    // Grid candidates per (row, group): the range [m, M] shrunk by each ratio, the one with the
    // least diag(H)-weighted squared rounding error on the group's (error-updated) weights wins.
    std::vector<float> clip_ratios = {1.0f};
    // Quantize columns in order of descending diag(H) (the most-used inputs first, while the
    // most columns are left to absorb their error). The published format needs each group's
    // scale and zero over contiguous original columns, so with act-order every group's grid is
    // fixed first from the original weights, and the codes are chosen on those grids.
    bool act_order = false;
    ThreadPool* pool = nullptr;  // nullptr = default_pool(); results are the same for any size
};

// H = XᵀX [in, in] (row-major f32) of n rows X [n, in].
std::vector<float> gram_matrix(const float* x, int64_t n, int in, ThreadPool* pool = nullptr);

// The upper-triangular U with Uᵀ U = (H + λI)⁻¹ (dead channels, H_ii = 0, get H_ii = 1 first),
// computed in double and returned as f32 [in, in] row-major (lower part zero). Row i of U, from
// the diagonal on, is the direction in which column i's rounding error is compensated.
std::vector<float> gptq_inverse_factor(const float* h, int in, double damp,
                                       ThreadPool* pool = nullptr);

// Quantizes W [out, in] (row-major f32) given H [in, in]. Scales are bf16, zero-points 0..15, and
// the codes are chosen against the stored bf16 scale (spec §7.5), so dequantize() gives exactly
// the values the error feedback compensated for. Throws on bad shapes or non-finite weights.
QuantizedMatrix gptq_quantize(const float* w, int out, int in, const float* h,
                              const GptqOptions& opt);

}  // namespace lancet::quant
