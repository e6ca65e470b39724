// `lancet run --task t2i|t2v|i2v|image_edit|video_edit`: Lance's generation tasks end to end
// (spec §3.2–3.4, §3.6 defaults, §3.7 resize rules): media in, sequence, flow sampler, VAE decode,
// PNG / MP4 out with the settings as metadata. `--examples` runs Lance's example JSONs.
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <memory>
#include <optional>

#include "cli/commands.h"
#include "cli/generate.h"
#include "core/error.h"
#include "core/log.h"
#include "core/thread_pool.h"
#include "io/image.h"
#include "io/json_file.h"
#include "io/output_dir.h"
#include "io/video.h"
#include "kernels/dispatch.h"
#include "model/decoder.h"
#include "model/lance_checkpoint.h"
#include "model/vit.h"
#include "pipeline/flow_sampler.h"
#include "pipeline/gen_tasks.h"
#include "pipeline/generation.h"
#include "pipeline/preprocess.h"
#include "pipeline/vae_codec.h"
#include "tokenizer/qwen2_tokenizer.h"

namespace lancet::cli {

namespace fs = std::filesystem;

struct GenRunArgs {
    std::string image, video, size, out, examples, vae, vit_dir, preset;
    int frames = 0;  // 0: Lance's NUM_FRAMES default (50)
    int steps = 30;
    double shift = 3.5, cfg = 4.0;
    bool f32_state = false, consistent_positions = false, force = false;
};

namespace {

std::string lower_ext(const std::string& path) {
    std::string e = fs::path(path).extension().string();
    for (char& c : e) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
    return e;
}

void check_output_ext(const GenItem& it) {
    const std::string e = lower_ext(it.out);
    const bool video = gen_task_is_video(it.task);
    if (e != ".png" && e != ".mp4")
        fail(it.out, ": unknown output format '", e, "' (", gen_task_name(it.task), " writes ",
             video ? ".mp4" : ".png", ")");
    if (video && e != ".mp4")
        fail(it.out, ": ", gen_task_name(it.task), " makes a video; name the output .mp4");
    if (!video && e != ".png")
        fail(it.out, ": ", gen_task_name(it.task), " makes an image; name the output .png");
    if (video && !video_support_built())
        fail(it.out, ": this build has no FFmpeg, so it cannot write MP4");
}

GenSettings settings(const GenRunArgs& a) {
    GenSettings s;
    s.steps = a.steps;
    s.shift = a.shift;
    s.cfg = a.cfg;
    s.f32_state = a.f32_state;
    s.consistent_positions = a.consistent_positions;
    s.preset = a.preset;
    return s;
}

// The settings and the checkpoint, loaded once for every item; the generation itself is
// pipeline/generation's Generator on this command's one session.
class GenHost {
  public:
    GenHost(const GenRunArgs& a, const std::string& model, bool need_vit) : a_(a), model_(model) {
        OpenOptions oo;
        oo.vit_dir = a.vit_dir;
        ck_ = LanceCheckpoint::open(model, oo);
        if (need_vit && !ck_->has_vit())
            fail(model, ": editing needs the ViT (Qwen2.5-VL-ViT), and this model has none");
        tok_ = std::make_unique<Qwen2Tokenizer>(Qwen2Tokenizer::load(model));
        gen_ = std::make_unique<Generator>(*ck_, *tok_,
                                           resolve_vae_path(a.vae.empty() ? model : a.vae));
    }
    const LanceConfig& config() const { return ck_->config(); }

    void load() {
        log_info("lancet: ", kernels::runtime_description(default_pool()), "; model ", model_);
        DecoderOptions dopt;
        dopt.bf16_weights = true;  // as Lance, which casts the model to bf16 at load
        weights_ = std::make_unique<LanceWeights>(*ck_, dopt);
        dec_ = std::make_unique<DecoderSession>(*weights_);
    }

