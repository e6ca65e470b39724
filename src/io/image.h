// Still images in and out: PNG (libpng), JPEG (libjpeg-turbo) and WebP (libwebp) decoded to 8-bit
// RGB the way Lance's loader leaves them, and PNG written with text metadata.
#pragma once

#include <cstdint>
#include <span>
#include <string>
#include <utility>
#include <vector>

namespace lancet {

// The default pixel limit for any decoded picture or video frame: 64 megapixels (2^26). It is
// checked against the header's dimensions before anything is allocated, so a tiny file claiming
// 100000 x 100000 pixels is refused instead of asking for 30 GB.
constexpr uint64_t kDefaultMaxPixels = 64ull << 20;

// 8-bit RGB, row-major [height, width, 3].
struct ImageRGB8 {
    int width = 0, height = 0;
    std::vector<uint8_t> rgb;

    ImageRGB8() = default;
    ImageRGB8(int w, int h) : width(w), height(h), rgb(static_cast<size_t>(w) * h * 3) {}
    uint8_t* row(int y) { return rgb.data() + static_cast<size_t>(y) * width * 3; }
    const uint8_t* row(int y) const { return rgb.data() + static_cast<size_t>(y) * width * 3; }
};

struct ImageReadOptions {
    uint64_t max_pixels = kDefaultMaxPixels;
    // Lance opens files with PIL's Image.open, which ignores the EXIF orientation tag; Lancet
    // applies it by default (a phone photo is then upright), and `false` reproduces Lance exactly.
    bool apply_exif_orientation = true;
};

// Decodes a PNG, JPEG or WebP file (chosen by its magic bytes, not its name) into RGB exactly as
// Lance's `get_video_tensor_online` does with Pillow: palette images become RGBA, RGBA is
// composited onto white with Pillow's paste arithmetic, every other mode (grey, grey+alpha, CMYK,
// 16-bit) is converted to RGB the way Image.convert("RGB") does. Throws Error naming the file.
ImageRGB8 read_image(const std::string& path, const ImageReadOptions& opts = {});
// The same on bytes in memory; `where` names them in errors.
ImageRGB8 decode_image(std::span<const uint8_t> bytes, const std::string& where,
                       const ImageReadOptions& opts = {});

// True when the bytes start like a PNG, JPEG or WebP file (the formats read_image accepts).
bool is_image_magic(std::span<const uint8_t> head);
// Reads the first bytes of `path` and applies is_image_magic; false for unreadable paths.
bool file_is_image(const std::string& path);

// The EXIF orientation (1..8) from a TIFF-structured EXIF block (an optional "Exif\0\0" prefix is
// skipped). Every offset is bounds-checked; anything malformed or absent gives 1 (upright).
int exif_orientation(std::span<const uint8_t> exif);
// Applies an EXIF orientation (1..8) as Pillow's ImageOps.exif_transpose does; 6 and 8 swap the
// width and height.
ImageRGB8 apply_orientation(const ImageRGB8& img, int orientation);

// Key/value text for PNG tEXt (iTXt when the value is not plain ASCII) chunks.
using ImageMetadata = std::vector<std::pair<std::string, std::string>>;

// Encodes `img` as a PNG with the metadata as text chunks. Keys are 1..79 printable Latin-1
// characters without leading, trailing or double spaces (the PNG rule); others are an Error.
std::string encode_png(const ImageRGB8& img, const ImageMetadata& meta = {});
// encode_png written to a temporary name beside `path`, fsynced, then renamed: a full disk or an
// unwritable folder is one Error and leaves no file behind.
void write_png(const std::string& path, const ImageRGB8& img, const ImageMetadata& meta = {});

// One frame of a float tensor [3, T, H, W] in [-1, 1] as 8-bit RGB: round(255 * (x + 1) / 2),
// clamped to [0, 255]. `data` points at element [0, 0, 0, 0].
ImageRGB8 frame_to_rgb8(const float* data, int64_t T, int64_t H, int64_t W, int64_t t);

}  // namespace lancet
