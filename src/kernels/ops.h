// The op layer: every computation a Lance model runs (decoder, ViT, VAE, sampler) goes through
// these calls. Each op takes an OpContext (thread pool, ISA, INT4 activation mode: passed in,
// never read from globals on the hot path) and TensorRefs (small strided views). dispatch.cc is
// the only place that maps an ISA to the kernels behind an op; ops_ref.h has the float64 scalar
// reference of every op, and tests/ops_test.cc runs every op on every ISA path against it.
//
// Conventions:
//  - Shapes are outermost first (PyTorch order); strides are in elements.
//  - Activations are F32 unless an op says otherwise. Weights of linear/conv3d are LinearWeights
//    (F32, BF16 or AWQ INT4, repacked once at load).
//  - Outputs are written, never accumulated, unless the op says so; an output may alias an input
//    only where the op says so.
//  - Results are bit-identical for any thread count (each output element is produced by one
//    thread with a fixed instruction sequence).
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <initializer_list>
#include <string>
#include <vector>

#include "core/aligned_buffer.h"
#include "core/dtype.h"
#include "core/tensor.h"
#include "core/thread_pool.h"
#include "kernels/dispatch.h"
#include "kernels/linear.h"

namespace lancet::kernels {

// Changes to the interface as first written (kept compatible for callers): TensorRef::matrix;
// OpContext::threads() falls back to default_pool() when pool is null; add() aligns a b of fewer
// dimensions to y's last ones; AttentionScratch holds per-token key ranges; Conv3dWeight holds
// one LinearWeight per temporal tap and has the constructors from_checkpoint / from_tap_major.

enum class Device : uint8_t { Cpu };

constexpr int kMaxDims = 5;

// A non-owning strided view of up to kMaxDims dimensions.
struct TensorRef {
    DType dtype = DType::F32;
    Device device = Device::Cpu;
    int ndim = 0;
    std::array<int64_t, kMaxDims> shape{};
    std::array<int64_t, kMaxDims> stride{};  // elements
    void* data = nullptr;

    // A dense row-major view of `shape` over data.
    static TensorRef contiguous(float* data, std::initializer_list<int64_t> shape);
    static TensorRef contiguous(const float* data, std::initializer_list<int64_t> shape);
    static TensorRef contiguous(void* data, DType dtype, std::initializer_list<int64_t> shape);
    // A dense [rows, cols] f32 view (size_t sizes, so call sites need no narrowing casts).
    static TensorRef matrix(const float* data, size_t rows, size_t cols);

    int64_t numel() const;
    bool is_contiguous() const;
    // Elements [begin, end) of dimension d (same strides, shifted data).
    TensorRef slice(int d, int64_t begin, int64_t end) const;
    float* f32() const { return static_cast<float*>(data); }
    // "[2, 3, 4] f32" for error messages.
    std::string describe() const;
};

// The arithmetic of attention() (below, "Precision"). F32: f32 inputs, f32 dot products and
// sums (the accurate default). Bf16: q, k and v rounded to bf16, as Lance's bf16 SDPA / flash
// attention sees them, f32 scores and softmax, the probabilities rounded to bf16 for P·V.
// Auto: per call, Bf16 where it runs on the AMX tiles (Isa::Amx and at least 16 query rows:
// prefill, denoising blocks, the ViT) and F32 otherwise (decode rows, other ISAs), so it is never
// slower than F32 (README, "bf16 attention").
enum class AttnPrecision : uint8_t { F32, Bf16, Auto };
const char* attn_precision_name(AttnPrecision p);  // "f32", "bf16", "auto"
// The precision attention() uses by default: set_attn_precision()'s, else $LANCET_ATTN
// (f32|bf16|auto; lancet::Error if anything else), else F32. (dispatch.cc, with the ISA choice.)
AttnPrecision attn_precision();
void set_attn_precision(AttnPrecision p);
void clear_attn_precision();  // back to $LANCET_ATTN / F32

// Where and how an op runs. Built once per run (or per session) by the caller; cheap to copy.
struct OpContext {
    ThreadPool* pool = nullptr;
    Isa isa = Isa::Scalar;
    ActMode act = ActMode::F32;               // how linear/conv3d treat activations of INT4 weights
    Bf16Act bf16_act = Bf16Act::F32;          // how linear/conv3d treat activations of BF16 weights
    AttnPrecision attn = AttnPrecision::F32;  // attention()'s arithmetic

