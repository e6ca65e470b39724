// conv3d(): implicit GEMM on the linear kernels. Per output frame and chunk of output pixels, the
// taps of one temporal offset dt are gathered into a bounded [pixels, kh·kw·C_in] panel (zeros
// for spatial padding) and multiplied by that dt's LinearWeight; the dt results are summed in dt
// order. Temporal taps on causal zero frames are left out (no multiply), so memory is bounded by
// one panel whatever the input size.
#include <algorithm>
#include <cstdint>
#include <cstring>

#include "core/error.h"
#include "core/numeric.h"
#include "kernels/linear_kernels.h"
#include "kernels/ops.h"
#include "kernels/ops_kernels.h"

namespace lancet::kernels {

Conv3dWeight Conv3dWeight::from_tap_major(const WeightView& wv, int64_t c_out, int64_t c_in,
                                          int64_t kt, int64_t kh, int64_t kw, const float* bias) {
    if (c_out < 1 || c_in < 1 || kt < 1 || kh < 1 || kw < 1)
        fail("conv3d weight: bad shape [", c_out, ", ", c_in, ", ", kt, ", ", kh, ", ", kw, "]");
    const size_t K = static_cast<size_t>(kh * kw * c_in);
    if (wv.out != static_cast<size_t>(c_out) || wv.in != K * static_cast<size_t>(kt))
        fail("conv3d weight: view [", wv.out, ", ", wv.in, "] is not [", c_out, ", ", kt * K, "]");
    Conv3dWeight cw;
    cw.c_out = c_out;
    cw.c_in = c_in;
    cw.kt = kt;
    cw.kh = kh;
    cw.kw = kw;
    if (bias) cw.bias.assign(bias, bias + c_out);
    const size_t out = wv.out, in = wv.in;
    for (int64_t dt = 0; dt < kt; ++dt) {
        const size_t c0 = static_cast<size_t>(dt) * K;
        switch (wv.type) {
            case WeightType::F32: {
                std::vector<float> part(out * K);
                for (size_t o = 0; o < out; ++o)
                    std::memcpy(&part[o * K], wv.f32 + o * in + c0, K * sizeof(float));
                cw.w.push_back(LinearWeight::from_f32(part.data(), out, K));
                break;
            }
            case WeightType::BF16: {
                std::vector<uint16_t> part(out * K);
                for (size_t o = 0; o < out; ++o)
                    std::memcpy(&part[o * K], wv.bf16 + o * in + c0, K * sizeof(uint16_t));
                cw.w.push_back(LinearWeight::from_bf16(part.data(), out, K));
                break;
            }
            case WeightType::Q4: {
                const size_t gs = wv.group_size;
                if (gs == 0 || K % gs != 0)
                    fail("conv3d weight: int4 group size ", gs,
                         " does not divide kh·kw·C_in = ", K);
                const size_t groups = in / gs, kg = K / gs;
                std::vector<uint8_t> q(out * K / 2), z(out * kg);
                std::vector<uint16_t> s(out * kg);
                for (size_t o = 0; o < out; ++o) {
                    std::memcpy(&q[o * K / 2], wv.qweight + o * in / 2 + c0 / 2, K / 2);
                    std::memcpy(&s[o * kg], wv.scales + o * groups + c0 / gs, kg * 2);
                    std::memcpy(&z[o * kg], wv.zeros + o * groups + c0 / gs, kg);
                }
                cw.w.push_back(
                    LinearWeight::from_awq_int4(q.data(), s.data(), z.data(), out, K, gs));
                break;
            }
            case WeightType::Int5:
            case WeightType::Nvfp4:
                // No checkpoint stores a convolution in these formats (spec §1.2, §1.3 quantize
                // the decoder's linears only).
                fail("conv3d weight: ", weight_type_name(wv.type),
                     " is not supported (F32, BF16 or INT4)");
        }
    }
    return cw;
}

Conv3dWeight Conv3dWeight::from_checkpoint(const TensorView& weight, const TensorView* bias) {
    const Shape& s = weight.shape;
    if ((s.size() != 5 && s.size() != 4) ||
        (weight.dtype != DType::F32 && weight.dtype != DType::BF16))
        fail("conv3d weight: expected F32/BF16 [C_out, C_in, (kt,) kh, kw], got ",
             dtype_name(weight.dtype), " ", shape_str(s));
    const int64_t co = s[0], ci = s[1], kt = s.size() == 5 ? s[2] : 1, kh = s[s.size() - 2],
                  kw = s[s.size() - 1];
    const size_t es = dtype_size(weight.dtype), in = static_cast<size_t>(kt * kh * kw * ci);
    if (weight.nbytes < static_cast<size_t>(weight.numel()) * es)
        fail("conv3d weight: ", weight.nbytes, " bytes for ", shape_str(s));
    // [C_out, C_in, kt, kh, kw] -> [C_out, (kt, kh, kw, C_in)]: copy element bytes (exact).
    std::vector<uint8_t> tm(static_cast<size_t>(co) * in * es);
    for (int64_t o = 0; o < co; ++o)
        for (int64_t c = 0; c < ci; ++c)
            for (int64_t tap = 0; tap < kt * kh * kw; ++tap)
                std::memcpy(&tm[(o * static_cast<int64_t>(in) + tap * ci + c) * es],
                            weight.data + ((o * ci + c) * kt * kh * kw + tap) * es, es);
    std::vector<float> b;
    if (bias) {
        if (bias->numel() != co) fail("conv3d bias: ", shape_str(bias->shape), " for ", co);
        b.resize(co);
        convert_to_f32(*bias, b.data());
    }
    const WeightView v =
        weight.dtype == DType::F32
            ? WeightView::from_f32(reinterpret_cast<const float*>(tm.data()), co, in)
            : WeightView::from_bf16(reinterpret_cast<const uint16_t*>(tm.data()), co, in);
    return from_tap_major(v, co, ci, kt, kh, kw, bias ? b.data() : nullptr);
}

void conv3d(const OpContext& ctx_in, const TensorRef& x, const TensorRef* cache,
            const Conv3dWeight& w, const Conv3dParams& p, const TensorRef& y, bool accumulate) {
    // One activation mode for the whole convolution: Bf16Act::Auto decides as for a GEMM, so a
    // frame's last block of a few pixels rounds its activations like the others.
    OpContext ctx = ctx_in;
    ctx.bf16_act = resolve_bf16_act(ctx.bf16_act, ctx.isa, SIZE_MAX);
    for (const TensorRef* t : {&x, &y})
        if (t->dtype != DType::F32 || !t->data || t->ndim != 4 || t->stride[3] != 1)
            fail("conv3d: ", t->describe(), " must be a [T, H, W, C] f32 tensor, unit C stride");
    if (w.w.size() != static_cast<size_t>(w.kt)) fail("conv3d: the weight is not built");
    const int64_t T = x.shape[0], H = x.shape[1], W = x.shape[2], Ci = x.shape[3], Co = w.c_out;
    if (Ci != w.c_in) fail("conv3d: x ", x.describe(), " has ", Ci, " channels, weight ", w.c_in);
    if (p.stride_t < 1 || p.stride_h < 1 || p.stride_w < 1 || p.pad_t_front < 0 || p.pad_top < 0 ||
        p.pad_bottom < 0 || p.pad_left < 0 || p.pad_right < 0)
        fail("conv3d: bad strides or padding");
    const int64_t Tc = cache ? cache->shape[0] : 0;
    if (cache) {
        if (cache->dtype != DType::F32 || cache->ndim != 4 || cache->stride[3] != 1 ||
            cache->shape[1] != H || cache->shape[2] != W || cache->shape[3] != Ci ||
            Tc > p.pad_t_front)
            fail("conv3d: cache ", cache->describe(), " does not fit x ", x.describe(), " with ",
                 p.pad_t_front, " front frames");
    }
    const int64_t Tp = T + p.pad_t_front, Hp = H + p.pad_top + p.pad_bottom,
                  Wp = W + p.pad_left + p.pad_right;
    if (Tp < w.kt || Hp < w.kh || Wp < w.kw)
        fail("conv3d: input ", x.describe(), " is smaller than the kernel");
    const int64_t To = (Tp - w.kt) / p.stride_t + 1, Ho = (Hp - w.kh) / p.stride_h + 1,
                  Wo = (Wp - w.kw) / p.stride_w + 1;
    if (y.shape[0] != To || y.shape[1] != Ho || y.shape[2] != Wo || y.shape[3] != Co)
        fail("conv3d: y ", y.describe(), " should be [", To, ", ", Ho, ", ", Wo, ", ", Co, "]");

    const int64_t K = w.kh * w.kw * Ci, pixels = Ho * Wo;
    // Output pixels per panel: a few MB of gathered input, enough rows for the GEMM kernels. The
    // blocks of a frame are made equal (so the threads of the narrow mode below finish together)
    // and whole 32-row tiles (the AMX kernels pad a call's rows to 32: 113 rows would run 128).
    const int64_t R0 = std::clamp<int64_t>((int64_t{1} << 20) / K, 16, 1024);
    const int64_t n_blocks = (pixels + R0 - 1) / R0, even = (pixels + n_blocks - 1) / n_blocks;
    const int64_t R = std::max<int64_t>(16, even >= 32 ? (even + 31) / 32 * 32 : even);
    const int64_t blocks_per_frame = (pixels + R - 1) / R, blocks = To * blocks_per_frame;
    const detail::OpKernels& kern = detail::op_kernels(ctx.isa);
    ThreadPool& pool = ctx.threads();

    // One block of output pixels [p0, p0 + rows) of output frame `to`: gather each real temporal
    // tap's panel into col, multiply, sum the taps in dt order into acc, store into y. The
    // arithmetic of a block does not depend on which thread runs it, or on the mode below;
    // `parallel` (one block at a time) splits the gather, the tap sums and the store over the
    // threads.
    auto run_block = [&](int64_t to, int64_t p0, float* col, float* acc, float* tmp,
                         bool parallel) {
        const int64_t rows = std::min(R, pixels - p0);
        bool first = true;
        for (int64_t dt = 0; dt < w.kt; ++dt) {
            const int64_t tf = to * p.stride_t - p.pad_t_front + dt;
            const float* frame;
            int64_t sh, sw;  // strides of the source frame
            if (tf >= 0) {
                frame = x.f32() + tf * x.stride[0];
                sh = x.stride[1];
                sw = x.stride[2];
            } else if (tf >= -Tc) {
                frame = cache->f32() + (Tc + tf) * cache->stride[0];
                sh = cache->stride[1];
                sw = cache->stride[2];
            } else {
                continue;  // a causal zero frame: the tap contributes nothing
            }
            auto gather = [&](size_t r0, size_t r1) {
                for (size_t r = r0; r < r1; ++r) {
                    const int64_t pix = p0 + static_cast<int64_t>(r), oy = pix / Wo, ox = pix % Wo;
                    float* dst = col + r * K;
                    for (int64_t dy = 0; dy < w.kh; ++dy) {
                        const int64_t iy = oy * p.stride_h - p.pad_top + dy;
                        for (int64_t dx = 0; dx < w.kw; ++dx, dst += Ci) {
                            const int64_t ix = ox * p.stride_w - p.pad_left + dx;
                            if (iy < 0 || iy >= H || ix < 0 || ix >= W)
                                std::fill(dst, dst + Ci, 0.0f);
                            else
                                std::memcpy(dst, frame + iy * sh + ix * sw, Ci * sizeof(float));
                        }
                    }
                }
            };
            if (parallel)
                pool.parallel_for(static_cast<size_t>(rows), gather);
            else
                gather(0, static_cast<size_t>(rows));
            const float* b = first && !w.bias.empty() ? w.bias.data() : nullptr;
            detail::linear_rows(ctx, col, static_cast<size_t>(rows), w.w[dt], b, first ? acc : tmp);
            if (!first) {
                // Elementwise, so splitting it over the threads changes no result.
                auto add = [&](size_t r0, size_t r1) {
                    kern.add(acc + r0 * Co, tmp + r0 * Co, (r1 - r0) * Co, acc + r0 * Co);
                };
                if (parallel)
                    pool.parallel_for(static_cast<size_t>(rows), add);
                else
                    add(0, static_cast<size_t>(rows));
            }
            first = false;
        }
        if (first) {  // every tap on zero frames: the bias alone
            for (int64_t r = 0; r < rows; ++r)
                for (int64_t c = 0; c < Co; ++c)
                    acc[r * Co + c] = w.bias.empty() ? 0.0f : w.bias[c];
        }
        auto store = [&](size_t r0, size_t r1) {
            for (size_t r = r0; r < r1; ++r) {
                const int64_t pix = p0 + static_cast<int64_t>(r), oy = pix / Wo, ox = pix % Wo;
                float* dst = y.f32() + to * y.stride[0] + oy * y.stride[1] + ox * y.stride[2];
                const float* src = acc + r * Co;
                if (accumulate)
                    kern.add(dst, src, static_cast<size_t>(Co), dst);
                else
                    std::memcpy(dst, src, Co * sizeof(float));
            }
        };
        if (parallel)
            pool.parallel_for(static_cast<size_t>(rows), store);
        else
            store(0, static_cast<size_t>(rows));
    };

    const size_t col_n = static_cast<size_t>(std::min(R, pixels) * K),
                 acc_n = static_cast<size_t>(std::min(R, pixels) * Co);
    // Narrow outputs (the VAE's 256 channels and below: at most 8 panels of 32) split the GEMM's
    // output panels poorly between threads, and every thread would pack the same rows of x for
    // its few panels; there each thread takes whole pixel blocks instead (its own panels, the
    // linear kernels run serially inside the pool job), so both threads stay busy and each packs
    // only its own rows. Wide outputs keep one block at a time, its panels split between the
    // threads, so the weight streams through the cores once per block, not once per thread.
    if (Co <= 256 && blocks >= 2 && pool.size() > 1) {
        pool.parallel_for(static_cast<size_t>(blocks), [&](size_t b0, size_t b1) {
            thread_local std::vector<float> col, acc, tmp;
            if (col.size() < col_n) col.resize(col_n);
            if (acc.size() < acc_n) acc.resize(acc_n), tmp.resize(acc_n);
            for (size_t bi = b0; bi < b1; ++bi) {
                const int64_t to = static_cast<int64_t>(bi) / blocks_per_frame,
                              p0 = static_cast<int64_t>(bi) % blocks_per_frame * R;
                run_block(to, p0, col.data(), acc.data(), tmp.data(), false);
            }
        });
        return;
    }
    std::vector<float> col(col_n), acc(acc_n), tmp(acc_n);
    for (int64_t to = 0; to < To; ++to)
        for (int64_t p0 = 0; p0 < pixels; p0 += R)
            run_block(to, p0, col.data(), acc.data(), tmp.data(), true);
}

}  // namespace lancet::kernels
