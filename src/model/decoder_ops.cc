// The f32 decoder building blocks and the blocked flash-style attention over a KV cache.
#include "model/decoder_ops.h"

#include <algorithm>
#include <cmath>
#include <limits>

#include "kernels/dispatch.h"

namespace lancet::ops {

void rms_norm(const float* x, size_t n, size_t dim, const float* w, float eps, float* y) {
    for (size_t r = 0; r < n; ++r) {
        const float* xr = x + r * dim;
        float* yr = y + r * dim;
        double ss = 0;
        for (size_t i = 0; i < dim; ++i) ss += static_cast<double>(xr[i]) * xr[i];
        const float inv = static_cast<float>(1.0 / std::sqrt(ss / static_cast<double>(dim) + eps));
        for (size_t i = 0; i < dim; ++i) yr[i] = (xr[i] * inv) * w[i];
    }
}

void mrope_angles(const RopePosition& pos, size_t hd, const std::array<int, 3>& section,
                  double theta, float* cos, float* sin) {
    const size_t half = hd / 2;
    for (size_t j = 0; j < half; ++j) {
        const int jj = static_cast<int>(j);
        const int axis = jj < section[0] ? 0 : jj < section[0] + section[1] ? 1 : 2;
        const double a = static_cast<double>(pos[axis]) *
                         std::pow(theta, -2.0 * static_cast<double>(j) / static_cast<double>(hd));
        cos[j] = static_cast<float>(std::cos(a));
        sin[j] = static_cast<float>(std::sin(a));
    }
}

void apply_rope(float* x, size_t heads, size_t hd, const float* cos, const float* sin) {
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

void timestep_features(float t, size_t dim, float* out) {
    const size_t half = dim / 2;
    for (size_t k = 0; k < half; ++k) {
        const double f = std::exp(-std::log(10000.0) * static_cast<double>(k) / half);
        out[k] = static_cast<float>(std::cos(t * f));
        out[half + k] = static_cast<float>(std::sin(t * f));
    }
}

void silu_mul(const float* gate, const float* up, size_t n, float* out) {
    for (size_t i = 0; i < n; ++i) out[i] = gate[i] / (1.0f + std::exp(-gate[i])) * up[i];
}

void silu(float* x, size_t n) {
    for (size_t i = 0; i < n; ++i) x[i] = x[i] / (1.0f + std::exp(-x[i]));
}

namespace detail {

namespace {

void scores_scalar(const float* q, size_t nq, const float* k, size_t nk, size_t hd, float* s) {
    for (size_t r = 0; r < nq; ++r)
        for (size_t j = 0; j < nk; ++j) {
            float acc = 0;
            for (size_t d = 0; d < hd; ++d) acc += q[r * hd + d] * k[j * hd + d];
            s[r * nk + j] = acc;
        }
}

void pv_scalar(const float* p, size_t nq, const float* v, size_t nk, size_t hd, float* acc) {
    for (size_t r = 0; r < nq; ++r)
        for (size_t j = 0; j < nk; ++j) {
            const float pj = p[r * nk + j];
            for (size_t d = 0; d < hd; ++d) acc[r * hd + d] += pj * v[j * hd + d];
        }
}

float exp_sum_scalar(float* p, size_t n, float m) {
    float s = 0;
    for (size_t i = 0; i < n; ++i) s += (p[i] = std::exp(p[i] - m));
    return s;
}

}  // namespace

AttnKernels attn_kernels_scalar() { return {&scores_scalar, &pv_scalar, &exp_sum_scalar}; }

}  // namespace detail

namespace {

constexpr size_t kQueryTile = 32;  // query rows per task: one K/V tile serves them all
constexpr size_t kKeyTile = 64;    // keys per step of the online softmax

inline bool allowed(const ChunkMask& m, size_t qi, size_t a) {
    if (a < m.n_cached) return !m.cached_hidden[a];
    const size_t j = a - m.n_cached;
    const int32_t sj = m.split_of[j], si = m.split_of[qi];
    if (sj == si) return m.modes[si] != SplitMode::Causal || j <= qi;
    return j < qi && m.modes[sj] != SplitMode::Noise;
}

}  // namespace

void attention(const float* q, size_t n, const int32_t* q_index, const float* k, const float* v,
               size_t kv_stride, size_t nh, size_t nkv, size_t hd, const ChunkMask& mask,
               float* out, AttentionScratch& scratch, ThreadPool& pool) {
    const detail::AttnKernels kern = kernels::active_isa() == kernels::Isa::Scalar
                                         ? detail::attn_kernels_scalar()
                                         : detail::attn_kernels_avx2();
    const size_t group = nh / nkv, P = mask.n_cached;
    const float scale = 1.0f / std::sqrt(static_cast<float>(hd));
    // Per chunk token, the end of the run of keys [0, end) it sees in full, so mask tests are
    // needed only past it (for causal text: the diagonal tile alone). Keys are invisible only
    // when hidden in the cache, in a noise split before the token's split, or past its own end.
    size_t cache_dense = P;
    for (size_t a = 0; a < P; ++a)
        if (mask.cached_hidden[a]) {
            cache_dense = a;
            break;
        }
    size_t first_noise = n;
    for (size_t i = 0; i < n; ++i)
        if (mask.modes[mask.split_of[i]] == SplitMode::Noise) {
            first_noise = i;
            break;
        }
    auto& dense = scratch.dense_end;
    dense.resize(n);
    for (size_t i = 0, start = 0; i < n; ++i) {
        if (i > 0 && mask.split_of[i] != mask.split_of[i - 1]) start = i;
        const int32_t sp = mask.split_of[i];
        const size_t own_end =
            mask.modes[sp] == SplitMode::Causal ? i + 1 : static_cast<size_t>(mask.split_end[sp]);
        const size_t d = P + (first_noise < start ? first_noise : own_end);
        dense[i] = cache_dense < P ? cache_dense : d;
    }

    const size_t tiles = (n + kQueryTile - 1) / kQueryTile, tasks = tiles * nh;
    const size_t per_share = kQueryTile * (hd * 2 + kKeyTile + 2);
    if (scratch.per_share.size() < pool.size()) scratch.per_share.resize(pool.size());
    for (size_t s = 0; s < pool.size(); ++s)
        if (scratch.per_share[s].size() < per_share) scratch.per_share[s].resize(per_share);

    pool.run([&](size_t share, size_t n_shares) {
        float* qb = scratch.per_share[share].data();
        float* acc = qb + kQueryTile * hd;
        float* s = acc + kQueryTile * hd;
        float* mx = s + kQueryTile * kKeyTile;
        float* sum = mx + kQueryTile;
        // Round-robin over tasks: under a causal mask later query tiles cost more, and contiguous
        // ranges would leave the last thread with most of the work. Each output is still
        // computed by one task the same way, whatever the thread count.
        for (size_t task = share; task < tasks; task += n_shares) {
            const size_t h = task % nh, tile = task / nh, g = h / group;
            const size_t r0 = tile * kQueryTile, nr = std::min(kQueryTile, n - r0);
            const float* kh = k + g * kv_stride * hd;
            const float* vh = v + g * kv_stride * hd;
            size_t key_end = 0;  // one past the last key any row of the tile may see
            for (size_t r = 0; r < nr; ++r) {
                const size_t qi = q_index ? q_index[r0 + r] : r0 + r;
                const int32_t sp = mask.split_of[qi];
                const size_t last = mask.modes[sp] == SplitMode::Causal
                                        ? qi
                                        : std::max<size_t>(qi, mask.split_end[sp] - 1);
                key_end = std::max(key_end, P + last + 1);
                const float* src = q + (r0 + r) * nh * hd + h * hd;
                for (size_t d = 0; d < hd; ++d) qb[r * hd + d] = src[d] * scale;
                mx[r] = -std::numeric_limits<float>::infinity();
                sum[r] = 0;
            }
            std::fill(acc, acc + nr * hd, 0.0f);
            for (size_t a0 = 0; a0 < key_end; a0 += kKeyTile) {
                const size_t nk = std::min(kKeyTile, key_end - a0);
                kern.scores(qb, nr, kh + a0 * hd, nk, hd, s);
                for (size_t r = 0; r < nr; ++r) {
                    float* sr = s + r * nk;
                    const size_t qi = q_index ? q_index[r0 + r] : r0 + r;
                    for (size_t j = dense[qi] > a0 ? dense[qi] - a0 : 0; j < nk; ++j)
                        if (!allowed(mask, qi, a0 + j))
                            sr[j] = -std::numeric_limits<float>::infinity();
                    float top = mx[r];
                    for (size_t j = 0; j < nk; ++j) top = std::max(top, sr[j]);
                    if (top == -std::numeric_limits<float>::infinity()) {
                        std::fill(sr, sr + nk, 0.0f);  // nothing visible here yet
                        continue;
                    }
                    const float corr = std::exp(mx[r] - top);  // 0 on the first visible tile
                    mx[r] = top;
                    sum[r] = sum[r] * corr + kern.exp_sum(sr, nk, top);
                    if (corr != 1.0f)
                        for (size_t d = 0; d < hd; ++d) acc[r * hd + d] *= corr;
                }
                kern.pv(s, nr, vh + a0 * hd, nk, hd, acc);
            }
            for (size_t r = 0; r < nr; ++r) {
                float* dst = out + (r0 + r) * nh * hd + h * hd;
                const float inv = 1.0f / sum[r];
                for (size_t d = 0; d < hd; ++d) dst[d] = acc[r * hd + d] * inv;
            }
        }
    });
}

}  // namespace lancet::ops
