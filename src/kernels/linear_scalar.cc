// Portable linear kernel: plain loops over the repacked layout, f32 accumulation in column order.
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

}  // namespace lancet::kernels::detail
