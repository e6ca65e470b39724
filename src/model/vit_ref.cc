// The float64 ViT reference: plain loops over the raster patch grid.
#include "model/vit_ref.h"

#include <cmath>

#include "core/error.h"
#include "model/decoder_ref.h"

namespace lancet::ref {

namespace {

std::vector<double> plain(const LanceCheckpoint& ck, const std::string& name) {
    const std::vector<float> f = to_f32(ck.tensor(name));
    return std::vector<double>(f.begin(), f.end());
}

// y[out] = W[out, in] x + b
void matvec(const std::vector<double>& w, const std::vector<double>& b, const double* x, size_t out,
            size_t in, double* y) {
    for (size_t o = 0; o < out; ++o) {
        double s = b.empty() ? 0.0 : b[o];
        for (size_t i = 0; i < in; ++i) s += w[o * in + i] * x[i];
        y[o] = s;
    }
}

double silu(double x) { return x / (1.0 + std::exp(-x)); }

}  // namespace

VitGrid vit_grid(const VitConfig& v, int64_t T, int64_t H, int64_t W, const char* where) {
    if (T <= 0 || H <= 0 || W <= 0)
        fail(where, ": video is [", v.in_chans, ", ", T, ", ", H, ", ", W,
             "], every size must be > 0");
    if (T % v.temporal_patch_size != 0)
        fail(where, ": video has ", T, " frames, which is not a multiple of temporal_patch_size ",
             v.temporal_patch_size);
    if (H % v.merge_pixels() != 0 || W % v.merge_pixels() != 0)
        fail(where, ": video is ", H, "x", W, " pixels, which is not a multiple of ",
             v.merge_pixels(), " (patch_size x spatial_merge_size) on both sides");
    return {T / v.temporal_patch_size, H / v.patch_size, W / v.patch_size};
}

void vit_patch_vector(const VitConfig& v, const double* video, int64_t T, int64_t H, int64_t W,
                      int64_t t, int64_t ph, int64_t pw, double* out) {
    const int64_t p = v.patch_size, tp = v.temporal_patch_size;
    size_t k = 0;
    for (int64_t c = 0; c < v.in_chans; ++c)
        for (int64_t dt = 0; dt < tp; ++dt)
            for (int64_t y = 0; y < p; ++y)
                for (int64_t x = 0; x < p; ++x)
                    out[k++] = video[((c * T + t * tp + dt) * H + ph * p + y) * W + pw * p + x];
}

bool vit_same_window(const VitConfig& v, int64_t ah, int64_t aw, int64_t bh, int64_t bw) {
    const int64_t side = static_cast<int64_t>(v.spatial_merge_size) * v.window_merge_blocks();
    return ah / side == bh / side && aw / side == bw / side;
}

void vit_rope(double* x, size_t hd, int64_t row, int64_t col) {
    const size_t quarter = hd / 4, half = hd / 2;
    std::vector<double> angle(half);
    for (size_t i = 0; i < quarter; ++i) {
        const double inv = std::pow(10000.0, -static_cast<double>(2 * i) / (hd / 2.0));
        angle[i] = static_cast<double>(row) * inv;
        angle[quarter + i] = static_cast<double>(col) * inv;
    }
    std::vector<double> y(hd);
    for (size_t j = 0; j < half; ++j) {
        const double c = std::cos(angle[j]), s = std::sin(angle[j]);
        y[j] = x[j] * c - x[j + half] * s;
        y[j + half] = x[j + half] * c + x[j] * s;
    }
    for (size_t j = 0; j < hd; ++j) x[j] = y[j];
}

double gelu_erf(double x) { return 0.5 * x * (1.0 + std::erf(x / std::sqrt(2.0))); }

VitWeights load_vit_weights(const LanceCheckpoint& ck) {
    if (!ck.has_vit())
        fail(ck.dir(),
             ": the checkpoint has no ViT weights (no vit_model.* tensors and no "
             "Qwen2.5-VL-ViT/vit.safetensors)");
    VitWeights w;
    w.cfg = ck.config().vision;
    const std::string p = "vit_model.";
    w.patch = plain(ck, p + "patch_embed.proj.weight");
    for (int j = 0; j < w.cfg.depth; ++j) {
        const std::string b = p + "blocks." + std::to_string(j) + ".";
        VitWeights::Block B;
        B.norm1 = plain(ck, b + "norm1.weight");
        B.norm2 = plain(ck, b + "norm2.weight");
        B.qkv_w = linear_weight(ck, b + "attn.qkv");
        B.qkv_b = plain(ck, b + "attn.qkv.bias");
        B.proj_w = linear_weight(ck, b + "attn.proj");
        B.proj_b = plain(ck, b + "attn.proj.bias");
        B.gate_w = linear_weight(ck, b + "mlp.gate_proj");
        B.gate_b = plain(ck, b + "mlp.gate_proj.bias");
        B.up_w = linear_weight(ck, b + "mlp.up_proj");
        B.up_b = plain(ck, b + "mlp.up_proj.bias");
        B.down_w = linear_weight(ck, b + "mlp.down_proj");
        B.down_b = plain(ck, b + "mlp.down_proj.bias");
        w.blocks.push_back(std::move(B));
    }
    w.ln_q = plain(ck, p + "merger.ln_q.weight");
    w.mlp0_w = linear_weight(ck, p + "merger.mlp.0");
    w.mlp0_b = plain(ck, p + "merger.mlp.0.bias");
    w.mlp2_w = linear_weight(ck, p + "merger.mlp.2");
    w.mlp2_b = plain(ck, p + "merger.mlp.2.bias");
    return w;
}

std::vector<double> vit_forward(const VitWeights& wt, const double* video, int64_t T, int64_t H,
                                int64_t W, VitTrace* trace) {
    const VitConfig& v = wt.cfg;
    const VitGrid g = vit_grid(v, T, H, W, "ref::vit_forward");
    const size_t N = static_cast<size_t>(g.patches()), D = v.hidden_size, F = v.intermediate_size;
    const size_t nh = v.num_heads, hd = v.head_dim(), P = v.patch_dim();
    const double eps = 1e-6;
    auto coords = [&](size_t r, int64_t& t, int64_t& h, int64_t& w) {
        t = static_cast<int64_t>(r) / (g.h * g.w);
        h = static_cast<int64_t>(r) / g.w % g.h;
        w = static_cast<int64_t>(r) % g.w;
    };

    // Patch embedding: one Conv3d tap set per patch = a matvec over the (C, tp, py, px) vector.
    std::vector<double> x(N * D), pv(P);
    for (size_t r = 0; r < N; ++r) {
        int64_t t, h, w;
        coords(r, t, h, w);
        vit_patch_vector(v, video, T, H, W, t, h, w, pv.data());
        matvec(wt.patch, {}, pv.data(), D, P, &x[r * D]);
    }
    if (trace) trace->embed = x;

    // Masks over raster patches: window blocks see their window, full blocks their temporal patch.
    std::vector<uint8_t> window_mask(N * N), full_mask(N * N);
    for (size_t a = 0; a < N; ++a)
        for (size_t b = 0; b < N; ++b) {
            int64_t at, ah, aw, bt, bh, bw;
            coords(a, at, ah, aw);
            coords(b, bt, bh, bw);
            full_mask[a * N + b] = at == bt;
            window_mask[a * N + b] = at == bt && vit_same_window(v, ah, aw, bh, bw);
        }

    std::vector<double> hn(D), qkv(3 * D), q(N * D), k(N * D), vv(N * D), att(N * D), o(D);
    std::vector<double> gate(F), up(F), mlp(D);
    for (int j = 0; j < v.depth; ++j) {
        const VitWeights::Block& B = wt.blocks[j];
        for (size_t r = 0; r < N; ++r) {
            int64_t t, h, w;
            coords(r, t, h, w);
            rms_norm(&x[r * D], D, B.norm1.data(), eps, hn.data());
            matvec(B.qkv_w, B.qkv_b, hn.data(), 3 * D, D, qkv.data());
            for (size_t i = 0; i < D; ++i) {
                q[r * D + i] = qkv[i];
                k[r * D + i] = qkv[D + i];
                vv[r * D + i] = qkv[2 * D + i];
            }
            for (size_t hh = 0; hh < nh; ++hh) {
                vit_rope(&q[r * D + hh * hd], hd, h, w);
                vit_rope(&k[r * D + hh * hd], hd, h, w);
            }
        }
        attention(q.data(), k.data(), vv.data(), N, nh, nh, hd,
                  v.is_full_attention(j) ? full_mask : window_mask, att.data());
        for (size_t r = 0; r < N; ++r) {
            matvec(B.proj_w, B.proj_b, &att[r * D], D, D, o.data());
            for (size_t i = 0; i < D; ++i) x[r * D + i] += o[i];
            rms_norm(&x[r * D], D, B.norm2.data(), eps, hn.data());
            matvec(B.gate_w, B.gate_b, hn.data(), F, D, gate.data());
            matvec(B.up_w, B.up_b, hn.data(), F, D, up.data());
            for (size_t i = 0; i < F; ++i) gate[i] = silu(gate[i]) * up[i];
            matvec(B.down_w, B.down_b, gate.data(), D, F, mlp.data());
            for (size_t i = 0; i < D; ++i) x[r * D + i] += mlp[i];
        }
        if (trace) trace->block_out.push_back(x);
    }

    // Merger: RMSNorm per patch, the m x m patches of each merge block concatenated in (dy, dx)
    // order, Linear -> GELU -> Linear. Output rows in raster order of merge blocks.
    const int64_t m = v.spatial_merge_size, mh = g.h / m, mw = g.w / m;
    const size_t M = v.merged_dim(), out_dim = v.out_hidden_size;
    std::vector<double> out(static_cast<size_t>(g.t * mh * mw) * out_dim), cat(M), mid(M);
    for (int64_t t = 0; t < g.t; ++t)
        for (int64_t bh = 0; bh < mh; ++bh)
            for (int64_t bw = 0; bw < mw; ++bw) {
                size_t k2 = 0;
                for (int64_t dy = 0; dy < m; ++dy)
                    for (int64_t dx = 0; dx < m; ++dx, k2 += D) {
                        const size_t r =
                            static_cast<size_t>((t * g.h + bh * m + dy) * g.w + bw * m + dx);
                        rms_norm(&x[r * D], D, wt.ln_q.data(), eps, &cat[k2]);
                    }
                matvec(wt.mlp0_w, wt.mlp0_b, cat.data(), M, M, mid.data());
                for (double& a : mid) a = gelu_erf(a);
                const size_t row = static_cast<size_t>((t * mh + bh) * mw + bw);
                matvec(wt.mlp2_w, wt.mlp2_b, mid.data(), out_dim, M, &out[row * out_dim]);
            }
    return out;
}

}  // namespace lancet::ref
