// Portable kernels of the op layer: plain loops (the fallback path and the ISA-independent
// arithmetic the vector paths reproduce where ops_kernels.h says so).
#include <algorithm>
#include <cmath>

#include "kernels/ops_kernels.h"

namespace lancet::kernels::detail {
namespace {

void rms_norm_row(const float* x, size_t dim, const float* w, float eps, float* y) {
    double ss = 0;
    for (size_t i = 0; i < dim; ++i) ss += static_cast<double>(x[i]) * x[i];
    const float inv = static_cast<float>(1.0 / std::sqrt(ss / static_cast<double>(dim) + eps));
    if (w)
        for (size_t i = 0; i < dim; ++i) y[i] = (x[i] * inv) * w[i];
    else
        for (size_t i = 0; i < dim; ++i) y[i] = x[i] * inv;
}

void channel_rms_norm_row(const float* x, size_t c, const float* gamma, const float* bias,
                          float* y) {
    double ss = 0;
    for (size_t i = 0; i < c; ++i) ss += static_cast<double>(x[i]) * x[i];
    // F.normalize: x / max(‖x‖, 1e-12), then · √C · gamma.
    const float inv =
        static_cast<float>(std::sqrt(static_cast<double>(c)) / std::max(std::sqrt(ss), 1e-12));
    for (size_t i = 0; i < c; ++i) {
        const float v = (x[i] * inv) * gamma[i];
        y[i] = bias ? v + bias[i] : v;
    }
}

void silu_mul(const float* gate, const float* up, size_t n, float* y) {
    for (size_t i = 0; i < n; ++i) y[i] = gate[i] / (1.0f + std::exp(-gate[i])) * up[i];
}

void silu(const float* x, size_t n, float* y) {
    for (size_t i = 0; i < n; ++i) y[i] = x[i] / (1.0f + std::exp(-x[i]));
}

void gelu(const float* x, size_t n, float* y) {
    for (size_t i = 0; i < n; ++i) y[i] = 0.5f * x[i] * (1.0f + std::erf(x[i] * 0.70710678f));
}

void add(const float* a, const float* b, size_t n, float* y) {
    for (size_t i = 0; i < n; ++i) y[i] = a[i] + b[i];
}

void rope_row(float* x, size_t heads, size_t hd, const float* cos, const float* sin) {
    const size_t half = hd / 2;
    for (size_t h = 0; h < heads; ++h) {
        float* v = x + h * hd;
        for (size_t j = 0; j < half; ++j) {
            const float a = v[j], b = v[j + half];
            v[j] = a * cos[j] - b * sin[j];
            v[j + half] = b * cos[j] + a * sin[j];
        }
    }
}

void attn_scores(const float* q, size_t nq, const float* k, size_t ldk, size_t nk, size_t hd,
                 float* s) {
    for (size_t r = 0; r < nq; ++r)
        for (size_t j = 0; j < nk; ++j) {
            float acc = 0;
            for (size_t d = 0; d < hd; ++d) acc += q[r * hd + d] * k[j * ldk + d];
            s[r * nk + j] = acc;
        }
}

void attn_pv(const float* p, size_t nq, const float* v, size_t ldv, size_t nk, size_t hd,
             float* acc) {
    for (size_t r = 0; r < nq; ++r)
        for (size_t j = 0; j < nk; ++j) {
            const float pj = p[r * nk + j];
            for (size_t d = 0; d < hd; ++d) acc[r * hd + d] += pj * v[j * ldv + d];
        }
}

float attn_exp_sum(float* p, size_t n, float m) {
    float s = 0;
    for (size_t i = 0; i < n; ++i) s += (p[i] = std::exp(p[i] - m));
    return s;
}

}  // namespace

const OpKernels& op_kernels_scalar() {
    static const OpKernels k{
        &rms_norm_row, &channel_rms_norm_row, &silu_mul, &silu,         &gelu,   &add,
        &rope_row,     &attn_scores,          &attn_pv,  &attn_exp_sum, nullptr, nullptr,
        nullptr};  // no query-block tiles: row by row
    return k;
}

}  // namespace lancet::kernels::detail
