// The vision tower's fast path on the op layer.
#include "model/vit.h"

#include <algorithm>
#include <chrono>
#include <cstring>

#include "core/error.h"
#include "model/weight_load.h"

namespace lancet {

namespace {

using kernels::TensorRef;
using Clock = std::chrono::steady_clock;

constexpr int64_t kRowBlock = 256;  // MLP and merger row block: bounds the [rows, F] buffers
constexpr double kRopeTheta = 10000.0;
constexpr float kEps = 1e-6f;

TensorRef view(float* p, std::initializer_list<int64_t> shape,
               std::initializer_list<int64_t> stride) {
    TensorRef t;
    t.ndim = static_cast<int>(shape.size());
    std::copy(shape.begin(), shape.end(), t.shape.begin());
    std::copy(stride.begin(), stride.end(), t.stride.begin());
    t.data = p;
    return t;
}

template <typename T>
void grow(std::vector<T>& v, size_t n) {
    if (v.size() < n) v.resize(n);
}

double seconds_since(Clock::time_point t0) {
    return std::chrono::duration<double>(Clock::now() - t0).count();
}

}  // namespace

VitPlan vit_plan(const VitConfig& v, int64_t T, int64_t H, int64_t W, const char* where) {
    if (T <= 0 || H <= 0 || W <= 0)
        fail(where, ": video is [", v.in_chans, ", ", T, ", ", H, ", ", W,
             "]; every size must be > 0");
    if (T % v.temporal_patch_size != 0)
        fail(where, ": video has ", T, " frames, not a multiple of temporal_patch_size ",
             v.temporal_patch_size);
    if (H % v.merge_pixels() != 0 || W % v.merge_pixels() != 0)
        fail(where, ": video is ", H, "x", W, " pixels; both sides must be multiples of ",
             v.merge_pixels(), " (patch_size x spatial_merge_size)");
    const int64_t m = v.spatial_merge_size, wm = v.window_merge_blocks();
    VitPlan p;
    p.gt = T / v.temporal_patch_size, p.gh = H / v.patch_size, p.gw = W / v.patch_size;
    p.mh = p.gh / m, p.mw = p.gw / m, p.frame_rows = p.gh * p.gw;
    // Segment bounds and permutation indices are int32 (the attention op's cu_seqlens).
    if (p.gt > (1 << 30) / std::max<int64_t>(p.frame_rows, 1) || p.frame_rows > (1 << 30))
        fail(where, ": video [", v.in_chans, ", ", T, ", ", H, ", ", W, "] has too many patches");

    // One temporal patch: windows of wm x wm merge blocks tiled from the top-left in raster
    // order (edge windows partial), merge blocks raster inside each window.
    std::vector<int32_t> frame_blocks;
    p.cu_window = {0};
    for (int64_t wr = 0; wr < (p.mh + wm - 1) / wm; ++wr)
        for (int64_t wc = 0; wc < (p.mw + wm - 1) / wm; ++wc) {
            int64_t count = 0;
            for (int64_t r = wr * wm; r < std::min(p.mh, (wr + 1) * wm); ++r)
                for (int64_t c = wc * wm; c < std::min(p.mw, (wc + 1) * wm); ++c, ++count)
                    frame_blocks.push_back(static_cast<int32_t>(r * p.mw + c));
            p.cu_window.push_back(p.cu_window.back() + static_cast<int32_t>(count * m * m));
        }
    for (int64_t t = 0; t < p.gt; ++t)
        for (const int32_t b : frame_blocks) {
            p.window_index.push_back(static_cast<int32_t>(t * p.mh * p.mw + b));
            const int64_t bh = b / p.mw, bw = b % p.mw;
            for (int64_t dy = 0; dy < m; ++dy)
                for (int64_t dx = 0; dx < m; ++dx) {
                    const int64_t row = bh * m + dy, col = bw * m + dx;
                    p.patch_raster.push_back(static_cast<int32_t>((t * p.gh + row) * p.gw + col));
                    if (t == 0) p.frame_pos.push_back({row, col});
                }
        }
    return p;
}

namespace {

// The m*m patch rows of merge block (bh, bw) of temporal patch t, in (dy, dx) order, each the
// (C, tp, py, px) vector: rows [m*m, patch_dim].
void pack_merge_block(const VitConfig& v, const float* video, int64_t T, int64_t H, int64_t W,
                      int64_t t, int64_t bh, int64_t bw, float* o) {
    const int64_t p = v.patch_size, tp = v.temporal_patch_size, m = v.spatial_merge_size;
    for (int64_t dy = 0; dy < m; ++dy)
        for (int64_t dx = 0; dx < m; ++dx)
            for (int64_t c = 0; c < v.in_chans; ++c)
                for (int64_t dt = 0; dt < tp; ++dt)
                    for (int64_t y = 0; y < p; ++y, o += p) {
                        const int64_t row = (bh * m + dy) * p + y, col = (bw * m + dx) * p;
                        std::memcpy(o, video + ((c * T + t * tp + dt) * H + row) * W + col,
                                    static_cast<size_t>(p) * sizeof(float));
                    }
}

}  // namespace

void vit_pack_patches(const VitConfig& v, const float* video, int64_t T, int64_t H, int64_t W,
                      float* rows) {
    const int64_t m = v.spatial_merge_size, gt = T / v.temporal_patch_size;
    const int64_t mh = H / v.merge_pixels(), mw = W / v.merge_pixels();
    const int64_t block = m * m * v.patch_dim();
    for (int64_t t = 0; t < gt; ++t)
        for (int64_t bh = 0; bh < mh; ++bh)
            for (int64_t bw = 0; bw < mw; ++bw, rows += block)
                pack_merge_block(v, video, T, H, W, t, bh, bw, rows);
}

VisionTower::VisionTower(const LanceCheckpoint& ck, bool bf16) : cfg_(ck.config().vision) {
    if (!ck.has_vit())
        fail(ck.dir(),
             ": the checkpoint has no ViT weights (no vit_model.* tensors and no "
             "Qwen2.5-VL-ViT/vit.safetensors)");
    const size_t D = cfg_.hidden_size, F = cfg_.intermediate_size, M = cfg_.merged_dim();
    const std::string p = "vit_model.";
    patch_ = load_linear(ck, p + "patch_embed.proj", D, cfg_.patch_dim(), bf16);
    const int64_t d = static_cast<int64_t>(D), f = static_cast<int64_t>(F);
    for (int j = 0; j < cfg_.depth; ++j) {
        const std::string b = p + "blocks." + std::to_string(j) + ".";
        Block B;
        B.norm1 = load_f32(ck, b + "norm1.weight", d);
        B.norm2 = load_f32(ck, b + "norm2.weight", d);
        B.qkv = load_linear(ck, b + "attn.qkv", 3 * D, D, bf16);
        B.qkv_b = load_f32(ck, b + "attn.qkv.bias", 3 * d);
        B.proj = load_linear(ck, b + "attn.proj", D, D, bf16);
        B.proj_b = load_f32(ck, b + "attn.proj.bias", d);
        B.gate = load_linear(ck, b + "mlp.gate_proj", F, D, bf16);
        B.gate_b = load_f32(ck, b + "mlp.gate_proj.bias", f);
        B.up = load_linear(ck, b + "mlp.up_proj", F, D, bf16);
        B.up_b = load_f32(ck, b + "mlp.up_proj.bias", f);
        B.down = load_linear(ck, b + "mlp.down_proj", D, F, bf16);
        B.down_b = load_f32(ck, b + "mlp.down_proj.bias", d);
        blocks_.push_back(std::move(B));
    }
    ln_q_ = load_f32(ck, p + "merger.ln_q.weight", d);
    mlp0_ = load_linear(ck, p + "merger.mlp.0", M, M, bf16);
    mlp0_b_ = load_f32(ck, p + "merger.mlp.0.bias", static_cast<int64_t>(M));
    mlp2_ = load_linear(ck, p + "merger.mlp.2", cfg_.out_hidden_size, M, bf16);
    mlp2_b_ = load_f32(ck, p + "merger.mlp.2.bias", cfg_.out_hidden_size);
}

void VisionTower::run_linear(const kernels::OpContext& ctx, const TensorRef& x,
                             const kernels::LinearWeight& w, const float* bias,
                             const TensorRef& y) {
    const auto t0 = Clock::now();
    kernels::linear(ctx, x, w, bias, y);
    t_linear_ += seconds_since(t0);
    linear_macs_ += static_cast<double>(x.shape[0]) * static_cast<double>(w.out()) *
                    static_cast<double>(w.in());
}

std::vector<float> VisionTower::forward(const kernels::OpContext& ctx, const float* video,
                                        int64_t T, int64_t H, int64_t W, VitTraceF32* trace) {
    const VitPlan plan = vit_plan(cfg_, T, H, W, "vit");
    const int64_t N = plan.patches(), D = cfg_.hidden_size, F = cfg_.intermediate_size;
    const int64_t nh = cfg_.num_heads, hd = cfg_.head_dim(), P = cfg_.patch_dim();
    const int64_t unit = cfg_.merge_unit(), fr = plan.frame_rows;
    t_linear_ = t_attention_ = linear_macs_ = 0;
    auto observe = [&](int block, VitLinearInput which, const float* rows, int64_t n, int64_t dim) {
        if (observer_)
            observer_(block, which, rows, static_cast<size_t>(n), static_cast<size_t>(dim));
    };

    // Patch embedding one temporal patch at a time (bounded scratch): its merge blocks packed
    // straight into window order, then the Conv3d as a linear.
    grow(s_.rows, static_cast<size_t>(fr * P));
    grow(s_.x, static_cast<size_t>(N * D));
    float* x = s_.x.data();
    const int64_t blocks_per_frame = fr / unit;
    for (int64_t t = 0; t < plan.gt; ++t) {
        for (int64_t i = 0; i < blocks_per_frame; ++i) {
            const int64_t b = plan.window_index[t * blocks_per_frame + i] % (plan.mh * plan.mw);
            pack_merge_block(cfg_, video, T, H, W, t, b / plan.mw, b % plan.mw,
                             s_.rows.data() + i * unit * P);
        }
        run_linear(ctx, TensorRef::contiguous(s_.rows.data(), {fr, P}), patch_, nullptr,
                   TensorRef::contiguous(x + t * fr * D, {fr, D}));
    }
    if (trace) trace->embed.assign(x, x + N * D);

    // Every temporal patch has the same window order, so one angle table serves them all.
    kernels::rope_angles_2d(plan.frame_pos.data(), static_cast<size_t>(fr), static_cast<size_t>(hd),
                            kRopeTheta, s_.rope);
    kernels::AttnMask windows;
    windows.kind = kernels::AttnMask::Kind::Segments;
    windows.cu_seqlens = plan.cu_window.data();
    windows.n_segments = plan.cu_window.size() - 1;
    kernels::AttnMask whole;  // full-attention blocks: one temporal patch, Kind::None

    grow(s_.h, static_cast<size_t>(std::max(fr, kRowBlock) * D));
    grow(s_.qkv, static_cast<size_t>(fr * 3 * D));
    grow(s_.att, static_cast<size_t>(fr * D));
    grow(s_.tmp, static_cast<size_t>(std::max(fr, kRowBlock) * D));
    grow(s_.gate, static_cast<size_t>(kRowBlock * F));
    grow(s_.up, static_cast<size_t>(kRowBlock * F));
    for (int j = 0; j < cfg_.depth; ++j) {
        const Block& B = blocks_[j];
        // Attention, one temporal patch at a time: no window and no full block crosses time.
        for (int64_t t = 0; t < plan.gt; ++t) {
            const TensorRef xt = TensorRef::contiguous(x + t * fr * D, {fr, D});
            const TensorRef h = TensorRef::contiguous(s_.h.data(), {fr, D});
            float* qkv = s_.qkv.data();
            kernels::rms_norm(ctx, xt, B.norm1.data(), kEps, h);
            observe(j, VitLinearInput::Qkv, s_.h.data(), fr, D);
            run_linear(ctx, h, B.qkv, B.qkv_b.data(), TensorRef::contiguous(qkv, {fr, 3 * D}));
            const auto t0 = Clock::now();
            // qkv columns are [q | k | v], heads consecutive inside each.
            const TensorRef q = view(qkv, {fr, nh, hd}, {3 * D, hd, 1});
            const TensorRef k_rows = view(qkv + D, {fr, nh, hd}, {3 * D, hd, 1});
            kernels::rope(ctx, q, s_.rope);
            kernels::rope(ctx, k_rows, s_.rope);
            const TensorRef k = view(qkv + D, {nh, fr, hd}, {hd, 3 * D, 1});
            const TensorRef v = view(qkv + 2 * D, {nh, fr, hd}, {hd, 3 * D, 1});
            const TensorRef att = TensorRef::contiguous(s_.att.data(), {fr, nh, hd});
            kernels::attention(ctx, q, nullptr, k, v, cfg_.is_full_attention(j) ? whole : windows,
                               0.0f, att, s_.attn);
            t_attention_ += seconds_since(t0);
            const TensorRef o = TensorRef::contiguous(s_.tmp.data(), {fr, D});
            observe(j, VitLinearInput::Proj, s_.att.data(), fr, D);
            run_linear(ctx, TensorRef::contiguous(s_.att.data(), {fr, D}), B.proj, B.proj_b.data(),
                       o);
            kernels::add(ctx, xt, o, xt);
        }
        // SiLU-gated MLP in row blocks.
        for (int64_t r0 = 0; r0 < N; r0 += kRowBlock) {
            const int64_t n = std::min(kRowBlock, N - r0);
            const TensorRef xr = TensorRef::contiguous(x + r0 * D, {n, D});
            const TensorRef h = TensorRef::contiguous(s_.h.data(), {n, D});
            const TensorRef g = TensorRef::contiguous(s_.gate.data(), {n, F});
            const TensorRef u = TensorRef::contiguous(s_.up.data(), {n, F});
            const TensorRef o = TensorRef::contiguous(s_.tmp.data(), {n, D});
            kernels::rms_norm(ctx, xr, B.norm2.data(), kEps, h);
            observe(j, VitLinearInput::GateUp, s_.h.data(), n, D);
            run_linear(ctx, h, B.gate, B.gate_b.data(), g);
            run_linear(ctx, h, B.up, B.up_b.data(), u);
            kernels::silu_mul(ctx, g, u, g);
            observe(j, VitLinearInput::Down, s_.gate.data(), n, F);
            run_linear(ctx, g, B.down, B.down_b.data(), o);
            kernels::add(ctx, xr, o, xr);
        }
        if (trace) trace->block_out.emplace_back(x, x + N * D);
    }

    // Merger: RMSNorm per patch; the unit consecutive rows of a merge block side by side are one
    // [unit * D] row; Linear -> GELU -> Linear; rows back from window order to raster order.
    const int64_t M = cfg_.merged_dim(), out_dim = cfg_.out_hidden_size, nm = plan.merged();
    std::vector<float> out(static_cast<size_t>(nm * out_dim));
    const int64_t mb = std::max<int64_t>(1, kRowBlock / unit);
    grow(s_.merged, static_cast<size_t>(mb * M));
    grow(s_.mid, static_cast<size_t>(mb * M));
    grow(s_.tmp, static_cast<size_t>(mb * out_dim));
    for (int64_t b0 = 0; b0 < nm; b0 += mb) {
        const int64_t n = std::min(mb, nm - b0);
        kernels::rms_norm(ctx, TensorRef::contiguous(x + b0 * unit * D, {n * unit, D}),
                          ln_q_.data(), kEps,
                          TensorRef::contiguous(s_.merged.data(), {n * unit, D}));
        const TensorRef mid = TensorRef::contiguous(s_.mid.data(), {n, M});
        observe(-1, VitLinearInput::Merger0, s_.merged.data(), n, M);
        run_linear(ctx, TensorRef::contiguous(s_.merged.data(), {n, M}), mlp0_, mlp0_b_.data(),
                   mid);
        kernels::gelu(ctx, mid, mid);
        observe(-1, VitLinearInput::Merger2, s_.mid.data(), n, M);
        run_linear(ctx, mid, mlp2_, mlp2_b_.data(),
                   TensorRef::contiguous(s_.tmp.data(), {n, out_dim}));
        for (int64_t i = 0; i < n; ++i)
            std::memcpy(out.data() + static_cast<int64_t>(plan.window_index[b0 + i]) * out_dim,
                        s_.tmp.data() + i * out_dim, static_cast<size_t>(out_dim) * sizeof(float));
    }
    return out;
}

}  // namespace lancet
