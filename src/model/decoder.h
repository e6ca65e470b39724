// The MoT decoder of Lance (spec §2) on CPU with f32 activations: per-token und/gen
// weight routing, M-RoPE, the split attention mask, a KV cache with incremental decoding, the
// text and VAE-latent input embeddings, lm_head and llm2vae. LanceWeights holds the weights
// (loaded once, shared), DecoderSession one request's scratch and caches.
//
// Numerics: Lance runs in bf16; this runs every activation in f32 (weights as stored: F32, BF16
// or AWQ INT4), so it is closer to the exact math than the reference implementation is. There is
// no bf16-rounding emulation mode.
#pragma once

#include <array>
#include <cstdint>
#include <functional>
#include <span>
#include <vector>

#include "core/tensor.h"
#include "core/thread_pool.h"
#include "kernels/linear.h"
#include "kernels/ops.h"
#include "model/lance_checkpoint.h"
#include "model/lance_tensors.h"
#include "model/positions.h"

namespace lancet {

// Keys and values of every decoder layer for the tokens pushed so far, stored after q/k-norm and
// RoPE (spec §2.1), per layer as [kv_head][capacity][head_dim] so attention streams one head's
// keys contiguously. Also remembers which cached tokens lie in a noise split (never visible to
// later queries).
class KvCache {
  public:
    KvCache() = default;
    KvCache(const LanceConfig& cfg, size_t capacity = 0);

    size_t size() const { return size_; }
    size_t capacity() const { return capacity_; }
    // Grows the storage to hold `capacity` tokens (keeps the content). forward() calls it when a
    // chunk does not fit; reserving up front avoids the copies.
    void reserve(size_t capacity);
    void clear() { size_ = 0; }
    // Drops tokens from the end (size() becomes n <= size()).
    void truncate(size_t n);
    // Bytes held.
    size_t bytes() const;
    // Whether this cache was made for a model of `cfg`'s shape.
    bool matches(const LanceConfig& cfg) const {
        return layers_ == static_cast<size_t>(cfg.num_hidden_layers) &&
               n_kv_ == static_cast<size_t>(cfg.num_key_value_heads) &&
               hd_ == static_cast<size_t>(cfg.head_dim());
    }

    // Raw storage for DecoderSession (layer l: [kv_head][capacity][head_dim]).

    float* k(int layer) { return k_[layer].data(); }
    float* v(int layer) { return v_[layer].data(); }
    const uint8_t* hidden() const { return hidden_.data(); }
    uint8_t* hidden() { return hidden_.data(); }
    void set_size(size_t n) { size_ = n; }

  private:
    size_t layers_ = 0, n_kv_ = 0, hd_ = 0, size_ = 0, capacity_ = 0;
    std::vector<std::vector<float>> k_, v_;
    std::vector<uint8_t> hidden_;
};

// One chunk of tokens, in sequence order.
struct Batch {
    std::vector<int64_t> token_ids;  // [n]; gen rows conventionally hold video_token_id
    std::vector<uint8_t> is_gen;     // [n]: 1 = VAE-latent token on the gen path; empty = all und
    // Gen rows in order: latent values [n_gen, latent_channels], flow time t in [0,1], PE3D row.
    std::vector<float> latents;
    std::vector<float> timesteps;
    std::vector<int64_t> pe3d_index;
    std::vector<RopePosition> positions;  // [n] M-RoPE (t, h, w)
    std::vector<Split> splits;            // cover the chunk; empty = one causal split
    // Optional input embeddings [n, hidden] replacing the embedding step for every row (callers
    // that splice ViT rows build them with embed_tokens / embed_latents).
    const float* embeddings = nullptr;

    size_t size() const { return token_ids.size(); }
    // Tokens [begin, end) with their gen rows, positions and the parts of the splits inside the
    // range (a cut split keeps its mode). Not for batches with `embeddings`.
    Batch slice(size_t begin, size_t end) const;
};

// Builds a packed Lance sequence split by split (spec §2.4): text runs and VAE-latent blocks
// (<|vision_start|>, one <|video_pad|> per voxel on the gen path, <|vision_end|>), then M-RoPE
// positions by get_rope_index and PE3D indices from 0 per block, and ViT blocks (und
// <|video_pad|> rows whose embeddings the caller supplies).
class SequenceBuilder {
  public:
    explicit SequenceBuilder(const LanceConfig& cfg) : cfg_(cfg) {}
    // A text split (und path).
    SequenceBuilder& text(const std::vector<int64_t>& ids, SplitMode mode = SplitMode::Causal);
    // A latent block of grid (t, h, w): latents [t*h*w, latent_channels] row-major over
    // (t, h, w), one flow time for all of it; mode Full for clean conditioning, Noise for the
    // target.
    SequenceBuilder& latent_block(int64_t t, int64_t h, int64_t w,
                                  const std::vector<float>& latents, float timestep,
                                  SplitMode mode);
    // A ViT block of merged grid (t, h, w) from get_rope_index's pre-merge grid `g` (frames/2,
    // H_px/14, W_px/14): vision_start, t*h*w und <|video_pad|> rows, vision_end, one split of
    // `mode` (Full in Lance). The pad rows' input embeddings are the ViT's output rows, which the
    // caller splices in (Batch::embeddings).
    SequenceBuilder& vit_block(const VisionGrid& g, SplitMode mode = SplitMode::Full);
    size_t size() const { return b_.token_ids.size(); }
    // The vision grids in order of appearance (what mrope_positions takes).
    const std::vector<VisionGrid>& grids() const { return grids_; }
    // The batch with positions filled in.
    Batch build() const;

