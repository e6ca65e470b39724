// Lance's media preprocessing (spec §3.5, §3.7): preset areas, the six aspect-ratio buckets, the
// centre crop and Pillow-exact bicubic resize, the divisible crop, and the ViT (CLIP) or VAE
// ([-1, 1]) normalisation, producing pixels [3, T, H, W] for one image or a sampled video.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "io/image.h"
#include "io/video.h"

namespace lancet {

enum class VisionStream { Vit, Vae };

// What a preset and stream set: the bucket area is resolution², the final crop is to a multiple
// of `divisible` (28 ViT, 16 VAE), and x -> (x/255 - mean) / std per channel.
struct StreamSpec {
    int resolution = 0;
    int divisible = 0;
    float mean[3] = {0, 0, 0};
    float std[3] = {1, 1, 1};
};
// Presets: image_256res / video_192p, image_512res, image_768res, video_360p, video_480p.
// Throws Error for any other name.
StreamSpec stream_spec(const std::string& preset, VisionStream stream);
VisionStream parse_stream(const std::string& name);  // "vit" or "vae"
const std::vector<std::string>& preset_names();

// One bucket: height x width, multiples of 16 near resolution² in area; ratio = width / height.
struct Bucket {
    int height = 0, width = 0;
    double ratio = 0;
};
// Lance's BucketResize.init_buckets for the ratios 21:9, 16:9, 4:3, 1:1, 3:4, 9:16 (stride 16,
// Python's round-half-to-even).
std::vector<Bucket> lance_buckets(int resolution);
// The index of the bucket whose ratio is nearest the input's width / height (first on ties).
size_t nearest_bucket(const std::vector<Bucket>& buckets, int width, int height);

struct CropBox {
    int top = 0, left = 0, height = 0, width = 0;
};
// torchvision's RandomResizedCrop(scale=(1, 1), ratio=(r, r)).get_params as Lance uses it: the
// largest centred region of the bucket's ratio (sizes rounded half to even, offsets by floor
// division). When that region fits within a pixel of the whole image torch places it at a random
// offset of 0 or 1; the centre (floor) is used here.
CropBox bucket_crop_box(int width, int height, const Bucket& bucket);
// DivisibleCrop: the centred crop to multiples of `factor`; offsets round half to even
// (torchvision center_crop).
CropBox divisible_crop_box(int width, int height, int factor);
ImageRGB8 crop_image(const ImageRGB8& img, const CropBox& box);

// Pillow's Image.resize(size, BICUBIC) on 8-bit RGB, reproduced bit for bit: separable
// (horizontal pass over the rows the vertical pass needs, then vertical), the a = -0.5 cubic
// with its support scaled by the downscale factor, coefficients normalised to sum 1 and
// converted to 22-bit fixed point, 8-bit rounding and clamping after each pass.
ImageRGB8 resize_bicubic_pillow(const ImageRGB8& img, int out_width, int out_height);

// The uint8 part of Lance's per-frame transform for inputs of one size: bucket choice, crop,
// resize, divisible crop.
class FrameTransform {
  public:
    FrameTransform(const StreamSpec& spec, int in_width, int in_height);
    ImageRGB8 apply(const ImageRGB8& frame) const;  // frame must be in_width x in_height
    int out_width() const { return final_.width; }
    int out_height() const { return final_.height; }
    const Bucket& bucket() const { return bucket_; }

  private:
    int in_w_, in_h_;
    Bucket bucket_;
    CropBox crop_, final_;
};

// pixels [3, T, H, W], F32, normalised.
struct PixelTensor {
    int64_t T = 0, H = 0, W = 0;
    std::vector<float> data;
};
// Writes frame `t` of `img` (H x W) into `out` ([3, T, H, W]) normalised in float32 exactly as
// torchvision's to_tensor (x / 255) then Normalize ((x - mean) / std) compute it.
void normalize_frame(const ImageRGB8& img, const StreamSpec& spec, PixelTensor* out, int64_t t);

struct PreprocessResult {
    PixelTensor pixels;
    ImageRGB8 first_frame;  // frame 0 after resize and divisible crop (for --png)
    Bucket bucket;
    int source_width = 0, source_height = 0;
    std::vector<int64_t> frame_indices;  // video only: the sampled source frame indices
    double decode_seconds = 0;           // video only: time spent decoding (and converting) frames
};

// An image as Lance's x2t/edit loader treats it: one frame; the ViT stream repeats it to two.
PreprocessResult preprocess_image(const ImageRGB8& img, const std::string& preset,
                                  VisionStream stream);
// A video: Lance's sampler (12 fps, at most 6 s, 4k+1 frames over the whole clip), each sampled
// frame decoded, transformed and normalised straight into the output (no decoded frame is kept);
// the ViT stream pads an odd count with the last frame. A PNG/JPEG/WebP file is treated as
// preprocess_image does (its EXIF orientation applied).
PreprocessResult preprocess_video(const std::string& path, const std::string& preset,
                                  VisionStream stream, const VideoReadOptions& opts = {});

}  // namespace lancet
