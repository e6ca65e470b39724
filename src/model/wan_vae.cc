// The Wan2.2 VAE's fast path: blocks on the op layer, channels-last, streamed chunk by chunk.
#include "model/wan_vae.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstring>

#include "core/error.h"
#include "core/numeric.h"
#include "io/temp_output.h"

namespace lancet::wan_vae {

using kernels::TensorRef;

TensorRef Frames::ref() const { return TensorRef::contiguous(d.data(), {T, H, W, C}); }

Frames Frames::slice(int64_t t0, int64_t t1) const {
    Frames r(t1 - t0, H, W, C);
    std::memcpy(r.d.data(), frame(t0), r.d.size() * sizeof(float));
    return r;
}

namespace {

// The last `keep` frames of [a, b] (a, then b along time).
Frames last_frames(const Frames& a, const Frames& b, int64_t keep) {
    const int64_t total = a.T + b.T, n = std::min(keep, total);
    Frames r(n, b.H, b.W, b.C);
    const size_t fsz = static_cast<size_t>(b.H * b.W * b.C);
    for (int64_t i = 0; i < n; ++i) {
        const int64_t src = total - n + i;
        const float* p = src < a.T ? a.frame(src) : b.frame(src - a.T);
        std::memcpy(r.frame(i), p, fsz * sizeof(float));
    }
    return r;
}

void norm_silu(const Context& ctx, const Frames& x, const std::vector<float>& gamma, Frames& y) {
    if (&y != &x) y = Frames(x.T, x.H, x.W, x.C);
    kernels::channel_rms_norm(ctx.ops, x.ref(), 3, gamma.data(), nullptr, y.ref());
    kernels::silu(ctx.ops, y.ref(), y.ref());
}

void add_into(const Context& ctx, const Frames& b, Frames& y) {
    kernels::add(ctx.ops, y.ref(), b.ref(), y.ref());
}

}  // namespace

void Conv::run(const Context& ctx, const Frames& x, const Frames* cache, Frames& y,
               bool accumulate) const {
    const int64_t tp = x.T + p.pad_t_front;
    const int64_t to = (tp - w.kt) / p.stride_t + 1;
    const int64_t ho = (x.H + p.pad_top + p.pad_bottom - w.kh) / p.stride_h + 1;
    const int64_t wo = (x.W + p.pad_left + p.pad_right - w.kw) / p.stride_w + 1;
    if (accumulate) {
        if (y.T != to || y.H != ho || y.W != wo || y.C != w.c_out)
            fail("wan_vae: accumulating conv output has the wrong shape");
    } else {
        y = Frames(to, ho, wo, w.c_out);
    }
    const bool use_cache = cache && cache->T > 0;
    const TensorRef cref = use_cache ? cache->ref() : TensorRef{};
    kernels::conv3d(ctx.ops, x.ref(), use_cache ? &cref : nullptr, w, p, y.ref(), accumulate);
    if (ctx.flops) {
        // Taps on the front zero frames not covered by the cache are skipped by conv3d.
        const int64_t zeros = p.pad_t_front - (use_cache ? cache->T : 0);
        const double per_tap =
            static_cast<double>(ho * wo) * static_cast<double>(w.c_out * w.c_in * w.kh * w.kw);
        for (int64_t t = 0; t < to; ++t)
            for (int64_t a = 0; a < w.kt; ++a) {
                const int64_t ti = t * p.stride_t + a;  // index into [zeros..., cache, x]
                ctx.flops->dense += per_tap;
                ctx.flops->module += per_tap;
                if (ti >= zeros) ctx.flops->executed += per_tap;
            }
    }
}

namespace {
// `v` as it reaches the kernels: rounded to bf16 (into `keep`) when the file asks for bf16 weights
// and v is F32, else v itself.
TensorView weight_view(const WanVaeFile& f, const TensorView& v, std::vector<uint16_t>& keep) {
    if (!f.bf16_weights() || v.dtype != DType::F32) return v;
    const std::vector<float> w = to_f32(v);
    keep.resize(w.size());
    for (size_t i = 0; i < w.size(); ++i) keep[i] = f32_to_bf16(w[i]);
    TensorView r = v;
    r.dtype = DType::BF16;
    r.data = reinterpret_cast<const uint8_t*>(keep.data());
    r.nbytes = keep.size() * sizeof(uint16_t);
    return r;
}
}  // namespace

Conv load_conv(const WanVaeFile& f, const std::string& prefix) {
    Conv c;
    const TensorView& bias = f.view(prefix + ".bias");
    std::vector<uint16_t> keep;
    c.w = kernels::Conv3dWeight::from_checkpoint(weight_view(f, f.view(prefix + ".weight"), keep),
                                                 &bias);
    f.release(prefix + ".weight");
    c.p.pad_t_front = static_cast<int>(2 * (c.w.kt / 2));
    c.p.pad_top = c.p.pad_bottom = c.p.pad_left = c.p.pad_right = static_cast<int>(c.w.kh / 2);
    return c;
}

void CachedConv::forward(const Context& ctx, const Frames& x, Frames& y, bool accumulate) {
    conv.run(ctx, x, cache.T ? &cache : nullptr, y, accumulate);
    cache = last_frames(cache, x, 2);
}

ResidualBlock::ResidualBlock(const WanVaeFile& f, const std::string& p)
    : gamma0_(f.to_f32(p + ".residual.0.gamma")),
      gamma3_(f.to_f32(p + ".residual.3.gamma")),
      conv2_{load_conv(f, p + ".residual.2"), {}},
      conv6_{load_conv(f, p + ".residual.6"), {}} {
    has_shortcut_ = conv2_.conv.w.c_in != conv2_.conv.w.c_out;
    if (has_shortcut_) shortcut_ = load_conv(f, p + ".shortcut");
}

void ResidualBlock::reset() {
    conv2_.reset();
    conv6_.reset();
}

Frames ResidualBlock::forward(const Context& ctx, Frames x) {
    // At most three activations alive at once (x or a, h, b): at 480p a 4-frame chunk of the
    // last decoder stage is 0.4-0.8 GB per activation.
    Frames h, a, b;
    if (has_shortcut_) {
        shortcut_.run(ctx, x, nullptr, h);
        norm_silu(ctx, x, gamma0_, x);  // x is not needed after this: normalised in place
        a = std::move(x);
    } else {
        norm_silu(ctx, x, gamma0_, a);
        h = std::move(x);
    }
    conv2_.forward(ctx, a, b);
    a = Frames();
    norm_silu(ctx, b, gamma3_, b);
    conv6_.forward(ctx, b, h, /*accumulate=*/true);
    return h;
}

AttentionBlock::AttentionBlock(const WanVaeFile& f, const std::string& p)
    : gamma_(f.to_f32(p + ".norm.gamma")),
      qkv_b_(f.to_f32(p + ".to_qkv.bias")),
      proj_b_(f.to_f32(p + ".proj.bias")) {
    c_ = f.view(p + ".proj.weight").shape[0];
    auto load = [&](const std::string& n) {
        std::vector<uint16_t> keep;
        const TensorView v = weight_view(f, f.view(n), keep);
        const size_t out = static_cast<size_t>(v.shape[0]), in = static_cast<size_t>(v.shape[1]);
        kernels::LinearWeight lw =
            v.dtype == DType::BF16
                ? kernels::LinearWeight::from_bf16(reinterpret_cast<const uint16_t*>(v.data), out,
                                                   in)
                : kernels::LinearWeight::from_f32(reinterpret_cast<const float*>(v.data), out, in);
        f.release(n);
        return lw;
    };
    qkv_ = load(p + ".to_qkv.weight");
    proj_ = load(p + ".proj.weight");
}

Frames AttentionBlock::forward(const Context& ctx, const Frames& x) const {
    Frames y = x;
    const int64_t n = x.H * x.W, C = c_;
    std::vector<float> xn(static_cast<size_t>(n * C)), qkv(static_cast<size_t>(n * 3 * C)),
        o(static_cast<size_t>(n * C)), pr(static_cast<size_t>(n * C));
    kernels::AttentionScratch scratch;
    for (int64_t t = 0; t < x.T; ++t) {
        const TensorRef xt = TensorRef::contiguous(x.frame(t), {n, C});
        const TensorRef xnr = TensorRef::contiguous(xn.data(), {n, C});
        kernels::channel_rms_norm(ctx.ops, xt, 1, gamma_.data(), nullptr, xnr);
        kernels::linear(ctx.ops, xnr, qkv_, qkv_b_.data(),
                        TensorRef::contiguous(qkv.data(), {n, 3 * C}));
        // One head over the frame's n positions: q [n, 1, C], k and v [1, n, C] inside qkv rows.
        TensorRef q = TensorRef::contiguous(qkv.data(), {n, 1, C});
        q.stride = {3 * C, C, 1};
        TensorRef k = TensorRef::contiguous(qkv.data() + C, {1, n, C});
        k.stride = {n * 3 * C, 3 * C, 1};
        TensorRef v = k;
        v.data = qkv.data() + 2 * C;
        kernels::AttnMask mask;  // Kind::None: every position sees every position
        kernels::attention(ctx.ops, q, nullptr, k, v, mask, 0.0f,
                           TensorRef::contiguous(o.data(), {n, 1, C}), scratch);
        kernels::linear(ctx.ops, TensorRef::contiguous(o.data(), {n, C}), proj_, proj_b_.data(),
                        TensorRef::contiguous(pr.data(), {n, C}));
        const TensorRef yt = TensorRef::contiguous(y.frame(t), {n, C});
        kernels::add(ctx.ops, yt, TensorRef::contiguous(pr.data(), {n, C}), yt);
    }
    return y;
}

Resample::Resample(const WanVaeFile& f, const std::string& p, ResampleMode mode) : mode_(mode) {
    if (mode == ResampleMode::Upsample2d || mode == ResampleMode::Upsample3d) {
        const std::string wn = p + ".resample.1.weight";
        const Shape& s = f.view(wn).shape;
        if (s.size() != 4 || s[2] != 3 || s[3] != 3)
            fail(f.path(), ": ", wn, " is ", shape_str(s), ", expected [C_out, C_in, 3, 3]");
        const int64_t co = s[0], ci = s[1];
        std::vector<float> w = f.to_f32(wn);
        const std::vector<float> bias = f.to_f32(p + ".resample.1.bias");
        f.release(wn);
        // With bf16 weights (--bf16-activations) the 3×3 taps are bf16 as Lance's autocast has
        // them; their sums are rounded to bf16 once more for the vdpbf16ps kernel (a relative
        // 2⁻⁸ per summed tap, the size of the activation rounding; bench vae reports the total).
        // Otherwise the sums stay f32: exact for bf16 taps, one rounding for f32 ones.
        const bool bf16 = f.bf16_weights();
        if (bf16)
            for (float& v : w) v = bf16_to_f32(f32_to_bf16(v));
        // Taps of the 3×3 kernel summed into tap p of the 2-tap kernel of phase a.
        const int taps[2][2][2] = {{{0, 0}, {1, 2}}, {{0, 1}, {2, 2}}};  // [a][p] = first, last
        const size_t K = static_cast<size_t>(4 * ci);
        for (int a = 0; a < 2; ++a)
            for (int b = 0; b < 2; ++b) {
                std::vector<float> pw(static_cast<size_t>(co) * K, 0.0f);
                for (int64_t o = 0; o < co; ++o)
                    for (int py = 0; py < 2; ++py)
                        for (int px = 0; px < 2; ++px)
                            for (int64_t c = 0; c < ci; ++c) {
                                float acc = 0;
                                for (int dy = taps[a][py][0]; dy <= taps[a][py][1]; ++dy)
                                    for (int dx = taps[b][px][0]; dx <= taps[b][px][1]; ++dx)
                                        acc += w[static_cast<size_t>(((o * ci + c) * 3 + dy) * 3 +
                                                                     dx)];
                                pw[static_cast<size_t>(o) * K +
                                   static_cast<size_t>((py * 2 + px) * ci + c)] = acc;
                            }
                std::vector<uint16_t> pb;
                if (bf16) {
                    pb.resize(pw.size());
                    for (size_t i = 0; i < pw.size(); ++i) pb[i] = f32_to_bf16(pw[i]);
                }
                const kernels::WeightView v =
                    bf16 ? kernels::WeightView::from_bf16(pb.data(), static_cast<size_t>(co), K)
                         : kernels::WeightView::from_f32(pw.data(), static_cast<size_t>(co), K);
                phase_.push_back(
                    kernels::Conv3dWeight::from_tap_major(v, co, ci, 1, 2, 2, bias.data()));
            }
    } else {
        conv_ = load_conv(f, p + ".resample.1");
    }
    if (mode == ResampleMode::Downsample2d || mode == ResampleMode::Downsample3d) {
        // ZeroPad2d((0, 1, 0, 1)) then a 3×3 stride-2 conv.
        conv_.p.pad_top = conv_.p.pad_left = 0;
        conv_.p.pad_bottom = conv_.p.pad_right = 1;
        conv_.p.stride_h = conv_.p.stride_w = 2;
    }
    if (mode == ResampleMode::Upsample3d || mode == ResampleMode::Downsample3d)
        time_conv_ = load_conv(f, p + ".time_conv");
    if (mode == ResampleMode::Downsample3d) {
        // time conv on [last cached frame, chunk]: the cached frame stands in one front frame.
        time_conv_.p.pad_t_front = 1;
        time_conv_.p.stride_t = 2;
    }
}

void Resample::reset() {
    state_ = State::First;
    cache_ = Frames();
}

Frames Resample::forward(const Context& ctx, const Frames& x) {
    Frames y;
    if (mode_ == ResampleMode::Upsample2d || mode_ == ResampleMode::Upsample3d) {
        Frames inter;
        const Frames* src = &x;
        if (mode_ == ResampleMode::Upsample3d) {
            if (state_ == State::First) {
                state_ = State::Second;  // the "Rep" marker: no time conv on the first chunk
            } else {
                Frames tc;
                // Second chunk: zero frames in front (skipped by conv3d). The cache it leaves is
                // the real frames only; the zero frame PyTorch stores in front of a 1-frame chunk
                // is the same as the op's remaining front zero padding.
                time_conv_.run(ctx, x, state_ == State::Second ? nullptr : &cache_, tc);
                cache_ = last_frames(state_ == State::Second ? Frames() : cache_, x, 2);
                state_ = State::Later;
                // [T, H, W, 2C] -> [2T, H, W, C]: frame 2t+j takes channels [jC, (j+1)C).
                inter = Frames(2 * tc.T, tc.H, tc.W, x.C);
                const int64_t px = tc.H * tc.W;
                for (int64_t t = 0; t < tc.T; ++t)
                    for (int64_t j = 0; j < 2; ++j)
                        for (int64_t i = 0; i < px; ++i)
                            std::memcpy(inter.frame(2 * t + j) + i * x.C,
                                        tc.frame(t) + i * 2 * x.C + j * x.C,
                                        static_cast<size_t>(x.C) * sizeof(float));
                src = &inter;
            }
        }
        upsample_conv(ctx, *src, y);
        return y;
    }
    conv_.run(ctx, x, nullptr, y);
    if (mode_ == ResampleMode::Downsample3d) {
        if (state_ == State::First) {
            state_ = State::Later;
            cache_ = y.slice(y.T - 1, y.T);
        } else {
            Frames z;
            time_conv_.run(ctx, y, &cache_, z);
            cache_ = y.slice(y.T - 1, y.T);
            return z;
        }
    }
    return y;
}

void Resample::upsample_conv(const Context& ctx, const Frames& x, Frames& y) const {
    const int64_t co = phase_[0].c_out;
    y = Frames(x.T, 2 * x.H, 2 * x.W, co);
    for (int a = 0; a < 2; ++a)
        for (int b = 0; b < 2; ++b) {
            kernels::Conv3dParams p;
            p.pad_top = 1 - a, p.pad_bottom = a, p.pad_left = 1 - b, p.pad_right = b;
            // Output pixels (2i + a, 2j + b) of y: a strided view [T, H, W, Co].
            kernels::TensorRef yr =
                TensorRef::contiguous(y.d.data() + (a * y.W + b) * co, {x.T, x.H, x.W, co});
            yr.stride = {y.H * y.W * co, 2 * y.W * co, 2 * co, 1};
            kernels::conv3d(ctx.ops, x.ref(), nullptr, phase_[static_cast<size_t>(2 * a + b)], p,
                            yr);
        }
    if (ctx.flops) {
        const double px = static_cast<double>(x.T * x.H * x.W), cc = static_cast<double>(co * x.C);
        ctx.flops->executed += 16 * px * cc;
        ctx.flops->dense += 16 * px * cc;
        ctx.flops->module += 36 * px * cc;  // 9 taps at each of the 4 upsampled pixels
    }
}

Frames avg_down3d(const Frames& x, int64_t out_channels, int ft, int fs) {
    const int64_t pad = (ft - x.T % ft) % ft;
    const int64_t group = x.C * ft * fs * fs / out_channels;
    Frames y((x.T + pad) / ft, x.H / fs, x.W / fs, out_channels);
    const float inv = 1.0f / static_cast<float>(group);
    for (int64_t t = 0; t < y.T; ++t)
        for (int64_t h = 0; h < y.H; ++h)
            for (int64_t w = 0; w < y.W; ++w) {
                float* dst = y.frame(t) + (h * y.W + w) * out_channels;
                for (int64_t o = 0; o < out_channels; ++o) {
                    float s = 0;
                    for (int64_t g = 0; g < group; ++g) {
                        int64_t j = o * group + g;  // ((c·ft + dt)·fs + dh)·fs + dw
                        const int64_t dw = j % fs;
                        j /= fs;
                        const int64_t dh = j % fs;
                        j /= fs;
                        const int64_t dt = j % ft, c = j / ft;
                        const int64_t ti = t * ft + dt - pad;
                        if (ti >= 0)
                            s += x.frame(ti)[((h * fs + dh) * x.W + w * fs + dw) * x.C + c];
                    }
                    dst[o] = s * inv;
                }
            }
    return y;
}

void dup_up3d_add(const Frames& x, int ft, int fs, bool first_chunk, Frames& y) {
    const int64_t out = y.C, repeats = out * ft * fs * fs / x.C;
    const int64_t drop = first_chunk ? ft - 1 : 0;
    if (y.T != x.T * ft - drop || y.H != x.H * fs || y.W != x.W * fs)
        fail("wan_vae: DupUp3D shapes do not match the main path");
    for (int64_t t = 0; t < x.T; ++t)
        for (int64_t dt = 0; dt < ft; ++dt) {
            const int64_t to = t * ft + dt - drop;
            if (to < 0) continue;
            for (int64_t h = 0; h < y.H; ++h)
                for (int64_t w = 0; w < y.W; ++w) {
                    const float* src = x.frame(t) + ((h / fs) * x.W + w / fs) * x.C;
                    float* dst = y.frame(to) + (h * y.W + w) * out;
                    const int64_t base = (dt * fs + h % fs) * fs + w % fs;
                    for (int64_t o = 0; o < out; ++o)
                        dst[o] += src[(o * ft * fs * fs + base) / repeats];
                }
        }
}

Frames patchify(const float* video, int64_t T, int64_t H, int64_t W, int64_t t0, int64_t t1) {
    Frames r(t1 - t0, H / 2, W / 2, 12);
    for (int64_t t = t0; t < t1; ++t)
        for (int64_t h = 0; h < r.H; ++h)
            for (int64_t w = 0; w < r.W; ++w) {
                float* dst = r.frame(t - t0) + (h * r.W + w) * 12;
                for (int64_t c = 0; c < 3; ++c)
                    for (int64_t rr = 0; rr < 2; ++rr)
                        for (int64_t q = 0; q < 2; ++q)
                            dst[(c * 2 + rr) * 2 + q] =
                                video[((c * T + t) * H + 2 * h + q) * W + 2 * w + rr];
            }
    return r;
}

Encoder::Encoder(const WanVaeFile& f)
    : cfg_(f.config()),
      conv1_{load_conv(f, "encoder.conv1"), {}},
      mid0_(std::make_unique<ResidualBlock>(f, "encoder.middle.0")),
      mid2_(std::make_unique<ResidualBlock>(f, "encoder.middle.2")),
      attn_(std::make_unique<AttentionBlock>(f, "encoder.middle.1")),
      head_gamma_(f.to_f32("encoder.head.0.gamma")),
      head_{load_conv(f, "encoder.head.2"), {}},
      top_conv1_(load_conv(f, "conv1")) {
    const auto dims = cfg_.enc_dims();
    for (int i = 0; i < cfg_.stages(); ++i) {
        const std::string s = "encoder.downsamples." + std::to_string(i) + ".downsamples.";
        Stage st;
        for (int k = 0; k < cfg_.num_res_blocks; ++k)
            st.blocks.emplace_back(f, s + std::to_string(k));
        if (cfg_.enc_space_down(i))
            st.resample = std::make_unique<Resample>(
                f, s + std::to_string(cfg_.num_res_blocks),
                cfg_.enc_time_down(i) ? ResampleMode::Downsample3d : ResampleMode::Downsample2d);
        st.out = dims[i + 1];
        st.ft = cfg_.enc_time_down(i) ? 2 : 1;
        st.fs = cfg_.enc_space_down(i) ? 2 : 1;
        stages_.push_back(std::move(st));
    }
}

void Encoder::reset() {
    conv1_.reset();
    for (auto& s : stages_) {
        for (auto& b : s.blocks) b.reset();
        if (s.resample) s.resample->reset();
    }
    mid0_->reset();
    mid2_->reset();
    head_.reset();
}

Frames Encoder::chunk(const Context& ctx, const Frames& in) {
    Frames x;
    conv1_.forward(ctx, in, x);
    for (auto& s : stages_) {
        const Frames x_copy = x;
        for (auto& b : s.blocks) x = b.forward(ctx, std::move(x));
        if (s.resample) x = s.resample->forward(ctx, x);
        add_into(ctx, avg_down3d(x_copy, s.out, s.ft, s.fs), x);
    }
    x = mid0_->forward(ctx, std::move(x));
    x = attn_->forward(ctx, x);
    x = mid2_->forward(ctx, std::move(x));
    norm_silu(ctx, x, head_gamma_, x);
    Frames h, out;
    head_.forward(ctx, x, h);
    top_conv1_.run(ctx, h, nullptr, out);
    return out;
}

Decoder::Decoder(const WanVaeFile& f)
    : cfg_(f.config()),
      top_conv2_(load_conv(f, "conv2")),
      conv1_{load_conv(f, "decoder.conv1"), {}},
      mid0_(std::make_unique<ResidualBlock>(f, "decoder.middle.0")),
      mid2_(std::make_unique<ResidualBlock>(f, "decoder.middle.2")),
      attn_(std::make_unique<AttentionBlock>(f, "decoder.middle.1")),
      head_gamma_(f.to_f32("decoder.head.0.gamma")),
      head_{load_conv(f, "decoder.head.2"), {}} {
    for (int i = 0; i < cfg_.stages(); ++i) {
        const std::string s = "decoder.upsamples." + std::to_string(i) + ".upsamples.";
        Stage st;
        for (int k = 0; k < cfg_.num_res_blocks + 1; ++k)
            st.blocks.emplace_back(f, s + std::to_string(k));
        if (cfg_.dec_space_up(i)) {
            st.resample = std::make_unique<Resample>(
                f, s + std::to_string(cfg_.num_res_blocks + 1),
                cfg_.dec_time_up(i) ? ResampleMode::Upsample3d : ResampleMode::Upsample2d);
            st.ft = cfg_.dec_time_up(i) ? 2 : 1;
            st.fs = 2;
        }
        stages_.push_back(std::move(st));
    }
}

void Decoder::reset() {
    conv1_.reset();
    mid0_->reset();
    mid2_->reset();
    for (auto& s : stages_) {
        for (auto& b : s.blocks) b.reset();
        if (s.resample) s.resample->reset();
    }
    head_.reset();
}

void Decoder::stage(const Context& ctx, size_t i, Frames& x, bool first_chunk) {
    Stage& s = stages_[i];
    if (!s.resample) {
        for (auto& b : s.blocks) x = b.forward(ctx, std::move(x));
        return;
    }
    Frames m = x;  // x is DupUp3D's input
    for (auto& b : s.blocks) m = b.forward(ctx, std::move(m));
    m = s.resample->forward(ctx, m);
    dup_up3d_add(x, s.ft, s.fs, first_chunk, m);
    x = std::move(m);
}

Frames Decoder::chunk(const Context& ctx, const Frames& z, bool first_chunk) {
    Frames a, x;
    top_conv2_.run(ctx, z, nullptr, a);
    conv1_.forward(ctx, a, x);
    x = mid0_->forward(ctx, std::move(x));
    x = attn_->forward(ctx, x);
    x = mid2_->forward(ctx, std::move(x));
    // The stages after the last time upsampling hold plain causal convs, 2-D upsamples and
    // DupUp3D without time factor: frame by frame through them is the same arithmetic (each
    // conv's cache carries the frames before), with a quarter of the activation memory of the
    // chunk's 4 frames at the largest sizes.
    size_t tail = stages_.size();
    while (tail > 0 && stages_[tail - 1].ft == 1) --tail;
    for (size_t i = 0; i < tail; ++i) stage(ctx, i, x, first_chunk);
    const int64_t T = x.T;
    Frames y;
    for (int64_t t = 0; t < T; ++t) {
        Frames f = T == 1 ? std::move(x) : x.slice(t, t + 1);
        for (size_t i = tail; i < stages_.size(); ++i) stage(ctx, i, f, first_chunk);
        norm_silu(ctx, f, head_gamma_, f);
        Frames yf;
        head_.forward(ctx, f, yf);
        if (t == 0) y = Frames(T, yf.H, yf.W, yf.C);
        std::memcpy(y.frame(t), yf.frame(0), yf.d.size() * sizeof(float));
    }
    return y;
}

std::vector<float> encode(const Context& ctx, Encoder& enc, const float* video, int64_t T,
                          int64_t H, int64_t W, std::vector<float>* logvar,
                          const Progress& progress) {
    enc.reset();
    const int64_t tf = enc.config().time_factor();  // pixel frames per chunk after the first
    const int64_t iters = 1 + (T - 1) / tf;
    std::vector<Frames> outs;
    int64_t z2 = 0, h = 0, w = 0, t = 0;
    for (int64_t i = 0; i < iters; ++i) {
        const int64_t t0 = i == 0 ? 0 : 1 + tf * (i - 1), t1 = i == 0 ? 1 : 1 + tf * i;
        outs.push_back(enc.chunk(ctx, patchify(video, T, H, W, t0, t1)));
        z2 = outs.back().C, h = outs.back().H, w = outs.back().W;
        t += outs.back().T;
        if (progress) progress(t1, 1 + tf * (iters - 1));
    }
    const int64_t z = z2 / 2, n = t * h * w;
    const LatentStats st = wan_latent_stats(z);
    std::vector<float> mu(static_cast<size_t>(z * n));
    if (logvar) logvar->assign(static_cast<size_t>(z * n), 0.0f);
    int64_t tt = 0;
    for (const Frames& o : outs)
        for (int64_t f = 0; f < o.T; ++f, ++tt)
            for (int64_t p = 0; p < h * w; ++p) {
                const float* src = o.frame(f) + p * z2;
                for (int64_t c = 0; c < z; ++c) {
                    mu[static_cast<size_t>(c * n + tt * h * w + p)] =
                        (src[c] - st.mean[static_cast<size_t>(c)]) *
                        st.inv_std[static_cast<size_t>(c)];
                    if (logvar) (*logvar)[static_cast<size_t>(c * n + tt * h * w + p)] = src[z + c];
                }
            }
    return mu;
}

void decode(const Context& ctx, Decoder& dec, const float* latent, int64_t t, int64_t h, int64_t w,
            const FrameSink& sink, const Progress& progress, bool clamp) {
    dec.reset();
    const int64_t z = dec.config().z_dim, n = t * h * w;
    const LatentStats st = wan_latent_stats(z);
    const int64_t total = 1 + dec.config().time_factor() * (t - 1);
    int64_t done = 0;
    std::vector<float> out;
    for (int64_t i = 0; i < t; ++i) {
        // z / (1/std) + mean, one latent frame, channels-last
        Frames zf(1, h, w, z);
        for (int64_t p = 0; p < h * w; ++p)
            for (int64_t c = 0; c < z; ++c)
                zf.d[static_cast<size_t>(p * z + c)] =
                    latent[c * n + i * h * w + p] / st.inv_std[static_cast<size_t>(c)] +
                    st.mean[static_cast<size_t>(c)];
        const Frames y = dec.chunk(ctx, zf, i == 0);  // [nf, H/2, W/2, 12]
        // unpatchify: (c, r, q) channels back to 2×2 pixels, channels-first [3, nf, H, W]
        const int64_t H = y.H * 2, W = y.W * 2;
        out.assign(static_cast<size_t>(3 * y.T * H * W), 0.0f);
        for (int64_t f = 0; f < y.T; ++f)
            for (int64_t yy = 0; yy < y.H; ++yy)
                for (int64_t xx = 0; xx < y.W; ++xx) {
                    const float* src = y.frame(f) + (yy * y.W + xx) * 12;
                    for (int64_t c = 0; c < 3; ++c)
                        for (int64_t r = 0; r < 2; ++r)
                            for (int64_t q = 0; q < 2; ++q) {
                                float v = src[(c * 2 + r) * 2 + q];
                                if (clamp) v = std::clamp(v, -1.0f, 1.0f);
                                out[static_cast<size_t>(((c * y.T + f) * H + 2 * yy + q) * W +
                                                        2 * xx + r)] = v;
                            }
                }
        sink(out.data(), y.T, H, W);
        done += y.T;
        if (progress) progress(done, total);
    }
    dec.reset();  // the caches are not needed any more: free them (between tiles, before output)
}

std::vector<float> decode_all(const Context& ctx, Decoder& dec, const float* latent, int64_t t,
                              int64_t h, int64_t w, std::vector<float>* unclamped) {
    // Chunks arrive channels-first per chunk; gather them into [3, T, H, W].
    std::vector<std::vector<float>> chunks;
    std::vector<int64_t> counts;
    int64_t H = 0, W = 0, T = 0;
    decode(
        ctx, dec, latent, t, h, w,
        [&](const float* f, int64_t n, int64_t hh, int64_t ww) {
            chunks.emplace_back(f, f + 3 * n * hh * ww);
            counts.push_back(n);
            H = hh, W = ww, T += n;
        },
        nullptr, /*clamp=*/false);
    std::vector<float> v(static_cast<size_t>(3 * T * H * W));
    int64_t t0 = 0;
    for (size_t k = 0; k < chunks.size(); ++k) {
        for (int64_t c = 0; c < 3; ++c)
            std::memcpy(v.data() + (c * T + t0) * H * W, chunks[k].data() + c * counts[k] * H * W,
                        static_cast<size_t>(counts[k] * H * W) * sizeof(float));
        t0 += counts[k];
    }
    if (unclamped) *unclamped = v;
    for (float& e : v) e = std::clamp(e, -1.0f, 1.0f);
    return v;
}

std::vector<std::pair<int64_t, int64_t>> tile_spans(int64_t total, int64_t tile, int64_t overlap) {
    if (tile < 1 || overlap < 0 || overlap >= tile)
        fail("tiling: need tile >= 1 and 0 <= overlap < tile (got ", tile, ", ", overlap, ")");
    std::vector<std::pair<int64_t, int64_t>> s;
    if (tile >= total) return {{0, total}};
    for (int64_t a = 0;; a += tile - overlap) {
        if (a + tile >= total) {
            s.emplace_back(std::max<int64_t>(0, total - tile), total);  // flush with the end
            break;
        }
        s.emplace_back(a, a + tile);
    }
    return s;
}

namespace {

// Blend weight of pixel i of a tile `n` pixels long whose first `lo` / last `hi` pixels overlap a
// neighbour: a linear ramp (k+1)/(ramp+1) there, 1 elsewhere.
std::vector<float> ramp(int64_t n, int64_t lo, int64_t hi) {
    std::vector<float> r(static_cast<size_t>(n), 1.0f);
    for (int64_t k = 0; k < lo && k < n; ++k)
        r[static_cast<size_t>(k)] = static_cast<float>(k + 1) / static_cast<float>(lo + 1);
    for (int64_t k = 0; k < hi && k < n; ++k)
        r[static_cast<size_t>(n - 1 - k)] =
            std::min(r[static_cast<size_t>(n - 1 - k)],
                     static_cast<float>(k + 1) / static_cast<float>(hi + 1));
    return r;
}

}  // namespace

void decode_tiled(const Context& ctx, Decoder& dec, const float* latent, int64_t t, int64_t h,
                  int64_t w, int64_t tile, int64_t overlap, const FrameSink& sink,
                  const Progress& progress) {
    const WanVaeConfig& cfg = dec.config();
    const auto hs = tile_spans(h, tile, overlap), ws = tile_spans(w, tile, overlap);
    const int64_t sf = cfg.space_factor(), T = 1 + cfg.time_factor() * (t - 1), H = h * sf,
                  W = w * sf, z = cfg.z_dim;
    if (hs.size() == 1 && ws.size() == 1) {
        decode(ctx, dec, latent, t, h, w, sink, progress);
        return;
    }
    // Ramps only where a tile meets a neighbour: over the overlap, in pixels. The blend weight of
    // a pixel is m / Σm over the tiles covering it; Σm is known before any tile is decoded.
    struct TileBox {
        int64_t h0, h1, w0, w1;
        std::vector<float> rh, rw;
    };
    std::vector<TileBox> boxes;
    std::vector<float> wsum(static_cast<size_t>(H * W), 0.0f);
    for (size_t a = 0; a < hs.size(); ++a)
        for (size_t b = 0; b < ws.size(); ++b) {
            TileBox bx{hs[a].first, hs[a].second, ws[b].first, ws[b].second, {}, {}};
            const int64_t lo_h = a > 0 ? (hs[a - 1].second - bx.h0) * sf : 0,
                          hi_h = a + 1 < hs.size() ? (bx.h1 - hs[a + 1].first) * sf : 0,
                          lo_w = b > 0 ? (ws[b - 1].second - bx.w0) * sf : 0,
                          hi_w = b + 1 < ws.size() ? (bx.w1 - ws[b + 1].first) * sf : 0;
            bx.rh = ramp((bx.h1 - bx.h0) * sf, lo_h, hi_h);
            bx.rw = ramp((bx.w1 - bx.w0) * sf, lo_w, hi_w);
            for (int64_t y = 0; y < static_cast<int64_t>(bx.rh.size()); ++y)
                for (int64_t x = 0; x < static_cast<int64_t>(bx.rw.size()); ++x)
                    wsum[static_cast<size_t>((bx.h0 * sf + y) * W + bx.w0 * sf + x)] +=
                        bx.rh[static_cast<size_t>(y)] * bx.rw[static_cast<size_t>(x)];
            boxes.push_back(std::move(bx));
        }
    // Every tile runs the whole clip (its own caches), so the blended clip is summed in a
    // temporary file of frames [T][3][H][W] (f32) instead of memory: RAM holds one band of rows,
    // whatever the clip length. The file is deleted when closed.
    const int64_t frame_floats = 3 * H * W;
    ScratchFile spill(static_cast<uint64_t>(T * frame_floats) * 4, "vae decode --tile");
    auto io = [&](bool write, float* buf, int64_t floats, int64_t at) {
        if (write)
            spill.write(buf, static_cast<size_t>(floats) * 4, static_cast<uint64_t>(at) * 4);
        else
            spill.read(buf, static_cast<size_t>(floats) * 4, static_cast<uint64_t>(at) * 4);
    };
    std::vector<float> band;
    int64_t done = 0;
    for (const TileBox& bx : boxes) {
        const int64_t th = bx.h1 - bx.h0, tw = bx.w1 - bx.w0, PH = th * sf, PW = tw * sf;
        std::vector<float> sub(static_cast<size_t>(z * t * th * tw));
        for (int64_t c = 0; c < z * t; ++c)
            for (int64_t y = 0; y < th; ++y)
                std::memcpy(sub.data() + (c * th + y) * tw,
                            latent + (c * h + bx.h0 + y) * w + bx.w0,
                            static_cast<size_t>(tw) * sizeof(float));
        int64_t f0 = 0;
        decode(ctx, dec, sub.data(), t, th, tw, [&](const float* v, int64_t n, int64_t, int64_t) {
            // Rows [h0·sf, h0·sf + PH) of each channel of each frame: read, add, write.
            band.resize(static_cast<size_t>(PH * W));
            for (int64_t f = 0; f < n; ++f)
                for (int64_t c = 0; c < 3; ++c) {
                    const int64_t at = (f0 + f) * frame_floats + (c * H + bx.h0 * sf) * W;
                    io(false, band.data(), PH * W, at);
                    for (int64_t y = 0; y < PH; ++y)
                        for (int64_t x = 0; x < PW; ++x) {
                            const size_t px =
                                static_cast<size_t>((bx.h0 * sf + y) * W + bx.w0 * sf + x);
                            const float m = bx.rh[static_cast<size_t>(y)] *
                                            bx.rw[static_cast<size_t>(x)] / wsum[px];
                            band[static_cast<size_t>(y * W + bx.w0 * sf + x)] +=
                                m * v[((c * n + f) * PH + y) * PW + x];
                        }
                    io(true, band.data(), PH * W, at);
                }
            f0 += n;
        });
        if (progress) progress(++done, static_cast<int64_t>(boxes.size()));
    }
    std::vector<float> frame(static_cast<size_t>(frame_floats));
    for (int64_t f = 0; f < T; ++f) {
        io(false, frame.data(), frame_floats, f * frame_floats);
        sink(frame.data(), 1, H, W);
    }
}

std::vector<float> decode_tiled(const Context& ctx, Decoder& dec, const float* latent, int64_t t,
                                int64_t h, int64_t w, int64_t tile, int64_t overlap,
                                const Progress& progress) {
    const WanVaeConfig& cfg = dec.config();
    const int64_t sf = cfg.space_factor(), T = 1 + cfg.time_factor() * (t - 1), H = h * sf,
                  W = w * sf;
    std::vector<float> v(static_cast<size_t>(3 * T * H * W));
    int64_t t0 = 0;
    decode_tiled(
        ctx, dec, latent, t, h, w, tile, overlap,
        [&](const float* f, int64_t n, int64_t, int64_t) {
            for (int64_t c = 0; c < 3; ++c)
                std::memcpy(v.data() + (c * T + t0) * H * W, f + c * n * H * W,
                            static_cast<size_t>(n * H * W) * sizeof(float));
            t0 += n;
        },
        progress);
    return v;
}

}  // namespace lancet::wan_vae