  private:
    const LanceConfig& cfg_;
    Batch b_;
    std::vector<VisionGrid> grids_;
};

enum class LogitRows { None, Last, All };

// Sees the rows of one path entering a group of linears (LinearInput, model/lance_tensors.h): x [n,
// dim] (n may be a row block of the chunk). Calibration collects activation statistics through it.
using ActivationObserver = std::function<void(int layer, bool gen, LinearInput which,
                                              const float* x, size_t n, size_t dim)>;

struct ForwardOptions {
    LogitRows logits = LogitRows::All;  // Last: only the last und row (decoding)
    bool velocity = true;               // llm2vae on the gen rows
    bool final_hidden = false;          // [n, H] after each row's path's final norm
    bool layer_out = false;             // residual stream after every layer
    ActivationObserver observer;        // optional: called with every linear input
};

// What forward() produced; vectors are reused across calls (no reallocation once large enough).
struct Outputs {
    std::vector<float> logits;  // [logit_rows, vocab]: und rows in order (or the last one)
    size_t logit_rows = 0;
    std::vector<float> velocity;                // [n_gen, latent_channels]
    std::vector<float> final_hidden;            // [n, hidden]
    std::vector<std::vector<float>> layer_out;  // [layers][n, hidden]
};

// One sequence's rows in a batched decode step (DecoderSession::decode_step): a few text tokens
// (und path, one causal split) continuing the sequence held in `cache`, with their M-RoPE
// positions. The rows' keys and values are appended to the cache.
struct DecodeItem {
    std::span<const int64_t> token_ids;       // [n_i], n_i >= 1
    std::span<const RopePosition> positions;  // [n_i]
    KvCache* cache = nullptr;                 // this sequence's own cache
};

// One chunk of DecoderSession::forward_chunks: a batch continuing the tokens of its own cache.
struct ChunkItem {
    const Batch* batch = nullptr;
    KvCache* cache = nullptr;
};

struct DecoderOptions {
    // Logits at ids >= this are -inf (Lance uses len(tokenizer)); <= 0: vocab_size.
    int64_t logits_limit = 0;
    // Which experts to load. The und expert (its layer weights, model.norm, lm_head) runs text
    // rows; the gen expert (_moe_gen weights, norm_moe_gen, the latent bridge) runs VAE-latent
    // rows. Text-only work (chat, perplexity) leaves gen out and holds half the weights.
    bool load_und = true;
    bool load_gen = true;
    // Hold F32 linear weights as BF16, as Lance casts the whole model to bf16 at load: half the
    // memory and bandwidth. Off by default so the f64-reference tests see the stored weights.
    bool bf16_weights = false;
    // The lm_head of an INT4 (AWQ/RTN) checkpoint, which the published format stores in BF16:
    // Stored runs it as stored; Int4 quantizes it at load to INT4 g64 (min-max RTN with a per-group
    // clip search on the weight error, quant/q4.h), so a token reads 0.27x its bytes. Checkpoints
    // without INT4 linears, and an lm_head already stored quantized, are always run as stored.
    enum class LmHead { Stored, Int4 };
    LmHead lm_head = LmHead::Stored;
    // Load the input embeddings (embed_tokens and the gen path's latent bridge) only, not the
    // layers, final norms or lm_head: for layer-by-layer runs (DecoderSession::forward_layer),
    // whose callers bring each layer's weights; forward() then fails.
    bool embeddings_only = false;
};

// One decoder layer's weights of one path (und or gen) as the kernels run them: norms and biases
// in f32, the seven linears repacked. LanceWeights holds one per layer and path; layer-by-layer
// callers (sequential calibration) build their own with load_layer_path.
struct LayerPathWeights {
    std::vector<float> ln, post, q_norm, k_norm, bq, bk, bv;
    kernels::LinearWeight q, k, v, o, gate, up, down;
};

// Loads layer `layer` of the und (gen = false) or gen path of `ck` (original or INT4), F32
// linears held as BF16 when `bf16_weights`. The one loader LanceWeights uses too.
LayerPathWeights load_layer_path(const LanceCheckpoint& ck, int layer, bool gen, bool bf16_weights);

// The decoder's weights, converted and repacked once, immutable afterwards: any number of
// DecoderSessions (requests, CFG's two caches, threads) run over one LanceWeights at the same
// time. The embedding table stays a view into the mapped checkpoint, so `ck` must outlive it.
class LanceWeights {
  public:
    explicit LanceWeights(const LanceCheckpoint& ck, const DecoderOptions& opt = {});
    LanceWeights(const LanceWeights&) = delete;
    LanceWeights& operator=(const LanceWeights&) = delete;

