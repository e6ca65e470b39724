// Float64 references of the op layer, plain loops from the definitions.
#include "kernels/ops_ref.h"

#include <algorithm>
#include <cmath>
#include <limits>

namespace lancet::kernels::ref {

void linear(const double* x, size_t n, const WeightView& w, const double* bias, double* y) {
    for (size_t r = 0; r < n; ++r)
        for (size_t o = 0; o < w.out; ++o) {
            double acc = bias ? bias[o] : 0.0;
            for (size_t i = 0; i < w.in; ++i) acc += x[r * w.in + i] * weight_ref(w, o, i);
            y[r * w.out + o] = acc;
        }
}

void rms_norm(const double* x, size_t rows, size_t dim, const double* w, double eps, double* y) {
    for (size_t r = 0; r < rows; ++r) {
        double ss = 0;
        for (size_t i = 0; i < dim; ++i) ss += x[r * dim + i] * x[r * dim + i];
        const double inv = 1.0 / std::sqrt(ss / static_cast<double>(dim) + eps);
        for (size_t i = 0; i < dim; ++i) y[r * dim + i] = x[r * dim + i] * inv * (w ? w[i] : 1.0);
    }
}

void channel_rms_norm(const double* x, size_t rows, size_t c, const double* gamma,
                      const double* bias, double* y) {
    for (size_t r = 0; r < rows; ++r) {
        double ss = 0;
        for (size_t i = 0; i < c; ++i) ss += x[r * c + i] * x[r * c + i];
        const double norm = std::max(std::sqrt(ss), 1e-12);
        for (size_t i = 0; i < c; ++i)
            y[r * c + i] = x[r * c + i] / norm * std::sqrt(static_cast<double>(c)) * gamma[i] +
                           (bias ? bias[i] : 0.0);
    }
}

double silu(double x) { return x / (1.0 + std::exp(-x)); }
double gelu(double x) { return 0.5 * x * (1.0 + std::erf(x / std::sqrt(2.0))); }

void rope(double* x, size_t n, size_t heads, size_t hd, const std::vector<double>& ang) {
    const size_t half = hd / 2;
    for (size_t r = 0; r < n; ++r)
        for (size_t h = 0; h < heads; ++h) {
            double* v = x + (r * heads + h) * hd;
            for (size_t j = 0; j < half; ++j) {
                const double a = v[j], b = v[j + half], c = std::cos(ang[r * half + j]),
                             s = std::sin(ang[r * half + j]);
                v[j] = a * c - b * s;
                v[j + half] = b * c + a * s;
            }
        }
}

std::vector<double> rope_angles_1d(const int64_t* pos, size_t n, size_t hd, double theta) {
    const size_t half = hd / 2;
    std::vector<double> a(n * half);
    for (size_t r = 0; r < n; ++r)
        for (size_t j = 0; j < half; ++j)
            a[r * half + j] = static_cast<double>(pos[r]) / std::pow(theta, 2.0 * j / hd);
    return a;
}

std::vector<double> rope_angles_mrope(const std::array<int64_t, 3>* pos, size_t n, size_t hd,
                                      const std::array<int, 3>& section, double theta) {
    const size_t half = hd / 2;
    std::vector<double> a(n * half);
    for (size_t r = 0; r < n; ++r)
        for (size_t j = 0; j < half; ++j) {
            size_t axis = 2;
            if (j < static_cast<size_t>(section[0]))
                axis = 0;
            else if (j < static_cast<size_t>(section[0] + section[1]))
                axis = 1;
            a[r * half + j] = static_cast<double>(pos[r][axis]) / std::pow(theta, 2.0 * j / hd);
        }
    return a;
}

std::vector<double> rope_angles_2d(const std::array<int64_t, 2>* pos, size_t n, size_t hd,
                                   double theta) {
    // Qwen2.5-VL's VisionRotaryEmbedding(dim = hd/2): inv_freq_i = θ^(−2i/(hd/2)), i < hd/4; the
    // row's angles then the column's.
    const size_t half = hd / 2, quarter = hd / 4;
    std::vector<double> a(n * half);
    for (size_t r = 0; r < n; ++r)
        for (size_t i = 0; i < quarter; ++i) {
            const double f = 1.0 / std::pow(theta, 2.0 * i / static_cast<double>(half));
            a[r * half + i] = static_cast<double>(pos[r][0]) * f;
            a[r * half + quarter + i] = static_cast<double>(pos[r][1]) * f;
        }
    return a;
}

bool visible(const AttnMask& m, size_t n, size_t i, size_t a) {
    const size_t P = m.n_cached;
    switch (m.kind) {
        case AttnMask::Kind::None:
            return true;
        case AttnMask::Kind::Causal:
            return a <= P + i;
        case AttnMask::Kind::Segments: {
            // Same window: the last boundary <= i equals the last boundary <= a.
            size_t si = 0, sa = 0;
            for (size_t s = 0; s < m.n_segments; ++s) {
                if (static_cast<size_t>(m.cu_seqlens[s]) <= i) si = s;
                if (static_cast<size_t>(m.cu_seqlens[s]) <= a) sa = s;
            }
            return si == sa;
        }
        case AttnMask::Kind::Splits: {
            if (a < P) return m.cached_hidden[a] == 0;
            const size_t j = a - P;
            const int32_t sq = m.split_of[i], sk = m.split_of[j];
            if (sq == sk) return m.modes[sq] != AttnSplit::Causal || j <= i;
            if (sk > sq) return false;
            (void)n;
            return m.modes[sk] != AttnSplit::Noise;
        }
    }
    return false;
}

void attention(const double* q, const int32_t* q_index, const double* k, const double* v, size_t n,
               size_t nh, size_t nkv, size_t hd, const AttnMask& mask, double scale, double* out,
               double* p) {
    const size_t L = mask.n_cached + n, group = nh / nkv;
    std::vector<double> s(L);
    for (size_t r = 0; r < n; ++r) {
        const size_t i = q_index ? static_cast<size_t>(q_index[r]) : r;
        for (size_t h = 0; h < nh; ++h) {
            const size_t g = h / group;
            double mx = -std::numeric_limits<double>::infinity();
            for (size_t a = 0; a < L; ++a) {
                if (!visible(mask, n, i, a)) {
                    s[a] = -std::numeric_limits<double>::infinity();
                    continue;
                }
                double d = 0;
                for (size_t e = 0; e < hd; ++e)
                    d += q[(r * nh + h) * hd + e] * k[(g * L + a) * hd + e];
                s[a] = d * scale;
                mx = std::max(mx, s[a]);
            }
            double sum = 0;
            for (size_t a = 0; a < L; ++a) sum += (s[a] = std::exp(s[a] - mx));
            for (size_t e = 0; e < hd; ++e) {
                double acc = 0;
                for (size_t a = 0; a < L; ++a) acc += s[a] / sum * v[(g * L + a) * hd + e];
                out[(r * nh + h) * hd + e] = acc;
            }
            if (p)
                for (size_t a = 0; a < L; ++a) p[(r * nh + h) * L + a] = s[a] / sum;
        }
    }
}

void conv3d(const double* x, int64_t T, int64_t H, int64_t W, int64_t Ci, const double* cache,
            int64_t Tc, const double* weight, int64_t Co, int64_t kt, int64_t kh, int64_t kw,
            const double* bias, const Conv3dParams& p, double* y) {
    const int64_t To = (T + p.pad_t_front - kt) / p.stride_t + 1,
                  Ho = (H + p.pad_top + p.pad_bottom - kh) / p.stride_h + 1,
                  Wo = (W + p.pad_left + p.pad_right - kw) / p.stride_w + 1;
    // Input frame f of the padded sequence: f < pad − Tc zeros, then the cache, then x.
    auto at = [&](int64_t f, int64_t iy, int64_t ix, int64_t c) -> double {
        if (iy < 0 || iy >= H || ix < 0 || ix >= W) return 0.0;
        const int64_t t = f - p.pad_t_front;
        if (t >= 0) return x[((t * H + iy) * W + ix) * Ci + c];
        if (t >= -Tc) return cache[(((Tc + t) * H + iy) * W + ix) * Ci + c];
        return 0.0;
    };
    for (int64_t to = 0; to < To; ++to)
        for (int64_t oy = 0; oy < Ho; ++oy)
            for (int64_t ox = 0; ox < Wo; ++ox)
                for (int64_t o = 0; o < Co; ++o) {
                    double acc = bias ? bias[o] : 0.0;
                    for (int64_t c = 0; c < Ci; ++c)
                        for (int64_t dt = 0; dt < kt; ++dt)
                            for (int64_t dy = 0; dy < kh; ++dy)
                                for (int64_t dx = 0; dx < kw; ++dx)
                                    acc +=
                                        weight[(((o * Ci + c) * kt + dt) * kh + dy) * kw + dx] *
                                        at(to * p.stride_t + dt, oy * p.stride_h - p.pad_top + dy,
                                           ox * p.stride_w - p.pad_left + dx, c);
                    y[((to * Ho + oy) * Wo + ox) * Co + o] = acc;
                }
}

}  // namespace lancet::kernels::ref
