// AVX-512 linear kernels (F/BW/VL/DQ): the 256-bit kernels recompiled for the AVX-512 target.
#include "kernels/linear_x86_impl.h"

namespace lancet::kernels::detail {

void linear_avx512(const float* x, size_t n, const PackedView& p, const float* bias, float* y,
                   float* scratch, ThreadPool& pool) {
    if (n <= kGemvMaxRows)
        gemv(x, n, p, bias, y, scratch, pool);
    else
        gemm(x, n, p, bias, y, pool);
}

}  // namespace lancet::kernels::detail
