// LanceWeights (loading, embeddings) and DecoderSession (the per-path MoT layer loop and the
// output heads).
#include "model/decoder.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>

#include "core/error.h"
#include "core/numeric.h"
#include "model/lance_tensors.h"
#include "model/weight_load.h"
#include "quant/q4.h"

namespace lancet {

namespace {

constexpr size_t kMlpRows = 256;  // MLP row block: bounds the [rows, intermediate] buffers

// The INT4 g64 form of the [out, in] lm_head for the kernels (DecoderOptions::LmHead::Int4, the
// quantizer of quant::quantize_rtn_clip_search). Rows are converted to f32 one at a time (per
// thread), so the load holds no f32 copy of the whole [vocab, hidden] matrix.
kernels::LinearWeight quantize_lm_head_int4(const TensorView& t, size_t out, size_t in,
                                            ThreadPool& pool) {
    const size_t es = dtype_size(t.dtype);
    const quant::QuantizedMatrix q = quant::quantize_rtn_clip_search(
        out, in,
        [&](size_t o, float* row) {
            convert_to_f32(
                TensorView{t.dtype, {static_cast<int64_t>(in)}, t.data + o * in * es, in * es},
                row);
        },
        pool);
    return kernels::LinearWeight::from_awq_int4(q.qweight.data(), q.scales.data(), q.zeros.data(),
                                                out, in, static_cast<size_t>(q.group_size));
}

static_assert(static_cast<int>(SplitMode::Causal) == static_cast<int>(kernels::AttnSplit::Causal) &&
              static_cast<int>(SplitMode::Full) == static_cast<int>(kernels::AttnSplit::Full) &&
              static_cast<int>(SplitMode::Noise) == static_cast<int>(kernels::AttnSplit::Noise));

kernels::TensorRef view(const float* x, size_t n, size_t dim) {
    return kernels::TensorRef::matrix(x, n, dim);
}

// y[n, out] = x[n, in] · Wᵀ + bias on dense rows, with the session's context.
void lin(const kernels::OpContext& ctx, const float* x, size_t n, const kernels::LinearWeight& w,
         const float* bias, float* y) {
    kernels::linear(ctx, view(x, n, w.in()), w, bias, view(y, n, w.out()));
}

template <typename T>
void grow(std::vector<T>& v, size_t n) {
    if (v.size() < n) v.resize(n);
}

}  // namespace

// ---- KvCache --------------------------------------------------------------------------------

KvCache::KvCache(const LanceConfig& cfg, size_t capacity)
    : layers_(cfg.num_hidden_layers),
      n_kv_(cfg.num_key_value_heads),
      hd_(cfg.head_dim()),
      k_(layers_),
      v_(layers_) {
    reserve(capacity);
}

void KvCache::reserve(size_t capacity) {
    if (capacity <= capacity_) return;
    for (size_t l = 0; l < layers_; ++l)
        for (auto* buf : {&k_[l], &v_[l]}) {
            std::vector<float> grown(n_kv_ * capacity * hd_);
            for (size_t g = 0; g < n_kv_; ++g)
                std::copy_n(buf->data() + g * capacity_ * hd_, size_ * hd_,
                            grown.data() + g * capacity * hd_);
            buf->swap(grown);
        }
    hidden_.resize(capacity);
    capacity_ = capacity;
}

void KvCache::truncate(size_t n) {
    if (n > size_) fail("KvCache::truncate: ", n, " > size ", size_);
    size_ = n;
}

size_t KvCache::bytes() const { return 2 * layers_ * n_kv_ * capacity_ * hd_ * 4 + capacity_; }

// ---- Batch and SequenceBuilder --------------------------------------------------------------

Batch Batch::slice(size_t begin, size_t end) const {
    if (begin > end || end > size()) fail("Batch::slice: [", begin, ", ", end, ") of ", size());
    if (embeddings) fail("Batch::slice: not for batches with embeddings");
    Batch s;
    s.token_ids.assign(token_ids.begin() + begin, token_ids.begin() + end);
    if (!is_gen.empty()) s.is_gen.assign(is_gen.begin() + begin, is_gen.begin() + end);
    if (!positions.empty()) s.positions.assign(positions.begin() + begin, positions.begin() + end);
    size_t g0 = 0, g1 = 0;
    for (size_t i = 0; i < end && !is_gen.empty(); ++i) {
        if (i < begin) g0 += is_gen[i] != 0;
        g1 += is_gen[i] != 0;
    }
    const size_t C = g1 > g0 ? latents.size() / timesteps.size() : 0;
    s.latents.assign(latents.begin() + g0 * C, latents.begin() + g1 * C);
    s.timesteps.assign(timesteps.begin() + g0, timesteps.begin() + g1);
    s.pe3d_index.assign(pe3d_index.begin() + g0, pe3d_index.begin() + g1);
    size_t at = 0;
    for (const Split& sp : splits) {
        const size_t a = std::max(at, begin), e = std::min<size_t>(at + sp.len, end);
        if (a < e) s.splits.push_back({static_cast<int64_t>(e - a), sp.mode});
        at += sp.len;
    }
    return s;
}

SequenceBuilder& SequenceBuilder::text(const std::vector<int64_t>& ids, SplitMode mode) {
    if (ids.empty()) return *this;
    b_.token_ids.insert(b_.token_ids.end(), ids.begin(), ids.end());
    b_.is_gen.insert(b_.is_gen.end(), ids.size(), 0);
    b_.splits.push_back({static_cast<int64_t>(ids.size()), mode});
    return *this;
}

SequenceBuilder& SequenceBuilder::latent_block(int64_t t, int64_t h, int64_t w,
                                               const std::vector<float>& latents, float timestep,
                                               SplitMode mode) {
    const int64_t n = t * h * w;
    if (t < 1 || h < 1 || w < 1) fail("latent block grid (", t, ", ", h, ", ", w, ") is empty");
    if (latents.size() != static_cast<size_t>(n * cfg_.latent_channels))
        fail("latent block (", t, ", ", h, ", ", w, ") needs ", n * cfg_.latent_channels,
             " latent values, got ", latents.size());
    b_.token_ids.push_back(cfg_.vision_start_token_id);
    b_.token_ids.insert(b_.token_ids.end(), n, cfg_.video_token_id);
    b_.token_ids.push_back(cfg_.vision_end_token_id);
    b_.is_gen.push_back(0);
    b_.is_gen.insert(b_.is_gen.end(), n, 1);
    b_.is_gen.push_back(0);
    b_.latents.insert(b_.latents.end(), latents.begin(), latents.end());
    b_.timesteps.insert(b_.timesteps.end(), n, timestep);
    const auto pe = pe3d_indices(t, h, w, cfg_.max_latent_size);
    b_.pe3d_index.insert(b_.pe3d_index.end(), pe.begin(), pe.end());
    b_.splits.push_back({n + 2, mode});
    grids_.push_back(vae_block_grid(t, h, w));
    return *this;
}

SequenceBuilder& SequenceBuilder::vit_block(const VisionGrid& g, SplitMode mode) {
    const int64_t m = cfg_.vision.spatial_merge_size;
    if (g.t < 1 || g.h < m || g.w < m || g.h % m || g.w % m)
        fail("ViT block grid (", g.t, ", ", g.h, ", ", g.w,
             ") is not a positive multiple of the spatial merge ", m);
    const int64_t n = g.t * (g.h / m) * (g.w / m);
    b_.token_ids.push_back(cfg_.vision_start_token_id);
    b_.token_ids.insert(b_.token_ids.end(), n, cfg_.video_token_id);
    b_.token_ids.push_back(cfg_.vision_end_token_id);
    b_.is_gen.insert(b_.is_gen.end(), n + 2, 0);
    b_.splits.push_back({n + 2, mode});
    grids_.push_back(g);
    return *this;
}

Batch SequenceBuilder::build() const {
    Batch b = b_;
    b.positions = mrope_positions(b.token_ids, grids_, cfg_);
    return b;
}

// ---- loading --------------------------------------------------------------------------------

LanceWeights::LanceWeights(const LanceCheckpoint& ck, const DecoderOptions& opt)
    : cfg_(ck.config()),
      logits_limit_(opt.logits_limit > 0
                        ? std::min<int64_t>(opt.logits_limit, ck.config().vocab_size)
                        : ck.config().vocab_size),
      bf16_weights_(opt.bf16_weights),
      has_und_(opt.load_und),
      has_gen_(opt.load_gen) {
    if (!opt.load_und && !opt.load_gen)
        fail(ck.dir(), ": neither the und nor the gen expert asked for");
    // A tokenizer larger than the embedding table is the wrong pairing of files, not something
    // to clamp silently: its upper ids could be encoded but never embedded.
    if (opt.logits_limit > cfg_.vocab_size)
        fail(ck.dir(), ": the tokenizer has ", opt.logits_limit,
             " tokens but llm_config.json's vocab_size is ", cfg_.vocab_size);
    const size_t H = cfg_.hidden_size, hd = cfg_.head_dim();
    if (cfg_.num_attention_heads % cfg_.num_key_value_heads != 0)
        fail(ck.dir(), ": num_attention_heads is not a multiple of num_key_value_heads");
    const int msum = cfg_.mrope_section[0] + cfg_.mrope_section[1] + cfg_.mrope_section[2];
    if (static_cast<size_t>(msum) * 2 != hd)
        fail(ck.dir(), ": mrope_section sums to ", msum, " but head_dim/2 is ", hd / 2);
    embed_ = ck.tensor(lance_names::kEmbedTokens);
    if (embed_.numel() != static_cast<int64_t>(cfg_.vocab_size) * cfg_.hidden_size)
        fail(ck.dir(), ": embed_tokens has the wrong size");
    embeddings_only_ = opt.embeddings_only;
    if (!embeddings_only_) {
        layers_.resize(cfg_.num_hidden_layers);
        for (int l = 0; l < cfg_.num_hidden_layers; ++l)
            for (int p = 0; p < 2; ++p)
                if (p == 0 ? opt.load_und : opt.load_gen)
                    layers_[l].path[p] = load_layer_path(ck, l, p == 1, bf16_weights_);
    }
    if (has_und_ && !embeddings_only_) {
        norm_[0] = load_f32(ck, lance_names::kNorm, H);
        const std::string head = lance_names::kLmHead;
        if (opt.lm_head == DecoderOptions::LmHead::Int4 && ck.quant_meta() &&
            !ck.is_quantized(head)) {
            const TensorView t = ck.tensor(head + ".weight");
            if (t.numel() != static_cast<int64_t>(cfg_.vocab_size) * cfg_.hidden_size)
                fail(ck.dir(), ": ", head, ".weight has ", t.numel(), " values, expected ",
                     cfg_.vocab_size * H);
            lm_head_ = quantize_lm_head_int4(t, cfg_.vocab_size, H, default_pool());
            ck.release(t);
        } else {
            lm_head_ = load_linear(ck, head, cfg_.vocab_size, H, bf16_weights_);
        }
    }
    if (has_gen_) load_gen_bridge(ck);
}

LayerPathWeights load_layer_path(const LanceCheckpoint& ck, int l, bool gen, bool bf16_weights) {
    const LanceConfig& cfg = ck.config();
    if (l < 0 || l >= cfg.num_hidden_layers)
        fail(ck.dir(), ": layer ", l, " is outside 0..", cfg.num_hidden_layers - 1);
    const size_t H = cfg.hidden_size, hd = cfg.head_dim(), qd = cfg.q_dim(), kvd = cfg.kv_dim(),
                 I = cfg.intermediate_size;
    const PathNames n = path_names(l, gen);
    LayerPathWeights w;
    w.ln = load_f32(ck, n.input_norm, H);
    w.post = load_f32(ck, n.post_norm, H);
    w.q_norm = load_f32(ck, n.q_norm, hd);
    w.k_norm = load_f32(ck, n.k_norm, hd);
    w.bq = load_f32(ck, n.bias(PathLinear::Q), qd);
    w.bk = load_f32(ck, n.bias(PathLinear::K), kvd);
    w.bv = load_f32(ck, n.bias(PathLinear::V), kvd);
    w.q = load_linear(ck, n[PathLinear::Q], qd, H, bf16_weights);
    w.k = load_linear(ck, n[PathLinear::K], kvd, H, bf16_weights);
    w.v = load_linear(ck, n[PathLinear::V], kvd, H, bf16_weights);
    w.o = load_linear(ck, n[PathLinear::O], H, qd, bf16_weights);
    w.gate = load_linear(ck, n[PathLinear::Gate], I, H, bf16_weights);
    w.up = load_linear(ck, n[PathLinear::Up], I, H, bf16_weights);
    w.down = load_linear(ck, n[PathLinear::Down], H, I, bf16_weights);
    return w;
}

DecoderSession::DecoderSession(const LanceWeights& weights)
    : DecoderSession(weights, kernels::OpContext::defaults()) {}

DecoderSession::DecoderSession(const LanceWeights& weights, const kernels::OpContext& ctx)
    : w_(weights), ctx_(ctx) {
    s_.own_cache = KvCache(w_.cfg_, 0);
}

void LanceWeights::load_gen_bridge(const LanceCheckpoint& ck) {
    const size_t H = cfg_.hidden_size, C = cfg_.latent_channels, F = cfg_.time_freq_dim;
    norm_[1] = load_f32(ck, lance_names::kNormGen, H);
    vae2llm_ = load_linear(ck, lance_names::kVae2Llm, H, C, bf16_weights_);
    vae2llm_b_ = load_f32(ck, lance_names::bias(lance_names::kVae2Llm), H);
    llm2vae_ = load_linear(ck, lance_names::kLlm2Vae, C, H, bf16_weights_);
    llm2vae_b_ = load_f32(ck, lance_names::bias(lance_names::kLlm2Vae), C);
    time0_ = load_linear(ck, lance_names::kTimeMlp0, H, F, bf16_weights_);
    time0_b_ = load_f32(ck, lance_names::bias(lance_names::kTimeMlp0), H);
    time2_ = load_linear(ck, lance_names::kTimeMlp2, H, H, bf16_weights_);
    time2_b_ = load_f32(ck, lance_names::bias(lance_names::kTimeMlp2), H);

    // PE3D: each axis code depends on one coordinate only, so slice it out of pe3d_row for
    // (ti,0,0), (0,hi,0), (0,0,wi) once instead of evaluating whole rows per token.
    const int L = cfg_.max_latent_size;
    pe_frames_ = cfg_.max_num_frames / 4 + 1;
    int d = cfg_.hidden_size / 3;
    if (d % 2) --d;
    pe_dims_[0] = pe_dims_[1] = d;
    pe_dims_[2] = cfg_.hidden_size - 2 * d;
    std::vector<double> row(H);
    pe_t_.resize(static_cast<size_t>(pe_frames_) * d);
    pe_h_.resize(static_cast<size_t>(L) * d);
    pe_w_.resize(static_cast<size_t>(L) * pe_dims_[2]);
    for (int t = 0; t < pe_frames_; ++t) {
        pe3d_row(cfg_.hidden_size, static_cast<int64_t>(t) * L * L, L, row.data());
        for (int i = 0; i < d; ++i) pe_t_[t * d + i] = static_cast<float>(row[i]);
    }
    for (int i = 0; i < L; ++i) {
        pe3d_row(cfg_.hidden_size, static_cast<int64_t>(i) * L, L, row.data());
        for (int c = 0; c < d; ++c) pe_h_[i * d + c] = static_cast<float>(row[d + c]);
        pe3d_row(cfg_.hidden_size, i, L, row.data());
        for (int c = 0; c < pe_dims_[2]; ++c)
            pe_w_[i * pe_dims_[2] + c] = static_cast<float>(row[2 * d + c]);
    }
}

// ---- embeddings -----------------------------------------------------------------------------

void LanceWeights::embed_tokens(const int64_t* ids, size_t n, float* out) const {
    const size_t H = cfg_.hidden_size, es = dtype_size(embed_.dtype);
    for (size_t r = 0; r < n; ++r) {
        if (ids[r] < 0 || ids[r] >= cfg_.vocab_size)
            fail("token id ", ids[r], " at ", r, " is outside the vocabulary (", cfg_.vocab_size,
                 ")");
        const uint8_t* src = embed_.data + static_cast<size_t>(ids[r]) * H * es;
        float* dst = out + r * H;
        if (embed_.dtype == DType::F32) {
            std::memcpy(dst, src, H * 4);
        } else if (embed_.dtype == DType::BF16) {
            for (size_t i = 0; i < H; ++i) {
                uint16_t u;
                std::memcpy(&u, src + 2 * i, 2);
                dst[i] = bf16_to_f32(u);
            }
        } else {
            convert_to_f32(TensorView{embed_.dtype, {static_cast<int64_t>(H)}, src, H * es}, dst);
        }
    }
}

void LanceWeights::pe3d(int64_t pos_id, float* out) const {
    const int64_t L = cfg_.max_latent_size;
    if (pos_id < 0 || pos_id >= pe_frames_ * L * L)
        fail("PE3D index ", pos_id, " is outside the table (", pe_frames_ * L * L, " rows)");
    const int64_t t = pos_id / (L * L), h = (pos_id / L) % L, w = pos_id % L;
    const int d0 = pe_dims_[0], d2 = pe_dims_[2];
    std::copy_n(&pe_t_[t * d0], d0, out);
    std::copy_n(&pe_h_[h * d0], d0, out + d0);
    std::copy_n(&pe_w_[w * d2], d2, out + 2 * d0);
}

void DecoderSession::timestep_embed(const float* t, size_t n, float* out) {
    const size_t H = w_.cfg_.hidden_size, F = w_.cfg_.time_freq_dim;
    grow(s_.feat, n * F);
    grow(s_.tmp, n * H);
    for (size_t r = 0; r < n; ++r) timestep_features(t[r], F, &s_.feat[r * F]);
    lin(ctx_, s_.feat.data(), n, w_.time0_, w_.time0_b_.data(), s_.tmp.data());
    const kernels::TensorRef h = view(s_.tmp.data(), n, H);
    kernels::silu(ctx_, h, h);
    lin(ctx_, s_.tmp.data(), n, w_.time2_, w_.time2_b_.data(), out);
}

void DecoderSession::embed_latents(const float* latents, const float* t, const int64_t* pe3d_index,
                                   size_t n, float* out) {
    const size_t H = w_.cfg_.hidden_size;
    lin(ctx_, latents, n, w_.vae2llm_, w_.vae2llm_b_.data(), out);
    // A block shares one t (or two: clean 0 and the step's t): embed each distinct value once.
    s_.t_unique.clear();
    s_.t_slot.resize(n);
    for (size_t r = 0; r < n; ++r) {
        auto it = std::find(s_.t_unique.begin(), s_.t_unique.end(), t[r]);
        if (it == s_.t_unique.end()) {
            s_.t_unique.push_back(t[r]);
            it = s_.t_unique.end() - 1;
        }
        s_.t_slot[r] = static_cast<int32_t>(it - s_.t_unique.begin());
    }
    std::vector<float>& temb = s_.o;  // free outside run_layer
    grow(temb, s_.t_unique.size() * H);
    // One call per value, so a token's embedding never depends on which other t values share
    // the chunk (the kernels may pick a different path for a different row count).
    for (size_t u = 0; u < s_.t_unique.size(); ++u)
        timestep_embed(&s_.t_unique[u], 1, &temb[u * H]);
    grow(s_.h, H);
    for (size_t r = 0; r < n; ++r) {
        w_.pe3d(pe3d_index[r], s_.h.data());
        float* o = out + r * H;
        const float* te = &temb[s_.t_slot[r] * H];
        for (size_t i = 0; i < H; ++i) o[i] += te[i] + s_.h[i];
    }
}

// ---- forward --------------------------------------------------------------------------------

void DecoderSession::check_batch(const Batch& b) const {
    const size_t n = b.size();
    if (n == 0) fail("forward: empty batch");
    if (!b.is_gen.empty() && b.is_gen.size() != n)
        fail("forward: is_gen has ", b.is_gen.size(), " entries for ", n, " tokens");
    size_t n_gen = 0;
    for (uint8_t g : b.is_gen) n_gen += g != 0;
    if (n_gen < n && !w_.has_und_)
        fail("forward: the batch has ", n - n_gen,
             " text tokens but the decoder was loaded without the und path");
    if (n_gen > 0 && !w_.has_gen_)
        fail("forward: the batch has ", n_gen,
             " latent tokens but the decoder was loaded without the gen path");
    if (!b.embeddings) {
        if (b.latents.size() != n_gen * w_.cfg_.latent_channels)
            fail("forward: latents hold ", b.latents.size(), " values for ", n_gen,
                 " gen tokens of ", w_.cfg_.latent_channels, " channels");
        if (b.timesteps.size() != n_gen || b.pe3d_index.size() != n_gen)
            fail("forward: timesteps/pe3d_index need one entry per gen token (", n_gen, ")");
    }
    if (b.positions.size() != n)
        fail("forward: ", b.positions.size(), " positions for ", n, " tokens");
    if (!b.splits.empty()) check_splits(b.splits, n, "forward");
}

size_t DecoderSession::prepare(std::span<const ChunkItem> items) {
    const size_t hd = w_.cfg_.head_dim();
    size_t n = 0, n_und = 0;
    for (const ChunkItem& it : items) {
        const Batch& b = *it.batch;
        KvCache& cache = *it.cache;
        const size_t m = b.size(), P = cache.size();
        // Geometric growth: decoding without a reservation must not copy the cache every token.
        if (P + m > cache.capacity()) cache.reserve(std::max(P + m, cache.capacity() * 3 / 2 + 64));
        n += m;
        for (size_t i = 0; i < m; ++i) n_und += b.is_gen.empty() || !b.is_gen[i];
    }

    // Internal row order: the und rows of every chunk, then the gen rows of every chunk, each
    // chunk's in sequence order, so every weight set sees one contiguous block of rows.
    auto& perm = s_.perm;
    perm.resize(n);
    s_.rope_pos.resize(n);
    s_.groups.assign(items.size(), AttnGroup{});
    size_t und_at = 0, gen_at = n_und, splits = 0;
    for (size_t c = 0; c < items.size(); ++c) {
        const Batch& b = *items[c].batch;
        AttnGroup& g = s_.groups[c];
        g.row0 = und_at;
        for (size_t i = 0; i < b.size(); ++i)
            if (b.is_gen.empty() || !b.is_gen[i]) {
                perm[und_at] = static_cast<int32_t>(i);
                s_.rope_pos[und_at++] = b.positions[i];
            }
        g.rows = und_at - g.row0;
        g.row1 = gen_at;
        for (size_t i = 0; i < b.size() && !b.is_gen.empty(); ++i)
            if (b.is_gen[i]) {
                perm[gen_at] = static_cast<int32_t>(i);
                s_.rope_pos[gen_at++] = b.positions[i];
            }
        g.rows1 = gen_at - g.row1;
        // One chunk (forward()), or a chunk of one path only: one contiguous range.
        if (g.rows == 0) std::swap(g.row0, g.row1), std::swap(g.rows, g.rows1);
        if (g.rows1 && g.row0 + g.rows == g.row1) g.rows += g.rows1, g.rows1 = 0;
        splits += b.splits.empty() ? 1 : b.splits.size();
    }
    kernels::rope_angles_mrope(s_.rope_pos.data(), n, hd, w_.cfg_.mrope_section, w_.cfg_.rope_theta,
                               s_.rope);

    // Split bookkeeping in sequence order, chunk after chunk (sized first: the masks point in).
    s_.split_of.resize(n);
    s_.modes.resize(splits);
    s_.split_end.resize(splits);
    for (size_t c = 0, at0 = 0, sp0 = 0; c < items.size(); ++c) {
        const Batch& b = *items[c].batch;
        KvCache& cache = *items[c].cache;
        const size_t m = b.size(), P = cache.size();
        int32_t* split_of = &s_.split_of[at0];
        kernels::AttnSplit* modes = &s_.modes[sp0];
        int32_t* split_end = &s_.split_end[sp0];
        if (b.splits.empty()) {
            std::fill(split_of, split_of + m, 0);
            modes[0] = kernels::AttnSplit::Causal;
            split_end[0] = static_cast<int32_t>(m);
            sp0 += 1;
        } else {
            size_t at = 0;
            for (size_t sp = 0; sp < b.splits.size(); ++sp) {
                for (int64_t i = 0; i < b.splits[sp].len; ++i)
                    split_of[at++] = static_cast<int32_t>(sp);
                modes[sp] = static_cast<kernels::AttnSplit>(b.splits[sp].mode);
                split_end[sp] = static_cast<int32_t>(at);
            }
            sp0 += b.splits.size();
        }
        for (size_t i = 0; i < m; ++i)
            cache.hidden()[P + i] = modes[split_of[i]] == kernels::AttnSplit::Noise;
        AttnGroup& g = s_.groups[c];
        g.cache = &cache;
        kernels::AttnMask& mask = g.mask;
        mask = {};
        mask.kind = kernels::AttnMask::Kind::Splits;
        mask.n_cached = P;
        mask.cached_hidden = cache.hidden();
        mask.split_of = split_of;
        mask.modes = modes;
        mask.split_end = split_end;
        at0 += m;
    }
    return n_und;
}

void DecoderSession::embed_rows(std::span<const ChunkItem> items) {
    const size_t H = w_.cfg_.hidden_size;
    size_t n = 0;
    for (const ChunkItem& it : items) n += it.batch->size();
    grow(s_.x, n * H);
    float* x = s_.x.data();
    const auto& perm = s_.perm;
    for (size_t c = 0; c < items.size(); ++c) {
        const Batch& b = *items[c].batch;
        const AttnGroup& g = s_.groups[c];
        // The chunk's rows: [row0, row0 + rows) then [row1, row1 + rows1).
        const size_t seg[2][2] = {{g.row0, g.rows}, {g.row1, g.rows1}};
        if (b.embeddings) {
            for (const auto& sg : seg)
                for (size_t r = sg[0]; r < sg[0] + sg[1]; ++r)
                    std::copy_n(b.embeddings + perm[r] * H, H, x + r * H);
            continue;
        }
        for (const auto& sg : seg)
            for (size_t r = sg[0]; r < sg[0] + sg[1]; ++r)
                if (b.is_gen.empty() || !b.is_gen[perm[r]])
                    w_.embed_tokens(&b.token_ids[perm[r]], 1, x + r * H);
        // The chunk's gen rows are one contiguous range in sequence order (the last segment);
        // embed_latents uses s_.tmp, s_.feat, s_.o and s_.h, never s_.x.
        const size_t n_gen = b.timesteps.size();
        if (n_gen) {
            const size_t r0 = g.rows1 ? g.row1 : g.row0 + g.rows - n_gen;
            embed_latents(b.latents.data(), b.timesteps.data(), b.pe3d_index.data(), n_gen,
                          x + r0 * H);
        }
    }
}

void DecoderSession::embed_inputs(const Batch& b, float* out) {
    check_batch(b);
    const size_t n = b.size(), H = w_.cfg_.hidden_size;
    KvCache& cache = s_.own_cache;
    cache.clear();
    const ChunkItem item{&b, &cache};
    prepare(std::span<const ChunkItem>(&item, 1));
    embed_rows(std::span<const ChunkItem>(&item, 1));
    for (size_t r = 0; r < n; ++r) std::copy_n(&s_.x[r * H], H, out + s_.perm[r] * H);
}

void DecoderSession::forward_layer(const Batch& b, int l, const LayerPathWeights* und,
                                   const LayerPathWeights* gen, float* x,
                                   const ActivationObserver& observer) {
    check_batch(b);
    if (l < 0 || l >= w_.cfg_.num_hidden_layers)
        fail("forward_layer: layer ", l, " is outside 0..", w_.cfg_.num_hidden_layers - 1);
    const size_t n = b.size(), H = w_.cfg_.hidden_size;
    KvCache& cache = s_.own_cache;
    if (!cache.matches(w_.cfg_)) fail("forward_layer: the KV cache was made for another model");
    cache.clear();
    const ChunkItem item{&b, &cache};
    const size_t n_und = prepare(std::span<const ChunkItem>(&item, 1));
    if ((n_und > 0 && !und) || (n_und < n && !gen))
        fail("forward_layer: layer ", l, ": no weights for the batch's ",
             n_und > 0 && !und ? "und" : "gen", " rows");
    grow(s_.x, n * H);
    for (size_t r = 0; r < n; ++r) std::copy_n(x + s_.perm[r] * H, H, &s_.x[r * H]);
    const LayerPathWeights* paths[2] = {und, gen};
    run_layer(l, n, n_und, s_.groups, observer, paths);
    for (size_t r = 0; r < n; ++r) std::copy_n(&s_.x[r * H], H, x + s_.perm[r] * H);
}

void DecoderSession::forward(const Batch& b, KvCache* cache_in, bool append, Outputs& out,
                             const ForwardOptions& opt) {
    check_batch(b);
    if (w_.embeddings_only_)
        fail("forward: the weights were loaded with embeddings only (layer-by-layer runs)");
    const size_t n = b.size(), H = w_.cfg_.hidden_size;
    KvCache& cache = cache_in ? *cache_in : s_.own_cache;
    if (!cache.matches(w_.cfg_)) fail("forward: the KV cache was made for another model shape");
    if (!cache_in) cache.clear();
    const size_t P = cache.size();
    const ChunkItem item{&b, &cache};
    const size_t n_und = prepare(std::span<const ChunkItem>(&item, 1));
    embed_rows(std::span<const ChunkItem>(&item, 1));
    const auto& perm = s_.perm;
    const size_t n_gen = n - n_und;
    float* x = s_.x.data();

    if (opt.layer_out) out.layer_out.resize(w_.cfg_.num_hidden_layers);
    for (int l = 0; l < w_.cfg_.num_hidden_layers; ++l) {
        run_layer(l, n, n_und, s_.groups, opt.observer);
        if (opt.layer_out) {
            out.layer_out[l].resize(n * H);
            for (size_t r = 0; r < n; ++r)
                std::copy_n(x + r * H, H, &out.layer_out[l][perm[r] * H]);
        }
    }
    cache.set_size(append ? P + n : P);

    // Final norm per path, then the heads.
    grow(s_.h, n * H);
    float* fin = s_.h.data();
    const float eps = static_cast<float>(w_.cfg_.rms_norm_eps);
    const kernels::OpContext ctx = ctx_;
    kernels::rms_norm(ctx, view(x, n_und, H), w_.norm_[0].data(), eps, view(fin, n_und, H));
    kernels::rms_norm(ctx, view(x + n_und * H, n_gen, H), w_.norm_[1].data(), eps,
                      view(fin + n_und * H, n_gen, H));
    if (opt.final_hidden) {
        out.final_hidden.resize(n * H);
        for (size_t r = 0; r < n; ++r) std::copy_n(fin + r * H, H, &out.final_hidden[perm[r] * H]);
    }
    out.logit_rows = 0;
    if (opt.logits != LogitRows::None && n_und > 0) {
        const size_t first = opt.logits == LogitRows::Last ? n_und - 1 : 0, V = w_.cfg_.vocab_size;
        out.logit_rows = n_und - first;
        out.logits.resize(out.logit_rows * V);
        lin(ctx_, fin + first * H, out.logit_rows, w_.lm_head_, nullptr, out.logits.data());
        for (size_t r = 0; r < out.logit_rows; ++r)
            std::fill(out.logits.begin() + r * V + w_.logits_limit_,
                      out.logits.begin() + (r + 1) * V, -std::numeric_limits<float>::infinity());
    }
    if (opt.velocity) {
        out.velocity.resize(n_gen * w_.cfg_.latent_channels);
        if (n_gen)
            lin(ctx_, fin + n_und * H, n_gen, w_.llm2vae_, w_.llm2vae_b_.data(),
                out.velocity.data());
    }
}

void DecoderSession::forward_chunks(std::span<const ChunkItem> items, bool append, Outputs& out,
                                    const ForwardOptions& opt) {
    if (items.empty()) fail("forward_chunks: no chunks");
    if (w_.embeddings_only_)
        fail("forward_chunks: the weights were loaded with embeddings only (layer-by-layer runs)");
    if (opt.logits != LogitRows::None || opt.final_hidden || opt.layer_out)
        fail(
            "forward_chunks: only the velocity is an output (logits None, no final_hidden or "
            "layer_out)");
    const size_t H = w_.cfg_.hidden_size, C = w_.cfg_.latent_channels;
    size_t n = 0;
    for (size_t i = 0; i < items.size(); ++i) {
        const ChunkItem& it = items[i];
        if (!it.batch || !it.cache || !it.cache->matches(w_.cfg_))
            fail("forward_chunks: chunk ", i, " has no batch or no KV cache of this model's shape");
        for (size_t j = 0; j < i; ++j)
            if (items[j].cache == it.cache)
                fail("forward_chunks: chunks ", j, " and ", i, " share one KV cache");
        check_batch(*it.batch);
        if (it.batch->embeddings) fail("forward_chunks: chunk ", i, " brings embeddings");
        n += it.batch->size();
    }
    std::vector<size_t> P(items.size());
    for (size_t i = 0; i < items.size(); ++i) P[i] = items[i].cache->size();
    const size_t n_und = prepare(items);
    embed_rows(items);
    for (int l = 0; l < w_.cfg_.num_hidden_layers; ++l)
        run_layer(l, n, n_und, s_.groups, opt.observer);
    for (size_t i = 0; i < items.size(); ++i)
        items[i].cache->set_size(append ? P[i] + items[i].batch->size() : P[i]);

    // The gen rows' final norm, then llm2vae per chunk (the row count forward() gives it).
    const size_t n_gen = n - n_und;
    float* x = s_.x.data();
    grow(s_.h, n_gen * H);
    kernels::rms_norm(ctx_, view(x + n_und * H, n_gen, H), w_.norm_[1].data(),
                      static_cast<float>(w_.cfg_.rms_norm_eps), view(s_.h.data(), n_gen, H));
    out.logit_rows = 0;
    if (!opt.velocity) return;
    out.velocity.resize(n_gen * C);
    for (size_t i = 0, at = 0; i < items.size(); ++i) {
        const size_t m = items[i].batch->timesteps.size();
        if (m)
            lin(ctx_, &s_.h[at * H], m, w_.llm2vae_, w_.llm2vae_b_.data(), &out.velocity[at * C]);
        at += m;
    }
}

void DecoderSession::decode_step(std::span<const DecodeItem> items, Outputs& out) {
    if (items.empty()) fail("decode_step: no sequences");
    if (!w_.has_und_) fail("decode_step: the decoder was loaded without the und path");
    if (w_.embeddings_only_)
        fail("decode_step: the weights were loaded with embeddings only (layer-by-layer runs)");
    const size_t H = w_.cfg_.hidden_size, hd = w_.cfg_.head_dim(), V = w_.cfg_.vocab_size;
    size_t n = 0, longest = 0;
    for (size_t i = 0; i < items.size(); ++i) {
        const DecodeItem& it = items[i];
        if (it.token_ids.empty()) fail("decode_step: sequence ", i, " has no tokens");
        if (it.positions.size() != it.token_ids.size())
            fail("decode_step: sequence ", i, " has ", it.positions.size(), " positions for ",
                 it.token_ids.size(), " tokens");
        if (!it.cache || !it.cache->matches(w_.cfg_))
            fail("decode_step: sequence ", i, " has no KV cache of this model's shape");
        for (size_t j = 0; j < i; ++j)
            if (items[j].cache == it.cache)
                fail("decode_step: sequences ", j, " and ", i, " share one KV cache");
        n += it.token_ids.size();
        longest = std::max(longest, it.token_ids.size());
    }

    // Rows stacked in item order; perm[r] = the row's position in its own sequence's chunk. Each
    // item is one causal split after its cache: the mask forward() builds for a text chunk.
    s_.perm.resize(n);
    s_.rope_pos.resize(n);
    s_.split_of.assign(longest, 0);
    s_.modes.assign(1, kernels::AttnSplit::Causal);
    s_.split_end.resize(items.size());
    s_.groups.clear();
    grow(s_.x, n * H);
    float* x = s_.x.data();
    for (size_t i = 0, r = 0; i < items.size(); ++i) {
        const DecodeItem& it = items[i];
        KvCache& cache = *it.cache;
        const size_t m = it.token_ids.size(), P = cache.size();
        if (P + m > cache.capacity()) cache.reserve(std::max(P + m, cache.capacity() * 3 / 2 + 64));
        w_.embed_tokens(it.token_ids.data(), m, x + r * H);
        for (size_t j = 0; j < m; ++j) {
            s_.perm[r + j] = static_cast<int32_t>(j);
            s_.rope_pos[r + j] = it.positions[j];
            cache.hidden()[P + j] = 0;
        }
        s_.split_end[i] = static_cast<int32_t>(m);
        AttnGroup g;
        g.row0 = r, g.rows = m, g.cache = &cache;
        g.mask.kind = kernels::AttnMask::Kind::Splits;
        g.mask.n_cached = P;
        g.mask.cached_hidden = cache.hidden();
        g.mask.split_of = s_.split_of.data();
        g.mask.modes = s_.modes.data();
        g.mask.split_end = &s_.split_end[i];
        s_.groups.push_back(g);
        r += m;
    }
    kernels::rope_angles_mrope(s_.rope_pos.data(), n, hd, w_.cfg_.mrope_section, w_.cfg_.rope_theta,
                               s_.rope);
    for (int l = 0; l < w_.cfg_.num_hidden_layers; ++l)
        run_layer(l, n, n, s_.groups, {}, nullptr, true);
    for (const AttnGroup& g : s_.groups) g.cache->set_size(g.mask.n_cached + g.rows);

    // Each item's last row: the und final norm, then lm_head on those rows together.
    const size_t k = items.size();
    grow(s_.h, k * H);
    grow(s_.tmp, k * H);
    for (size_t i = 0; i < k; ++i) {
        const AttnGroup& g = s_.groups[i];
        std::copy_n(x + (g.row0 + g.rows - 1) * H, H, &s_.tmp[i * H]);
    }
    kernels::rms_norm(ctx_, view(s_.tmp.data(), k, H), w_.norm_[0].data(),
                      static_cast<float>(w_.cfg_.rms_norm_eps), view(s_.h.data(), k, H));
    out.logit_rows = k;
    out.logits.resize(k * V);
    lin(ctx_, s_.h.data(), k, w_.lm_head_, nullptr, out.logits.data());
    for (size_t r = 0; r < k; ++r)
        std::fill(out.logits.begin() + r * V + w_.logits_limit_, out.logits.begin() + (r + 1) * V,
                  -std::numeric_limits<float>::infinity());
}

void DecoderSession::run_layer(int l, size_t n, size_t n_und, std::span<const AttnGroup> groups,
                               const ActivationObserver& observer,
                               const LayerPathWeights* const* paths, bool parallel_groups) {
    const size_t H = w_.cfg_.hidden_size, hd = w_.cfg_.head_dim(), nh = w_.cfg_.num_attention_heads,
                 nkv = w_.cfg_.num_key_value_heads, qd = w_.cfg_.q_dim(), kvd = w_.cfg_.kv_dim(),
                 I = w_.cfg_.intermediate_size;
    const float eps = static_cast<float>(w_.cfg_.rms_norm_eps);
    const kernels::OpContext ctx = ctx_;
    grow(s_.h, n * H);
    grow(s_.q, n * qd);
    grow(s_.k, n * kvd);
    grow(s_.v, n * kvd);
    grow(s_.att, n * qd);
    grow(s_.o, std::max(n, kMlpRows) * H);
    float* x = s_.x.data();
    const size_t begin[2] = {0, n_und}, end[2] = {n_und, n};

    for (int p = 0; p < 2; ++p) {
        const size_t b = begin[p], m = end[p] - begin[p];
        if (!m) continue;
        const auto& w = paths ? *paths[p] : w_.layers_[l].path[p];
        kernels::rms_norm(ctx, view(x + b * H, m, H), w.ln.data(), eps, view(&s_.h[b * H], m, H));
        if (observer) observer(l, p == 1, LinearInput::Qkv, &s_.h[b * H], m, H);
        const kernels::LinearOut qkv[3] = {{&w.q, w.bq.data(), &s_.q[b * qd]},
                                           {&w.k, w.bk.data(), &s_.k[b * kvd]},
                                           {&w.v, w.bv.data(), &s_.v[b * kvd]}};
        kernels::linear_same_input(ctx_, &s_.h[b * H], m, qkv, 3);
        const kernels::TensorRef qh = view(&s_.q[b * qd], m * nh, hd),
                                 kh = view(&s_.k[b * kvd], m * nkv, hd);
        kernels::rms_norm(ctx, qh, w.q_norm.data(), eps, qh);
        kernels::rms_norm(ctx, kh, w.k_norm.data(), eps, kh);
    }
    // RoPE row by row after both paths' q/k norms (rows are independent).
    kernels::rope(
        ctx, kernels::TensorRef::contiguous(s_.q.data(), {int64_t(n), int64_t(nh), int64_t(hd)}),
        s_.rope);
    kernels::rope(
        ctx, kernels::TensorRef::contiguous(s_.k.data(), {int64_t(n), int64_t(nkv), int64_t(hd)}),
        s_.rope);
    auto attend = [&](const AttnGroup& grp, kernels::AttentionScratch& scratch) {
        KvCache& cache = *grp.cache;
        const size_t P = grp.mask.n_cached, cap = cache.capacity(), rows = grp.rows + grp.rows1;
        const size_t seg[2][2] = {{grp.row0, grp.rows}, {grp.row1, grp.rows1}};
        // Keys and values go to the cache slots of their sequence positions (a chunk run without
        // append still uses the slots past size(); the size is not advanced).
        float* kc = cache.k(l);
        float* vc = cache.v(l);
        for (const auto& sg : seg)
            for (size_t r = sg[0]; r < sg[0] + sg[1]; ++r) {
                const size_t a = P + s_.perm[r];
                for (size_t g = 0; g < nkv; ++g) {
                    std::copy_n(&s_.k[r * kvd + g * hd], hd, kc + (g * cap + a) * hd);
                    std::copy_n(&s_.v[r * kvd + g * hd], hd, vc + (g * cap + a) * hd);
                }
            }
        // A chunk in two row ranges (forward_chunks) attends as one block of rows in the order
        // forward() gives them: its queries and row indices gathered, the output scattered back.
        const float* q = &s_.q[grp.row0 * qd];
        const int32_t* q_index = s_.perm.data() + grp.row0;
        float* att = &s_.att[grp.row0 * qd];
        if (grp.rows1) {
            grow(s_.q_g, rows * qd);
            grow(s_.att_g, rows * qd);
            s_.perm_g.resize(rows);
            for (size_t i = 0, j = 0; i < 2; ++i)
                for (size_t r = seg[i][0]; r < seg[i][0] + seg[i][1]; ++r, ++j) {
                    std::copy_n(&s_.q[r * qd], qd, &s_.q_g[j * qd]);
                    s_.perm_g[j] = s_.perm[r];
                }
            q = s_.q_g.data(), q_index = s_.perm_g.data(), att = s_.att_g.data();
        }
        // The cache holds [kv_head][capacity][hd]; attention sees its first P + rows positions.
        const int64_t keys = static_cast<int64_t>(P + rows);
        kernels::TensorRef kr =
            kernels::TensorRef::contiguous(kc, {int64_t(nkv), int64_t(cap), int64_t(hd)});
        kernels::TensorRef vr =
            kernels::TensorRef::contiguous(vc, {int64_t(nkv), int64_t(cap), int64_t(hd)});
        kernels::attention(
            ctx, kernels::TensorRef::contiguous(q, {int64_t(rows), int64_t(nh), int64_t(hd)}),
            q_index, kr.slice(1, 0, keys), vr.slice(1, 0, keys), grp.mask, 0.0f,
            kernels::TensorRef::contiguous(att, {int64_t(rows), int64_t(nh), int64_t(hd)}),
            scratch);
        if (grp.rows1)
            for (size_t i = 0, j = 0; i < 2; ++i)
                for (size_t r = seg[i][0]; r < seg[i][0] + seg[i][1]; ++r, ++j)
                    std::copy_n(&s_.att_g[j * qd], qd, &s_.att[r * qd]);
    };
    if (!parallel_groups) {
        // One sequence, or a few long ones: attention splits each one's heads over the pool.
        for (const AttnGroup& g : groups) attend(g, s_.attn);
    } else {
        // Many short sequences (decode_step, one row range each): one per pool share at a time,
        // so a step of short attentions costs one pool dispatch instead of one per sequence.
        // attention() called inside the job runs inline; its results do not depend on the
        // thread count, so each sequence's output is the one it gets alone.
        ThreadPool& pool = ctx.threads();
        if (s_.attn_shares.size() < pool.size()) s_.attn_shares.resize(pool.size());
        pool.run([&](size_t share, size_t n_shares) {
            for (size_t g = share; g < groups.size(); g += n_shares)
                attend(groups[g], s_.attn_shares[share]);
        });
    }

    for (int p = 0; p < 2; ++p) {
        const size_t b = begin[p], m = end[p] - begin[p];
        if (!m) continue;
        const auto& w = paths ? *paths[p] : w_.layers_[l].path[p];
        if (observer) observer(l, p == 1, LinearInput::O, &s_.att[b * qd], m, qd);
        lin(ctx_, &s_.att[b * qd], m, w.o, nullptr, s_.o.data());
        kernels::add(ctx, view(x + b * H, m, H), view(s_.o.data(), m, H), view(x + b * H, m, H));
        grow(s_.gate, std::min(m, kMlpRows) * I);
        grow(s_.up, std::min(m, kMlpRows) * I);
        for (size_t r0 = 0; r0 < m; r0 += kMlpRows) {
            const size_t rows = std::min(kMlpRows, m - r0);
            float* xr = x + (b + r0) * H;
            kernels::rms_norm(ctx, view(xr, rows, H), w.post.data(), eps,
                              view(s_.h.data(), rows, H));
            if (observer) observer(l, p == 1, LinearInput::GateUp, s_.h.data(), rows, H);
            const kernels::LinearOut gate_up[2] = {{&w.gate, nullptr, s_.gate.data()},
                                                   {&w.up, nullptr, s_.up.data()}};
            kernels::linear_same_input(ctx_, s_.h.data(), rows, gate_up, 2);
            const kernels::TensorRef g = view(s_.gate.data(), rows, I);
            kernels::silu_mul(ctx, g, view(s_.up.data(), rows, I), g);
            if (observer) observer(l, p == 1, LinearInput::Down, s_.gate.data(), rows, I);
            lin(ctx_, s_.gate.data(), rows, w.down, nullptr, s_.o.data());
            kernels::add(ctx, view(xr, rows, H), view(s_.o.data(), rows, H), view(xr, rows, H));
        }
    }
}

}  // namespace lancet
