// A plain float64 reference of the Qwen2.5-VL vision tower (spec §4), written from the spec and
// independent of the fast path: it never permutes rows. Patches stay in raster (t, row, col)
// order, window and full-attention blocks are dense attention under a "same window / same
// temporal patch" mask, and the merger gathers each 2x2 block straight from the raster grid.
// Since attention is permutation-equivariant this is the same function as Qwen2.5-VL's window
// order and its inverse, so comparing the two checks the permutation too.
#pragma once

#include <cstdint>
#include <vector>

#include "model/lance_checkpoint.h"
#include "model/vit_config.h"

namespace lancet::ref {

// The patch grid of a [C, T, H, W] input: (T / temporal_patch, H / patch, W / patch).
struct VitGrid {
    int64_t t = 0, h = 0, w = 0;
    int64_t patches() const { return t * h * w; }
};
// Checks T, H, W against the config (T a multiple of temporal_patch_size, H and W of
// patch x merge); fails in one line naming `where`.
VitGrid vit_grid(const VitConfig& v, int64_t T, int64_t H, int64_t W, const char* where);

// The (C, tp, py, px) vector of raster patch (t, ph, pw) of video [C, T, H, W]: patch_dim values.
void vit_patch_vector(const VitConfig& v, const double* video, int64_t T, int64_t H, int64_t W,
                      int64_t t, int64_t ph, int64_t pw, double* out);

// Whether raster patches a and b (same temporal patch) lie in the same attention window: windows
// tile the merged grid from the top-left in squares of window_merge_blocks() merge blocks.
bool vit_same_window(const VitConfig& v, int64_t ah, int64_t aw, int64_t bh, int64_t bw);

// The 2-D rotary embedding on one head vector of hd values for a patch at (row, col):
// inv_freq_i = 10000^(-4i/hd) for i < hd/4; angles [row * inv_freq, col * inv_freq] twice,
// rotate-half form.
void vit_rope(double* x, size_t hd, int64_t row, int64_t col);

// GELU, erf form.
double gelu_erf(double x);

// The tower's weights as f64 (AWQ INT4 linears dequantized).
struct VitWeights {
    VitConfig cfg;
    std::vector<double> patch;  // [hidden, patch_dim]
    struct Block {
        std::vector<double> norm1, norm2, qkv_w, qkv_b, proj_w, proj_b;
        std::vector<double> gate_w, gate_b, up_w, up_b, down_w, down_b;
    };
    std::vector<Block> blocks;
    std::vector<double> ln_q, mlp0_w, mlp0_b, mlp2_w, mlp2_b;
};
VitWeights load_vit_weights(const LanceCheckpoint& ck);

// Intermediate states in raster order, for piece-by-piece comparison.
struct VitTrace {
    std::vector<double> embed;                   // [patches, hidden] after patch embedding
    std::vector<std::vector<double>> block_out;  // per block [patches, hidden]
};

// video [C, T, H, W] (normalised pixels) -> [t * (h/m) * (w/m), out_hidden] in raster (t, h, w)
// order of merge blocks.
std::vector<double> vit_forward(const VitWeights& w, const double* video, int64_t T, int64_t H,
                                int64_t W, VitTrace* trace = nullptr);

}  // namespace lancet::ref
