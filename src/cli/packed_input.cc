// Reading a packed sequence file (lancet forward / lancet sample).
#include "cli/packed_input.h"

#include <algorithm>
#include <cmath>
#include <cstring>

#include "core/error.h"

namespace lancet::cli {

PackedSequence read_packed_sequence(const InputFile& in, const LanceCheckpoint& ck,
                                    const std::string& model, bool latents) {
    const LanceConfig& cfg = ck.config();
    const std::string& p = in.path();
    PackedSequence ps;
    Batch& b = ps.b;
    const int64_t L = in.len("token_ids", DType::I64);
    if (L < 1) fail(p, ": token_ids is empty");
    b.token_ids = in.i64("token_ids", {L});
    for (int64_t i = 0; i < L; ++i)
        if (b.token_ids[i] < 0 || b.token_ids[i] >= cfg.vocab_size)
            fail(p, ": token_ids[", i, "] = ", b.token_ids[i], " is outside the vocabulary (",
                 cfg.vocab_size, ")");
    b.is_gen = in.u8("is_gen", {L});
    // Optional ViT input: its embeddings fill the und <|video_pad|> rows (one ViT block).
    const bool has_vit = in.has("vit_video");
    ps.has_vit = has_vit;
    std::vector<float>& vit_video = ps.vit_video;
    VitPlan& vplan = ps.vplan;
    int64_t &vit_T = ps.vit_T, &vit_H = ps.vit_H, &vit_W = ps.vit_W;
    if (has_vit) {
        const VitConfig& v = cfg.vision;
        const TensorEntry& e = in.get("vit_video", DType::F32, 4);
        if (e.shape[0] != v.in_chans)
            fail(p, ": vit_video has shape ", shape_str(e.shape), "; the first dimension must be ",
                 v.in_chans, " channels ([C, T, H, W])");
        vit_T = e.shape[1], vit_H = e.shape[2], vit_W = e.shape[3];
        const std::string where = p + ": vit_video " + shape_str(e.shape);
        vplan = vit_plan(v, vit_T, vit_H, vit_W, where.c_str());
        if (!ck.has_vit()) fail(model, ": vit_video given but the checkpoint has no ViT weights");
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
        if (modes[s] < 0 || modes[s] > 3)
            fail(p, ": split_modes[", s, "] = ", modes[s],
                 " (0 causal, 1 full, 2 noise, 3 full_noise)");
        total += lens[s];
        // full_noise (a clean VAE block) attends as full (spec §2.5).
        b.splits.push_back(
            {lens[s], modes[s] == 3 ? SplitMode::Full : static_cast<SplitMode>(modes[s])});
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
    if (latents && (N > 0 || in.has("latents"))) b.latents = in.f32("latents", {N, C});
    if (latents && (N > 0 || in.has("timesteps"))) b.timesteps = in.f32("timesteps", {N});
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
    for (const bool vit : block_is_vit)
        ps.grids.push_back(vit ? VisionGrid{vplan.gt, vplan.gh, vplan.gw}
                               : vae_block_grid(grid[0], grid[1], grid[2]));
    ps.N = N;
    ps.latent_grid = grid;
    ps.positions_given = in.has("positions");
    if (in.has("positions")) {
        const auto pos = in.i64("positions", {3, L});
        b.positions.resize(L);
        for (int64_t i = 0; i < L; ++i) b.positions[i] = {pos[i], pos[L + i], pos[2 * L + i]};
    } else {
        try {
            b.positions = mrope_positions(b.token_ids, ps.grids, cfg);
        } catch (const Error& e) {
            fail(p, ": ", e.what());
        }
    }

    return ps;
}

}  // namespace lancet::cli
