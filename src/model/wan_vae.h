// The Wan2.2 VAE on the op layer (spec §5): channels-last activations [T, H, W, C], every
// CausalConv3d with its own frame cache, the causal zero frames of the first chunk skipped (the
// conv3d op never multiplies them), and the video streamed through the chunk schedule so memory is
// bounded by a few frames per layer whatever the clip length. model/wan_vae_ref.h is its float64
// reference; tests/wan_vae_fast_test.cc checks every block against it.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "kernels/ops.h"
#include "model/wan_vae_tensors.h"

namespace lancet::wan_vae {

// A channels-last block of frames [T, H, W, C], f32.
struct Frames {
    int64_t T = 0, H = 0, W = 0, C = 0;
    std::vector<float> d;

    Frames() = default;
    Frames(int64_t t, int64_t h, int64_t w, int64_t c)
        : T(t), H(h), W(w), C(c), d(static_cast<size_t>(t * h * w * c), 0.0f) {}
    kernels::TensorRef ref() const;
    float* frame(int64_t t) { return d.data() + t * H * W * C; }
    const float* frame(int64_t t) const { return d.data() + t * H * W * C; }
    // Frames [t0, t1) as a copy.
    Frames slice(int64_t t0, int64_t t1) const;
};

// Multiply-accumulates of the convolutions run, and what they would have been had the causal zero
// frames been multiplied (the ≥ 2.5× cut of the first chunk shows here).
// `module` is what Lance's PyTorch module multiplies (zero frames, and each upsample's 3×3 conv at
// the upsampled size: the spec's 2.915 GMAC per latent position for a first frame).
struct FlopCount {
    double executed = 0, dense = 0, module = 0;
};

struct Context {
    kernels::OpContext ops;
    FlopCount* flops = nullptr;  // nullable
};

// A CausalConv3d (or a Conv2d as kt = 1) with its repacked weight.
struct Conv {
    kernels::Conv3dWeight w;
    kernels::Conv3dParams p;
    // x [T, H, W, Ci] -> y [T', H', W', Co], `cache` (nullable) the real frames before x.
    void run(const Context& ctx, const Frames& x, const Frames* cache, Frames& y,
             bool accumulate = false) const;
};
// Loads prefix.weight / prefix.bias ([Co, Ci, kt, kh, kw] or [Co, Ci, kh, kw]) with the padding
// CausalConv3d(padding = k/2) uses: 2·(kt/2) causal frames in front, kh/2 on each side.
Conv load_conv(const WanVaeFile& f, const std::string& prefix);

// A convolution called through the feat_cache pattern: it keeps the last 2 frames of its input
// (the earlier cached frame prepended after a 1-frame chunk).
struct CachedConv {
    Conv conv;
    Frames cache;  // T = 0 before the first chunk
    void forward(const Context& ctx, const Frames& x, Frames& y, bool accumulate = false);
    void reset() { cache = Frames(); }
};

class ResidualBlock {
  public:
    ResidualBlock(const WanVaeFile& f, const std::string& prefix);
    Frames forward(const Context& ctx, Frames x);
    void reset();

  private:
    std::vector<float> gamma0_, gamma3_;
    CachedConv conv2_, conv6_;
    bool has_shortcut_ = false;
    Conv shortcut_;
};

class AttentionBlock {
  public:
    AttentionBlock(const WanVaeFile& f, const std::string& prefix);
    Frames forward(const Context& ctx, const Frames& x) const;

  private:
    int64_t c_ = 0;
    std::vector<float> gamma_, qkv_b_, proj_b_;
    kernels::LinearWeight qkv_, proj_;
};

enum class ResampleMode { Upsample2d, Upsample3d, Downsample2d, Downsample3d };

class Resample {
  public:
    Resample(const WanVaeFile& f, const std::string& prefix, ResampleMode mode);
    Frames forward(const Context& ctx, const Frames& x);
    void reset();

  private:
    ResampleMode mode_;
    Conv conv_;  // resample.1 (downsample modes)
    // Upsample modes: nearest 2× then the 3×3 conv is, per output phase (a, b) = (row, column)
    // parity, a 2×2 conv of the low-resolution input whose taps are sums of the 3×3 taps that land
    // on the same input pixel (row a = 0: w0 on i−1, w1+w2 on i; a = 1: w0+w1 on i, w2 on i+1).
    // Same products, 16 instead of 36 multiplies per input pixel, and no upsampled copy.
    std::vector<kernels::Conv3dWeight> phase_;  // [4], index 2a + b
    void upsample_conv(const Context& ctx, const Frames& x, Frames& y) const;
    Conv time_conv_;  // upsample3d: 3×1×1 C -> 2C; downsample3d: 3×1×1 stride 2
    enum class State { First, Second, Later } state_ = State::First;
    Frames cache_;
};

// AvgDown3D / DupUp3D shortcuts, channels-last. dup_up3d adds into `y` (x_main + shortcut).
Frames avg_down3d(const Frames& x, int64_t out_channels, int factor_t, int factor_s);
void dup_up3d_add(const Frames& x, int factor_t, int factor_s, bool first_chunk, Frames& y);

// Patchify [3, T, H, W] channels-first frames t0..t1 into channels-last [t1-t0, H/2, W/2, 12].
Frames patchify(const float* video, int64_t T, int64_t H, int64_t W, int64_t t0, int64_t t1);

class Encoder {
  public:
    explicit Encoder(const WanVaeFile& f);
    const WanVaeConfig& config() const { return cfg_; }
    // One chunk of patchified frames through Encoder3d, then WanVAE_.conv1: [t, h, w, 2z].
    Frames chunk(const Context& ctx, const Frames& x);
    void reset();

