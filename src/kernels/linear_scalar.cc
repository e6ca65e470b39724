// Portable linear kernels: plain loops over the repacked layout, f32 accumulation in column order;
// the W4A8 reference (the integer arithmetic and f32 order every W4A8 kernel must reproduce).
#include <cmath>
#include <cstring>

#include "core/numeric.h"
#include "kernels/linear_kernels.h"

namespace lancet::kernels::detail {
namespace {

// Column i of the 8 rows of block b, exactly, into w[8].
void block_column(const PackedView& p, size_t b, size_t i, float* w) {
    switch (p.type) {
        case WeightType::F32: {
            const float* d = static_cast<const float*>(p.data) + (b * p.in + i) * kRowBlock;
            for (size_t r = 0; r < kRowBlock; ++r) w[r] = d[r];
            break;
        }
        case WeightType::BF16: {
            const uint16_t* d = static_cast<const uint16_t*>(p.data) + (b * p.in + i) * kRowBlock;
            for (size_t r = 0; r < kRowBlock; ++r) w[r] = bf16_to_f32(d[r]);
            break;
        }
        case WeightType::Q4: {
            const size_t chunks = p.in / 8, groups = p.in / p.group_size, g = i / p.group_size;
            const uint32_t* d =
                static_cast<const uint32_t*>(p.data) + (b * chunks + i / 8) * kRowBlock;
            for (size_t r = 0; r < kRowBlock; ++r) {
                const float s = bf16_to_f32(p.scales[(b * groups + g) * kRowBlock + r]);
                const float z = p.zeros[(b * groups + g) * kRowBlock + r];
                w[r] = (float((d[r] >> (4 * (i % 8))) & 0xfu) - z) * s;
            }
            break;
        }
        case WeightType::Int5: {
            const size_t chunks = p.in / 4, groups = p.in / p.group_size, g = i / p.group_size;
            const uint32_t* d =
                static_cast<const uint32_t*>(p.data) + (b * chunks + i / 4) * kRowBlock;
            for (size_t r = 0; r < kRowBlock; ++r) {
                const float s = bf16_to_f32(p.scales[(b * groups + g) * kRowBlock + r]);
                const float z = p.zeros[(b * groups + g) * kRowBlock + r];
                w[r] = (float((d[r] >> (8 * (i % 4))) & 0xffu) - z) * s;
            }
            break;
        }
        case WeightType::Nvfp4: {
            const size_t chunks = p.in / 8, blocks = p.in / kNvfp4Block, k = i / kNvfp4Block;
            const uint32_t* d =
                static_cast<const uint32_t*>(p.data) + (b * chunks + i / 8) * kRowBlock;
            for (size_t r = 0; r < kRowBlock; ++r) {
                const unsigned c = (d[r] >> (4 * (i % 8))) & 0xfu;
                const float m =
                    kE2m1Magnitude[c & 7] * bf16_to_f32(p.scales[(b * blocks + k) * kRowBlock + r]);
                w[r] = c & 8 ? -m : m;
            }
            break;
        }
    }
}

}  // namespace

void linear_scalar(const float* x, size_t n, const PackedView& p, const float* bias, float* y,
                   float* /*scratch*/, ThreadPool& pool) {
    pool.parallel_for(p.n_blocks, [&](size_t b0, size_t b1) {
        float w[kRowBlock];
        for (size_t b = b0; b < b1; ++b) {
            const size_t rows = std::min(kRowBlock, p.out - b * kRowBlock);
            for (size_t j = 0; j < n; ++j) {
                float acc[kRowBlock] = {};
                const float* xj = x + j * p.in;
                for (size_t i = 0; i < p.in; ++i) {
                    block_column(p, b, i, w);
                    for (size_t r = 0; r < kRowBlock; ++r) acc[r] += xj[i] * w[r];
                }
                for (size_t r = 0; r < rows; ++r) {
                    const size_t o = b * kRowBlock + r;
                    y[j * p.out + o] = acc[r] + (bias ? bias[o] : 0.0f);
                }
            }
        }
    });
}

// W4A8 reference: the formulas of linear.h written out one scalar at a time.
void w4a8_scalar(const float* x, size_t n, const PackedView& p, const float* bias, float* y,
                 const W4A8Scratch& a, ThreadPool& pool) {
    const size_t in = p.in, gs = p.group_size, kb = w4a8_block(gs), groups = in / gs,
                 nblk = in / kb, bpg = gs / kb, chunks = in / 8;
    // Position of column k in a quantized row: each 8-column chunk holds its even columns first.
    auto pos = [](size_t k) { return (k & ~size_t{7}) + (k & 1) * 4 + (k & 7) / 2; };
    for (size_t r = 0; r < n; ++r) {
        const float* xr = x + r * in;
        for (size_t g = 0; g < groups; ++g) {
            float xs = 0.0f;
            for (size_t bi = 0; bi < bpg; ++bi) {
                const size_t blk = g * bpg + bi;
                float amax = 0.0f;
                for (size_t k = blk * kb; k < (blk + 1) * kb; ++k)
                    amax = std::max(amax, std::fabs(xr[k]));
                const float d = amax / 127.0f, id = amax > 0.0f ? 127.0f / amax : 0.0f;
                int sum = 0;
                for (size_t k = blk * kb; k < (blk + 1) * kb; ++k) {
                    const int v = int(std::nearbyint(xr[k] * id));
                    a.q[r * in + pos(k)] = int8_t(v);
                    sum += v;
                }
                a.d[r * nblk + blk] = d;
                xs = std::fma(d, float(sum), xs);
            }
            a.xs[r * groups + g] = xs;
        }
    }
    const uint32_t* q = static_cast<const uint32_t*>(p.data);
    pool.parallel_for(p.n_blocks, [&](size_t b0, size_t b1) {
        for (size_t b = b0; b < b1; ++b) {
            const size_t rows = std::min(kRowBlock, p.out - b * kRowBlock);
            for (size_t j = 0; j < rows; ++j) {
                const size_t o = b * kRowBlock + j;
                for (size_t r = 0; r < n; ++r) {
                    const int8_t* xq = a.q + r * in;
                    float acc = 0.0f;
                    for (size_t g = 0; g < groups; ++g) {
                        const float s = bf16_to_f32(p.scales[(b * groups + g) * kRowBlock + j]);
                        const float zs = float(p.zeros[(b * groups + g) * kRowBlock + j]) * s;
                        for (size_t bi = 0; bi < bpg; ++bi) {
                            const size_t blk = g * bpg + bi;
                            int32_t dot = 0;
                            for (size_t k = blk * kb; k < (blk + 1) * kb; ++k) {
                                const uint32_t word = q[(b * chunks + k / 8) * kRowBlock + j];
                                dot += int32_t((word >> (4 * (k % 8))) & 0xfu) * xq[pos(k)];
                            }
                            acc = std::fma(float(dot), s * a.d[r * nblk + blk], acc);
                        }
                        acc = std::fma(-zs, a.xs[r * groups + g], acc);
                    }
                    y[r * p.out + o] = acc + (bias ? bias[o] : 0.0f);
                }
            }
        }
    });
}

}  // namespace lancet::kernels::detail
