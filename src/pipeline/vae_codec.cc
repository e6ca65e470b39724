// File-to-file VAE encode / decode with one-line errors and progress on stderr.
#include "pipeline/vae_codec.h"

#include <unistd.h>

#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <memory>

#include "core/error.h"
#include "core/log.h"
#include "core/rng.h"
#include "io/image.h"
#include "io/output_dir.h"
#include "io/safetensors.h"
#include "io/video.h"
#include "model/wan_vae.h"
#include "pipeline/preprocess.h"

namespace lancet {

namespace fs = std::filesystem;

std::string resolve_vae_path(const std::string& p) {
    std::error_code ec;
    if (fs::is_directory(p, ec)) {
        const fs::path f = fs::path(p) / "Wan2.2_VAE.pth";
        if (!fs::exists(f, ec)) fail(p, ": no Wan2.2_VAE.pth in this folder");
        return f.string();
    }
    if (!fs::exists(p, ec)) fail(p, ": no such VAE file or model folder");
    return p;
}

namespace {

// The one F32 tensor `name` of rank 4 from a safetensors input, finite.
std::vector<float> read_input(const std::string& path, const std::string& name, Shape& shape) {
    std::error_code ec;
    if (!fs::exists(path, ec)) fail(path, ": no such input file");
    SafetensorsFile f(path);
    const TensorEntry* e = f.find(name);
    if (!e) fail(path, ": no tensor '", name, "'");
    if (e->dtype != DType::F32)
        fail(path, ": '", name, "' is ", dtype_name(e->dtype), ", expected F32");
    if (e->shape.size() != 4)
        fail(path, ": '", name, "' has shape ", shape_str(e->shape), ", expected rank 4");
    shape = e->shape;
    std::vector<float> v(static_cast<size_t>(shape_numel(shape)));
    std::memcpy(v.data(), f.view(*e).data, v.size() * 4);
    for (size_t i = 0; i < v.size(); ++i)
        if (!std::isfinite(v[i])) fail(path, ": '", name, "' holds a non-finite value at ", i);
    return v;
}

enum class Media { Safetensors, Image, Video, Png, Mp4, Unknown };

std::string lower_extension(const std::string& path) {
    std::string e = fs::path(path).extension().string();
    for (char& c : e) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
    return e;
}

Media input_media(const std::string& path) {
    const std::string e = lower_extension(path);
    if (e == ".safetensors") return Media::Safetensors;
    if (e == ".png" || e == ".jpg" || e == ".jpeg" || e == ".webp") return Media::Image;
    if (e == ".mp4" || e == ".mkv" || e == ".mov" || e == ".webm" || e == ".avi")
        return Media::Video;
    fail(path, ": unknown input type '", e,
         "' (expected .safetensors, an image .png/.jpg/.jpeg/.webp or a video "
         ".mp4/.mkv/.mov/.webm/.avi)");
}

Media output_media(const std::string& path, bool video) {
    const std::string e = lower_extension(path);
    if (e == ".safetensors") return Media::Safetensors;
    if (video && e == ".png") return Media::Png;
    if (video && e == ".mp4") return Media::Mp4;
    fail(path, ": unknown output type '", e, "' (expected ",
         video ? ".safetensors, .png or .mp4" : ".safetensors", ")");
}

// Frames of an image or video file as [3, T, H, W] in [-1, 1] (see vae_encode_file). Shape:
// {3, T, H, W}.
std::vector<float> read_media(const std::string& path, Media m, const std::string& preset,
                              Shape& shape) {
    std::error_code ec;
    if (!fs::exists(path, ec)) fail(path, ": no such input file");
    if (!preset.empty()) {
        const PreprocessResult r =
            m == Media::Image ? preprocess_image(read_image(path), preset, VisionStream::Vae)
                              : preprocess_video(path, preset, VisionStream::Vae);
        shape = {3, r.pixels.T, r.pixels.H, r.pixels.W};
        log_info("vae encode: ", path, " (", r.source_width, "x", r.source_height, ") through ",
                 preset, "'s VAE preprocessing: ", r.pixels.T, " frame(s) of ", r.pixels.W, "x",
                 r.pixels.H);
        return r.pixels.data;
    }
    // The pixels as they are, normalised as the VAE stream does ((x/255 − 0.5) / 0.5).
    StreamSpec spec;
    spec.divisible = 16;
    std::fill(spec.mean, spec.mean + 3, 0.5f);
    std::fill(spec.std, spec.std + 3, 0.5f);
    PixelTensor px;
    if (m == Media::Image) {
        const ImageRGB8 img = read_image(path);
        px.T = 1, px.H = img.height, px.W = img.width;
        px.data.resize(static_cast<size_t>(3 * px.H * px.W));
        normalize_frame(img, spec, &px, 0);
    } else {
        VideoReader vr(path);
        const VideoInfo& info = vr.info();
        const FrameSampling fsamp = lance_sample_frames(info.frame_count, info.avg_fps);
        px.T = static_cast<int64_t>(fsamp.indices.size());
        px.H = info.height, px.W = info.width;
        px.data.resize(static_cast<size_t>(3 * px.T * px.H * px.W));
        vr.read_frames(fsamp.indices, [&](size_t k, const ImageRGB8& fr) {
            normalize_frame(fr, spec, &px, static_cast<int64_t>(k));
        });
        log_info("vae encode: ", path, ": ", px.T, " of ", info.frame_count,
                 " frames sampled at 12 fps (spec §3.5)");
    }
    shape = {3, px.T, px.H, px.W};
    return std::move(px.data);
}

// Refuses an output that cannot be written before any work is done.
void check_output(const std::string& out, const std::string& in) {
    if (out.empty()) fail("no output file given");
    std::error_code ec;
    if (fs::exists(out, ec) && fs::exists(in, ec) && fs::equivalent(out, in, ec))
        fail(out, ": output would overwrite the input");
    if (fs::is_directory(out, ec)) fail(out, ": output is a folder");
    const fs::path dir =
        fs::path(out).parent_path().empty() ? fs::path(".") : fs::path(out).parent_path();
    if (!fs::is_directory(dir, ec)) fail(out, ": folder ", dir.string(), " does not exist");
    if (::access(dir.c_str(), W_OK) != 0) fail(out, ": folder ", dir.string(), " is not writable");
    check_not_source(out);
}

void write_output(const std::string& out, const std::string& name, const Shape& shape,
                  const std::vector<float>& v) {
    SafetensorsWriter w(out);
    w.add(name, DType::F32, shape);
    w.set_metadata("format", "pt");
    w.begin();
    w.write(name, v.data(), v.size() * 4);
    w.finish();
}

// "encode: 5/9 frames, 2.1 s, ETA 1.7 s" on stderr.
wan_vae::Progress progress_printer(const char* what) {
    const auto t0 = std::chrono::steady_clock::now();
    return [t0, what](int64_t done, int64_t total) {
        const double s =
            std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
        const double eta = done > 0 ? s * static_cast<double>(total - done) / done : 0;
        log_info(what, ": ", done, "/", total, " frames, ", static_cast<int>(s * 10) / 10.0,
                 " s, ETA ", static_cast<int>(eta * 10) / 10.0, " s");
    };
}

// Whether the convolutions of a VAE run with `ops` take bf16 activations: Bf16, or Auto on the
// AMX tiles (a convolution's pixel rows are always a GEMM, never a GEMV).
bool vae_runs_bf16(const kernels::OpContext& ops) {
    return kernels::resolve_bf16_act(ops.bf16_act, ops.isa, SIZE_MAX) == kernels::Bf16Act::Bf16;
}

// The process's op context for a VAE run; with bf16 activations for BF16 weights (the top-level
// --bf16-activations / $LANCET_BF16_ACT, or the default auto on AMX), `f` also rounds its F32
// weights to bf16 as they load, as Lance's bf16 autocast does, so every convolution runs bf16 x
// bf16 with f32 sums.
wan_vae::Context vae_context(WanVaeFile& f) {
    wan_vae::Context ctx;
    ctx.ops = kernels::OpContext::defaults();
    f.set_bf16_weights(vae_runs_bf16(ctx.ops));
    return ctx;
}

// The encoder's latent [z_dim, t, h, w] of video [3, T, H, W]: its mean, or with opt.sample a
// draw from the posterior (mean + exp(logvar / 2) · N(0, 1), seeded by opt.seed). `f` is
// released once the encoder holds its own repacked weights.
std::vector<float> encode_latent(std::unique_ptr<WanVaeFile> f, const float* video, int64_t T,
                                 int64_t H, int64_t W, const VaeEncodeOptions& opt,
                                 wan_vae::Progress progress) {
    const wan_vae::Context ctx = vae_context(*f);
    wan_vae::Encoder enc(*f);
    f.reset();  // unmap the file
    std::vector<float> logvar;
    std::vector<float> z =
        wan_vae::encode(ctx, enc, video, T, H, W, opt.sample ? &logvar : nullptr, progress);
    if (opt.sample) {
        Rng rng(opt.seed);
        for (size_t i = 0; i < z.size(); ++i)
            z[i] += static_cast<float>(std::exp(0.5 * logvar[i]) * rng.normal());
    }
    return z;
}

// The line a file-to-file encode or decode starts with: the VAE, its widths and weight type, and
// the input ("video [...]" or "latent [...]").
void log_codec_start(const char* what, const std::string& path, const WanVaeFile& f,
                     const char* input, const Shape& s) {
    const WanVaeConfig& cfg = f.config();
    log_info(what, ": ", path, " (base widths ", cfg.dim, "/", cfg.dec_dim, ", ",
             dtype_name(f.dtype()), "), ", input, " ", shape_str(s),
             vae_runs_bf16(kernels::OpContext::defaults()) ? ", bf16 weights and activations" : "");
}

}  // namespace

void vae_encode_file(const std::string& vae, const std::string& in, const std::string& out,
                     const VaeEncodeOptions& opt) {
    const Media in_kind = input_media(in);
    output_media(out, false);
    if (!opt.preset.empty()) {
        if (in_kind == Media::Safetensors)
            fail(in, ": --preset applies to image and video input, not to a 'video' tensor");
        (void)stream_spec(opt.preset, VisionStream::Vae);  // an unknown preset fails here
    }
    if (in_kind == Media::Video && !video_support_built())
        fail(in, ": this build has no video support (FFmpeg)");
    check_output(out, in);
    Shape s;
    std::vector<float> video = in_kind == Media::Safetensors
                                   ? read_input(in, "video", s)
                                   : read_media(in, in_kind, opt.preset, s);
    const std::string path = resolve_vae_path(vae);
    auto f = std::make_unique<WanVaeFile>(path);
    const WanVaeConfig cfg = f->config();
    const int64_t sf = cfg.space_factor(), tf = cfg.time_factor();
    if (s[0] != 3) fail(in, ": 'video' has ", s[0], " channels, expected 3 (RGB) in [3, T, H, W]");
    if (opt.crop && s[1] >= 1 && s[2] >= sf && s[3] >= sf) {
        const int64_t T2 = s[1] - (s[1] - 1) % tf, H2 = s[2] - s[2] % sf, W2 = s[3] - s[3] % sf;
        // Python's round() on a half: to even.
        auto centre = [](int64_t d) {
            return d % 2 == 0 ? d / 2 : ((d / 2) % 2 == 0 ? d / 2 : d / 2 + 1);
        };
        const int64_t top = centre(s[2] - H2), left = centre(s[3] - W2);
        if (T2 != s[1] || H2 != s[2] || W2 != s[3]) {
            std::vector<float> c(static_cast<size_t>(3 * T2 * H2 * W2));
            for (int64_t ch = 0; ch < 3; ++ch)
                for (int64_t t = 0; t < T2; ++t)
                    for (int64_t y = 0; y < H2; ++y)
                        std::memcpy(c.data() + ((ch * T2 + t) * H2 + y) * W2,
                                    video.data() + ((ch * s[1] + t) * s[2] + top + y) * s[3] + left,
                                    static_cast<size_t>(W2) * sizeof(float));
            log_info("vae encode: cropped ", s[1], "x", s[2], "x", s[3], " to ", T2, "x", H2, "x",
                     W2, " (frames x height x width; offset ", top, ", ", left, ")");
            video = std::move(c);
            s = {3, T2, H2, W2};
        }
    }
    if (s[2] % sf != 0 || s[3] % sf != 0 || s[2] == 0 || s[3] == 0)
        fail(in, ": frames of ", s[2], "x", s[3], " are not multiples of ", sf,
             " (Lance centre-crops to a multiple of 16 before the VAE, spec §3.7; --crop does "
             "that)");
    if (s[1] < 1 || (s[1] - 1) % tf != 0)
        fail(in, ": ", s[1], " frames is not of the form ", tf,
             "k+1; Lance's encoder would "
             "silently drop the last ",
             s[1] < 1 ? 0 : (s[1] - 1) % tf, " frame(s) (use the first ",
             s[1] < 1 ? 1 : s[1] - (s[1] - 1) % tf, "; --crop does that)");
    log_codec_start("vae encode", path, *f, "video", s);
    const std::vector<float> z = encode_latent(std::move(f), video.data(), s[1], s[2], s[3], opt,
                                               progress_printer("vae encode"));
    const Shape zs = {cfg.z_dim, 1 + (s[1] - 1) / tf, s[2] / sf, s[3] / sf};
    write_output(out, "latent", zs, z);
    log_info("vae encode: latent ", shape_str(zs), " -> ", out);
}

void vae_decode_file(const std::string& vae, const std::string& in, const std::string& out,
                     const VaeDecodeOptions& opt) {
    const Media out_kind = output_media(out, true);
    if (out_kind == Media::Mp4 && !video_support_built())
        fail(out, ": this build has no video support (FFmpeg)");
    check_output(out, in);
    if (opt.tile < 0 || opt.overlap < 0 || (opt.tile > 0 && opt.overlap >= opt.tile))
        fail("vae decode: --tile must be >= 1 with 0 <= --tile-overlap < --tile (got ", opt.tile,
             ", ", opt.overlap, ")");
    Shape s;
    const std::vector<float> z = read_input(in, "latent", s);
    const std::string path = resolve_vae_path(vae);
    auto f = std::make_unique<WanVaeFile>(path);
    const WanVaeConfig cfg = f->config();
    if (s[0] != cfg.z_dim)
        fail(in, ": 'latent' has ", s[0], " channels, the VAE expects ", cfg.z_dim,
             " ([z, t, h, w])");
    if (s[1] < 1 || s[2] < 1 || s[3] < 1) fail(in, ": 'latent' ", shape_str(s), " is empty");
    const int64_t T = 1 + cfg.time_factor() * (s[1] - 1), H = s[2] * cfg.space_factor(),
                  W = s[3] * cfg.space_factor();
    if (out_kind == Media::Png && T != 1)
        fail(out, ": a PNG holds one frame, the latent ", shape_str(s), " decodes to ", T,
             " (write .mp4 or .safetensors)");
    log_codec_start("vae decode", path, *f, "latent", s);
    const wan_vae::Context ctx = vae_context(*f);
    wan_vae::Decoder dec(*f);
    f.reset();  // the decoder holds its own repacked weights: unmap the file
    // Frames go out as the decoder hands them over, so memory does not grow with the clip: an
    // MP4 is encoded chunk by chunk, a 'video' tensor [3, T, H, W] is gathered channels-first in
    // a scratch file and copied into the safetensors file at the end; a PNG is one frame.
    std::unique_ptr<Mp4Writer> mp4;
    std::unique_ptr<VideoTensorSpill> spill;
    std::vector<float> image;
    if (out_kind == Media::Mp4) {
        VideoWriteOptions vo;
        vo.fps = 12.0;
        mp4 = std::make_unique<Mp4Writer>(out, H, W, vo);
    } else if (out_kind == Media::Png) {
        image.resize(static_cast<size_t>(3 * H * W));
    } else {
        spill = std::make_unique<VideoTensorSpill>(T, H, W);
    }
    const wan_vae::FrameSink sink = [&](const float* fr, int64_t n, int64_t, int64_t) {
        if (mp4)
            mp4->write(fr, n);
        else if (spill)
            spill->add(fr, n);
        else
            std::memcpy(image.data(), fr, image.size() * sizeof(float));  // T = 1
    };
    if (opt.tile > 0)
        wan_vae::decode_tiled(
            ctx, dec, z.data(), s[1], s[2], s[3], opt.tile, opt.overlap, sink,
            [t0 = std::chrono::steady_clock::now()](int64_t d, int64_t n) {
                const double sec =
                    std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
                log_info("vae decode: tile ", d, "/", n, ", ", static_cast<int>(sec * 10) / 10.0,
                         " s, ETA ", static_cast<int>(sec * (n - d) / d * 10) / 10.0, " s");
            });
    else
        wan_vae::decode(ctx, dec, z.data(), s[1], s[2], s[3], sink, progress_printer("vae decode"));
    if (mp4) {
        mp4->finish();
    } else if (spill) {
        SafetensorsWriter sw(out);
        sw.add("video", DType::F32, {3, T, H, W});
        sw.set_metadata("format", "pt");
        sw.begin();
        spill->append_to(sw);
        sw.finish();
    } else {
        write_png(out, frame_to_rgb8(image.data(), 1, H, W, 0));
    }
    if (opt.tile > 0)
        log_info("vae decode: video [3, ", T, ", ", H, ", ", W, "] in tiles of ", opt.tile,
                 " (overlap ", opt.overlap, ") -> ", out);
    else
        log_info("vae decode: video [3, ", T, ", ", H, ", ", W, "] -> ", out);
}

std::vector<float> vae_encode_video(const std::string& vae_path, const float* video, int64_t T,
                                    int64_t H, int64_t W, const VaeEncodeOptions& opt) {
    auto f = std::make_unique<WanVaeFile>(vae_path);
    const WanVaeConfig cfg = f->config();
    const int64_t sf = cfg.space_factor(), tf = cfg.time_factor();
    if (T < 1 || (T - 1) % tf || H < sf || W < sf || H % sf || W % sf)
        fail("vae encode: video ", T, "x", H, "x", W, " is not ", tf, "k+1 frames of multiples of ",
             sf);
    return encode_latent(std::move(f), video, T, H, W, opt, nullptr);
}

namespace {

// `f`'s decoder on latent [z, t, h, w], chunks to `sink`; `f` is released once the decoder holds
// its own repacked weights.
void decode_latent(std::unique_ptr<WanVaeFile> f, const float* latent, int64_t t, int64_t h,
                   int64_t w, const VideoChunkSink& sink, bool progress) {
    const wan_vae::Context ctx = vae_context(*f);
    wan_vae::Decoder dec(*f);
    f.reset();  // unmap the file
    wan_vae::decode(ctx, dec, latent, t, h, w, sink,
                    progress ? progress_printer("vae decode") : wan_vae::Progress());
}

}  // namespace

void vae_decode_latent(const std::string& vae_path, const float* latent, int64_t t, int64_t h,
                       int64_t w, const VideoChunkSink& sink, bool progress) {
    decode_latent(std::make_unique<WanVaeFile>(vae_path), latent, t, h, w, sink, progress);
}

std::vector<float> vae_decode_latent(const std::string& vae_path, const float* latent, int64_t t,
                                     int64_t h, int64_t w, bool progress) {
    auto f = std::make_unique<WanVaeFile>(vae_path);
    const WanVaeConfig cfg = f->config();
    const int64_t T = 1 + cfg.time_factor() * (t - 1), H = h * cfg.space_factor(),
                  W = w * cfg.space_factor();
    std::vector<float> video(static_cast<size_t>(3 * T * H * W));
    int64_t t0 = 0;
    decode_latent(
        std::move(f), latent, t, h, w,
        [&](const float* fr, int64_t n, int64_t, int64_t) {
            for (int64_t c = 0; c < 3; ++c)
                std::memcpy(video.data() + (c * T + t0) * H * W, fr + c * n * H * W,
                            static_cast<size_t>(n * H * W) * sizeof(float));
            t0 += n;
        },
        progress);
    return video;
}

VideoTensorSpill::VideoTensorSpill(int64_t T, int64_t H, int64_t W)
    : T_(T), H_(H), W_(W), file_(static_cast<uint64_t>(3 * T * H * W) * 4, "decoded video") {}

void VideoTensorSpill::add(const float* frames, int64_t n) {
    if (t0_ + n > T_) fail("decoded video: ", t0_ + n, " frames for a tensor of ", T_);
    const int64_t plane = H_ * W_;
    for (int64_t c = 0; c < 3; ++c)
        file_.write(frames + c * n * plane, static_cast<size_t>(n * plane) * 4,
                    static_cast<uint64_t>((c * T_ + t0_) * plane) * 4);
    t0_ += n;
}

void VideoTensorSpill::append_to(SafetensorsWriter& w) const {
    if (t0_ != T_) fail("decoded video: ", t0_, " of ", T_, " frames decoded");
    const size_t plane = static_cast<size_t>(H_ * W_);
    std::vector<float> buf(plane);
    for (int64_t k = 0; k < 3 * T_; ++k) {
        file_.read(buf.data(), plane * 4, static_cast<uint64_t>(k) * plane * 4);
        w.append(buf.data(), plane * 4);
    }
}

}  // namespace lancet