  private:
    WanVaeConfig cfg_;
    CachedConv conv1_;
    struct Stage {
        std::vector<ResidualBlock> blocks;
        std::unique_ptr<Resample> resample;
        int64_t out = 0;
        int ft = 1, fs = 1;
    };
    std::vector<Stage> stages_;
    std::unique_ptr<ResidualBlock> mid0_, mid2_;
    std::unique_ptr<AttentionBlock> attn_;
    std::vector<float> head_gamma_;
    CachedConv head_;
    Conv top_conv1_;
};

class Decoder {
  public:
    explicit Decoder(const WanVaeFile& f);
    const WanVaeConfig& config() const { return cfg_; }
    // One latent frame (after WanVAE_.conv2 is applied here) through Decoder3d: [T, H, W, 12].
    Frames chunk(const Context& ctx, const Frames& z, bool first_chunk);
    void reset();

  private:
    WanVaeConfig cfg_;
    Conv top_conv2_;
    CachedConv conv1_;
    std::unique_ptr<ResidualBlock> mid0_, mid2_;
    std::unique_ptr<AttentionBlock> attn_;
    struct Stage {
        std::vector<ResidualBlock> blocks;
        std::unique_ptr<Resample> resample;
        int ft = 1, fs = 1;
    };
    std::vector<Stage> stages_;
    std::vector<float> head_gamma_;
    CachedConv head_;
    // Up stage i (residual blocks, resample, DupUp3D shortcut) on x, in place.
    void stage(const Context& ctx, size_t i, Frames& x, bool first_chunk);
};

// Progress after each chunk: frames done, frames in all.
using Progress = std::function<void(int64_t done, int64_t total)>;

// video [3, T, H, W] (channels-first, [-1, 1]; T = 4k+1, H and W multiples of 16) -> the
// normalised latent mean [z, t, h, w]; `logvar` (nullable) gets the raw log-variance.
std::vector<float> encode(const Context& ctx, Encoder& enc, const float* video, int64_t T,
                          int64_t H, int64_t W, std::vector<float>* logvar = nullptr,
                          const Progress& progress = nullptr);
// latent [z, t, h, w] (normalised) -> frames [3, 1+4(t-1), 16h, 16w] in [-1, 1], handed to `sink`
// one decoded chunk at a time as channels-first [3, n, H, W] (the first chunk 1 frame, later ones
// 4), so the caller may write them out instead of holding the video.
using FrameSink = std::function<void(const float* frames, int64_t n, int64_t H, int64_t W)>;
// `clamp` false hands out the frames before the final clamp (tests).
void decode(const Context& ctx, Decoder& dec, const float* latent, int64_t t, int64_t h, int64_t w,
            const FrameSink& sink, const Progress& progress = nullptr, bool clamp = true);
// Convenience: the whole decoded video [3, T, H, W]; `unclamped` (nullable) before the clamp.
std::vector<float> decode_all(const Context& ctx, Decoder& dec, const float* latent, int64_t t,
                              int64_t h, int64_t w, std::vector<float>* unclamped = nullptr);

// Spatial tiling for large frames: the latent is cut into tiles of at most `tile` × `tile` latent
// positions overlapping by `overlap` (< tile), each decoded on its own (its own caches, the whole
// clip), and the tiles blended with weights that ramp linearly across the overlap on edges that
// meet another tile (frame borders keep full weight). Peak activation memory follows the tile, not
// the frame. The result differs from the untiled one near seams (tiles see less context); tile >=
// both sides gives exactly decode_all.
// Frames go to `sink` one at a time ([3, 1, H, W], clamped) after every tile is done: each tile
// runs the whole clip, so the blended sums live in a temporary file, not in memory (RAM is bounded
// by one tile's caches and one band of rows, whatever the clip length). `progress` counts tiles.
void decode_tiled(const Context& ctx, Decoder& dec, const float* latent, int64_t t, int64_t h,
                  int64_t w, int64_t tile, int64_t overlap, const FrameSink& sink,
                  const Progress& progress = nullptr);
// Convenience: the whole blended video [3, T, H, W].
std::vector<float> decode_tiled(const Context& ctx, Decoder& dec, const float* latent, int64_t t,
                                int64_t h, int64_t w, int64_t tile, int64_t overlap,
                                const Progress& progress = nullptr);

// [start, end) spans of length <= tile covering [0, total), consecutive spans overlapping by
// `overlap`; the last span ends at total.
std::vector<std::pair<int64_t, int64_t>> tile_spans(int64_t total, int64_t tile, int64_t overlap);

}  // namespace lancet::wan_vae
