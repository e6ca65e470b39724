// `lancet forward`: runs one packed Lance sequence through the decoder as given and writes logits,
// velocities, final hidden states and every layer's residual stream (format in README.md).
#include <chrono>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <memory>

#include "cli/commands.h"
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

// Reads the input file's tensors with one-line errors naming the tensor.
class InputFile {
  public:
    explicit InputFile(const std::string& path) : path_(path), file_(path) {}

    bool has(const std::string& name) const { return file_.find(name) != nullptr; }

    const TensorEntry& get(const std::string& name, DType dtype, size_t rank) const {
        const TensorEntry* e = file_.find(name);
        if (!e) fail(path_, ": missing tensor ", name);
        if (e->dtype != dtype)
            fail(path_, ": ", name, " is ", dtype_name(e->dtype), ", expected ", dtype_name(dtype));
        if (e->shape.size() != rank)
            fail(path_, ": ", name, " has shape ", shape_str(e->shape), ", expected rank ", rank);
        return *e;
    }

    std::vector<int64_t> i64(const std::string& name, const Shape& shape) const {
        const TensorEntry& e = get(name, DType::I64, shape.size());
        check_shape(name, e, shape);
        std::vector<int64_t> v(static_cast<size_t>(shape_numel(e.shape)));
        std::memcpy(v.data(), file_.view(e).data, v.size() * 8);
        return v;
    }
    std::vector<uint8_t> u8(const std::string& name, const Shape& shape) const {
        const TensorEntry& e = get(name, DType::U8, shape.size());
        check_shape(name, e, shape);
        const TensorView t = file_.view(e);
        return std::vector<uint8_t>(t.data, t.data + t.nbytes);
    }
    std::vector<float> f32(const std::string& name, const Shape& shape) const {
        const TensorEntry& e = get(name, DType::F32, shape.size());
        check_shape(name, e, shape);
        std::vector<float> v(static_cast<size_t>(shape_numel(e.shape)));
        std::memcpy(v.data(), file_.view(e).data, v.size() * 4);
        for (size_t i = 0; i < v.size(); ++i)
            if (!std::isfinite(v[i])) fail(path_, ": ", name, " holds a non-finite value at ", i);
        return v;
    }
    // Length of the first dimension of a rank-1 tensor.
    int64_t len(const std::string& name, DType dtype) const { return get(name, dtype, 1).shape[0]; }
    const std::string& path() const { return path_; }

  private:
    void check_shape(const std::string& name, const TensorEntry& e, const Shape& want) const {
        if (e.shape != want)
            fail(path_, ": ", name, " has shape ", shape_str(e.shape), ", expected ",
                 shape_str(want));
    }
    std::string path_;
    SafetensorsFile file_;
};