    GenOutput generate(const GenItem& it, uint64_t seed, GenCallbacks cb = {}) {
        cb.on_step = [](int k, int n, double secs) {
            if (log_level() < LogLevel::Info) return;
            const int done = k + 1, width = 24, fill = done * width / n;
            const double per = secs / done, eta = per * (n - done);
            // A terminal gets one bar redrawn in place; a log file or pipe gets one line per step.
            static const bool tty = isatty(STDERR_FILENO) != 0;
            std::fprintf(stderr, "%ssampling [%s%s] %d/%d  %.2f s/step  ETA %.0f s%s",
                         tty ? "\r" : "", std::string(fill, '#').c_str(),
                         std::string(width - fill, '.').c_str(), done, n, per, eta,
                         tty ? " " : "\n");
            if (tty && done == n) std::fputc('\n', stderr);
            std::fflush(stderr);
        };
        return gen_->generate(*dec_, it, settings(a_), seed, cb);
    }

    // Runs one item, writing `path` (a temporary name the caller renames, or the final one).
    void run(const GenItem& it, const std::string& path, uint64_t seed) {
        const ImageMetadata meta = gen_metadata(it, settings(a_), seed, model_, it.media);
        // A video goes to the MP4 encoder chunk by chunk as the VAE decodes it (the size is
        // known at the first chunk: i2v and editing take it from the input).
        GenCallbacks cb;
        std::unique_ptr<Mp4Writer> mp4;
        if (gen_task_is_video(it.task))
            cb.on_frames = [&](const float* fr, int64_t n, int64_t H, int64_t W) {
                if (!mp4) {
                    VideoWriteOptions vo;
                    vo.metadata = meta;
                    mp4 = std::make_unique<Mp4Writer>(path, H, W, vo);
                }
                mp4->write(fr, n);
            };
        const GenOutput o = generate(it, seed, cb);
        if (mp4)
            mp4->finish();
        else
            write_png(path, frame_to_rgb8(o.frames.data(), o.T, o.H, o.W, 0), meta);
        char buf[200];
        std::snprintf(buf, sizeof buf,
                      "prefill %.2f s, %.2f s/step (%d steps, %d with CFG), VAE decode %.2f s",
                      o.prefill_s, o.step_s / a_.steps, a_.steps, o.cfg_steps, o.vae_s);
        log_info(gen_task_name(it.task), ": ", buf, " -> ", it.out);
    }

