// The Qwen2.5-VL vision tower (spec §4) on the op layer: patch packing, patch embedding, 2-D
// RoPE, window order and its inverse, window and per-temporal-patch full-attention blocks, the
// SiLU-gated MLP and the merger. Every width comes from the checkpoint's VitConfig; attention runs
// per window (AttnMask::Segments), never as a dense N x N mask. ref::vit_forward (vit_ref.h) is
// its float64 reference.
#pragma once

#include <array>
#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <vector>

#include "kernels/ops.h"
#include "model/lance_checkpoint.h"
#include "model/vit_config.h"

namespace lancet {

// The geometry of one [C, T, H, W] input: its patch grid and the window permutation.
struct VitPlan {
    int64_t gt = 0, gh = 0, gw = 0;  // patch grid (T / temporal_patch, H / patch, W / patch)
    int64_t mh = 0, mw = 0;          // merge-block grid of one temporal patch
    int64_t frame_rows = 0;          // patch rows per temporal patch (gh * gw)
    // Window order of merge blocks: window_index[i] = raster (t, bh, bw) index of the i-th block.
    std::vector<int32_t> window_index;
    // Patch rows of the windows of one temporal patch, cumulative from 0 (the same for every
    // temporal patch, whose rows are contiguous in window order).
    std::vector<int32_t> cu_window;
    // Raster patch index (t, row, col) of each patch row in window order.
    std::vector<int32_t> patch_raster;
    // (row, col) of each patch row of one temporal patch in window order (the 2-D RoPE positions).
    std::vector<std::array<int64_t, 2>> frame_pos;

    int64_t patches() const { return gt * gh * gw; }
    int64_t merged() const { return gt * mh * mw; }
};

// Validates T, H, W (T a multiple of temporal_patch_size, H and W of patch x merge: one-line
// errors naming `where`) and builds the plan.
VitPlan vit_plan(const VitConfig& v, int64_t T, int64_t H, int64_t W, const char* where);

// Qwen2.5-VL's patch packing of video [C, T, H, W]: rows [T/tp * H/p * W/p, patch_dim] in
// (temporal patch, merge-block row, merge-block col, in-block row, in-block col) order, each row
// the (C, tp, py, px) vector.
void vit_pack_patches(const VitConfig& v, const float* video, int64_t T, int64_t H, int64_t W,
                      float* rows);

// Hidden states in window order, for piece-by-piece tests.
struct VitTraceF32 {
    std::vector<float> embed;                   // [patches, hidden] after patch embedding
    std::vector<std::vector<float>> block_out;  // per block [patches, hidden]
};

// The inputs of the tower's linears, for calibration (spec §4 names): per block the norm1 output
// (attn.qkv), the attention output (attn.proj), the norm2 output (mlp.gate_proj / up_proj) and
// silu(gate) * up (mlp.down_proj); the merger's concatenated ln_q rows (merger.mlp.0) and its
// GELU output (merger.mlp.2, block -1 for both).
enum class VitLinearInput { Qkv, Proj, GateUp, Down, Merger0, Merger2 };
using VitObserver =
    std::function<void(int block, VitLinearInput which, const float* x, size_t n, size_t dim)>;

class VisionTower {
  public:
    // Loads and repacks the tower's weights (vit_model.*, or the separate vit.safetensors) as F32,
    // BF16 or AWQ INT4; `bf16_weights` holds F32 linears as BF16. One-line error when the
    // checkpoint has no ViT.
    explicit VisionTower(const LanceCheckpoint& ck, bool bf16_weights = false);

    const VitConfig& config() const { return cfg_; }

    // video [C, T, H, W] normalised pixels -> [T/tp * H/(p m) * W/(p m), out_hidden] in raster
    // (t, h, w) order of merge blocks. Not thread-safe (scratch lives in the tower).
    std::vector<float> forward(const kernels::OpContext& ctx, const float* video, int64_t T,
                               int64_t H, int64_t W, VitTraceF32* trace = nullptr);

    // Optional: sees the rows entering every linear (x [n, dim], window order) in later forwards.
    void set_observer(VitObserver observer) { observer_ = std::move(observer); }

    // Seconds spent in linears and in attention by the last forward (bench vision).
    double linear_seconds() const { return t_linear_; }
    double attention_seconds() const { return t_attention_; }
    // Multiply-adds of the linears of the last forward.
    double linear_macs() const { return linear_macs_; }
    // Block j's MLP gate weight [intermediate, hidden] (bench vision times a GEMM on it).
    const kernels::LinearWeight& gate_weight(int j) const { return blocks_.at(j).gate; }

  private:
    struct Block {
        std::vector<float> norm1, norm2, qkv_b, proj_b, gate_b, up_b, down_b;
        kernels::LinearWeight qkv, proj, gate, up, down;
    };
    void run_linear(const kernels::OpContext& ctx, const kernels::TensorRef& x,
                    const kernels::LinearWeight& w, const float* bias, const kernels::TensorRef& y);

    VitConfig cfg_;
    kernels::LinearWeight patch_;
    std::vector<Block> blocks_;
    std::vector<float> ln_q_, mlp0_b_, mlp2_b_;
    kernels::LinearWeight mlp0_, mlp2_;

    VitObserver observer_;
    double t_linear_ = 0, t_attention_ = 0, linear_macs_ = 0;
    struct Scratch {
        std::vector<float> rows, x, h, qkv, att, tmp, gate, up, merged, mid;
        kernels::RopeTable rope;
        kernels::AttentionScratch attn;
    } s_;
};

// One tower for every part of a process that needs it (the server's image edits and image chat):
// loaded on first use with BF16 linears (as Lance casts the model), one forward at a time since
// the tower's scratch is its own. `ck` must outlive it.
class SharedVisionTower {
  public:
    explicit SharedVisionTower(const LanceCheckpoint& ck) : ck_(ck) {}
    // Runs fn(tower) under the lock and returns what it returns.
    template <class F>
    auto with(F&& fn) {
        std::lock_guard<std::mutex> lock(mu_);
        if (!tower_) tower_ = std::make_unique<VisionTower>(ck_, true);
        return fn(*tower_);
    }

  private:
    const LanceCheckpoint& ck_;
    std::mutex mu_;
    std::unique_ptr<VisionTower> tower_;
};

}  // namespace lancet