    const LanceConfig& config() const { return cfg_; }
    int64_t logits_limit() const { return logits_limit_; }
    bool has_und() const { return has_und_; }
    bool has_gen() const { return has_gen_; }
    KvCache make_cache(size_t capacity = 0) const { return KvCache(cfg_, capacity); }

    // embed_tokens rows for n ids: out [n, hidden].
    void embed_tokens(const int64_t* ids, size_t n, float* out) const;
    // PE3D row pos_id: out [hidden] (Error when outside the table).
    void pe3d(int64_t pos_id, float* out) const;

  private:
    friend class DecoderSession;
    using PathWeights = LayerPathWeights;
    struct Layer {
        PathWeights path[2];  // und, gen
    };
    void load_gen_bridge(const LanceCheckpoint& ck);

    LanceConfig cfg_;
    int64_t logits_limit_;
    bool bf16_weights_ = false;
    bool has_und_ = true, has_gen_ = true;
    bool embeddings_only_ = false;
    TensorView embed_;
    std::vector<Layer> layers_;
    std::vector<float> norm_[2];
    kernels::LinearWeight lm_head_, vae2llm_, llm2vae_, time0_, time2_;
    std::vector<float> vae2llm_b_, llm2vae_b_, time0_b_, time2_b_;
    // PE3D per-axis codes: row pos_id = t_code[ti] ++ h_code[hi] ++ w_code[wi].
    std::vector<float> pe_t_, pe_h_, pe_w_;
    int pe_dims_[3] = {0, 0, 0};
    int pe_frames_ = 0;
};

// One request's run state over shared weights: scratch buffers and an internal KV cache, plus the
// op context (thread pool, ISA, INT4 activation mode) its calls use, fixed when it is made. A
// session is used by one thread at a time; sessions over the same weights are independent, and
// a session's results do not depend on what other sessions do (bit-identical to running alone).
class DecoderSession {
  public:
    // `weights` must outlive the session. The default context is the process defaults
    // (kernels::OpContext::defaults(): active ISA, activation mode, default pool).
    explicit DecoderSession(const LanceWeights& weights);
    DecoderSession(const LanceWeights& weights, const kernels::OpContext& ctx);

    const LanceWeights& weights() const { return w_; }
    const LanceConfig& config() const { return w_.config(); }
    int64_t logits_limit() const { return w_.logits_limit(); }
    const kernels::OpContext& context() const { return ctx_; }
    KvCache make_cache(size_t capacity = 0) const { return w_.make_cache(capacity); }

    // Runs one chunk after the tokens in `cache` (nullptr: the session's own cache, emptied
    // first). With append = true its keys/values stay in the cache; with false the cache is left
    // as it was (a denoising step re-running the noisy block).
    void forward(const Batch& batch, KvCache* cache, bool append, Outputs& out,
                 const ForwardOptions& opt = {});

    // Continuous batching: one step of several sequences, each against its own cache. The linears
    // run once on all rows stacked (sum of n_i rows: each weight is read once for the whole
    // step); attention runs per sequence against that sequence's cache. out.logits [items, vocab]
    // holds each item's last row, in item order (out.logit_rows = items.size()); other outputs
    // are left alone. An item's result equals forward() of its rows alone on its cache:
    // bit-identical when every linear is row-independent for any row count (W4A8 on INT4
    // weights, lm_head included: linear.h fixes its per-element arithmetic; every other op here
    // is per row), else within f32 rounding of another summation order (the f32 kernels keep
    // more accumulators for fewer rows and switch to the GEMM above 8 rows).
    void decode_step(std::span<const DecodeItem> items, Outputs& out);

