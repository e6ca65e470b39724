// `lancet preprocess`: an image or video through Lance's media preprocessing (spec §3.5, §3.7),
// written as `pixels` F32 [3, T, H, W] and/or the resized first frame as a PNG.
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <memory>
#include <string>

#include "cli/commands.h"
#include "core/error.h"
#include "io/image.h"
#include "io/output_dir.h"
#include "io/safetensors.h"
#include "io/video.h"
#include "pipeline/preprocess.h"

namespace lancet::cli {

namespace {

struct PreprocessArgs {
    std::string image, video, preset = "image_768res", stream = "vit", out, png;
    uint64_t max_pixels = kDefaultMaxPixels;
    bool no_exif = false;
};

void run_preprocess(const PreprocessArgs& a) {
    using Clock = std::chrono::steady_clock;
    const std::string& src = a.image.empty() ? a.video : a.image;
    for (const std::string* o : {&a.out, &a.png})
        if (!o->empty() && path_overlaps(*o, src))
            fail(*o, ": is the input file (outputs never replace a source)");
    if (!a.out.empty() && !a.png.empty() && path_overlaps(a.out, a.png))
        fail(a.out, ": --out and --png name the same file");
    const VisionStream stream = parse_stream(a.stream);
    stream_spec(a.preset, stream);  // an unknown preset fails before any decoding

    const auto t0 = Clock::now();
    PreprocessResult r;
    if (!a.image.empty()) {
        ImageReadOptions ro;
        ro.max_pixels = a.max_pixels;
        ro.apply_exif_orientation = !a.no_exif;
        const ImageRGB8 img = read_image(a.image, ro);
        r = preprocess_image(img, a.preset, stream);
    } else {
        VideoReadOptions vo;
        vo.max_pixels = a.max_pixels;
        r = preprocess_video(a.video, a.preset, stream, vo);
    }
    const double total_s = std::chrono::duration<double>(Clock::now() - t0).count();

    // Everything that can fail on content has happened; encode before touching the disk.
    std::string png_bytes;
    if (!a.png.empty())
        png_bytes = encode_png(
            r.first_frame,
            {{"lancet:source", src}, {"lancet:preset", a.preset}, {"lancet:stream", a.stream}});
    const Shape shape = {3, r.pixels.T, r.pixels.H, r.pixels.W};
    if (!a.out.empty()) {
        SafetensorsWriter w(a.out);
        w.add("pixels", DType::F32, shape);
        w.set_metadata("source", src);
        w.set_metadata("preset", a.preset);
        w.set_metadata("stream", a.stream);
        w.set_metadata("bucket",
                       std::to_string(r.bucket.height) + "x" + std::to_string(r.bucket.width));
        w.begin();
        w.write("pixels", r.pixels.data.data(), r.pixels.data.size() * sizeof(float));
        w.finish();
    }
    if (!a.png.empty()) {
        try {
            write_file_atomic(a.png, png_bytes);
        } catch (const Error&) {
            if (!a.out.empty()) std::filesystem::remove(a.out);  // all or nothing
            throw;
        }
    }

    std::printf("%s: %dx%d -> bucket %dx%d (HxW) -> pixels %s", src.c_str(), r.source_width,
                r.source_height, r.bucket.height, r.bucket.width, shape_str(shape).c_str());
    std::printf(" (%s, %s)\n", a.preset.c_str(), a.stream.c_str());
    if (!a.video.empty())
        std::printf("frames: %zu sampled (first %lld, last %lld); decode %.3f s, total %.3f s\n",
                    r.frame_indices.size(),
                    static_cast<long long>(r.frame_indices.empty() ? -1 : r.frame_indices.front()),
                    static_cast<long long>(r.frame_indices.empty() ? -1 : r.frame_indices.back()),
                    r.decode_seconds, total_s);
    if (!a.out.empty()) std::printf("wrote %s\n", a.out.c_str());
    if (!a.png.empty()) std::printf("wrote %s\n", a.png.c_str());
}

}  // namespace

void add_preprocess(CLI::App& app) {
    auto args = std::make_shared<PreprocessArgs>();
    CLI::App* cmd = app.add_subcommand(
        "preprocess", "An image or video through Lance's resize/crop/normalise (pixels [3,T,H,W])");
    auto* image = cmd->add_option("--image", args->image, "PNG, JPEG or WebP input");
    auto* video = cmd->add_option("--video", args->video, "Video input (MP4, WebM, ...)");
    image->excludes(video);
    cmd->add_option("--preset", args->preset,
                    "image_256res, video_192p, image_512res, image_768res, video_360p, video_480p")
        ->capture_default_str();
    cmd->add_option("--stream", args->stream, "vit (crop to 28, CLIP norm) or vae (16, [-1,1])")
        ->capture_default_str();
    cmd->add_option("--out", args->out, "Write `pixels` F32 [3, T, H, W] to this .safetensors");
    cmd->add_option("--png", args->png, "Write the resized (first) frame as a PNG");
    cmd->add_option("--max-pixels", args->max_pixels,
                    "Refuse pictures or frames larger than this many pixels (default 64 MP)")
        ->check(CLI::Range(uint64_t{1}, uint64_t{1} << 40));
    cmd->add_flag("--no-exif-orientation", args->no_exif,
                  "Ignore the EXIF orientation tag, exactly as Lance's Image.open does");
    cmd->callback([args] {
        if (args->image.empty() && args->video.empty()) fail("preprocess: give --image or --video");
        if (args->out.empty() && args->png.empty())
            fail("preprocess: give --out and/or --png (nothing would be written)");
        run_preprocess(*args);
    });
}

}  // namespace lancet::cli
