// The float64 reference of the Wan2.2 VAE: every block as plain loops (spec §5).
#include "model/wan_vae_ref.h"

#include <algorithm>
#include <cmath>

#include "core/error.h"

namespace lancet::wan_vae_ref {

Vol Vol::frames(int64_t t0, int64_t t1) const {
    Vol r(C, t1 - t0, H, W);
    for (int64_t c = 0; c < C; ++c)
        for (int64_t t = t0; t < t1; ++t)
            for (int64_t h = 0; h < H; ++h)
                for (int64_t x = 0; x < W; ++x) r.at(c, t - t0, h, x) = at(c, t, h, x);
    return r;
}

Vol cat_t(const Vol& a, const Vol& b) {
    if (a.T == 0) return b;
    if (b.T == 0) return a;
    Vol r(a.C, a.T + b.T, a.H, a.W);
    for (int64_t c = 0; c < a.C; ++c)
        for (int64_t t = 0; t < r.T; ++t)
            for (int64_t h = 0; h < a.H; ++h)
                for (int64_t x = 0; x < a.W; ++x)
                    r.at(c, t, h, x) = t < a.T ? a.at(c, t, h, x) : b.at(c, t - a.T, h, x);
    return r;
}

Vol patchify(const Vol& x) {
    Vol r(x.C * 4, x.T, x.H / 2, x.W / 2);
    for (int64_t c = 0; c < x.C; ++c)
        for (int64_t rr = 0; rr < 2; ++rr)   // column in the patch
            for (int64_t q = 0; q < 2; ++q)  // row in the patch
                for (int64_t t = 0; t < x.T; ++t)
                    for (int64_t h = 0; h < r.H; ++h)
                        for (int64_t w = 0; w < r.W; ++w)
                            r.at((c * 2 + rr) * 2 + q, t, h, w) = x.at(c, t, h * 2 + q, w * 2 + rr);
    return r;
}

Vol unpatchify(const Vol& x) {
    Vol r(x.C / 4, x.T, x.H * 2, x.W * 2);
    for (int64_t c = 0; c < r.C; ++c)
        for (int64_t rr = 0; rr < 2; ++rr)
            for (int64_t q = 0; q < 2; ++q)
                for (int64_t t = 0; t < x.T; ++t)
                    for (int64_t h = 0; h < x.H; ++h)
                        for (int64_t w = 0; w < x.W; ++w)
                            r.at(c, t, h * 2 + q, w * 2 + rr) = x.at((c * 2 + rr) * 2 + q, t, h, w);
    return r;
}

Vol conv3d(const Vol& x, const Conv& k, int st, int ss, int pad_t_front, int pad_top,
           int pad_bottom, int pad_left, int pad_right) {
    const int64_t Tp = x.T + pad_t_front, Hp = x.H + pad_top + pad_bottom,
                  Wp = x.W + pad_left + pad_right;
    Vol y(k.co, (Tp - k.kt) / st + 1, (Hp - k.kh) / ss + 1, (Wp - k.kw) / ss + 1);
    for (int64_t o = 0; o < k.co; ++o)
        for (int64_t t = 0; t < y.T; ++t)
            for (int64_t h = 0; h < y.H; ++h)
                for (int64_t w = 0; w < y.W; ++w) {
                    double acc = k.b.empty() ? 0.0 : k.b[static_cast<size_t>(o)];
                    for (int64_t i = 0; i < k.ci; ++i)
                        for (int64_t a = 0; a < k.kt; ++a) {
                            const int64_t ti = t * st + a - pad_t_front;
                            if (ti < 0 || ti >= x.T) continue;
                            for (int64_t b = 0; b < k.kh; ++b) {
                                const int64_t hi = h * ss + b - pad_top;
                                if (hi < 0 || hi >= x.H) continue;
                                for (int64_t c = 0; c < k.kw; ++c) {
                                    const int64_t wi = w * ss + c - pad_left;
                                    if (wi < 0 || wi >= x.W) continue;
                                    acc +=
                                        k.w[static_cast<size_t>(
                                            (((o * k.ci + i) * k.kt + a) * k.kh + b) * k.kw + c)] *
                                        x.at(i, ti, hi, wi);
                                }
                            }
                        }
                    y.at(o, t, h, w) = acc;
                }
    return y;
}

Vol causal_conv3d(const Vol& x, const Vol* cache, const Conv& k) {
    int front = 2 * static_cast<int>(k.kt / 2);
    const int sp = static_cast<int>(k.kh / 2);
    if (cache && front > 0) {
        front -= static_cast<int>(cache->T);
        return conv3d(cat_t(*cache, x), k, 1, 1, front, sp, sp, sp, sp);
    }
    return conv3d(x, k, 1, 1, front, sp, sp, sp, sp);
}

Vol rms_norm(const Vol& x, const std::vector<double>& gamma) {
    Vol y(x.C, x.T, x.H, x.W);
    const double scale = std::sqrt(static_cast<double>(x.C));
    for (int64_t t = 0; t < x.T; ++t)
        for (int64_t h = 0; h < x.H; ++h)
            for (int64_t w = 0; w < x.W; ++w) {
                double ss = 0;
                for (int64_t c = 0; c < x.C; ++c) ss += x.at(c, t, h, w) * x.at(c, t, h, w);
                const double n = std::max(std::sqrt(ss), 1e-12);
                for (int64_t c = 0; c < x.C; ++c)
                    y.at(c, t, h, w) = x.at(c, t, h, w) / n * scale * gamma[static_cast<size_t>(c)];
            }
    return y;
}

Vol silu(Vol x) {
    for (double& v : x.d) v = v / (1.0 + std::exp(-v));
    return x;
}

Vol add(const Vol& a, const Vol& b) {
    Vol r = a;
    for (size_t i = 0; i < r.d.size(); ++i) r.d[i] += b.d[i];
    return r;
}

Vol avg_down3d(const Vol& x, int64_t out_channels, int ft, int fs) {
    const int64_t pad = (ft - x.T % ft) % ft;  // zero frames in front
    const int64_t group = x.C * ft * fs * fs / out_channels;
    Vol y(out_channels, (x.T + pad) / ft, x.H / fs, x.W / fs);
    for (int64_t o = 0; o < out_channels; ++o)
        for (int64_t t = 0; t < y.T; ++t)
            for (int64_t h = 0; h < y.H; ++h)
                for (int64_t w = 0; w < y.W; ++w) {
                    double s = 0;
                    for (int64_t g = 0; g < group; ++g) {
                        // flat channel j = ((c·ft + dt)·fs + dh)·fs + dw
                        int64_t j = o * group + g;
                        const int64_t dw = j % fs;
                        j /= fs;
                        const int64_t dh = j % fs;
                        j /= fs;
                        const int64_t dt = j % ft;
                        const int64_t c = j / ft;
                        const int64_t ti = t * ft + dt - pad;
                        if (ti >= 0) s += x.at(c, ti, h * fs + dh, w * fs + dw);
                    }
                    y.at(o, t, h, w) = s / static_cast<double>(group);
                }
    return y;
}

Vol dup_up3d(const Vol& x, int64_t out_channels, int ft, int fs, bool first_chunk) {
    const int64_t repeats = out_channels * ft * fs * fs / x.C;
    const int64_t drop = first_chunk ? ft - 1 : 0;
    Vol y(out_channels, x.T * ft - drop, x.H * fs, x.W * fs);
    for (int64_t o = 0; o < out_channels; ++o)
        for (int64_t t = 0; t < x.T; ++t)
            for (int64_t dt = 0; dt < ft; ++dt) {
                const int64_t to = t * ft + dt - drop;
                if (to < 0) continue;
                for (int64_t h = 0; h < x.H; ++h)
                    for (int64_t dh = 0; dh < fs; ++dh)
                        for (int64_t w = 0; w < x.W; ++w)
                            for (int64_t dw = 0; dw < fs; ++dw) {
                                const int64_t j = ((o * ft + dt) * fs + dh) * fs + dw;
                                y.at(o, to, h * fs + dh, w * fs + dw) = x.at(j / repeats, t, h, w);
                            }
            }
    return y;
}

CacheSlot& Caches::next() {
    if (idx == slots.size()) slots.emplace_back();
    return slots[idx++];
}

Weights::Weights(const WanVaeFile& f) : cfg_(f.config()) {
    for_each_wan_vae_tensor(cfg_, [&](const VaeTensorSpec& s) {
        t_[s.name] = f.to_f64(s.name);
        shape_[s.name] = s.shape;
    });
}

const std::vector<double>& Weights::get(const std::string& name) const {
    const auto it = t_.find(name);
    if (it == t_.end()) fail("wan_vae_ref: no tensor '", name, "'");
    return it->second;
}

Conv Weights::conv(const std::string& p) const {
    Conv k;
    const Shape& s = shape_.at(p + ".weight");
    k.co = s[0], k.ci = s[1];
    if (s.size() == 5) k.kt = s[2], k.kh = s[3], k.kw = s[4];
    if (s.size() == 4) k.kh = s[2], k.kw = s[3];
    k.w = get(p + ".weight");
    k.b = get(p + ".bias");
    return k;
}

Vol cached_conv(const Vol& x, const Conv& k, Caches& c) {
    CacheSlot& slot = c.next();
    const bool have = slot.state == CacheSlot::State::Frames;
    Vol cache_x = x.frames(std::max<int64_t>(0, x.T - 2), x.T);
    if (cache_x.T < 2 && have)
        cache_x = cat_t(slot.frames.frames(slot.frames.T - 1, slot.frames.T), cache_x);
    Vol y = causal_conv3d(x, have ? &slot.frames : nullptr, k);
    slot.state = CacheSlot::State::Frames;
    slot.frames = std::move(cache_x);
    return y;
}

Vol residual_block(const Weights& w, const std::string& p, const Vol& x, Caches& c) {
    const Vol h = x.C != w.conv(p + ".residual.6").co
                      ? causal_conv3d(x, nullptr, w.conv(p + ".shortcut"))
                      : x;
    Vol r = silu(rms_norm(x, w.get(p + ".residual.0.gamma")));
    r = cached_conv(r, w.conv(p + ".residual.2"), c);
    r = silu(rms_norm(r, w.get(p + ".residual.3.gamma")));
    r = cached_conv(r, w.conv(p + ".residual.6"), c);
    return add(r, h);
}

Vol attention_block(const Weights& wt, const std::string& p, const Vol& x) {
    const int64_t C = x.C, n = x.H * x.W;
    const Vol xn = rms_norm(x, wt.get(p + ".norm.gamma"));
    const Conv qkv = wt.conv(p + ".to_qkv"), proj = wt.conv(p + ".proj");
    Vol y = x;
    std::vector<double> q(static_cast<size_t>(n * C)), k(q.size()), v(q.size()), o(q.size()),
        s(static_cast<size_t>(n));
    for (int64_t t = 0; t < x.T; ++t) {
        for (int64_t i = 0; i < n; ++i)
            for (int64_t oc = 0; oc < 3 * C; ++oc) {
                double a = qkv.b[static_cast<size_t>(oc)];
                for (int64_t ic = 0; ic < C; ++ic)
                    a += qkv.w[static_cast<size_t>(oc * C + ic)] * xn.at(ic, t, i / x.W, i % x.W);
                auto& dst = oc < C ? q : oc < 2 * C ? k : v;
                dst[static_cast<size_t>(i * C + oc % C)] = a;
            }
        const double scale = 1.0 / std::sqrt(static_cast<double>(C));
        for (int64_t i = 0; i < n; ++i) {
            double m = -1e300;
            for (int64_t j = 0; j < n; ++j) {
                double d = 0;
                for (int64_t c = 0; c < C; ++c)
                    d += q[static_cast<size_t>(i * C + c)] * k[static_cast<size_t>(j * C + c)];
                s[static_cast<size_t>(j)] = d * scale;
                m = std::max(m, d * scale);
            }
            double z = 0;
            for (int64_t j = 0; j < n; ++j)
                z += (s[static_cast<size_t>(j)] = std::exp(s[static_cast<size_t>(j)] - m));
            for (int64_t c = 0; c < C; ++c) {
                double a = 0;
                for (int64_t j = 0; j < n; ++j)
                    a += s[static_cast<size_t>(j)] * v[static_cast<size_t>(j * C + c)];
                o[static_cast<size_t>(i * C + c)] = a / z;
            }
        }
        for (int64_t i = 0; i < n; ++i)
            for (int64_t oc = 0; oc < C; ++oc) {
                double a = proj.b[static_cast<size_t>(oc)];
                for (int64_t ic = 0; ic < C; ++ic)
                    a += proj.w[static_cast<size_t>(oc * C + ic)] *
                         o[static_cast<size_t>(i * C + ic)];
                y.at(oc, t, i / x.W, i % x.W) += a;
            }
    }
    return y;
}

namespace {

// The Resample's 2-D part on every frame.
Vol upsample2d(const Conv& k, const Vol& x) {
    Vol u(x.C, x.T, x.H * 2, x.W * 2);  // nearest-exact 2x: source index floor(dst / 2)
    for (int64_t c = 0; c < x.C; ++c)
        for (int64_t t = 0; t < x.T; ++t)
            for (int64_t h = 0; h < u.H; ++h)
                for (int64_t w = 0; w < u.W; ++w) u.at(c, t, h, w) = x.at(c, t, h / 2, w / 2);
    return conv3d(u, k, 1, 1, 0, 1, 1, 1, 1);
}

Vol downsample2d(const Conv& k, const Vol& x) { return conv3d(x, k, 1, 2, 0, 0, 1, 0, 1); }

}  // namespace

Vol resample(const Weights& w, const std::string& p, ResampleMode mode, const Vol& x0, Caches& c) {
    Vol x = x0;
    if (mode == ResampleMode::Upsample3d) {
        CacheSlot& slot = c.next();
        if (slot.state == CacheSlot::State::Empty) {
            slot.state = CacheSlot::State::Rep;  // first chunk: no time conv
        } else {
            Vol cache_x = x.frames(std::max<int64_t>(0, x.T - 2), x.T);
            if (cache_x.T < 2 && slot.state == CacheSlot::State::Frames)
                cache_x = cat_t(slot.frames.frames(slot.frames.T - 1, slot.frames.T), cache_x);
            if (cache_x.T < 2 && slot.state == CacheSlot::State::Rep)
                cache_x = cat_t(Vol(cache_x.C, 1, cache_x.H, cache_x.W), cache_x);
            const Conv tc = w.conv(p + ".time_conv");
            const Vol y =
                causal_conv3d(x, slot.state == CacheSlot::State::Rep ? nullptr : &slot.frames, tc);
            slot.state = CacheSlot::State::Frames;
            slot.frames = std::move(cache_x);
            // [2C, T] -> [C, 2T]: output frame 2t+j takes channels [j·C, (j+1)·C) of frame t.
            x = Vol(x.C, 2 * y.T, y.H, y.W);
            for (int64_t ch = 0; ch < x.C; ++ch)
                for (int64_t t = 0; t < y.T; ++t)
                    for (int64_t j = 0; j < 2; ++j)
                        for (int64_t h = 0; h < y.H; ++h)
                            for (int64_t ww = 0; ww < y.W; ++ww)
                                x.at(ch, 2 * t + j, h, ww) = y.at(j * x.C + ch, t, h, ww);
        }
    }
    const Conv k = w.conv(p + ".resample.1");
    if (mode == ResampleMode::Upsample2d || mode == ResampleMode::Upsample3d)
        return upsample2d(k, x);
    x = downsample2d(k, x);
    if (mode == ResampleMode::Downsample3d) {
        CacheSlot& slot = c.next();
        if (slot.state == CacheSlot::State::Empty) {
            slot.state = CacheSlot::State::Frames;  // first chunk: kept, no time conv
            slot.frames = x;
        } else {
            Vol cache_x = x.frames(x.T - 1, x.T);
            const Vol in = cat_t(slot.frames.frames(slot.frames.T - 1, slot.frames.T), x);
            x = conv3d(in, w.conv(p + ".time_conv"), 2, 1, 0, 0, 0, 0, 0);
            slot.frames = std::move(cache_x);
        }
    }
    return x;
}

Vol encoder_chunk(const Weights& w, const Vol& in, Caches& c) {
    const WanVaeConfig& cfg = w.config();
    const auto dims = cfg.enc_dims();
    Vol x = cached_conv(in, w.conv("encoder.conv1"), c);
    for (int i = 0; i < cfg.stages(); ++i) {
        const std::string s = "encoder.downsamples." + std::to_string(i) + ".downsamples.";
        const Vol x_copy = x;
        for (int k = 0; k < cfg.num_res_blocks; ++k)
            x = residual_block(w, s + std::to_string(k), x, c);
        if (cfg.enc_space_down(i))
            x = resample(
                w, s + std::to_string(cfg.num_res_blocks),
                cfg.enc_time_down(i) ? ResampleMode::Downsample3d : ResampleMode::Downsample2d, x,
                c);
        x = add(x, avg_down3d(x_copy, dims[i + 1], cfg.enc_time_down(i) ? 2 : 1,
                              cfg.enc_space_down(i) ? 2 : 1));
    }
    x = residual_block(w, "encoder.middle.0", x, c);
    x = attention_block(w, "encoder.middle.1", x);
    x = residual_block(w, "encoder.middle.2", x, c);
    x = silu(rms_norm(x, w.get("encoder.head.0.gamma")));
    return cached_conv(x, w.conv("encoder.head.2"), c);
}

Vol decoder_chunk(const Weights& w, const Vol& in, Caches& c, bool first_chunk) {
    const WanVaeConfig& cfg = w.config();
    const auto dims = cfg.dec_dims();
    Vol x = cached_conv(in, w.conv("decoder.conv1"), c);
    x = residual_block(w, "decoder.middle.0", x, c);
    x = attention_block(w, "decoder.middle.1", x);
    x = residual_block(w, "decoder.middle.2", x, c);
    for (int i = 0; i < cfg.stages(); ++i) {
        const std::string s = "decoder.upsamples." + std::to_string(i) + ".upsamples.";
        Vol m = x;
        for (int k = 0; k < cfg.num_res_blocks + 1; ++k)
            m = residual_block(w, s + std::to_string(k), m, c);
        if (cfg.dec_space_up(i)) {
            m = resample(w, s + std::to_string(cfg.num_res_blocks + 1),
                         cfg.dec_time_up(i) ? ResampleMode::Upsample3d : ResampleMode::Upsample2d,
                         m, c);
            m = add(m, dup_up3d(x, dims[i + 1], cfg.dec_time_up(i) ? 2 : 1, 2, first_chunk));
        }
        x = std::move(m);
    }
    x = silu(rms_norm(x, w.get("decoder.head.0.gamma")));
    return cached_conv(x, w.conv("decoder.head.2"), c);
}

Vol encode(const Weights& w, const Vol& video, Vol* logvar) {
    const WanVaeConfig& cfg = w.config();
    const Vol x = patchify(video);
    const int64_t tf = cfg.time_factor();
    const int64_t iters = 1 + (x.T - 1) / tf;
    Caches c;
    Vol out;
    for (int64_t i = 0; i < iters; ++i) {
        c.idx = 0;
        const Vol chunk = i == 0 ? x.frames(0, 1) : x.frames(1 + tf * (i - 1), 1 + tf * i);
        out = cat_t(out, encoder_chunk(w, chunk, c));
    }
    const Vol h = causal_conv3d(out, nullptr, w.conv("conv1"));
    const LatentStats st = wan_latent_stats(cfg.z_dim);
    const int64_t z = cfg.z_dim, n = h.T * h.H * h.W;
    Vol mu(z, h.T, h.H, h.W);
    for (int64_t ch = 0; ch < z; ++ch)
        for (int64_t i = 0; i < n; ++i)
            mu.d[static_cast<size_t>(ch * n + i)] =
                (h.d[static_cast<size_t>(ch * n + i)] - st.mean[static_cast<size_t>(ch)]) *
                st.inv_std[static_cast<size_t>(ch)];
    if (logvar) {
        *logvar = Vol(z, h.T, h.H, h.W);
        std::copy(h.d.begin() + z * n, h.d.end(), logvar->d.begin());
    }
    return mu;
}

Vol decode(const Weights& w, const Vol& zn, Vol* unclamped) {
    const WanVaeConfig& cfg = w.config();
    const LatentStats st = wan_latent_stats(cfg.z_dim);
    Vol z = zn;
    const int64_t n = z.T * z.H * z.W;
    for (int64_t ch = 0; ch < z.C; ++ch)
        for (int64_t i = 0; i < n; ++i) {
            double& v = z.d[static_cast<size_t>(ch * n + i)];
            v = v / st.inv_std[static_cast<size_t>(ch)] + st.mean[static_cast<size_t>(ch)];
        }
    const Vol x = causal_conv3d(z, nullptr, w.conv("conv2"));
    Caches c;
    Vol out;
    for (int64_t i = 0; i < x.T; ++i) {
        c.idx = 0;
        out = cat_t(out, decoder_chunk(w, x.frames(i, i + 1), c, i == 0));
    }
    Vol v = unpatchify(out);
    if (unclamped) *unclamped = v;
    for (double& e : v.d) e = std::clamp(e, -1.0, 1.0);
    return v;
}

}  // namespace lancet::wan_vae_ref
