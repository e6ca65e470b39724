// The float64 reference of the Wan2.2 VAE (spec §5): plain loops over channels-first volumes,
// written from the spec and vae2_2.py's structure, with the chunked cache schedule exactly as
// WanVAE_.encode / decode run it (feat_cache list, "Rep" marker, first-chunk rules). Slow by
// design: tests run it at tiny widths to check the fast path (model/wan_vae.h) block by block.
#pragma once

#include <cstdint>
#include <string>
#include <unordered_map>
#include <vector>

#include "model/wan_vae_tensors.h"

namespace lancet::wan_vae_ref {

// A channels-first volume [C, T, H, W] (one batch element, as PyTorch's [1, C, T, H, W]).
struct Vol {
    int64_t C = 0, T = 0, H = 0, W = 0;
    std::vector<double> d;

    Vol() = default;
    Vol(int64_t c, int64_t t, int64_t h, int64_t w)
        : C(c), T(t), H(h), W(w), d(static_cast<size_t>(c * t * h * w), 0.0) {}
    double& at(int64_t c, int64_t t, int64_t h, int64_t w) {
        return d[static_cast<size_t>(((c * T + t) * H + h) * W + w)];
    }
    double at(int64_t c, int64_t t, int64_t h, int64_t w) const {
        return d[static_cast<size_t>(((c * T + t) * H + h) * W + w)];
    }
    // Frames [t0, t1).
    Vol frames(int64_t t0, int64_t t1) const;
};
// Concatenation along time.
Vol cat_t(const Vol& a, const Vol& b);

// ---- blocks ----------------------------------------------------------------------------------

// [3, T, H, W] -> [12, T, H/2, W/2], channel (c, r, q) = c·4 + r·2 + q with r the in-patch column
// and q the in-patch row ("b c f (h q) (w r) -> b (c r q) f h w").
Vol patchify(const Vol& x);
Vol unpatchify(const Vol& x);  // the inverse: [12, T, h, w] -> [3, T, 2h, 2w]

// A convolution's weight [C_out, C_in, kt, kh, kw] (Conv2d weights with kt = 1) and bias.
struct Conv {
    int64_t co = 0, ci = 0, kt = 1, kh = 1, kw = 1;
    std::vector<double> w, b;
};
// Plain cross-correlation with zero padding: pad_t_front frames before (none after), pad_top /
// pad_bottom / pad_left / pad_right in space, strides st (time) and ss (space).
Vol conv3d(const Vol& x, const Conv& k, int st, int ss, int pad_t_front, int pad_top,
           int pad_bottom, int pad_left, int pad_right);
// CausalConv3d.forward(x, cache): the cache frames replace the last cache.T of the 2·p front zero
// frames (p = kt / 2 for the 3×3×3 convs; spatial padding kh / 2 on each side).
Vol causal_conv3d(const Vol& x, const Vol* cache, const Conv& k);
// RMS_norm: x / max(‖x over C‖₂, 1e-12) · √C · gamma[c].
Vol rms_norm(const Vol& x, const std::vector<double>& gamma);
Vol silu(Vol x);
Vol add(const Vol& a, const Vol& b);
// AvgDown3D(in = x.C, out_channels, factor_t, factor_s) and DupUp3D(in = x.C, out_channels, ...).
Vol avg_down3d(const Vol& x, int64_t out_channels, int factor_t, int factor_s);
Vol dup_up3d(const Vol& x, int64_t out_channels, int factor_t, int factor_s, bool first_chunk);

// The feat_cache list: one slot per cached convolution in call order (CausalConv3d of residual
// blocks and heads, each Resample time conv), reset to slot 0 at every chunk.
struct CacheSlot {
    enum class State { Empty, Rep, Frames } state = State::Empty;
    Vol frames;
};
struct Caches {
    std::vector<CacheSlot> slots;
    size_t idx = 0;
    CacheSlot& next();
};

// The model's weights in f64, by state-dict name.
class Weights {
  public:
    explicit Weights(const WanVaeFile& f);
    const WanVaeConfig& config() const { return cfg_; }
    const std::vector<double>& get(const std::string& name) const;
    Conv conv(const std::string& prefix) const;  // prefix.weight / prefix.bias

  private:
    WanVaeConfig cfg_;
    std::unordered_map<std::string, std::vector<double>> t_;
    std::unordered_map<std::string, Shape> shape_;
};

// A CausalConv3d called through the cache list (the pattern of ResidualBlock.forward).
Vol cached_conv(const Vol& x, const Conv& k, Caches& c);
Vol residual_block(const Weights& w, const std::string& p, const Vol& x, Caches& c);
Vol attention_block(const Weights& w, const std::string& p, const Vol& x);
enum class ResampleMode { Upsample2d, Upsample3d, Downsample2d, Downsample3d };
Vol resample(const Weights& w, const std::string& p, ResampleMode mode, const Vol& x, Caches& c);

// One chunk through Encoder3d / Decoder3d.
Vol encoder_chunk(const Weights& w, const Vol& x, Caches& c);
Vol decoder_chunk(const Weights& w, const Vol& x, Caches& c, bool first_chunk);

// WanVAE_.encode with Lance's normalisation: video [3, T, H, W] in [-1, 1] (T = 4k+1, H, W
// multiples of 16) -> the normalised mean [z, 1+(T-1)/4, H/16, W/16]; `logvar` (nullable) gets
// the raw log-variance.
Vol encode(const Weights& w, const Vol& video, Vol* logvar = nullptr);
// WanVAE_.decode + clamp: normalised latent [z, t, h, w] -> video [3, 1+4(t-1), 16h, 16w] in
// [-1, 1]. `unclamped` (nullable) gets the video before the clamp.
Vol decode(const Weights& w, const Vol& z, Vol* unclamped = nullptr);

}  // namespace lancet::wan_vae_ref
