// Encoding videos to Wan2.2 latents and decoding latents to videos, file to file: the work behind
// `lancet vae encode|decode` and `lancet forward --component vae-encode|vae-decode`.
#pragma once

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "io/safetensors.h"
#include "io/temp_output.h"

namespace lancet {

// `model_or_vae` is a Lance model folder (its Wan2.2_VAE.pth is used) or a VAE state dict
// (.pth or .safetensors). Throws Error naming the path when there is none.
std::string resolve_vae_path(const std::string& model_or_vae);

struct VaeEncodeOptions {
    bool sample = false;  // z = mean + exp(0.5·logvar)·ε (Lance's editing path) instead of the mean
    uint64_t seed = 0;
    // Centre-crop H and W to multiples of 16 (Lance's DivisibleCrop, spec §3.7; top/left offset
    // round((H − H')/2) as torchvision's center_crop) and keep the first 4k+1 frames (what Lance's
    // chunk loop encodes) instead of refusing such input.
    bool crop = false;
    // Image or video input only: Lance's VAE-stream preprocessing of this preset (spec §3.7:
    // bucket, centre crop, Pillow bicubic resize, crop to multiples of 16) instead of the pixels
    // as they are. Empty: the frames at their own size (sides multiples of 16, or --crop).
    std::string preset;
};

// in, by extension: .safetensors with `video` F32 [3, T, H, W] in [-1, 1], T = 4k+1, H and W
// multiples of 16; an image (.png, .jpg, .jpeg, .webp: one frame) or a video (.mp4, .mkv, .mov,
// .webm, .avi: frames sampled as Lance does, spec §3.5, 12 fps over at most 6 s, 4k+1 of them),
// pixels mapped to x/255·2 − 1 (the VAE stream's normalisation), through opt.preset's
// preprocessing when given. out: safetensors with `latent` F32 [z, 1+(T-1)/4, H/16, W/16].
// Everything is validated before the weights load; output is written to a temporary name and
// renamed. Progress (chunks, ETA) on stderr.
void vae_encode_file(const std::string& vae, const std::string& in, const std::string& out,
                     const VaeEncodeOptions& opt = {});
struct VaeDecodeOptions {
    int64_t tile = 0;     // > 0: spatial tiles of at most tile × tile latent positions
    int64_t overlap = 0;  // latent positions shared by neighbouring tiles (blended)
};
// in: `latent` F32 [z, t, h, w]; out, by extension: .safetensors with `video` F32
// [3, 1+4(t-1), 16h, 16w] in [-1, 1]; .png (t = 1: one frame) or .mp4 (H.264 at 12 fps), pixels
// round(255·(x+1)/2). Written to a temporary name and renamed.
void vae_decode_file(const std::string& vae, const std::string& in, const std::string& out,
                     const VaeDecodeOptions& opt = {});

// In memory (the generation tasks): video [3, T, H, W] in [-1, 1] (T = 4k+1, H and W multiples of
// 16) -> latent [z, 1+(T-1)/4, H/16, W/16], the normalised mean (or a sample with opt.sample).
std::vector<float> vae_encode_video(const std::string& vae_path, const float* video, int64_t T,
                                    int64_t H, int64_t W, const VaeEncodeOptions& opt = {});
// Decoded frames handed over as they are produced: a chunk [3, n, H, W] (channels-first, in
// [-1, 1]; the first chunk 1 frame, later ones 4).
using VideoChunkSink = std::function<void(const float* frames, int64_t n, int64_t H, int64_t W)>;
// latent [z, t, h, w] -> frames [3, 1+4(t-1), 16h, 16w] in [-1, 1], streamed to `sink` chunk by
// chunk (memory does not grow with the clip); progress on stderr when `progress`.
void vae_decode_latent(const std::string& vae_path, const float* latent, int64_t t, int64_t h,
                       int64_t w, const VideoChunkSink& sink, bool progress = true);
// The same gathered into one [3, T, H, W] vector (images, comparisons of short clips).
std::vector<float> vae_decode_latent(const std::string& vae_path, const float* latent, int64_t t,
                                     int64_t h, int64_t w, bool progress = true);

// A video tensor [3, T, H, W] F32 written to a safetensors file without holding it: chunks of
// frames [3, n, H, W] arrive in time order and go channels-first into a scratch file (the page
// cache, not the process), then append_to() streams it into the writer's current tensor one
// frame-plane at a time.
class VideoTensorSpill {
  public:
    VideoTensorSpill(int64_t T, int64_t H, int64_t W);
    void add(const float* frames, int64_t n);
    int64_t frames() const { return t0_; }
    // All T frames must have been added; appends 3·T·H·W floats to w's next tensor.
    void append_to(SafetensorsWriter& w) const;

  private:
    int64_t T_, H_, W_, t0_ = 0;
    ScratchFile file_;
};

}  // namespace lancet
