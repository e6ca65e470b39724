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

// H + λI = R Rᵀ with R upper triangular: the Cholesky factorisation run from the last index down,
// in f32, blocked (128-wide panels; the trailing updates are GEMMs). a: H [in, in] row-major and
// symmetric (both triangles), overwritten by R (the lower part zeroed). Dead channels (H_ii <= 0)
// get H_ii = 1 first; λ = damp · mean(diag H), x10 while a pivot fails. Returns λ.
double gptq_factor(float* a, int in, double damp, ThreadPool* pool = nullptr);

// H made ready for the column sweep (one factorisation serves every linear that reads the input).
struct GptqHessian {
    int in = 0;
    // R̃ = R diag(1/R_jj) [in, in] (unit upper triangular) of H + λI in quantization order.
    std::vector<float> r;
    std::vector<float> hdiag;  // max(H_ii, 0) in original column order: the grid choice's weights
    std::vector<int> perm;     // perm[j]: the original column quantized j-th
    double lambda = 0;
    // rank > 0: H = XᵀX of `rank` rows kept as the rows (r stays empty): R̃_kj = x_kᵀ g̃_j for
    // k < j, with xt [in, rank] (row k = x_k, column perm[k] of X) and g [rank, in] (column j =
    // g̃_j); see gptq_prepare_rows.
    int rank = 0;
    std::vector<float> xt, g;
};
// Consumes h [in, in] (its buffer becomes R̃). With opt.act_order the columns go by descending
// diag(H), ties in original order.
GptqHessian gptq_prepare(std::vector<float> h, int in, const GptqOptions& opt);

// H = XᵀX of the n rows x [n, in], prepared without forming it when 2n < in: with dead channels
// and dampening as diag(δ), the reverse Cholesky factor of δ + XᵀX is R_kj = x_kᵀ g_j (k < j)
// with g_j = (I - M_j) x_j / R_jj, M_j = Σ_{l>j} g_l g_lᵀ and R_jj² = δ_j + x_jᵀ (I - M_j) x_j
// (x_j column j of X): in·n² work instead of in³/3, no [in, in] buffer, and a sweep of 2·out·in·n
// instead of out·in². Otherwise gptq_prepare(gram_matrix(x)). The same result up to f32
// rounding.
GptqHessian gptq_prepare_rows(const float* x, int64_t n, int in, const GptqOptions& opt);

// Quantizes W [out, in] (row-major f32) given the prepared H. Scales are bf16, zero-points 0..15,
// and the codes are chosen against the stored bf16 scale (spec §7.5), so dequantize() gives
// exactly the values the error feedback compensated for. Throws on bad shapes or non-finite
// weights.
//
// The sweep is GPTQ's (columns in order, each one's rounding error spread over the later columns
// so that the output error ||X (W - Q)ᵀ|| is minimised) in its LDL form: with H + λI = R Rᵀ, the
// value column j is rounded from is w'_j = W_j + Σ_{k<j} (W_k - Q_k) R_kj / R_jj, which equals
// the inverse-factor form's updated weight (U = R⁻¹, so no inverse is formed); the corrections
// of a batch of columns reach the later ones through one GEMM with R̃'s off-diagonal block. A
// group's grid is chosen when it starts, from the weights as the earlier columns' errors leave
// them: v_G = W_G + C_G R̃_GG⁻¹ (C the accumulated corrections, R̃_GG the group's diagonal block).
//
// row_scale (nullable, [in], > 0): quantize against D (H + λI) D with D = diag(row_scale) — the
// problem of W·diag(1/row_scale)-scaled inputs — from the same factor (D R is its factor): lets
// the report compare AWQ-scaled and plain GPTQ with one factorisation (the dampening is then
// λ·row_scale_i² per channel instead of λ).
QuantizedMatrix gptq_quantize(const float* w, int out, int in, const GptqHessian& h,
                              const GptqOptions& opt, const float* row_scale = nullptr);

// gptq_prepare on a copy of h [in, in], then the sweep.
QuantizedMatrix gptq_quantize(const float* w, int out, int in, const float* h,
                              const GptqOptions& opt);

}  // namespace lancet::quant
