// Implementation of the server's generation side.
#include "server/gen_service.h"

#include <unistd.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <memory>

#include "core/error.h"
#include "core/log.h"
#include "io/image.h"
#include "io/video.h"
#include "kernels/ops.h"
#include "pipeline/preprocess.h"
#include "server/media_input.h"

namespace lancet::server {

namespace fs = std::filesystem;
using nlohmann::json;

namespace {

int64_t int_field(const json& body, const char* key, int64_t lo, int64_t hi, int64_t def) {
    if (!body.contains(key) || body[key].is_null()) return def;
    const json& v = body[key];
    const bool in_range = v.is_number_integer() &&
                          !(v.is_number_unsigned() && v.get<uint64_t>() > uint64_t(INT64_MAX)) &&
                          v.get<int64_t>() >= lo && v.get<int64_t>() <= hi;
    if (!in_range) fail(key, " must be an integer within [", lo, ", ", hi, "]");
    return v.get<int64_t>();
}

double number_field(const json& body, const char* key, double lo, double hi, double def) {
    if (!body.contains(key) || body[key].is_null()) return def;
    const json& v = body[key];
    if (!v.is_number() || !(v.get<double>() >= lo && v.get<double>() <= hi))
        fail(key, " must be a number within [", lo, ", ", hi, "]");
    return v.get<double>();
}

std::string string_field(const json& body, const char* key, const std::string& def) {
    if (!body.contains(key) || body[key].is_null()) return def;
    if (!body[key].is_string()) fail(key, " must be a string");
    return body[key].get<std::string>();
}

std::string prompt_field(const json& body) {
    const std::string p = string_field(body, "prompt", "");
    if (p.empty()) fail("prompt must be a non-empty string");
    return p;
}

// "WxH" within the pixel limit, multiples of 16 within the PE3D table.
void size_field(const json& body, const LanceConfig& cfg, uint64_t max_pixels, GenItem& it) {
    const std::string size = string_field(body, "size", "");
    it.width = it.height = kGenDefaultSide;
    if (!size.empty()) parse_gen_size(size, &it.width, &it.height, "size");
    check_latent_side("width", it.width, cfg, "size");
    check_latent_side("height", it.height, cfg, "size");
    const uint64_t px = static_cast<uint64_t>(it.width) * static_cast<uint64_t>(it.height);
    if (px > max_pixels)
        fail("size ", it.width, "x", it.height, " has ", px, " pixels; this server allows at most ",
             max_pixels, " (--max-image-pixels)");
}

}  // namespace

GenService::GenService(const LanceCheckpoint& ck, const Qwen2Tokenizer& tok,
                       const LanceWeights& weights, const GenServiceOptions& opt)
    : ck_(ck),
      opt_(opt),
      vision_(std::make_shared<SharedVisionTower>(ck)),
      gen_(ck, tok, opt.vae, vision_) {
    if (!weights.has_gen()) fail("serve: the loaded weights hold no gen expert");
    if (opt.parallel < 1 || opt.parallel > 16) fail("serve: --gen-parallel must be within [1, 16]");
    std::string parent = opt.temp_parent;
    if (parent.empty()) {
        const char* t = std::getenv("TMPDIR");
        parent = t && *t ? t : "/tmp";
    }
    std::string tmpl = (fs::path(parent) / "lancet-serve-XXXXXX").string();
    if (!mkdtemp(tmpl.data())) fail("serve: cannot create a temp folder under ", parent);
    dir_ = tmpl;
    dir_reg_ = std::make_unique<TempRegistration>(dir_);  // removed if the server is interrupted
    // One session per job running at once. With one, it runs on the process pool (as `run`);
    // with several, the cores are split among pools of their own.
    const size_t total = opt.threads ? opt.threads : default_pool().size();
    const size_t per = std::max<size_t>(1, total / static_cast<size_t>(opt.parallel));
    for (int i = 0; i < opt.parallel; ++i) {
        auto s = std::make_unique<Session>();
        if (opt.parallel > 1) s->pool = std::make_unique<ThreadPool>(per);
        s->dec = std::make_unique<DecoderSession>(
            weights, kernels::OpContext::defaults(s->pool ? s->pool.get() : nullptr));
        sessions_.push_back(std::move(s));
    }
}

GenService::~GenService() {
    std::error_code ec;
    fs::remove_all(dir_, ec);
}

GenService::Session& GenService::acquire() {
    std::unique_lock<std::mutex> lock(mu_);
    for (;;) {
        for (auto& s : sessions_)
            if (!s->busy) {
                s->busy = true;
                return *s;
            }
        cv_.wait(lock);
    }
}

void GenService::release(Session& s) {
    {
        std::lock_guard<std::mutex> lock(mu_);
        s.busy = false;
    }
    cv_.notify_one();
}

GenSettings GenService::settings(const json& body) const {
    GenSettings s;
    s.steps = static_cast<int>(int_field(body, "steps", 1, opt_.max_steps, s.steps));
    s.cfg = number_field(body, "cfg", 0, 100, s.cfg);
    s.shift = number_field(body, "shift", 1e-3, 1000, s.shift);
    s.max_pixels = opt_.max_input_pixels;
    // Media tasks: Lance's resize preset (an extension; default as `run`: image_768res for image
    // edits, video_480p otherwise).
    s.preset = string_field(body, "preset", "");
    if (!s.preset.empty()) stream_spec(s.preset, VisionStream::Vae);  // refuses unknown names
    return s;
}

std::shared_ptr<OwnedFile> GenService::keep_upload(const std::string& bytes, const char* ext) {
    uint64_t n;
    {
        std::lock_guard<std::mutex> lock(mu_);
        n = next_file_++;
    }
    const std::string path = (fs::path(dir_) / ("upload-" + std::to_string(n) + ext)).string();
    std::ofstream f(path, std::ios::binary);
    f.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
    f.close();
    if (!f) fail("serve: cannot write the upload into ", dir_);
    return std::make_shared<OwnedFile>(path);
}

JobRunner GenService::image_job(const json& body, const std::string* upload, bool edit) {
    const LanceConfig& cfg = ck_.config();
    GenItem it;
    it.task = edit ? GenTask::ImageEdit : GenTask::T2I;
    it.caption = prompt_field(body);
    const std::string format = string_field(body, "response_format", "b64_json");
    if (format == "url")
        fail(
            "response_format \"url\" is not supported: this server returns the PNG inline; use "
            "\"b64_json\"");
    if (format != "b64_json") fail("response_format must be \"b64_json\"");
    const int n = static_cast<int>(int_field(body, "n", 1, opt_.max_images, 1));
    const uint64_t seed = static_cast<uint64_t>(int_field(body, "seed", 0, INT64_MAX, 42));
    const GenSettings s = settings(body);
    std::shared_ptr<OwnedFile> media;
    if (edit) {
        if (!ck_.has_vit()) fail("image edits need the ViT (Qwen2.5-VL-ViT); this model has none");
        if (!upload || upload->empty()) fail("image: an image file is required");
        ImageReadOptions ro;
        ro.max_pixels = opt_.max_input_pixels;
        // Decoded once here so a bad or oversized image is a 400 before the job is queued.
        decode_image({reinterpret_cast<const uint8_t*>(upload->data()), upload->size()}, "image",
                     ro);
        if (body.contains("size") && !body["size"].is_null())
            log_info("serve: image edit: size ignored; the output takes the input's bucket");
        media = keep_upload(*upload, ".img");
        it.media = media->path();
    } else {
        size_field(body, cfg, opt_.max_pixels, it);
    }
    return [this, it, s, n, seed, media](JobControl& c) {
        JobResult r;
        r.content_type = "image/png";
        Session& ses = acquire();
        try {
            for (int i = 0; i < n; ++i) {
                GenCallbacks cb;
                cb.on_step = [&c, i, n](int k, int steps, double) {
                    c.progress(i * steps + k + 1, n * steps);
                };
                cb.cancelled = [&c] { return c.cancelled(); };
                const uint64_t seed_i = seed + static_cast<uint64_t>(i);
                const GenOutput o = gen_.generate(*ses.dec, it, s, seed_i, cb);
                r.parts.push_back(
                    encode_png(frame_to_rgb8(o.frames.data(), o.T, o.H, o.W, 0),
                               gen_metadata(it, s, seed_i, opt_.model, media ? "upload" : "")));
            }
        } catch (...) {
            release(ses);
            throw;
        }
        release(ses);
        return r;
    };
}

JobRunner GenService::video_job(const json& body) {
    const LanceConfig& cfg = ck_.config();
    if (!video_support_built()) fail("this build has no FFmpeg, so it cannot write MP4");
    GenItem it;
    const std::string task = string_field(body, "task", "t2v");
    if (task != "t2v" && task != "i2v" && task != "video_edit")
        fail("task must be \"t2v\", \"i2v\" or \"video_edit\" (got \"", task, "\")");
    parse_gen_task(task, &it.task);
    it.caption = prompt_field(body);
    const uint64_t seed = static_cast<uint64_t>(int_field(body, "seed", 0, INT64_MAX, 42));
    const GenSettings s = settings(body);
    const int frames = static_cast<int>(int_field(body, "frames", 1, opt_.max_frames,
                                                  std::min(kGenDefaultFrames, opt_.max_frames)));
    std::shared_ptr<OwnedFile> media;
    if (it.task == GenTask::T2V) {
        size_field(body, cfg, opt_.max_pixels, it);
    } else if (it.task == GenTask::I2V) {
        if (!body.contains("image") || !body["image"].is_string())
            fail("image: i2v needs \"image\", the first frame as a data URL or base64");
        const std::string bytes = decode_data_url(body["image"].get<std::string>(), "image");
        ImageReadOptions ro;
        ro.max_pixels = opt_.max_input_pixels;
        decode_image({reinterpret_cast<const uint8_t*>(bytes.data()), bytes.size()}, "image", ro);
        media = keep_upload(bytes, ".img");
    } else {
        if (!ck_.has_vit()) fail("video_edit needs the ViT (Qwen2.5-VL-ViT); this model has none");
        if (!body.contains("video") || !body["video"].is_string())
            fail("video: video_edit needs \"video\", the source clip as a data URL or base64");
        const std::string bytes = decode_data_url(body["video"].get<std::string>(), "video");
        if (bytes.empty()) fail("video: empty");
        media = keep_upload(bytes, ".mp4");
        VideoReadOptions vo;
        vo.max_pixels = opt_.max_input_pixels;
        VideoReader probe(media->path(), vo);  // a clip FFmpeg cannot open is a 400 now
    }
    if (media) it.media = media->path();
    it.lt = gen_latent_frames(it.task, frames, cfg);
    return [this, it, s, seed, media](JobControl& c) {
        JobResult r;
        r.content_type = "video/mp4";
        Session& ses = acquire();
        try {
            GenCallbacks cb;
            cb.on_step = [&c](int k, int steps, double) { c.progress(k + 1, steps); };
            cb.cancelled = [&c] { return c.cancelled(); };
            uint64_t n;
            {
                std::lock_guard<std::mutex> lock(mu_);
                n = next_file_++;
            }
            const std::string path =
                (fs::path(dir_) / ("video-" + std::to_string(n) + ".mp4")).string();
            r.file = std::make_shared<OwnedFile>(path);  // removed with the result, or on failure
            // Frames go to the encoder as the VAE decodes them (never the whole clip in memory).
            std::unique_ptr<Mp4Writer> mp4;
            cb.on_frames = [&](const float* fr, int64_t k, int64_t H, int64_t W) {
                if (!mp4) {
                    VideoWriteOptions vo;
                    vo.metadata = gen_metadata(it, s, seed, opt_.model, media ? "upload" : "");
                    mp4 = std::make_unique<Mp4Writer>(path, H, W, vo);
                }
                mp4->write(fr, k);
            };
            gen_.generate(*ses.dec, it, s, seed, cb);
            if (!mp4) fail("video job: the VAE produced no frames");
            mp4->finish();
            std::error_code ec;
            r.file_bytes = fs::file_size(path, ec);
        } catch (...) {
            release(ses);
            throw;
        }
        release(ses);
        return r;
    };
}

}  // namespace lancet::server