void run_forward(const ForwardArgs& a) {
    if (a.input.empty() || a.out.empty()) fail("forward: --input and --out are required");
    std::error_code ec;
    if (!std::filesystem::exists(a.input, ec)) fail(a.input, ": no such input file");
    OpenOptions oo;
    oo.vit_dir = a.vit_dir;
    const auto ck = LanceCheckpoint::open(a.model, oo);
    const LanceConfig& cfg = ck->config();
    const InputFile in(a.input);
    const std::string& p = in.path();

    // Validate everything before the (slow) weight load.
    const int64_t L = in.len("token_ids", DType::I64);
    if (L < 1) fail(p, ": token_ids is empty");
    Batch b;
    b.token_ids = in.i64("token_ids", {L});
    for (int64_t i = 0; i < L; ++i)
        if (b.token_ids[i] < 0 || b.token_ids[i] >= cfg.vocab_size)
            fail(p, ": token_ids[", i, "] = ", b.token_ids[i], " is outside the vocabulary (",
                 cfg.vocab_size, ")");
    b.is_gen = in.u8("is_gen", {L});
    // Optional ViT input: its embeddings fill the und <|video_pad|> rows (one ViT block).
    const bool has_vit = in.has("vit_video");
    std::vector<float> vit_video;
    VitPlan vplan;
    int64_t vit_T = 0, vit_H = 0, vit_W = 0;
    if (has_vit) {
        const VitConfig& v = cfg.vision;
        const TensorEntry& e = in.get("vit_video", DType::F32, 4);
        if (e.shape[0] != v.in_chans)
            fail(p, ": vit_video has shape ", shape_str(e.shape), "; the first dimension must be ",
                 v.in_chans, " channels ([C, T, H, W])");
        vit_T = e.shape[1], vit_H = e.shape[2], vit_W = e.shape[3];
        const std::string where = p + ": vit_video " + shape_str(e.shape);
        vplan = vit_plan(v, vit_T, vit_H, vit_W, where.c_str());
        if (!ck->has_vit())
            fail(a.model, ": vit_video given but the checkpoint has no ViT weights");
        vit_video = in.f32("vit_video", e.shape);
    }
    int64_t N = 0, n_vit = 0;
    for (int64_t i = 0; i < L; ++i) {
        if (b.is_gen[i] > 1) fail(p, ": is_gen[", i, "] = ", int(b.is_gen[i]), " (must be 0 or 1)");
        N += b.is_gen[i];
        const bool pad = b.token_ids[i] == cfg.video_token_id;
        if (b.is_gen[i] == 1 && !pad)
            fail(p, ": is_gen[", i, "] = 1 but token_ids[", i, "] = ", b.token_ids[i],
                 " (gen tokens are <|video_pad|> id ", cfg.video_token_id, ")");
        if (pad && b.is_gen[i] == 0) {
            if (!has_vit)
                fail(p, ": token_ids[", i, "] is <|video_pad|> with is_gen 0, a ViT row, but the ",
                     "input has no vit_video");
            ++n_vit;
        }
    }
    const int64_t S = in.len("split_lens", DType::I64);
    if (S < 1) fail(p, ": split_lens is empty");
    const auto lens = in.i64("split_lens", {S});
    const auto modes = in.i64("split_modes", {S});
    int64_t total = 0;
    for (int64_t s = 0; s < S; ++s) {
        if (lens[s] < 1) fail(p, ": split_lens[", s, "] = ", lens[s], " (must be >= 1)");
        if (modes[s] < 0 || modes[s] > 2)
            fail(p, ": split_modes[", s, "] = ", modes[s], " (0 causal, 1 full, 2 noise)");
        total += lens[s];
        b.splits.push_back({lens[s], static_cast<SplitMode>(modes[s])});
    }
    if (total != L) fail(p, ": split_lens sum to ", total, " but token_ids has ", L, " tokens");

    // Vision blocks: a vision_start followed by a video pad; a VAE block when that pad is a gen
    // row, the ViT block when it is und.
    int64_t blocks = 0;
    std::vector<bool> block_is_vit;
    for (int64_t i = 0; i + 1 < L; ++i)
        if (b.token_ids[i] == cfg.vision_start_token_id &&
            b.token_ids[i + 1] == cfg.video_token_id) {
            block_is_vit.push_back(b.is_gen[i + 1] == 0);
            blocks += b.is_gen[i + 1] == 1;
        }
    if (has_vit) {
        const int64_t vit_blocks = std::count(block_is_vit.begin(), block_is_vit.end(), true);
        if (vit_blocks != 1)
            fail(p,
                 ": vit_video needs exactly one ViT block (vision_start then und <|video_pad|> "
                 "rows), found ",
                 vit_blocks);
        if (n_vit != vplan.merged())
            fail(p, ": vit_video gives ", vplan.merged(), " ViT rows but token_ids has ", n_vit,
                 " und <|video_pad|> rows");
    }
    std::vector<int64_t> grid = {1, 1, 1};
    if (N > 0 || in.has("latent_grid")) {
        grid = in.i64("latent_grid", {3});
        for (int d = 0; d < 3; ++d)
            if (grid[d] < 1) fail(p, ": latent_grid[", d, "] = ", grid[d], " (must be >= 1)");
        if (blocks * grid[0] * grid[1] * grid[2] != N)
            fail(p, ": latent_grid (", grid[0], ", ", grid[1], ", ", grid[2], ") times ", blocks,
                 " vision block(s) gives ", blocks * grid[0] * grid[1] * grid[2],
                 " latent tokens but is_gen marks ", N);
    }
    const int64_t C = cfg.latent_channels;
    if (N > 0 || in.has("latents")) b.latents = in.f32("latents", {N, C});
    if (N > 0 || in.has("timesteps")) b.timesteps = in.f32("timesteps", {N});
    if (in.has("pe3d_index")) {
        b.pe3d_index = in.i64("pe3d_index", {N});
    } else {
        const auto one = pe3d_indices(grid[0], grid[1], grid[2], cfg.max_latent_size);
        for (int64_t k = 0; k < blocks && N > 0; ++k)
            b.pe3d_index.insert(b.pe3d_index.end(), one.begin(), one.end());
    }
    const int64_t rows = cfg.pos_embed_rows();
    for (int64_t g = 0; g < N; ++g)
        if (b.pe3d_index[g] < 0 || b.pe3d_index[g] >= rows)
            fail(p, ": pe3d_index[", g, "] = ", b.pe3d_index[g], " is outside the PE3D table (",
                 rows, " rows; latent_grid too large?)");
    if (in.has("positions")) {
        const auto pos = in.i64("positions", {3, L});
        b.positions.resize(L);
        for (int64_t i = 0; i < L; ++i) b.positions[i] = {pos[i], pos[L + i], pos[2 * L + i]};
    } else {
        std::vector<VisionGrid> grids;
        for (const bool vit : block_is_vit)
            grids.push_back(vit ? VisionGrid{vplan.gt, vplan.gh, vplan.gw}
                                : vae_block_grid(grid[0], grid[1], grid[2]));
        try {
            b.positions = mrope_positions(b.token_ids, grids, cfg);
        } catch (const Error& e) {
            fail(p, ": ", e.what());
        }
    }

    // Lance masks logits at ids >= len(tokenizer) when the folder has one.
    DecoderOptions dopt;
    dopt.lm_head = lm_head_option();
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

    const int64_t H = cfg.hidden_size, V = cfg.vocab_size, n_und = L - N;
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
    if (a.input.empty() || a.out.empty()) fail("forward: --input and --out are required");
    std::error_code ec;
    if (!std::filesystem::exists(a.input, ec)) fail(a.input, ": no such input file");
    OpenOptions oo;
    oo.vit_dir = a.vit_dir;
    const auto ck = LanceCheckpoint::open(a.model, oo);
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
