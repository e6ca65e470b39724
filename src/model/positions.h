// Lance's sequence layout rules: attention splits, Qwen2.5-VL M-RoPE position ids (get_rope_index,
// spec §2.6.1) and PE3D row indices of VAE-latent blocks (§2.3.3).
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <vector>

#include "model/lance_config.h"

namespace lancet {

// Attention mode of one split (spec §2.5; `full_noise` is `full`).
enum class SplitMode : uint8_t { Causal = 0, Full = 1, Noise = 2 };

struct Split {
    int64_t len = 0;
    SplitMode mode = SplitMode::Causal;
};

// The (t, h, w) M-RoPE coordinates of one token.
using RopePosition = std::array<int64_t, 3>;

// A grid as get_rope_index takes it: (T, H, W) before the spatial merge. A VAE block of latent grid
// (t, h, w) passes (t, 2h, 2w) (vae_block_grid); a ViT block (frames/2, H_px/14, W_px/14).
struct VisionGrid {
    int64_t t = 1, h = 1, w = 1;
};
inline VisionGrid vae_block_grid(int64_t t, int64_t h, int64_t w) { return {t, 2 * h, 2 * w}; }

// M-RoPE ids of a whole token list, as Qwen2.5-VL's get_rope_index with second_per_grid_ts = 1.0:
// a block is a vision_start token followed by an image/video pad; its pads take
// (base + int(ti * tokens_per_second), base + hi, base + wi) over the merged grid and the text
// after it continues at the block's largest coordinate + 1. Video blocks take grids[] in order,
// image blocks too (Lance passes one list as both); image pads get temporal step 0 as in Qwen.
// Special ids come from `cfg`. Throws Error when the grid count or a block's token count does not
// fit.
std::vector<RopePosition> mrope_positions(const std::vector<int64_t>& ids,
                                          const std::vector<VisionGrid>& grids,
                                          const LanceConfig& cfg);

// The next text position after `pos` (largest coordinate + 1): where decoding continues.
int64_t next_text_position(const std::vector<RopePosition>& pos);

// TimestepEmbedder features of flow time t: [cos(t f_k)] ++ [sin(t f_k)], dim values,
// f_k = exp(−ln(10000)·k / (dim/2)) (the sinusoidal code of a scalar, like a position code).
void timestep_features(float t, size_t dim, float* out);

// PE3D row index of every voxel of a latent block (t, h, w), row-major: ti*L*L + hi*L + wi with
// L = max_latent_size. Grids wider than L wrap into the next row as in Lance (pitfall 9).
std::vector<int64_t> pe3d_indices(int64_t t, int64_t h, int64_t w, int max_latent_size);

// Lance's per-token modality label (spec §2.4): which part of a generation sequence a token is.
enum class Modality : int8_t {
    Text = -1,    // system prompt and chat-template text
    Caption = 0,  // the user's caption / instruction (dropped by the CFG-unconditional branch)
    Target = 1,   // the noisy target block with its vision_start / vision_end
    Source = 2,   // a clean VAE-latent block (editing's source) with its markers
    Ref = 3,      // a reference image (unused by the six tasks)
    Vit = 4,      // a ViT block with its markers
};

// Lance's shift_position_ids (spec §2.6.2), applied in place when the sequence has a Full split
// (editing): the temporal coordinate of every Vit token (Ref: 2000) moves so the block's first
// token sits at 1000, and when the Source and Target tokens are equally many, the Target tokens
// take the Source tokens' three coordinates one by one.
void shift_position_ids(std::vector<RopePosition>& pos, const std::vector<Modality>& modality);

// Checks that splits are non-empty and sum to n; Error naming `what` otherwise.
void check_splits(const std::vector<Split>& splits, size_t n, const char* what);

// The spec's PE3D row for (t, h, w) grid position `pos_id` (§2.3.3), in f64: out[hidden]. The
// decoder adds it to the gen rows; synth writes it as latent_pos_embed.pos_embed.
void pe3d_row(int hidden, int64_t pos_id, int max_latent_size, double* out);

}  // namespace lancet
