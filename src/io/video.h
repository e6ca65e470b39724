// Videos in and out through FFmpeg's libraries (libavformat, libavcodec, libswscale): Lance's
// frame sampler, a reader that decodes only the sampled frames, and an H.264 MP4 writer.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "io/image.h"

namespace lancet {

// Lance's MultiClipsFrameSampler for one clip covering the whole video (spec §3.5): the
// frame rate is round(avg_fps) (24 when unknown), n = round(min(total / fps, max_duration) *
// sample_fps) taken down to the form 4k+1, and the indices are linspace(0, total - 1, n)
// truncated to integers. A clip shorter than one sample (where Lance's arithmetic yields a
// negative count and fails) gives one frame here.
struct FrameSampling {
    int fps = 0;          // the rounded source rate the sampler divides by
    double duration = 0;  // seconds, after the max_duration cap
    std::vector<int64_t> indices;
};
FrameSampling lance_sample_frames(int64_t total_frames, double avg_fps, double sample_fps = 12.0,
                                  double max_duration = 6.0, int temporal = 4);

struct VideoReadOptions {
    uint64_t max_pixels = kDefaultMaxPixels;  // per frame, checked from the stream header
};

struct VideoInfo {
    int width = 0, height = 0;  // of the frames handed out (after the display rotation)
    int64_t frame_count = 0;    // packets of the video stream, as decord counts them
    double avg_fps = 0;         // the stream's average frame rate (0 when unknown)
    int rotation = 0;           // 0, 90, 180 or 270 degrees clockwise, applied like decord
    std::string codec;
};

// An opened video. Construction reads the container and every packet header (not the pictures) to
// count frames and find key frames; errors name the file.
class VideoReader {
  public:
    explicit VideoReader(const std::string& path, const VideoReadOptions& opts = {});
    ~VideoReader();
    VideoReader(const VideoReader&) = delete;
    VideoReader& operator=(const VideoReader&) = delete;

    const VideoInfo& info() const;
    // Decodes the frames at `indices` (non-decreasing, in [0, frame_count)) as 8-bit RGB and
    // calls fn(k, frame) for each k in order; a repeated index is handed out again. Only one
    // decoded frame is held at a time; runs of frames that are not needed are skipped by seeking
    // to the key frame before the next needed one.
    void read_frames(const std::vector<int64_t>& indices,
                     const std::function<void(size_t, const ImageRGB8&)>& fn);
    // Frames actually decoded by the last read_frames (for the skip tests and the report).
    int64_t frames_decoded() const;

  private:
    struct Impl;
    std::unique_ptr<Impl> impl_;
};

struct VideoWriteOptions {
    double fps = 12.0;       // Lance saves at 12 fps
    int crf = 18;            // libx264 constant rate factor
    int keyint = 0;          // most frames between key frames; 0 keeps libx264's default (250)
    ImageMetadata metadata;  // written as MP4 metadata tags
};
// Encodes frames [3, T, H, W] in [-1, 1] (mapped with round(255 * (x + 1) / 2)) as H.264 in an
// MP4 at `opts.fps`. H and W must be even (4:2:0). Written to a temporary name and renamed, so a
// full disk or an unwritable folder is one Error and leaves no file.
void write_mp4(const std::string& path, const float* frames, int64_t T, int64_t H, int64_t W,
               const VideoWriteOptions& opts = {});

// The same MP4 written a few frames at a time, so a long video is never held whole (the VAE
// decoder hands its frames out chunk by chunk): the constructor checks the size and opens the
// encoder on a temporary name, write() encodes frames [3, n, H, W] in [-1, 1], finish() flushes
// and renames. Destroyed without finish() (an error on the way), it removes the temporary file.
class Mp4Writer {
  public:
    Mp4Writer(const std::string& path, int64_t H, int64_t W, const VideoWriteOptions& opts = {});
    ~Mp4Writer();
    Mp4Writer(const Mp4Writer&) = delete;
    Mp4Writer& operator=(const Mp4Writer&) = delete;

    void write(const float* frames, int64_t n);
    void finish();
    int64_t frames_written() const;

  private:
    struct Impl;
    std::unique_ptr<Impl> impl_;
};

// True when this build has FFmpeg (LANCET_WITH_FFMPEG).
bool video_support_built();

}  // namespace lancet
