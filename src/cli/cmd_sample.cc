// `lancet sample`: the flow sampler over one packed generation sequence from a file (the
// generation counterpart of `lancet forward`, for checking against another implementation).
#include <chrono>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <memory>

#include "cli/commands.h"
#include "cli/packed_input.h"
#include "core/error.h"
#include "core/log.h"
#include "io/safetensors.h"
#include "model/decoder.h"
#include "model/lance_checkpoint.h"
#include "model/vit.h"
#include "pipeline/flow_sampler.h"
#include "pipeline/vae_codec.h"

namespace lancet::cli {

namespace {

struct SampleArgs {
    std::string model, vae, vit_dir, input, out;
    int steps = 30;
    double shift = 3.5, cfg = 4.0;
    bool f32_state = false, consistent_positions = false, no_kv_cache = false, decode = false;
};

void run_sample(const SampleArgs& a) {
    const auto ck = open_model_for("sample", a.model, a.vit_dir, a.input, a.out);
    const LanceConfig& cfg = ck->config();
    const InputFile in(a.input);
    const std::string& p = in.path();

    // Everything is validated before the weights load.
    PackedSequence ps = read_packed_sequence(in, *ck, a.model, false);
    GenSequence seq;
    seq.batch = std::move(ps.b);
    Batch& b = seq.batch;
    const int64_t L = static_cast<int64_t>(b.size()), N = ps.N, C = cfg.latent_channels;
    if (N == 0) fail(p, ": no gen rows (is_gen marks none): nothing to sample");
    b.latents = in.f32("x_init", {N, C});
    seq.gen_rows = in.u8("gen_rows", {N});
    seq.cfg_drop = in.has("cfg_drop") ? in.u8("cfg_drop", {L}) : std::vector<uint8_t>(L, 0);
    seq.grids = ps.grids;
    seq.modality = derive_modality(b, seq.cfg_drop);
    if (!ps.positions_given) {
        try {
            b.positions = gen_positions(b.token_ids, seq.grids, seq.modality, b.splits, cfg);
        } catch (const Error& e) {
            fail(p, ": ", e.what());
        }
    }
    if (in.has("positions_uncond")) {
        int64_t kept = 0;
        for (uint8_t d : seq.cfg_drop) kept += d == 0;
        const auto pos = in.i64("positions_uncond", {3, kept});
        for (int64_t i = 0; i < kept; ++i)
            seq.uncond_positions.push_back({pos[i], pos[kept + i], pos[2 * kept + i]});
    }
    const size_t pads = [&] {
        size_t n = 0;
        for (int64_t i = 0; i < L; ++i) n += !b.is_gen[i] && b.token_ids[i] == cfg.video_token_id;
        return n;
    }();
    // Shape rules (one noise split, generated rows inside it, ...) before the load; the ViT rows
    // are counted by the plan here and computed after it.
    {
        GenSequence probe = seq;
        probe.vit_rows.assign(pads * cfg.hidden_size, 0.0f);
        check_gen_sequence(probe, cfg, p.c_str());
    }
    std::string vae_path;
    if (a.decode) vae_path = resolve_vae_path(a.vae.empty() ? a.model : a.vae);

    FlowSamplerOptions fo;
    fo.steps = a.steps;
    fo.shift = a.shift;
    fo.cfg = a.cfg;
    fo.bf16_state = !a.f32_state;
    fo.uncond_cache_cond_positions = !a.consistent_positions;
    fo.kv_cache = !a.no_kv_cache;
    fo.keep_trajectory = true;
    check_sampler_settings(a.steps, a.shift, a.cfg, "sample", "--");

    if (ps.has_vit) {
        VisionTower tower(*ck, true);
        seq.vit_rows = tower.forward(kernels::OpContext::defaults(), ps.vit_video.data(), ps.vit_T,
                                     ps.vit_H, ps.vit_W);
    }
    DecoderOptions dopt;
    dopt.bf16_weights = true;  // as Lance, which casts the model to bf16 at load
    const LanceWeights weights(*ck, dopt);
    DecoderSession dec(weights);
    const SampleResult r = flow_sample(dec, seq, fo);

    // The target block for --decode: the gen rows of the noise split.
    std::unique_ptr<VideoTensorSpill> frames;  // [3, T, H, W] in a scratch file, not memory
    int64_t T = 0, Hp = 0, Wp = 0;
    if (a.decode) {
        const int64_t t = ps.latent_grid[0], h = ps.latent_grid[1], w = ps.latent_grid[2];
        size_t at = 0, g = 0, g0 = 0;
        for (const Split& sp : b.splits) {
            for (int64_t k = 0; k < sp.len; ++k, ++at) {
                if (sp.mode == SplitMode::Noise && k == 0) g0 = g;
                g += b.is_gen[at] != 0;
            }
        }
        const int64_t n = t * h * w;
        std::vector<float> z(static_cast<size_t>(n * C));
        for (int64_t r0 = 0; r0 < n; ++r0)
            for (int64_t c = 0; c < C; ++c) z[c * n + r0] = r.x[(g0 + r0) * C + c];
        vae_decode_latent(vae_path, z.data(), t, h, w,
                          [&](const float* fr, int64_t k, int64_t H, int64_t W) {
                              if (!frames) {
                                  T = 1 + 4 * (t - 1), Hp = H, Wp = W;
                                  frames = std::make_unique<VideoTensorSpill>(T, H, W);
                              }
                              frames->add(fr, k);
                          });
    }

    SafetensorsWriter w(a.out);
    for (int k = 0; k < a.steps; ++k) {
        w.add("x." + std::to_string(k), DType::F32, {N, C});
        w.add("v." + std::to_string(k), DType::F32, {N, C});
    }
    w.add("latent", DType::F32, {N, C});
    if (a.decode) w.add("frames", DType::F32, {3, T, Hp, Wp});
    w.set_metadata("format", "pt");
    w.begin();
    for (int k = 0; k < a.steps; ++k) {
        w.write("x." + std::to_string(k), r.xs[k].data(), N * C * 4);
        w.write("v." + std::to_string(k), r.vs[k].data(), N * C * 4);
    }
    w.write("latent", r.x.data(), N * C * 4);
    if (a.decode) frames->append_to(w);
    w.finish();
    double steps_s = 0;
    for (double s : r.step_seconds) steps_s += s;
    char buf[160];
    std::snprintf(buf, sizeof buf, "prefill %.2f s, %d steps in %.2f s (%d with CFG, %d forwards)",
                  r.prefill_seconds, a.steps, steps_s, r.cfg_steps, r.forwards);
    log_info("sample: ", L, " tokens, ", N, " gen rows; ", buf, " -> ", a.out);
}

}  // namespace

void add_sample(CLI::App& app) {
    auto* cmd = app.add_subcommand(
        "sample", "Run the flow sampler over one packed generation sequence (see README)");
    auto a = std::make_shared<SampleArgs>();
    cmd->add_option("--model", a->model, "Lance model folder")->required();
    cmd->add_option("--vae", a->vae, "Wan2.2 VAE (default: the model folder's Wan2.2_VAE.pth)");
    cmd->add_option("--vit", a->vit_dir, "Qwen2.5-VL-ViT folder (default: inside or beside)");
    cmd->add_option("--input", a->input, "Input .safetensors")->required();
    cmd->add_option("--out", a->out, "Output .safetensors")->required();
    cmd->add_option("--steps", a->steps, "Euler steps")->capture_default_str();
    cmd->add_option("--shift", a->shift, "Time shift s")->capture_default_str();
    cmd->add_option("--cfg", a->cfg, "Text CFG scale (1 = off)")->capture_default_str();
    cmd->add_flag("--f32-state", a->f32_state,
                  "Keep the latent state and updates in f32 (default: bf16 as Lance)");
    cmd->add_flag("--consistent-positions", a->consistent_positions,
                  "Fill the unconditional cache with the unconditional position ids (default: "
                  "Lance's KV path, which uses the conditional ones)");
    cmd->add_flag("--no-kv-cache", a->no_kv_cache,
                  "Run the whole sequence every step (Lance's non-KV path)");
    cmd->add_flag("--decode", a->decode, "Also decode the target block to `frames`");
    cmd->callback([a] { run_sample(*a); });
}

}  // namespace lancet::cli