    // Several chunks in one pass, each continuing its own cache (CFG: the conditional and the
    // unconditional noisy block of a denoising step): the linears of each path run once on the
    // rows of all chunks stacked (each weight is read once for the step, at twice the rows);
    // attention runs per chunk against its own cache, one chunk after the other over the whole
    // pool. append as in forward(). out.velocity [sum of n_gen_i, latent_channels] holds the gen
    // rows chunk after chunk, each chunk's in sequence order; the only outputs (opt.logits must
    // be None, no final_hidden / layer_out; the observer sees each path's stacked rows). A
    // chunk's velocity equals forward() of it alone on its cache under decode_step's condition
    // (bit-identical when the layer linears are row-independent, e.g. W4A8 on INT4 weights; the
    // embeddings and llm2vae run per chunk as forward() runs them). Chunks share no cache.
    void forward_chunks(std::span<const ChunkItem> items, bool append, Outputs& out,
                        const ForwardOptions& opt = {});

    // Input embeddings: embed_tokens rows; vae2llm(latent) + TimestepEmbedder(t) + PE3D[pos_id].
    void embed_tokens(const int64_t* ids, size_t n, float* out) const {
        w_.embed_tokens(ids, n, out);
    }
    void embed_latents(const float* latents, const float* t, const int64_t* pe3d_index, size_t n,
                       float* out);
    // TimestepEmbedder(t) for n values (Linear -> SiLU -> Linear).
    void timestep_embed(const float* t, size_t n, float* out);
    // PE3D row pos_id (Error when outside the table).
    void pe3d(int64_t pos_id, float* out) const { w_.pe3d(pos_id, out); }

    // Layer by layer (sequential calibration): the steps of forward() for one whole sequence
    // (no prior cache), split so the caller keeps the residual stream between layers and brings
    // each layer's weights. x [n, hidden] in sequence order: embed_inputs writes the input
    // embeddings forward() starts from; forward_layer replaces layer `layer`'s input by its
    // output, running the und rows with `und` and the gen rows with `gen` (either may be null
    // when the batch has no rows of that path). Running every layer this way with the weights
    // LanceWeights holds gives forward()'s layer_out bit for bit.
    void embed_inputs(const Batch& batch, float* x);
    void forward_layer(const Batch& batch, int layer, const LayerPathWeights* und,
                       const LayerPathWeights* gen, float* x, const ActivationObserver& observer);

  private:
    void check_batch(const Batch& b) const;
    // One chunk's rows attend together against `cache` under `mask`: rows [row0, row0 + rows)
    // and, when rows1 > 0, [row1, row1 + rows1) after them (a stacked chunk's und rows lie
    // before every chunk's gen rows); their keys/values go to the cache slots n_cached + perm[r]
    // (perm: the row's position in its own chunk). forward() and forward_layer() have one group,
    // decode_step() and forward_chunks() one per sequence.
    struct AttnGroup {
        size_t row0 = 0, rows = 0;
        size_t row1 = 0, rows1 = 0;
        KvCache* cache = nullptr;
        kernels::AttnMask mask;
    };
    // Row order of the chunks stacked (every chunk's und rows, then every chunk's gen rows, each
    // chunk's in sequence order: s_.perm), RoPE angles (s_.rope), each chunk's split mask after
    // its cache's tokens (s_.groups); returns the number of und rows.
    size_t prepare(std::span<const ChunkItem> items);
    // The input embeddings into s_.x in that row order (each chunk's gen rows embedded alone).
    void embed_rows(std::span<const ChunkItem> items);
    // paths: the und and gen weights of layer l (null: LanceWeights' own). parallel_groups: one
    // group per pool share at a time (many short sequences) instead of one after the other.
    void run_layer(int l, size_t n, size_t n_und, std::span<const AttnGroup> groups,
                   const ActivationObserver& observer,
                   const LayerPathWeights* const* paths = nullptr, bool parallel_groups = false);

    const LanceWeights& w_;
    kernels::OpContext ctx_;

    // Scratch, grown on demand and reused.
    struct Scratch {
        std::vector<int32_t> perm, split_of, split_end, perm_g;
        std::vector<AttnGroup> groups;
        std::vector<kernels::AttnSplit> modes;
        std::vector<float> x, h, q, k, v, att, o, gate, up, feat, tmp, q_g, att_g;
        std::vector<RopePosition> rope_pos;
        kernels::RopeTable rope;
        std::vector<float> t_unique;
        std::vector<int32_t> t_slot;
        kernels::AttentionScratch attn;
        std::vector<kernels::AttentionScratch> attn_shares;  // per pool share (decode_step)
        KvCache own_cache;
    } s_;
};

}  // namespace lancet