    ThreadPool& threads() const { return pool ? *pool : default_pool(); }
    // The process defaults at the edge of a program (CLI, tests): active_isa(),
    // activation_mode(), bf16_activation_mode(), attn_precision(), and the given pool (nullptr:
    // default_pool()).
    static OpContext defaults(ThreadPool* pool = nullptr);
};

// ---- dense algebra --------------------------------------------------------------------------

// y[n, out] = x[n, in] · Wᵀ + bias (bias nullable). x and y: 2-D, unit column stride (rows may
// be strided). INT4 weights use ctx.act, BF16 weights ctx.bf16_act (linear.h documents the exact
// W4A8 and bf16-activation arithmetic).
void linear(const OpContext& ctx, const TensorRef& x, const LinearWeight& w, const float* bias,
            const TensorRef& y);

// One output of linear_same_input: y [n, w->out()] (dense rows) = x · wᵀ + bias (nullable).
struct LinearOut {
    const LinearWeight* w;
    const float* bias;
    float* y;
};
// Several linears of one input x [n, in] (dense rows), as q/k/v or gate/up: each y bit for bit as
// linear() gives it. INT4 weights with int8 activations at n <= 8 on AVX2 or AVX-512 (decode)
// quantize x once and run all outputs as one pool job instead of one job per weight.
void linear_same_input(const OpContext& ctx, const float* x, size_t n, const LinearOut* outs,
                       size_t count);

// ---- elementwise and row ops (x and y of equal shape, y may alias x) ------------------------

// Rows of the last dimension: y = x · rsqrt(mean(x²) + eps) · w (w nullable = 1).
void rms_norm(const OpContext& ctx, const TensorRef& x, const float* w, float eps,
              const TensorRef& y);
// The Wan VAE's RMS_norm over the channel dimension `dim` of x:
// y = x / max(‖x‖₂ over channels, 1e-12) · √C · gamma[c] (+ bias[c] if bias non-null).
void channel_rms_norm(const OpContext& ctx, const TensorRef& x, int dim, const float* gamma,
                      const float* bias, const TensorRef& y);
// Numerics of the row/elementwise ops, identical on every ISA path (so the decoder's bits do not
// depend on the ISA beyond linear and attention): rms_norm and channel_rms_norm sum squares in
// double in index order; silu uses libm's expf and gelu erff per element; results never depend
// on the thread count.
// y = silu(gate) ⊙ up
void silu_mul(const OpContext& ctx, const TensorRef& gate, const TensorRef& up, const TensorRef& y);
// y = silu(x)
void silu(const OpContext& ctx, const TensorRef& x, const TensorRef& y);
// y = x · Φ(x) with the erf form (PyTorch's GELU(approximate='none')).
void gelu(const OpContext& ctx, const TensorRef& x, const TensorRef& y);
// y = a + b (b broadcast along dimensions where its shape is 1; a b of fewer dimensions is
// aligned to y's last ones, as in PyTorch: a bias [C] adds to every row of [T, H, W, C]).
void add(const OpContext& ctx, const TensorRef& a, const TensorRef& b, const TensorRef& y);

// ---- rotary position embedding ---------------------------------------------------------------

// Per-row angle tables: cos/sin [n, hd/2]. Built by the rope_angles_* helpers below, applied by
// rope(); every form (1-D, M-RoPE sections, the ViT's 2-D) is the same rotation with a different
// table.
struct RopeTable {
    size_t n = 0, half = 0;  // rows, hd/2
    std::vector<float> cos, sin;
};
// 1-D: angle_i = pos · theta^(−2i/hd).
void rope_angles_1d(const int64_t* pos, size_t n, size_t hd, double theta, RopeTable& t);
// M-RoPE (Qwen2-VL): frequency i takes its position from axis a(i) by `section` (t, h, w
// sections sum to hd/2).
void rope_angles_mrope(const std::array<int64_t, 3>* pos, size_t n, size_t hd,
                       const std::array<int, 3>& section, double theta, RopeTable& t);
// 2-D (Qwen2.5-VL ViT): the first hd/4 frequencies theta^(−4i/hd) (i < hd/4) take the row, the
// next hd/4 the column.
void rope_angles_2d(const std::array<int64_t, 2>* pos, size_t n, size_t hd, double theta,
                    RopeTable& t);
// x [n, heads, hd] in place, rotate-half form: (x1, x2) → (x1 cos − x2 sin, x2 cos + x1 sin).
void rope(const OpContext& ctx, const TensorRef& x, const RopeTable& t);

// ---- attention -------------------------------------------------------------------------------

// Lance's attention split modes (spec §2.5; full_noise is Full).
enum class AttnSplit : uint8_t { Causal = 0, Full = 1, Noise = 2 };

// Who may attend whom. Queries are the n chunk tokens; keys are the n_cached cached tokens
// followed by the chunk's own n tokens.
struct AttnMask {
    enum class Kind : uint8_t {
        None,      // every query sees every key
        Causal,    // query i sees keys [0, n_cached + i] (bottom-right aligned after a cache)
        Segments,  // no cache; query i sees the keys of its own segment: cu_seqlens[s] <= i <
                   // cu_seqlens[s+1] (ViT windows, per-frame blocks)
        Splits,    // Lance's packed splits over the chunk, after a cache (below)
    };
    Kind kind = Kind::None;
    size_t n_cached = 0;
    // Segments: n_segments + 1 cumulative lengths, first 0, last n.
    const int32_t* cu_seqlens = nullptr;
    size_t n_segments = 0;
    // Splits: a cached key is visible unless cached_hidden[a] (it lay in a noise split); inside
    // the chunk, split_of[i] names token i's split, modes[s] its mode and split_end[s] one past
    // its last token. Same split: Causal sees j <= i, Full/Noise all of it; an earlier split is
    // visible unless it is Noise; later splits never.
    const uint8_t* cached_hidden = nullptr;
    const int32_t* split_of = nullptr;
    const AttnSplit* modes = nullptr;
    const int32_t* split_end = nullptr;
};

// Per-call scratch of attention(), grown once and reused (one per session, never shared).
struct AttentionScratch {
    std::vector<std::vector<float>> per_share;
    // Per chunk token: keys [key_begin, dense_end) are all visible, none outside
    // [key_begin, key_end).
    std::vector<size_t> key_begin, dense_end, key_end;
    // Strided K and V copied to dense [nkv][keys][hd] rows for many-query calls (Bf16: rounded
    // to bf16 values, or on AMX packed into the tiles' bf16 layouts).
    AlignedBuffer kv_packed;
};

// Softmax attention with GQA: q [n, nh, hd]; k, v [nkv, n_cached + n, hd] (any strides, so a KV
// cache laid out [kv_head][capacity][hd] is passed as is); query head h uses kv head
// h / (nh / nkv); scale 1/√hd unless `scale` > 0. out [n, nh, hd]. q_index (nullable) maps q row
// r to its chunk position (the decoder permutes rows by path). Tiled with an online softmax: no
// n × n score matrix.
//
// Precision (ctx.attn). Per output o = Σ_a p_a v_a / Σ_a p_a over the visible keys a, with
// p_a = exp(s_a − m) and m the running maximum of the online softmax:
//  - F32: s_a = Σ_d (scale·q_d)·k_ad in f32 (any order), exp by a polynomial (relative error
//    ~2e-7), p·v and the row sum in f32. Error vs exact: the score error Δs <= (hd + 3)·u·S_a,
//    S_a = scale·Σ_d |q_d k_ad|, u = 2^-24, moves each normalised probability by at most
//    2·max_a Δs + 8u relative; the output is off by at most twice that plus (L + hd + 16)·u,
//    times Σ_a p_a |v_ad| (L = visible keys).
//  - Bf16: q̃, k̃, ṽ = bf16(q, k, v) (round to nearest even, core/numeric.h); s_a = scale ·
//    Σ_d q̃_d k̃_ad (products exact in f32, f32 sums in any order, then one f32 multiply);
//    the softmax in f32 as above (the online maximum and the row sum l = Σ_a p_a of the
//    UNROUNDED p, as flash attention keeps it); p̃_a = bf16(p_a) for the P·Ṽ product, summed in
//    f32; o = (Σ_a p̃_a ṽ_a) / l. With ε = 2^-8 (the bf16 unit roundoff: 8 significand bits), per
//    output element:
//      Δs_a <= (2ε + ε² + (hd + 3)·u·(1 + ε)²)·S_a,   δ = 2·max_a Δs_a + 8u,
//      |o − o_exact| <= (2δ + 2ε + ε² + (L + hd + 16)·u·(1 + ε)²) · Σ_a p_a |v_ad|
//    (2ε + ε²: p̃ and ṽ each within ε relative; the normaliser l is unrounded, so the p rounding
//    is not divided out). Denormal inputs (|x| < 2^-126) may count as 0 (the AMX tiles and
//    vcvtne2ps2bf16 flush them), adding at most 2^-126·Σ|other factor| per dot product.
//    Isa::Amx runs calls of 16 or more query rows on AMX tiles (TDPBF16PS, attention_amx.cc;
//    a partial block padded with zero rows); fewer rows (decode) and the other ISAs round q, k,
//    v and p the same way and run their f32 kernels,
//    so the ISAs agree to f32 summation order only (the tiles sum pairs of products), not to the
//    bit. Results stay bit-identical across thread counts in both modes.
void attention(const OpContext& ctx, const TensorRef& q, const int32_t* q_index, const TensorRef& k,
               const TensorRef& v, const AttnMask& mask, float scale, const TensorRef& out,
               AttentionScratch& scratch);

// ---- convolution and resampling (activations channels-last: [T, H, W, C]) -----------------------

// A Conv3d weight [C_out, C_in, kt, kh, kw] held as one LinearWeight per temporal tap dt,
// w[dt] = [C_out, kh·kw·C_in] with tap-major columns ((dy, dx), then C_in), so each tap is a
// contiguous C_in slice and INT4 groups run along C_in. (Changed from one LinearWeight
// [C_out, kt·kh·kw·C_in]: a packed weight cannot be cut by columns, and per-dt weights let
// conv3d leave out the taps on causal zero frames. The tap-major column order is the same.)
struct Conv3dWeight {
    int64_t c_out = 0, c_in = 0, kt = 1, kh = 1, kw = 1;
    std::vector<LinearWeight> w;  // [kt]
    std::vector<float> bias;      // [c_out] or empty

