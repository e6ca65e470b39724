// `lancet forward`: runs one packed Lance sequence through the decoder as given and writes logits,
// velocities, final hidden states and every layer's residual stream (format in README.md).
#include <chrono>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <memory>

#include "cli/commands.h"
#include "cli/packed_input.h"
#include "core/error.h"
#include "core/log.h"
#include "io/safetensors.h"
#include "model/decoder.h"
#include "model/lance_checkpoint.h"
#include "model/positions.h"
#include "model/vit.h"
#include "pipeline/vae_codec.h"
#include "tokenizer/qwen2_tokenizer.h"

namespace lancet::cli {

namespace {

struct ForwardArgs {
    std::string model, input, out, vit_dir;
    std::string component = "decoder";
};

void run_forward(const ForwardArgs& a) {
    const auto ck = open_model_for("forward", a.model, a.vit_dir, a.input, a.out);
    const LanceConfig& cfg = ck->config();
    const InputFile in(a.input);

    // Validate everything before the (slow) weight load.
    PackedSequence ps = read_packed_sequence(in, *ck, a.model, true);
    Batch& b = ps.b;
    const int64_t L = static_cast<int64_t>(b.size()), N = ps.N;
    const bool has_vit = ps.has_vit;
    const std::vector<float>& vit_video = ps.vit_video;
    const int64_t vit_T = ps.vit_T, vit_H = ps.vit_H, vit_W = ps.vit_W;

    // Lance masks logits at ids >= len(tokenizer) when the folder has one.
    DecoderOptions dopt;
    dopt.lm_head = lm_head_option();
    std::error_code ec;
    if (std::filesystem::exists(std::filesystem::path(a.model) / "vocab.json", ec))
        dopt.logits_limit = static_cast<int64_t>(Qwen2Tokenizer::load(a.model).size());
    const LanceWeights weights(*ck, dopt);
    DecoderSession dec(weights);
    Outputs out;
    ForwardOptions fo;
    fo.final_hidden = true;
    fo.layer_out = true;
    std::vector<float> embeddings;
    if (has_vit) {
        // Input embeddings: embed_tokens rows, the latent embedding on gen rows, the ViT's
        // output rows in order on the und <|video_pad|> rows (spec §2.3.2).
        const int64_t Hd = cfg.hidden_size;
        std::vector<float> vit_rows;
        {
            VisionTower tower(*ck);
            vit_rows = tower.forward(kernels::OpContext::defaults(), vit_video.data(), vit_T, vit_H,
                                     vit_W);
        }
        embeddings.resize(static_cast<size_t>(L * Hd));
        dec.embed_tokens(b.token_ids.data(), static_cast<size_t>(L), embeddings.data());
        std::vector<float> gen_rows(static_cast<size_t>(N * Hd));
        if (N > 0)
            dec.embed_latents(b.latents.data(), b.timesteps.data(), b.pe3d_index.data(),
                              static_cast<size_t>(N), gen_rows.data());
        int64_t g = 0, k = 0;
        for (int64_t i = 0; i < L; ++i) {
            const float* src = nullptr;
            if (b.is_gen[i])
                src = &gen_rows[(g++) * Hd];
            else if (b.token_ids[i] == cfg.video_token_id)
                src = &vit_rows[(k++) * Hd];
            if (src) std::copy(src, src + Hd, &embeddings[i * Hd]);
        }
        b.embeddings = embeddings.data();
    }
    dec.forward(b, nullptr, false, out, fo);

    const int64_t H = cfg.hidden_size, V = cfg.vocab_size, n_und = L - N, C = cfg.latent_channels;
    SafetensorsWriter w(a.out);
    if (n_und > 0) w.add("logits", DType::F32, {n_und, V});
    if (N > 0) w.add("velocity", DType::F32, {N, C});
    w.add("final_hidden", DType::F32, {L, H});
    for (int l = 0; l < cfg.num_hidden_layers; ++l)
        w.add("layer_out." + std::to_string(l), DType::F32, {L, H});
    w.set_metadata("format", "pt");
    w.begin();
    if (n_und > 0) w.write("logits", out.logits.data(), n_und * V * 4);
    if (N > 0) w.write("velocity", out.velocity.data(), N * C * 4);
    w.write("final_hidden", out.final_hidden.data(), L * H * 4);
    for (int l = 0; l < cfg.num_hidden_layers; ++l)
        w.write("layer_out." + std::to_string(l), out.layer_out[l].data(), L * H * 4);
    w.finish();
    log_info("forward: ", L, " tokens (", n_und, " und, ", N, " gen) -> ", a.out);
}

// --component vit: `video` F32 [C, T, H, W] -> `embeds` F32 [T/tp * H/(p m) * W/(p m), out_hidden].
void run_forward_vit(const ForwardArgs& a) {
    const auto ck = open_model_for("forward", a.model, a.vit_dir, a.input, a.out);
    const VitConfig& v = ck->config().vision;
    const InputFile in(a.input);
    const TensorEntry& e = in.get("video", DType::F32, 4);
    const int64_t C = e.shape[0], T = e.shape[1], H = e.shape[2], W = e.shape[3];
    if (C != v.in_chans)
        fail(in.path(), ": video has shape ", shape_str(e.shape), "; the first dimension must be ",
             v.in_chans, " channels ([C, T, H, W])");
    const std::string where = in.path() + ": video " + shape_str(e.shape);
    const VitPlan plan = vit_plan(v, T, H, W, where.c_str());  // shape checks before the load
    const std::vector<float> video = in.f32("video", e.shape);
    VisionTower tower(*ck);
    const auto t0 = std::chrono::steady_clock::now();
    const std::vector<float> embeds =
        tower.forward(kernels::OpContext::defaults(), video.data(), T, H, W);
    const double secs =
        std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    SafetensorsWriter w(a.out);
    w.add("embeds", DType::F32, {plan.merged(), v.out_hidden_size});
    w.set_metadata("format", "pt");
    w.begin();
    w.write("embeds", embeds.data(), embeds.size() * 4);
    w.finish();
    char took[32];
    std::snprintf(took, sizeof took, "%.1f ms", secs * 1e3);
    log_info("forward: vit ", shape_str(e.shape), " -> ", plan.merged(), " x ", v.out_hidden_size,
             " embeds in ", took, " -> ", a.out);
}

}  // namespace

void add_forward(CLI::App& app) {
    auto* cmd = app.add_subcommand(
        "forward", "Run one packed sequence through the decoder and write its outputs");
    auto args = std::make_shared<ForwardArgs>();
    cmd->add_option("--model,--model-or-vae", args->model,
                    "Lance model folder (vae-*: or a Wan2.2_VAE .pth / .safetensors)")
        ->required();
    cmd->add_option("--component", args->component,
                    "decoder (a packed sequence); vit (video [C, T, H, W] -> embeds); vae-encode "
                    "('video' [3,T,H,W] -> 'latent'); vae-decode ('latent' "
                    "[48,t,h,w] -> 'video')")
        ->check(CLI::IsMember({"decoder", "vit", "vae-encode", "vae-decode"}))
        ->capture_default_str();
    cmd->add_option("--input", args->input, "Input .safetensors (see README)");
    cmd->add_option("--out", args->out, "Output .safetensors");
    cmd->add_option("--vit", args->vit_dir,
                    "Qwen2.5-VL-ViT folder (default: inside or beside the model folder)");
    cmd->callback([args] {
        if (args->component == "decoder") return run_forward(*args);
        if (args->component == "vit") return run_forward_vit(*args);
        if (args->input.empty() || args->out.empty())
            fail("forward: --input and --out are required");
        if (args->component == "vae-encode")
            vae_encode_file(args->model, args->input, args->out);
        else
            vae_decode_file(args->model, args->input, args->out);
    });
}

}  // namespace lancet::cli