  private:
    const GenRunArgs& a_;
    std::string model_;
    std::unique_ptr<LanceCheckpoint> ck_;
    std::unique_ptr<Qwen2Tokenizer> tok_;
    std::unique_ptr<Generator> gen_;
    std::unique_ptr<LanceWeights> weights_;
    std::unique_ptr<DecoderSession> dec_;
};

void check_settings(const GenRunArgs& a) { check_gen_settings(settings(a), "run", "--"); }

// The item's target size (t2i / t2v) and frame count; media existence.
void plan_item(const GenRunArgs& a, const LanceConfig& cfg, GenItem& it) {
    check_output_ext(it);
    const char* name = gen_task_name(it.task);
    if (it.caption.empty()) fail(name, ": the prompt is empty");
    const bool needs_media = it.task == GenTask::I2V || gen_task_is_edit(it.task);
    if (needs_media) {
        if (it.media.empty())
            fail(name, ": needs its input: ",
                 it.task == GenTask::VideoEdit ? "--video FILE" : "--image FILE");
        std::error_code ec;
        if (!fs::is_regular_file(it.media, ec)) fail(it.media, ": no such input file");
        if (fs::exists(it.out, ec) && fs::equivalent(it.out, it.media, ec))
            fail(it.out, ": the output would overwrite the input ", it.media);
        if (!a.size.empty())
            log_info(name, ": --size ignored; the size comes from the input's bucket");
    }
    if (it.task == GenTask::T2I || it.task == GenTask::T2V) {
        it.width = it.height = kGenDefaultSide;
        if (!a.size.empty()) parse_gen_size(a.size, &it.width, &it.height, "--size");
        check_latent_side("width", it.width, cfg, "--size");
        check_latent_side("height", it.height, cfg, "--size");
    }
    if (it.task == GenTask::T2I && a.frames > 1) log_info("t2i: --frames ignored (one image)");
    it.lt = gen_latent_frames(it.task, a.frames, cfg);
}

std::vector<GenItem> read_examples(const GenRunArgs& a, GenTask task) {
    const char* ext = gen_task_is_video(task) ? ".mp4" : ".png";
    std::vector<GenItem> items;
    for (const GenExample& e : read_gen_examples(a.examples)) {
        GenItem it;
        it.task = task;
        const std::string stem = fs::path(e.key).stem().string();
        if (stem.empty() || stem.find('/') != std::string::npos || stem[0] == '.')
            fail(a.examples, ": item name '", e.key, "' is not a plain file name");
        it.out = stem + ext;
        it.caption = e.caption;
        it.media = e.media;
        if (!e.media_ref.empty() && e.media.empty()) {
            log_info("examples: item ", e.key, ": ", e.media_ref, " not found; skipped");
            continue;
        }
        if (it.caption.empty()) continue;
        items.push_back(it);
    }
    if (items.empty()) fail(a.examples, ": no item can run (their media files are missing)");
    return items;
}

}  // namespace

MediaArgs media_args(const GenRunArgs& g) { return {g.image, g.video, g.examples, g.preset}; }

std::shared_ptr<GenRunArgs> add_generation_options(CLI::App* cmd) {
    auto g = std::make_shared<GenRunArgs>();
    cmd->add_option("--image", g->image, "x2t_image / i2v / image_edit: the input image");
    cmd->add_option("--video", g->video, "x2t_video / video_edit: the input video");
    cmd->add_option("--size", g->size,
                    "t2i / t2v: WIDTHxHEIGHT, multiples of 16 (default 768x768)");
    cmd->add_option("--frames", g->frames, "t2v / i2v: frames (Lance's NUM_FRAMES, default 50)");
    cmd->add_option("--steps", g->steps, "Euler steps")->capture_default_str();
    cmd->add_option("--shift", g->shift, "Time shift")->capture_default_str();
    cmd->add_option("--cfg", g->cfg, "Text CFG scale (1 = off)")->capture_default_str();
    cmd->add_option("-o,--output", g->out,
                    "Output .png (t2i, image_edit) or .mp4 (t2v, i2v, video_edit); with "
                    "--examples a folder");
    cmd->add_option("--examples", g->examples, "Run every item of one of Lance's example JSONs");
    cmd->add_option("--vae", g->vae, "Wan2.2 VAE (default: the model folder's Wan2.2_VAE.pth)");
    cmd->add_option("--vit", g->vit_dir, "Qwen2.5-VL-ViT folder (default: inside or beside)");
    cmd->add_option(
        "--preset", g->preset,
        "Media resize preset (default video_480p; image_768res for image_edit and x2t_image)");
    cmd->add_flag("--f32-state", g->f32_state, "Latent state in f32 (default bf16 as Lance)");
    cmd->add_flag("--consistent-positions", g->consistent_positions,
                  "Unconditional cache with its own position ids (default: Lance's KV quirk)");
    cmd->add_flag("-f,--force", g->force, "Replace an existing --examples output folder");
    return g;
}

bool is_generation_task(const std::string& task) { return parse_gen_task(task, nullptr); }

void run_generation(const GenRunArgs& a, const std::string& task_name, const std::string& model,
                    const std::string& prompt, uint64_t seed) {
    GenTask task;
    if (!parse_gen_task(task_name, &task)) fail("run: unknown task '", task_name, "'");
    check_settings(a);
    if (a.out.empty()) fail("run: -o/--output is required for ", task_name);
    if (!a.preset.empty()) stream_spec(a.preset, VisionStream::Vae);  // refuses unknown names
    if (task == GenTask::VideoEdit && !a.image.empty() && a.video.empty())
        fail("video_edit: takes --video (an image goes to image_edit)");
    if ((task == GenTask::I2V || task == GenTask::ImageEdit) && !a.video.empty() && a.image.empty())
        fail(task_name, ": takes --image");
    GenHost gen(a, model, gen_task_is_edit(task));
    const LanceConfig& cfg = gen.config();

    if (!a.examples.empty()) {
        if (!prompt.empty()) fail("run: give either -p or --examples, not both");
        std::vector<GenItem> items = read_examples(a, task);
        for (GenItem& it : items) plan_item(a, cfg, it);
        OutputDir dir(a.out, a.force);
        gen.load();
        for (size_t i = 0; i < items.size(); ++i) {
            log_info("examples: item ", i + 1, "/", items.size(), " -> ", items[i].out);
            gen.run(items[i], dir.file(items[i].out), seed);
        }
        dir.commit();
        log_info("examples: ", items.size(), " file(s) in ", a.out);
        return;
    }
    GenItem it;
    it.task = task;
    it.caption = prompt;
    it.media = task == GenTask::VideoEdit ? a.video : a.image;
    it.out = a.out;
    plan_item(a, cfg, it);
    check_not_source(it.out);
    gen.load();
    gen.run(it, it.out, seed);  // write_png / write_mp4 write a temporary file and rename
}

// ---- lancet compare ------------------------------------------------------------------------

namespace {

struct CompareArgs {
    std::vector<std::string> models;
    std::string task = "t2i", prompt, out;
    uint64_t seed = 42;
    std::shared_ptr<GenRunArgs> g;
};

// PSNR (dB) of two videos [3, T, H, W] in [-1, 1] as the 8-bit pixels they are saved as; the
// squared error sum and count are returned for pooling.
double psnr8(const std::vector<float>& a, const std::vector<float>& b, double* sse, double* cnt) {
    auto px = [](float x) { return std::clamp(std::round(255.0 * (x + 1.0) / 2.0), 0.0, 255.0); };
    double e = 0;
    for (size_t i = 0; i < a.size(); ++i) {
        const double d = px(a[i]) - px(b[i]);
        e += d * d;
    }
    *sse += e;
    *cnt += static_cast<double>(a.size());
    const double mse = e / static_cast<double>(a.size());
    return mse > 0 ? 10.0 * std::log10(255.0 * 255.0 / mse) : INFINITY;
}

void run_compare(const CompareArgs& c) {
    const GenRunArgs& a = *c.g;
    GenTask task;
    if (!parse_gen_task(c.task, &task)) fail("compare: unknown task '", c.task, "'");
    if (c.models.size() < 2) fail("compare: give at least two --model folders");
    if (lower_ext(c.out) != ".png") fail(c.out, ": the contact sheet is a .png");
    check_settings(a);
    if (a.examples.empty() == c.prompt.empty()) fail("compare: give either -p or --examples");
    std::vector<GenItem> items;
    {
        GenHost probe(a, c.models[0], gen_task_is_edit(task));
        if (!a.examples.empty()) {
            items = read_examples(a, task);
        } else {
            GenItem it;
            it.task = task;
            it.caption = c.prompt;
            it.media = task == GenTask::VideoEdit ? a.video : a.image;
            it.out = gen_task_is_video(task) ? "item.mp4" : "item.png";
            items.push_back(it);
        }
        for (GenItem& it : items) plan_item(a, probe.config(), it);
    }
    check_not_source(c.out);
    struct Result {
        std::vector<float> latent, frames;
        int64_t T = 0, H = 0, W = 0;
    };
    std::vector<std::vector<Result>> res(c.models.size());
    for (size_t m = 0; m < c.models.size(); ++m) {
        GenHost gen(a, c.models[m], gen_task_is_edit(task));  // one model resident at a time
        gen.load();
        for (const GenItem& it : items) {
            log_info("compare: ", c.models[m], ": ", it.out);
            GenOutput o = gen.generate(it, c.seed);  // the same noise for every model
            res[m].push_back({std::move(o.latent), std::move(o.frames), o.T, o.H, o.W});
        }
    }
    std::printf("%-12s %-40s %12s %10s\n", "item", "model", "rel_L2", "PSNR_dB");
    for (size_t m = 1; m < c.models.size(); ++m) {
        double sse = 0, cnt = 0, rel_sum = 0;
        for (size_t i = 0; i < items.size(); ++i) {
            const Result &r0 = res[0][i], &r = res[m][i];
            double num = 0, den = 0;
            for (size_t k = 0; k < r0.latent.size(); ++k) {
                const double d = static_cast<double>(r.latent[k]) - r0.latent[k];
                num += d * d;
                den += static_cast<double>(r0.latent[k]) * r0.latent[k];
            }
            const double rel = std::sqrt(num / std::max(den, 1e-300));
            rel_sum += rel;
            const double p = psnr8(r.frames, r0.frames, &sse, &cnt);
            std::printf("%-12s %-40s %12.5f %10.2f\n", fs::path(items[i].out).stem().c_str(),
                        c.models[m].c_str(), rel, p);
        }
        const double mse = sse / std::max(cnt, 1.0);
        std::printf("%-12s %-40s %12.5f %10.2f\n", "overall", c.models[m].c_str(),
                    rel_sum / items.size(),
                    mse > 0 ? 10.0 * std::log10(255.0 * 255.0 / mse) : INFINITY);
    }
    // Contact sheet: one row per item, one column per model (frame 0), tiles top-left aligned.
    int tw = 0, th = 0;
    for (const Result& r : res[0]) tw = std::max<int>(tw, r.W), th = std::max<int>(th, r.H);
    ImageRGB8 sheet;
    sheet.width = tw * static_cast<int>(c.models.size());
    sheet.height = th * static_cast<int>(items.size());
    sheet.rgb.assign(static_cast<size_t>(sheet.width) * sheet.height * 3, 0);
    for (size_t m = 0; m < c.models.size(); ++m)
        for (size_t i = 0; i < items.size(); ++i) {
            const Result& r = res[m][i];
            const ImageRGB8 f = frame_to_rgb8(r.frames.data(), r.T, r.H, r.W, 0);
            for (int y = 0; y < f.height; ++y)
                std::copy_n(f.row(y), f.width * 3,
                            sheet.row(static_cast<int>(i) * th + y) + m * tw * 3);
        }
    ImageMetadata meta = {{"Software", kLancetVersion}, {"task", c.task}};
    for (size_t m = 0; m < c.models.size(); ++m)
        meta.push_back({"model " + std::to_string(m), c.models[m]});
    write_png(c.out, sheet, meta);
    log_info("compare: contact sheet ", sheet.width, "x", sheet.height,
             " (rows: items, columns: ", "models) -> ", c.out);
}

}  // namespace

void add_compare(CLI::App& app) {
    auto* cmd = app.add_subcommand(
        "compare", "Generate with several models from the same noise: latent rel. L2, PSNR, sheet");
    auto c = std::make_shared<CompareArgs>();
    c->g = std::make_shared<GenRunArgs>();
    GenRunArgs& g = *c->g;
    cmd->add_option("--model", c->models, "Model folders; the first is the reference")->required();
    cmd->add_option("--task", c->task, "t2i, t2v, i2v, image_edit or video_edit")
        ->capture_default_str();
    cmd->add_option("-p,--prompt", c->prompt, "One prompt (instead of --examples)");
    cmd->add_option("--examples", g.examples, "One of Lance's example JSONs");
    cmd->add_option("-o,--output", c->out, "Contact sheet .png")->required();
    cmd->add_option("--image", g.image, "i2v / image_edit input (with -p)");
    cmd->add_option("--video", g.video, "video_edit input (with -p)");
    cmd->add_option("--size", g.size, "t2i / t2v WIDTHxHEIGHT (default 768x768)");
    cmd->add_option("--frames", g.frames, "t2v / i2v frames");
    cmd->add_option("--steps", g.steps, "Euler steps")->capture_default_str();
    cmd->add_option("--shift", g.shift, "Time shift")->capture_default_str();
    cmd->add_option("--cfg", g.cfg, "Text CFG scale")->capture_default_str();
    cmd->add_option("-s,--seed", c->seed, "Noise seed (the same for every model)")
        ->capture_default_str();
    cmd->add_option("--preset", g.preset, "Media resize preset");
    cmd->add_option("--vae", g.vae, "Wan2.2 VAE for every model (default: each model folder's)");
    cmd->add_option("--vit", g.vit_dir, "Qwen2.5-VL-ViT folder for editing");
    cmd->callback([c] { run_compare(*c); });
}

void demo_generate(const std::string& model, const std::string& vae, const std::string& out_png,
                   const std::string& out_mp4) {
    GenRunArgs g;
    g.vae = vae;
    g.size = "64x64";
    g.steps = 10;
    g.out = out_png;
    run_generation(g, "t2i", model, "A red fox sitting in fresh snow, soft morning light.", 42);
    if (!video_support_built()) return;
    g.size = "32x32";
    g.frames = 5;
    g.out = out_mp4;
    run_generation(g, "t2v", model, "Waves rolling onto a sandy beach at sunset.", 42);
}

}  // namespace lancet::cli
