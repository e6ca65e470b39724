// AVX2+FMA linear kernels: streaming GEMV for small batches, panel GEMM (6x16 tiles) for large;
// W4A8 with vpmaddubsw.
#include "kernels/linear_w4a8_x86_impl.h"
#include "kernels/linear_x86_impl.h"

namespace lancet::kernels::detail {

void linear_avx2(const float* x, size_t n, const PackedView& p, const float* bias, float* y,
                 float* scratch, ThreadPool& pool) {
    if (n <= kGemvMaxRows)
        gemv(x, n, p, bias, y, scratch, pool);
    else
        gemm(x, n, p, bias, y, pool);
}

void w4a8_avx2(const float* x, size_t n, const PackedView& p, const float* bias, float* y,
               const W4A8Scratch& s, ThreadPool& pool) {
    w4a8::run(x, n, p, bias, y, s, pool);
}

void w4a8_gemv_many_avx2(const float* x, size_t n, const W4A8Out* outs, size_t count,
                         const W4A8Scratch& s, ThreadPool& pool) {
    w4a8::gemv_many(x, n, outs, count, s, pool);
}

void dequant_bf16_avx2(const PackedView& p, uint16_t* dst, ThreadPool& pool) {
    dequant_bf16(p, dst, pool);
}

}  // namespace lancet::kernels::detail
