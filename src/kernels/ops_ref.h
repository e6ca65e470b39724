// Float64 scalar references of the op layer (ops.h): plain loops written from the math (spec and
// PyTorch definitions), independent of the fast kernels. Dense row-major arrays; shapes in the
// comments. Tests run every op on every ISA against these.
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <vector>

#include "kernels/linear.h"
#include "kernels/ops.h"

namespace lancet::kernels::ref {

// y [n, out] = x [n, in] · Wᵀ + bias (bias nullable), W decoded exactly from the view.
void linear(const double* x, size_t n, const WeightView& w, const double* bias, double* y);

// Rows [rows, dim]: y = x / sqrt(mean(x²) + eps) · w (w nullable).
void rms_norm(const double* x, size_t rows, size_t dim, const double* w, double eps, double* y);
// Rows [rows, c]: y = x / max(‖x‖, 1e-12) · √c · gamma (+ bias, nullable).
void channel_rms_norm(const double* x, size_t rows, size_t c, const double* gamma,
                      const double* bias, double* y);
double silu(double x);  // x / (1 + e^−x)
double gelu(double x);  // x · Φ(x) = x/2 · (1 + erf(x/√2))

// Rotate-half RoPE of x [n, heads, hd] in place with angles ang [n, hd/2].
void rope(double* x, size_t n, size_t heads, size_t hd, const std::vector<double>& ang);
// The angle tables, from the definitions: 1-D pos·θ^(−2i/hd); M-RoPE axis by section; 2-D
// (ViT): i < hd/4 row·θ^(−4i/hd), then column·θ^(−4(i−hd/4)/hd).
std::vector<double> rope_angles_1d(const int64_t* pos, size_t n, size_t hd, double theta);
std::vector<double> rope_angles_mrope(const std::array<int64_t, 3>* pos, size_t n, size_t hd,
                                      const std::array<int, 3>& section, double theta);
std::vector<double> rope_angles_2d(const std::array<int64_t, 2>* pos, size_t n, size_t hd,
                                   double theta);

// Whether chunk query i (0..n−1) may see key a (0..n_cached+n−1) under `mask` (ops.h's rules,
// evaluated directly).
bool visible(const AttnMask& mask, size_t n, size_t i, size_t a);
// Softmax attention: q [n, nh, hd], k/v [nkv, n_cached + n, hd], out [n, nh, hd]; query row r
// is chunk position q_index[r] (nullable: r). p (nullable) receives the probabilities
// [n, nh, n_cached + n] (for error bounds).
void attention(const double* q, const int32_t* q_index, const double* k, const double* v, size_t n,
               size_t nh, size_t nkv, size_t hd, const AttnMask& mask, double scale, double* out,
               double* p);

// Direct convolution: x [T, H, W, Ci], cache [Tc, H, W, Ci] (nullable), weight
// [Co, Ci, kt, kh, kw], bias [Co] (nullable), y [T', H', W', Co] (ops.h's conv3d shapes).
void conv3d(const double* x, int64_t T, int64_t H, int64_t W, int64_t Ci, const double* cache,
            int64_t Tc, const double* weight, int64_t Co, int64_t kt, int64_t kh, int64_t kw,
            const double* bias, const Conv3dParams& p, double* y);

}  // namespace lancet::kernels::ref