    // From a checkpoint tensor: F32 or BF16 [C_out, C_in, kt, kh, kw] (or [C_out, C_in, kh, kw],
    // kt = 1), values kept exactly; bias (nullable) any float dtype [C_out].
    static Conv3dWeight from_checkpoint(const TensorView& weight, const TensorView* bias);
    // From a weight already in tap-major columns: [C_out, kt·kh·kw·C_in], F32, BF16 or AWQ INT4
    // (INT4: the group size must divide kh·kw·C_in). bias nullable, [C_out].
    static Conv3dWeight from_tap_major(const WeightView& w, int64_t c_out, int64_t c_in, int64_t kt,
                                       int64_t kh, int64_t kw, const float* bias);
};

struct Conv3dParams {
    int stride_t = 1, stride_h = 1, stride_w = 1;
    // Time: pad_t_front zero frames before the input (causal); none after.
    int pad_t_front = 0;
    // Space: pad_top/left before, pad_bottom/right after (symmetric: all equal; the VAE's
    // downsample: 0, 0, 1, 1).
    int pad_top = 0, pad_bottom = 0, pad_left = 0, pad_right = 0;
};

// y [T', H', W', C_out] = conv3d(x [T, H, W, C_in]) as an implicit GEMM on the linear panel
// kernels (no im2col buffer of the whole input: panels of at most 1024 output pixels). `cache`
// (nullable, [Tc, H, W, C_in], Tc <= pad_t_front) holds real frames that replace the last Tc of
// the front zero frames; taps that fall on the remaining zero frames are skipped, not
// multiplied. T' = (T + pad_t_front − kt) / stride_t + 1, H' = (H + pad_top + pad_bottom − kh) /
// stride_h + 1, W' likewise. Per output: (W[dt0]·x + bias) + W[dt1]·x + ... in dt order, each
// term a linear() of K = kh·kw·C_in. If `accumulate`, y += result.
void conv3d(const OpContext& ctx, const TensorRef& x, const TensorRef* cache, const Conv3dWeight& w,
            const Conv3dParams& p, const TensorRef& y, bool accumulate = false);

// Nearest 2× in space: y [T, 2H, 2W, C] from x [T, H, W, C].
void upsample_nearest2x(const OpContext& ctx, const TensorRef& x, const TensorRef& y);

}  // namespace lancet::kernels
