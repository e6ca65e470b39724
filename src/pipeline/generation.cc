// One generation request end to end: media, sequence, sampler, VAE decode.
#include "pipeline/generation.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>

#include "core/error.h"
#include "core/log.h"
#include "io/video.h"
#include "kernels/ops.h"
#include "pipeline/flow_sampler.h"
#include "pipeline/preprocess.h"
#include "pipeline/vae_codec.h"

namespace lancet {

namespace {

std::string fmt(double v) {
    char b[32];
    std::snprintf(b, sizeof b, "%g", v);
    return b;
}

}  // namespace

void check_gen_settings(const GenSettings& s, const std::string& where, const char* flag) {
    check_sampler_settings(s.steps, s.shift, s.cfg, where, flag);
}

std::string default_gen_preset(GenTask t) {
    return (t == GenTask::ImageEdit) ? "image_768res" : "video_480p";
}

int64_t gen_latent_frames(GenTask task, int frames, const LanceConfig& cfg) {
    if (task == GenTask::T2I || gen_task_is_edit(task)) return 1;  // editing: the source's
    const int f = frames > 0 ? frames : kGenDefaultFrames;
    if (frames < 0 || f < 1) fail(gen_task_name(task), ": frames must be at least 1");
    const int64_t lt = (f - 1) / 4 + 1;
    const int64_t max_lt = cfg.max_num_frames / 4 + 1;
    if (lt > max_lt)
        fail(gen_task_name(task), ": ", f, " frames need ", lt,
             " latent frames; the PE3D table holds ", max_lt, " (at most ", 1 + 4 * (max_lt - 1),
             " frames)");
    if (1 + 4 * (lt - 1) != f)
        log_info(gen_task_name(task), ": ", f, " frames requested; Lance generates ", lt,
                 " latent frames = ", 1 + 4 * (lt - 1), " frames (the form 4k+1), using those");
    return lt;
}

void parse_gen_size(const std::string& s, int* w, int* h, const std::string& what) {
    const auto x = s.find('x');
    try {
        if (x == std::string::npos) throw std::invalid_argument("");
        size_t a = 0, b = 0;
        *w = std::stoi(s.substr(0, x), &a);
        *h = std::stoi(s.substr(x + 1), &b);
        if (a != x || b != s.size() - x - 1) throw std::invalid_argument("");
    } catch (const std::exception&) {
        fail(what, " '", s, "' is not WIDTHxHEIGHT (e.g. 768x768)");
    }
}

ImageMetadata gen_metadata(const GenItem& it, const GenSettings& s, uint64_t seed,
                           const std::string& model, const std::string& source) {
    ImageMetadata meta = {{"Software", kLancetVersion},
                          {"task", gen_task_name(it.task)},
                          {"prompt", it.caption},
                          {"seed", std::to_string(seed)},
                          {"steps", std::to_string(s.steps)},
                          {"shift", fmt(s.shift)},
                          {"cfg", fmt(s.cfg)},
                          {"model", model}};
    if (!source.empty()) meta.push_back({"source", source});
    return meta;
}

Generator::Generator(const LanceCheckpoint& ck, const Qwen2Tokenizer& tok, std::string vae_path,
                     std::shared_ptr<SharedVisionTower> tower)
    : ck_(ck),
      tok_(tok),
      vae_path_(std::move(vae_path)),
      tower_(tower ? std::move(tower) : std::make_shared<SharedVisionTower>(ck)) {}

GenOutput Generator::generate(DecoderSession& dec, const GenItem& it, const GenSettings& s,
                              uint64_t seed, const GenCallbacks& cb) {
    const LanceConfig& cfg = ck_.config();
    const int64_t C = cfg.latent_channels;
    GenTaskInput in;
    in.task = it.task;
    in.caption = it.caption;
    in.lt = it.lt;
    in.lh = it.height / 16;
    in.lw = it.width / 16;
    const std::string preset = s.preset.empty() ? default_gen_preset(it.task) : s.preset;
    if (it.task == GenTask::I2V || gen_task_is_edit(it.task)) prepare_media(it, s, preset, in);
    in.noise = flow_noise(seed, static_cast<size_t>(gen_task_rows(in) * C));
    const GenSequence seq = build_gen_sequence(tok_, cfg, in);

    FlowSamplerOptions fo;
    fo.steps = s.steps;
    fo.shift = s.shift;
    fo.cfg = s.cfg;
    fo.bf16_state = !s.f32_state;
    fo.uncond_cache_cond_positions = !s.consistent_positions;
    fo.on_step = cb.on_step;
    fo.cancelled = cb.cancelled;
    log_info(gen_task_name(it.task), ": ", seq.batch.size(), " tokens, target latent ", in.lt, "x",
             in.lh, "x", in.lw, " (", in.lw * 16, "x", in.lh * 16, " px), ", s.steps,
             " steps, shift ", s.shift, ", CFG ", s.cfg, ", seed ", seed);
    const SampleResult r = flow_sample(dec, seq, fo);
    GenOutput o;
    for (double t : r.step_seconds) o.step_s += t;
    o.prefill_s = r.prefill_seconds;
    o.cfg_steps = r.cfg_steps;
    const auto t0 = std::chrono::steady_clock::now();
    o.latent = target_latent(in, r.x, C);
    if (cb.on_frames)
        vae_decode_latent(vae_path_, o.latent.data(), in.lt, in.lh, in.lw, cb.on_frames,
                          gen_task_is_video(it.task));
    else
        o.frames = vae_decode_latent(vae_path_, o.latent.data(), in.lt, in.lh, in.lw,
                                     gen_task_is_video(it.task));
    o.vae_s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    o.T = 1 + 4 * (in.lt - 1), o.H = in.lh * 16, o.W = in.lw * 16;
    return o;
}

// i2v: the first frame's clean latent; editing: the source latent and its ViT rows (the shared
// tower, one request at a time).
void Generator::prepare_media(const GenItem& it, const GenSettings& s, const std::string& preset,
                              GenTaskInput& in) {
    GenMediaOptions mo;
    mo.preset = preset;
    mo.vae_path = vae_path_;
    mo.max_pixels = s.max_pixels;
    const VitRunner vit = [&](const float* px, int64_t T, int64_t H, int64_t W) {
        return tower_->with(
            [&](VisionTower& t) { return t.forward(kernels::OpContext::defaults(), px, T, H, W); });
    };
    prepare_gen_media(it.task, it.media, ck_.config(), mo, vit, in);
}

}  // namespace lancet
