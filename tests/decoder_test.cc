// The fast decoder (LanceWeights, DecoderSession and their ops) against the float64 reference on
// synthetic checkpoints: each layer piece, whole forwards over several GQA/head_dim/dtype configs,
// the KV cache, the split mask, AWQ INT4 weights, and `lancet forward`.
#include "model/decoder.h"

#include <gtest/gtest.h>

#include <cmath>
#include <filesystem>
#include <functional>
#include <limits>
#include <map>
#include <nlohmann/json.hpp>
#include <random>
#include <thread>
#include <tuple>

#include "core/error.h"
#include "core/numeric.h"
#include "io/safetensors.h"
#include "kernels/dispatch.h"
#include "kernels/ops.h"
#include "model/decoder_ref.h"
#include "model/positions.h"
#include "model/synth.h"
#include "test_util.h"

namespace lancet {
namespace {

namespace fs = std::filesystem;
using test::TempDir;

kernels::TensorRef mat(std::vector<float>& v, size_t rows, size_t cols) {
    return kernels::TensorRef::matrix(v.data(), rows, cols);
}

std::vector<float> randn(size_t n, uint64_t seed, float scale = 1.0f) {
    std::mt19937_64 g(seed);
    std::normal_distribution<float> d(0.0f, scale);
    std::vector<float> v(n);
    for (float& x : v) {
        x = d(g);
        if (x == 0.0f) x = 0.5f * scale;  // never zero
    }
    return v;
}

std::vector<double> to_f64(const std::vector<float>& v) { return {v.begin(), v.end()}; }

// ||a - b|| / ||b|| over the entries where b is finite (masked logits are -inf in both; the test
// checks that separately).
double rel_l2(const float* a, const double* b, size_t n) {
    double num = 0, den = 0;
    for (size_t i = 0; i < n; ++i) {
        if (!std::isfinite(b[i])) {
            EXPECT_EQ(a[i], static_cast<float>(b[i])) << "masked entry " << i;
            continue;
        }
        num += (a[i] - b[i]) * (a[i] - b[i]);
        den += b[i] * b[i];
    }
    EXPECT_GT(den, 0.0);
    return std::sqrt(num / den);
}
double rel_l2(const std::vector<float>& a, const std::vector<double>& b) {
    EXPECT_EQ(a.size(), b.size());
    return rel_l2(a.data(), b.data(), std::min(a.size(), b.size()));
}

// ---- synthetic models -----------------------------------------------------------------------

struct Variant {
    const char* name;
    int hidden, heads, kv_heads;
    std::array<int, 3> section;
};
// GQA group 2 / head_dim 16 (the tiny preset), group 8 / head_dim 16, group 2 / head_dim 32 and
// 128.
const Variant kVariants[] = {{"g2_hd16", 64, 4, 2, {2, 3, 3}},
                             {"g8_hd16", 128, 8, 1, {2, 3, 3}},
                             {"g2_hd32", 128, 4, 2, {4, 6, 6}},
                             {"g2_hd128", 256, 2, 1, {16, 24, 24}}};  // Lance's head shape

std::string make_model(const fs::path& dir, const Variant& v, DType dt, uint64_t seed = 7) {
    LanceConfig cfg = synth_config("tiny");
    cfg.hidden_size = v.hidden;
    cfg.num_attention_heads = v.heads;
    cfg.num_key_value_heads = v.kv_heads;
    cfg.mrope_section = v.section;
    cfg.vision.out_hidden_size = v.hidden;
    SynthOptions o;
    o.preset = "tiny";
    o.dtype = dt;
    o.seed = seed;
    o.out = (dir / (std::string(v.name) + (dt == DType::BF16 ? "_bf16" : "_f32"))).string();
    synth_checkpoint(o, cfg);
    return o.out;
}

// text(5) | VS latents(1x2x3) VE (full) | text(2) | VS latents VE (noise) | text(1)
struct MixedSeq {
    Batch batch;
    ref::Input ref;
};
MixedSeq mixed_sequence(const LanceConfig& c, uint64_t seed, float noisy_t = 0.6f) {
    const int64_t t = 1, h = 2, w = 3, n_lat = t * h * w;
    std::vector<int64_t> ids = {c.bos_token_id, 72, 105, 33, 200, c.vision_start_token_id};
    for (int i = 0; i < n_lat; ++i) ids.push_back(c.video_token_id);
    ids.insert(ids.end(), {c.vision_end_token_id, 65, 66, c.vision_start_token_id});
    for (int i = 0; i < n_lat; ++i) ids.push_back(c.video_token_id);
    ids.insert(ids.end(), {c.vision_end_token_id, c.eos_token_id});
    MixedSeq m;
    Batch& b = m.batch;
    b.token_ids = ids;
    for (int64_t id : ids) b.is_gen.push_back(id == c.video_token_id);
    b.latents = randn(2 * n_lat * c.latent_channels, seed);
    for (int i = 0; i < n_lat; ++i) b.timesteps.push_back(0.0f);  // clean source block
    for (int i = 0; i < n_lat; ++i) b.timesteps.push_back(noisy_t);
    const auto pe = pe3d_indices(t, h, w, c.max_latent_size);
    b.pe3d_index = pe;
    b.pe3d_index.insert(b.pe3d_index.end(), pe.begin(), pe.end());
    b.positions = mrope_positions(ids, {vae_block_grid(t, h, w), vae_block_grid(t, h, w)}, c);
    b.splits = {{5, SplitMode::Causal},
                {n_lat + 2, SplitMode::Full},
                {2, SplitMode::Causal},
                {n_lat + 2, SplitMode::Noise},
                {1, SplitMode::Causal}};
    ref::Input& r = m.ref;
    r.token_ids = ids;
    r.is_gen = b.is_gen;
    r.latents = to_f64(b.latents);
    r.timesteps = to_f64(b.timesteps);
    r.pe3d_index = b.pe3d_index;
    r.positions = ref::rope_index(ids, {{t, h, w}, {t, h, w}}, c);
    r.splits = b.splits;
    return m;
}

// ---- layer pieces ---------------------------------------------------------------------------

// f32 RMSNorm: each output is a product of rounded f32 values (a few ulp, < 1e-6 relative).
TEST(DecoderOps, RmsNormMatchesReference) {
    for (float eps : {1e-6f, 1e-2f}) {
        const size_t n = 7, dim = 64;
        auto x = randn(n * dim, 1, 0.05f), w = randn(dim, 2);
        std::vector<float> y(n * dim);
        kernels::rms_norm(kernels::OpContext::defaults(), mat(x, n, dim), w.data(), eps,
                          mat(y, n, dim));
        std::vector<double> want(n * dim);
        const auto xd = to_f64(x), wd = to_f64(w);
        for (size_t r = 0; r < n; ++r)
            ref::rms_norm(&xd[r * dim], dim, wd.data(), static_cast<double>(eps), &want[r * dim]);
        EXPECT_LT(rel_l2(y, want), 1e-6) << "eps " << eps;
    }
}

// Per-head q/k norm is the same row norm over head_dim, applied in place.
TEST(DecoderOps, HeadNormInPlace) {
    const size_t heads = 4, hd = 16;
    auto x = randn(heads * hd, 3, 3.0f), w = randn(hd, 4);
    std::vector<double> want(heads * hd);
    const auto xd = to_f64(x), wd = to_f64(w);
    for (size_t h = 0; h < heads; ++h)
        ref::rms_norm(&xd[h * hd], hd, wd.data(), 1e-6, &want[h * hd]);
    kernels::rms_norm(kernels::OpContext::defaults(), mat(x, heads, hd), w.data(), 1e-6f,
                      mat(x, heads, hd));
    EXPECT_LT(rel_l2(x, want), 1e-6);
}

// M-RoPE: angles in double, cos/sin stored f32, one rotation: < 1e-6 relative.
TEST(DecoderOps, MropeMatchesReference) {
    for (size_t hd : {16, 32}) {
        const std::array<int, 3> section =
            hd == 16 ? std::array<int, 3>{2, 3, 3} : std::array<int, 3>{4, 6, 6};
        const size_t heads = 3;
        const std::vector<RopePosition> positions = {
            {0, 0, 0}, {5, 7, 9}, {1000, 3, 41}, {123, 123, 123}};
        for (const RopePosition& p : positions) {
            auto x = randn(heads * hd, 5 + p[0]);
            std::vector<double> want = to_f64(x);
            for (size_t h = 0; h < heads; ++h) ref::mrope(&want[h * hd], hd, p, section, 1e6);
            kernels::RopeTable t;
            kernels::rope_angles_mrope(&p, 1, hd, section, 1e6, t);
            kernels::rope(kernels::OpContext::defaults(),
                          kernels::TensorRef::contiguous(
                              x.data(), {1, static_cast<int64_t>(heads), static_cast<int64_t>(hd)}),
                          t);
            EXPECT_LT(rel_l2(x, want), 1e-6);
        }
    }
}

// For text (t = h = w = p) M-RoPE is plain 1-D RoPE; with unequal axes it is not.
TEST(DecoderOps, MropeOnTextIsOneDimensionalRope) {
    const size_t hd = 16, half = 8;
    const std::array<int, 3> section = {2, 3, 3};
    auto x = randn(hd, 11);
    for (int64_t p : {1, 17, 300}) {
        std::vector<double> rope1d(hd);
        for (size_t j = 0; j < half; ++j) {
            const double a = p * std::pow(1e6, -2.0 * j / hd);
            rope1d[j] = x[j] * std::cos(a) - x[j + half] * std::sin(a);
            rope1d[j + half] = x[j + half] * std::cos(a) + x[j] * std::sin(a);
        }
        std::vector<float> y = x, z = x;
        kernels::RopeTable t;
        const RopePosition same = {p, p, p}, apart = {p, p + 1, p + 2};
        kernels::rope_angles_mrope(&same, 1, hd, section, 1e6, t);
        kernels::rope(kernels::OpContext::defaults(),
                      kernels::TensorRef::contiguous(y.data(), {1, 1, int64_t{hd}}), t);
        EXPECT_LT(rel_l2(y, rope1d), 1e-6);
        kernels::rope_angles_mrope(&apart, 1, hd, section, 1e6, t);
        kernels::rope(kernels::OpContext::defaults(),
                      kernels::TensorRef::contiguous(z.data(), {1, 1, int64_t{hd}}), t);
        EXPECT_GT(rel_l2(z, rope1d), 1e-3);
    }
}

// The spec's mask rules on a small layout (expectations written from §2.5, not from the code).
TEST(DecoderOps, ReferenceMaskFollowsTheSpec) {
    // 0 1 | 2 3 4 (full) | 5 | 6 7 (noise) | 8
    const std::vector<Split> sp = {{2, SplitMode::Causal},
                                   {3, SplitMode::Full},
                                   {1, SplitMode::Causal},
                                   {2, SplitMode::Noise},
                                   {1, SplitMode::Causal}};
    const auto m = ref::attention_mask(sp);
    auto at = [&](int q, int k) { return m[q * 9 + k] != 0; };
    EXPECT_FALSE(at(0, 1));  // causal text
    EXPECT_TRUE(at(1, 0));
    EXPECT_TRUE(at(2, 4));  // bidirectional inside a full block
    EXPECT_TRUE(at(2, 0));  // a block sees what precedes it
    EXPECT_FALSE(at(1, 2));
    EXPECT_TRUE(at(5, 4));
    EXPECT_TRUE(at(6, 7));  // bidirectional inside the noise block
    EXPECT_TRUE(at(7, 5));
    EXPECT_FALSE(at(8, 6));  // nobody outside sees the noise block
    EXPECT_FALSE(at(8, 7));
    EXPECT_TRUE(at(8, 5));
}

// Attention against the reference for every split mode, with and without cached keys (one cached
// split is a noise split, so it must stay invisible). f32 dot products over hd <= 32 and a softmax
// over <= 20 keys: < 1e-5 relative.
TEST(DecoderOps, AttentionMatchesReferenceForEachMask) {
    struct Case {
        std::vector<Split> cached, chunk;
    };
    const std::vector<Case> cases = {
        {{}, {{7, SplitMode::Causal}}},
        {{}, {{6, SplitMode::Full}}},
        {{}, {{3, SplitMode::Causal}, {5, SplitMode::Noise}, {2, SplitMode::Causal}}},
        {{}, {{2, SplitMode::Causal}, {4, SplitMode::Full}, {3, SplitMode::Noise}}},
        {{{3, SplitMode::Causal}, {2, SplitMode::Full}}, {{4, SplitMode::Causal}}},
        {{{3, SplitMode::Causal}, {3, SplitMode::Noise}, {1, SplitMode::Causal}},
         {{5, SplitMode::Noise}}},
        {{{4, SplitMode::Causal}}, {{1, SplitMode::Causal}}},
    };
    std::vector<kernels::Isa> isas = {kernels::Isa::Scalar};
    if (kernels::cpu_supports(kernels::Isa::Avx2)) isas.push_back(kernels::Isa::Avx2);
    for (kernels::Isa isa : isas)
        for (size_t hd : {12, 16, 32, 40, 128})
            for (auto [nh, nkv] : {std::pair<size_t, size_t>{4, 2}, {8, 1}})
                for (const Case& cs : cases) {
                    std::vector<Split> all = cs.cached;
                    all.insert(all.end(), cs.chunk.begin(), cs.chunk.end());
                    size_t P = 0, n = 0;
                    for (const Split& s : cs.cached) P += s.len;
                    for (const Split& s : cs.chunk) n += s.len;
                    const size_t L = P + n;
                    auto q = randn(L * nh * hd, 21), k = randn(L * nkv * hd, 22),
                         v = randn(L * nkv * hd, 23);
                    std::vector<double> want(L * nh * hd);
                    ref::attention(to_f64(q).data(), to_f64(k).data(), to_f64(v).data(), L, nh, nkv,
                                   hd, ref::attention_mask(all), want.data());
                    // Cache layout [kv_head][capacity][hd]; capacity larger than needed on purpose.
                    const size_t cap = L + 3;
                    std::vector<float> kc(nkv * cap * hd), vc(nkv * cap * hd);
                    for (size_t a = 0; a < L; ++a)
                        for (size_t g = 0; g < nkv; ++g)
                            for (size_t d = 0; d < hd; ++d) {
                                kc[(g * cap + a) * hd + d] = k[(a * nkv + g) * hd + d];
                                vc[(g * cap + a) * hd + d] = v[(a * nkv + g) * hd + d];
                            }
                    std::vector<uint8_t> hidden;
                    for (const Split& s : cs.cached)
                        for (int64_t i = 0; i < s.len; ++i)
                            hidden.push_back(s.mode == SplitMode::Noise);
                    std::vector<int32_t> split_of, split_end;
                    std::vector<kernels::AttnSplit> modes;
                    for (size_t s = 0; s < cs.chunk.size(); ++s) {
                        for (int64_t i = 0; i < cs.chunk[s].len; ++i)
                            split_of.push_back(static_cast<int32_t>(s));
                        modes.push_back(static_cast<kernels::AttnSplit>(cs.chunk[s].mode));
                        split_end.push_back(static_cast<int32_t>(split_of.size()));
                    }
                    kernels::AttnMask mask;
                    mask.kind = kernels::AttnMask::Kind::Splits;
                    mask.n_cached = P;
                    mask.cached_hidden = hidden.data();
                    mask.split_of = split_of.data();
                    mask.modes = modes.data();
                    mask.split_end = split_end.data();
                    // Query rows in a shuffled order, as the decoder passes them (und rows first).
                    std::vector<int32_t> order(n);
                    for (size_t i = 0; i < n; ++i) order[i] = static_cast<int32_t>((i * 3) % n);
                    if (n % 3 == 0)
                        for (size_t i = 0; i < n; ++i) order[i] = static_cast<int32_t>(n - 1 - i);
                    std::vector<float> qc(n * nh * hd), out(n * nh * hd);
                    for (size_t r = 0; r < n; ++r)
                        std::copy_n(&q[(P + order[r]) * nh * hd], nh * hd, &qc[r * nh * hd]);
                    kernels::AttentionScratch scratch;
                    const int64_t N = static_cast<int64_t>(n), NH = static_cast<int64_t>(nh),
                                  NKV = static_cast<int64_t>(nkv), HD = static_cast<int64_t>(hd),
                                  CAP = static_cast<int64_t>(cap), KEYS = static_cast<int64_t>(L);
                    kernels::OpContext ctx = kernels::OpContext::defaults();
                    ctx.isa = isa;
                    kernels::attention(
                        ctx, kernels::TensorRef::contiguous(qc.data(), {N, NH, HD}), order.data(),
                        kernels::TensorRef::contiguous(kc.data(), {NKV, CAP, HD}).slice(1, 0, KEYS),
                        kernels::TensorRef::contiguous(vc.data(), {NKV, CAP, HD}).slice(1, 0, KEYS),
                        mask, 0.0f, kernels::TensorRef::contiguous(out.data(), {N, NH, HD}),
                        scratch);
                    std::vector<double> want_rows(n * nh * hd);
                    for (size_t r = 0; r < n; ++r)
                        std::copy_n(&want[(P + order[r]) * nh * hd], nh * hd,
                                    &want_rows[r * nh * hd]);
                    EXPECT_LT(rel_l2(out, want_rows), 1e-5)
                        << kernels::isa_name(isa) << " hd " << hd << " heads " << nh << "/" << nkv
                        << " P " << P << " n " << n;
                }
}

// SwiGLU's gate: silu(g) * u in f32 (exp and a division: < 1e-6 relative).
TEST(DecoderOps, SiluMulMatchesReference) {
    auto g = randn(300, 31, 3.0f), u = randn(300, 32);
    std::vector<float> y(300);
    kernels::silu_mul(kernels::OpContext::defaults(), mat(g, 1, 300), mat(u, 1, 300),
                      mat(y, 1, 300));
    std::vector<double> want(300);
    for (size_t i = 0; i < 300; ++i)
        want[i] = static_cast<double>(g[i]) / (1.0 + std::exp(-static_cast<double>(g[i]))) * u[i];
    EXPECT_LT(rel_l2(y, want), 1e-6);
}

// Timestep features: cos first, t not scaled (at t = 0: cos half 1, sin half 0).
TEST(DecoderOps, TimestepFeaturesMatchReference) {
    std::vector<float> f(256);
    timestep_features(0.0f, 256, f.data());
    for (int k = 0; k < 128; ++k) EXPECT_EQ(f[k], 1.0f);
    for (int k = 128; k < 256; ++k) EXPECT_EQ(f[k], 0.0f);
    for (float t : {0.13f, 0.5f, 0.97f, 1.0f}) {
        timestep_features(t, 256, f.data());
        EXPECT_LT(rel_l2(f, ref::timestep_features(t, 256)), 1e-6) << t;
    }
}

class DecoderModel : public ::testing::Test {
  protected:
    static void SetUpTestSuite() {
        dir_ = new TempDir();
        for (const Variant& v : kVariants)
            for (DType dt : {DType::F32, DType::BF16})
                models_[std::string(v.name) + (dt == DType::BF16 ? "_bf16" : "_f32")] =
                    make_model(dir_->path(), v, dt);
    }
    static void TearDownTestSuite() {
        delete dir_;
        dir_ = nullptr;
    }
    static TempDir* dir_;
    static std::map<std::string, std::string> models_;
};
TempDir* DecoderModel::dir_ = nullptr;
std::map<std::string, std::string> DecoderModel::models_;

// TimestepEmbedder (two linears and SiLU) and the PE3D rows, through a loaded decoder.
TEST_F(DecoderModel, TimestepEmbedderAndPe3d) {
    const auto ck = LanceCheckpoint::open(models_.at("g2_hd16_f32"));
    const LanceWeights dec_w(*ck);
    DecoderSession dec(dec_w);
    const LanceConfig& c = ck->config();
    const size_t H = c.hidden_size, F = c.time_freq_dim;
    const auto w0 = ref::linear_weight(*ck, "time_embedder.mlp.0"),
               w2 = ref::linear_weight(*ck, "time_embedder.mlp.2");
    std::vector<double> b0(H), b2(H);
    convert_to_f64(ck->tensor("time_embedder.mlp.0.bias"), b0.data());
    convert_to_f64(ck->tensor("time_embedder.mlp.2.bias"), b2.data());
    const std::vector<float> ts = {0.0f, 0.25f, 0.8f};
    std::vector<float> got(ts.size() * H);
    dec.timestep_embed(ts.data(), ts.size(), got.data());
    std::vector<double> want(ts.size() * H);
    for (size_t r = 0; r < ts.size(); ++r) {
        const auto f = ref::timestep_features(ts[r], static_cast<int>(F));
        std::vector<double> a(H);
        for (size_t o = 0; o < H; ++o) {
            double s = b0[o];
            for (size_t i = 0; i < F; ++i) s += w0[o * F + i] * f[i];
            a[o] = s / (1.0 + std::exp(-s));
        }
        for (size_t o = 0; o < H; ++o) {
            double s = b2[o];
            for (size_t i = 0; i < H; ++i) s += w2[o * H + i] * a[i];
            want[r * H + o] = s;
        }
    }
    EXPECT_LT(rel_l2(got, want), 1e-5);  // two f32 dot products of <= 256 terms

    // PE3D: f64 table stored f32, so every entry is within f32 rounding of the reference; the
    // index wraps past max_latent_size as in Lance.
    std::vector<float> row(H);
    for (int64_t pos : {int64_t{0}, int64_t{1}, int64_t{65}, int64_t{64 * 5 + 63}, int64_t{4095}}) {
        dec.pe3d(pos, row.data());
        const auto want_row = ref::pe3d(c.hidden_size, pos, c.max_latent_size);
        std::vector<double> synth_row(H);
        pe3d_row(c.hidden_size, pos, c.max_latent_size, synth_row.data());
        for (size_t i = 0; i < H; ++i) {
            EXPECT_NEAR(row[i], want_row[i], 1e-7) << pos << " " << i;
            EXPECT_NEAR(synth_row[i], want_row[i], 1e-12);
        }
    }
    EXPECT_THROW(dec.pe3d(c.pos_embed_rows(), row.data()), Error);
}

// Positions: the fast get_rope_index and the reference's re-derivation agree, and follow the
// spec: VS continues the text, pads sit at base + (2 ti, hi, wi), text resumes at max + 1.
TEST_F(DecoderModel, PositionsFollowGetRopeIndex) {
    const LanceConfig c = synth_config("tiny");
    std::vector<int64_t> ids = {10, 11, c.vision_start_token_id};
    for (int i = 0; i < 2 * 2 * 3; ++i) ids.push_back(c.video_token_id);
    ids.insert(ids.end(), {c.vision_end_token_id, 12, c.vision_start_token_id});
    for (int i = 0; i < 1 * 4 * 1; ++i) ids.push_back(c.video_token_id);
    ids.insert(ids.end(), {c.vision_end_token_id});
    const auto pos = mrope_positions(ids, {vae_block_grid(2, 2, 3), vae_block_grid(1, 4, 1)}, c);
    const auto want = ref::rope_index(ids, {{2, 2, 3}, {1, 4, 1}}, c);
    ASSERT_EQ(pos.size(), want.size());
    for (size_t i = 0; i < pos.size(); ++i) EXPECT_EQ(pos[i], want[i]) << i;
    EXPECT_EQ(pos[2], (RopePosition{2, 2, 2}));      // vision_start
    EXPECT_EQ(pos[3], (RopePosition{3, 3, 3}));      // first latent at base 3
    EXPECT_EQ(pos[3 + 6], (RopePosition{5, 3, 3}));  // second frame: temporal step 2
    EXPECT_EQ(pos[3 + 11], (RopePosition{5, 4, 5}));
    EXPECT_EQ(pos[15], (RopePosition{6, 6, 6}));  // vision_end: max(5, 4, 5) + 1
    EXPECT_EQ(next_text_position(pos), pos.back()[0] + 1);
    EXPECT_THROW(mrope_positions(ids, {vae_block_grid(2, 2, 3)}, c), Error);
}

// The whole forward on a mixed und/gen sequence (text, a full latent block, text, a noise block,
// text) for GQA groups 2 and 8, head_dim 16 and 32, F32 and BF16 weights: relative L2 <= 1e-4
// on every layer's residual stream, the final hidden states, the logits and the velocities.
TEST_F(DecoderModel, ForwardMatchesReferenceAcrossConfigs) {
    for (const auto& [name, path] : models_) {
        const auto ck = LanceCheckpoint::open(path);
        const LanceConfig& c = ck->config();
        DecoderOptions dopt;
        dopt.logits_limit = 278;  // the synthetic tokenizer's length
        const LanceWeights dec_w(*ck, dopt);
        DecoderSession dec(dec_w);
        const MixedSeq m = mixed_sequence(c, 99);
        Outputs out;
        ForwardOptions fo;
        fo.final_hidden = fo.layer_out = true;
        dec.forward(m.batch, nullptr, false, out, fo);
        const ref::Output want = ref::forward(*ck, m.ref, 278);
        double worst = 0;
        for (int l = 0; l < c.num_hidden_layers; ++l)
            worst = std::max(worst, rel_l2(out.layer_out[l], want.layer_out[l]));
        const double e_hidden = rel_l2(out.final_hidden, want.final_hidden);
        const double e_logits = rel_l2(out.logits, want.logits);
        const double e_vel = rel_l2(out.velocity, want.velocity);
        std::printf("  %-12s layers %.2e hidden %.2e logits %.2e velocity %.2e\n", name.c_str(),
                    worst, e_hidden, e_logits, e_vel);
        EXPECT_LT(worst, 1e-4) << name;
        EXPECT_LT(e_hidden, 1e-4) << name;
        EXPECT_LT(e_logits, 1e-4) << name;
        EXPECT_LT(e_vel, 1e-4) << name;
        EXPECT_EQ(out.logit_rows, 12u);  // 24 tokens, 12 of them latents
        EXPECT_TRUE(std::isfinite(out.logits[277]));
        EXPECT_TRUE(std::isinf(out.logits[278]) && out.logits[278] < 0);
    }
}

// One request's run: a mixed und/gen prefill into a cache, a noise block re-run against it
// without appending, then text tokens decoded one by one. Everything it produced, in order.
std::vector<float> session_run(DecoderSession& dec, uint64_t seed, int steps,
                               const std::function<void()>& between = {}) {
    const LanceConfig& c = dec.config();
    const MixedSeq m = mixed_sequence(c, seed);
    KvCache cache = dec.make_cache();
    Outputs out;
    ForwardOptions fo;
    fo.final_hidden = true;
    std::vector<float> got;
    auto keep = [&] {
        for (const auto* v : {&out.logits, &out.velocity, &out.final_hidden})
            got.insert(got.end(), v->begin(), v->end());
        if (between) between();
    };
    dec.forward(m.batch, &cache, true, out, fo);
    keep();
    const Batch noise = m.batch.slice(m.batch.size() - 9, m.batch.size() - 1);
    Batch nb = noise;
    dec.forward(nb, &cache, false, out, fo);
    keep();
    fo.logits = LogitRows::Last;
    std::mt19937 g(static_cast<uint32_t>(seed));
    int64_t pos = 0;
    for (const RopePosition& p : m.batch.positions) pos = std::max({pos, p[0], p[1], p[2]});
    for (int i = 0; i < steps; ++i) {
        Batch b;
        b.token_ids = {static_cast<int64_t>(g() % 256)};
        ++pos;
        b.positions = {{pos, pos, pos}};
        dec.forward(b, &cache, true, out, fo);
        keep();
    }
    return got;
}

// Sessions over one LanceWeights are independent: two run at the same time on two threads
// (each with its own pool), and two interleaved step by step on one thread, give bit-identical
// results to each run alone; the weights are loaded once.
TEST_F(DecoderModel, SessionsOverSharedWeightsMatchRunsAlone) {
    const auto ck = LanceCheckpoint::open(models_.at("g8_hd16_bf16"));
    const LanceWeights weights(*ck);
    ThreadPool pool_a(2), pool_b(2);
    const kernels::OpContext ctx_a = kernels::OpContext::defaults(&pool_a),
                             ctx_b = kernels::OpContext::defaults(&pool_b);
    constexpr int kSteps = 12;
    std::vector<float> alone_a, alone_b;
    {
        DecoderSession a(weights, ctx_a);
        alone_a = session_run(a, 11, kSteps);
        DecoderSession b(weights, ctx_b);
        alone_b = session_run(b, 22, kSteps);
    }
    ASSERT_FALSE(alone_a.empty());
    ASSERT_NE(alone_a, alone_b);  // different requests: a mix-up would show

    for (int rep = 0; rep < 3; ++rep) {
        DecoderSession a(weights, ctx_a), b(weights, ctx_b);
        std::vector<float> got_a, got_b;
        std::thread ta([&] { got_a = session_run(a, 11, kSteps); });
        std::thread tb([&] { got_b = session_run(b, 22, kSteps); });
        ta.join();
        tb.join();
        EXPECT_EQ(got_a, alone_a) << "two threads, rep " << rep;
        EXPECT_EQ(got_b, alone_b) << "two threads, rep " << rep;
    }

    // One thread, one pool: session b runs a whole forward between each of a's steps.
    DecoderSession a(weights, ctx_a), b(weights, ctx_a);
    const MixedSeq mb = mixed_sequence(weights.config(), 33);
    Outputs scratch_out;
    const std::vector<float> got =
        session_run(a, 11, kSteps, [&] { b.forward(mb.batch, nullptr, false, scratch_out); });
    EXPECT_EQ(got, alone_a) << "interleaved on one thread";
}

// The scalar kernels (linear and attention) give the same forward as the reference too.
TEST_F(DecoderModel, ScalarKernelsMatchReference) {
    const auto ck = LanceCheckpoint::open(models_.at("g2_hd32_bf16"));
    kernels::force_isa(kernels::Isa::Scalar);
    const LanceWeights dec_w(*ck);
    DecoderSession dec(dec_w);
    const MixedSeq m = mixed_sequence(ck->config(), 41);
    Outputs out;
    dec.forward(m.batch, nullptr, false, out);
    kernels::clear_forced_isa();
    const ref::Output want = ref::forward(*ck, m.ref);
    EXPECT_LT(rel_l2(out.logits, want.logits), 1e-4);
    EXPECT_LT(rel_l2(out.velocity, want.velocity), 1e-4);
}

// Prefill then token-by-token decoding equals the full causal forward (<= 1e-5 relative per row:
// the same f32 arithmetic, only the batch split and the key-tile order differ).
TEST_F(DecoderModel, IncrementalDecodingEqualsFullForward) {
    for (const char* name : {"g2_hd16_f32", "g8_hd16_bf16", "g2_hd32_f32"}) {
        const auto ck = LanceCheckpoint::open(models_.at(name));
        const LanceConfig& c = ck->config();
        const LanceWeights dec_w(*ck);
        DecoderSession dec(dec_w);
        const size_t n = 70, prefill = 9;  // > one key tile of 64
        Batch full;
        std::mt19937 g(5);
        for (size_t i = 0; i < n; ++i) full.token_ids.push_back(g() % 256);
        full.positions = mrope_positions(full.token_ids, {}, c);
        Outputs ref_out;
        ForwardOptions fo;
        fo.final_hidden = true;
        dec.forward(full, nullptr, false, ref_out, fo);

        KvCache wrong;
        Outputs unused;
        EXPECT_THROW(dec.forward(full, &wrong, true, unused), Error);
        KvCache cache = dec.make_cache(4);  // small on purpose: forward grows it
        Batch b;
        b.token_ids.assign(full.token_ids.begin(), full.token_ids.begin() + prefill);
        b.positions.assign(full.positions.begin(), full.positions.begin() + prefill);
        Outputs out;
        dec.forward(b, &cache, true, out, fo);
        const size_t V = c.vocab_size, H = c.hidden_size;
        std::vector<double> want(ref_out.logits.begin(), ref_out.logits.begin() + prefill * V);
        EXPECT_LT(rel_l2(out.logits, want), 1e-5);
        fo.logits = LogitRows::Last;
        // Decoded rows gathered, to compare in aggregate and per row.
        std::vector<float> got_logits, got_hidden;
        for (size_t i = prefill; i < n; ++i) {
            b.token_ids = {full.token_ids[i]};
            b.positions = {full.positions[i]};
            dec.forward(b, &cache, true, out, fo);
            ASSERT_EQ(cache.size(), i + 1);
            ASSERT_EQ(out.logit_rows, 1u);
            got_logits.insert(got_logits.end(), out.logits.begin(), out.logits.end());
            got_hidden.insert(got_hidden.end(), out.final_hidden.begin(), out.final_hidden.end());
        }
        const std::vector<double> want_logits(ref_out.logits.begin() + prefill * V,
                                              ref_out.logits.end()),
            want_hidden(ref_out.final_hidden.begin() + prefill * H, ref_out.final_hidden.end());
        const double agg =
            std::max(rel_l2(got_logits, want_logits), rel_l2(got_hidden, want_hidden));
        double row = 0;
        for (size_t i = 0; i < n - prefill; ++i)
            row = std::max({row, rel_l2(&got_logits[i * V], &want_logits[i * V], V),
                            rel_l2(&got_hidden[i * H], &want_hidden[i * H], H)});
        std::printf("  %-12s decode vs full: %.2e over all rows, %.2e worst row\n", name, agg, row);
        // Same f32 math in another order (GEMV vs GEMM, other key tiles): the aggregate within
        // 1e-5. Single rows of these outlier-heavy synthetic weights sit up to ~1e-5 from the f64
        // reference in the full forward already, so a row may differ by twice that.
        EXPECT_LT(agg, 1e-5) << name;
        EXPECT_LT(row, 3e-5) << name;
    }
}

// Denoising use: prefill the splits before the noise block into the cache, then run the noise
// block non-causally without appending, twice: equal to the full forward's velocities, cache
// unchanged.
TEST_F(DecoderModel, NoiseBlockAgainstCacheWithoutAppend) {
    const auto ck = LanceCheckpoint::open(models_.at("g2_hd16_f32"));
    const LanceConfig& c = ck->config();
    const LanceWeights dec_w(*ck);
    DecoderSession dec(dec_w);
    const MixedSeq m = mixed_sequence(c, 3);
    Outputs full;
    dec.forward(m.batch, nullptr, false, full);

    const Batch& a = m.batch;
    const size_t n_prefix = 5 + 8 + 2, n_noise = 8, n_lat = 6;
    KvCache cache = dec.make_cache();
    Outputs out;
    // Split by split, as Lance's prefill does.
    dec.forward(a.slice(0, 5), &cache, true, out);
    dec.forward(a.slice(5, 13), &cache, true, out);
    dec.forward(a.slice(13, 15), &cache, true, out);
    ASSERT_EQ(cache.size(), n_prefix);
    const Batch noisy = a.slice(n_prefix, n_prefix + n_noise);
    ASSERT_EQ(noisy.splits.size(), 1u);
    ASSERT_EQ(noisy.splits[0].mode, SplitMode::Noise);
    ASSERT_EQ(noisy.timesteps.size(), n_lat);
    for (int rep = 0; rep < 2; ++rep) {
        dec.forward(noisy, &cache, false, out);
        EXPECT_EQ(cache.size(), n_prefix);
        std::vector<double> want(full.velocity.begin() + n_lat * c.latent_channels,
                                 full.velocity.end());
        EXPECT_LT(rel_l2(out.velocity, want), 1e-5);
    }
}

// The observer sees every linear input of both paths: row counts per path add up to the chunk's,
// and the Qkv rows are RMS-normalized rows of the right width (checked against the reference's
// first-layer input norm on the first und row).
TEST_F(DecoderModel, ObserverSeesEveryLinearInput) {
    const auto ck = LanceCheckpoint::open(models_.at("g2_hd16_f32"));
    const LanceConfig& c = ck->config();
    const LanceWeights dec_w(*ck);
    DecoderSession dec(dec_w);
    const MixedSeq m = mixed_sequence(c, 6);
    std::map<std::tuple<int, bool, LinearInput>, size_t> rows;
    std::vector<float> first_qkv;
    ForwardOptions fo;
    fo.observer = [&](int layer, bool gen, LinearInput which, const float* x, size_t n,
                      size_t dim) {
        rows[{layer, gen, which}] += n;
        const size_t want_dim = which == LinearInput::Down ? c.intermediate_size
                                : which == LinearInput::O  ? c.q_dim()
                                                           : c.hidden_size;
        EXPECT_EQ(dim, want_dim);
        if (layer == 0 && !gen && which == LinearInput::Qkv) first_qkv.assign(x, x + dim);
    };
    Outputs out;
    dec.forward(m.batch, nullptr, false, out, fo);
    for (int l = 0; l < c.num_hidden_layers; ++l)
        for (LinearInput w :
             {LinearInput::Qkv, LinearInput::O, LinearInput::GateUp, LinearInput::Down}) {
            EXPECT_EQ((rows[{l, false, w}]), 12u);
            EXPECT_EQ((rows[{l, true, w}]), 12u);
        }
    std::vector<double> e(c.hidden_size), ln(c.hidden_size), want(c.hidden_size);
    convert_to_f64(ck->tensor("language_model.model.layers.0.input_layernorm.weight"), ln.data());
    const TensorView emb = ck->tensor("language_model.model.embed_tokens.weight");
    std::vector<double> table(emb.numel());
    convert_to_f64(emb, table.data());
    for (int i = 0; i < c.hidden_size; ++i) e[i] = table[m.batch.token_ids[0] * c.hidden_size + i];
    ref::rms_norm(e.data(), c.hidden_size, ln.data(), c.rms_norm_eps, want.data());
    EXPECT_LT(rel_l2(first_qkv, want), 1e-6);
}

// SequenceBuilder lays out the same sequence as the hand-built one (ids, paths, splits, latents,
// PE3D rows, positions).
TEST_F(DecoderModel, SequenceBuilderMatchesHandLayout) {
    const LanceConfig c = synth_config("tiny");
    const MixedSeq m = mixed_sequence(c, 5);
    const size_t half = m.batch.latents.size() / 2;
    const std::vector<float> clean(m.batch.latents.begin(), m.batch.latents.begin() + half),
        noisy(m.batch.latents.begin() + half, m.batch.latents.end());
    SequenceBuilder sb(c);
    sb.text({c.bos_token_id, 72, 105, 33, 200})
        .latent_block(1, 2, 3, clean, 0.0f, SplitMode::Full)
        .text({65, 66})
        .latent_block(1, 2, 3, noisy, 0.6f, SplitMode::Noise)
        .text({c.eos_token_id});
    const Batch b = sb.build();
    EXPECT_EQ(b.token_ids, m.batch.token_ids);
    EXPECT_EQ(b.is_gen, m.batch.is_gen);
    EXPECT_EQ(b.latents, m.batch.latents);
    EXPECT_EQ(b.timesteps, m.batch.timesteps);
    EXPECT_EQ(b.pe3d_index, m.batch.pe3d_index);
    EXPECT_EQ(b.positions, m.ref.positions);
    ASSERT_EQ(b.splits.size(), m.batch.splits.size());
    for (size_t i = 0; i < b.splits.size(); ++i) {
        EXPECT_EQ(b.splits[i].len, m.batch.splits[i].len);
        EXPECT_EQ(b.splits[i].mode, m.batch.splits[i].mode);
    }
    EXPECT_THROW(sb.latent_block(1, 2, 2, clean, 0.0f, SplitMode::Noise), Error);
}

// Tokens outside the noise block do not see it: new latents there change its velocities but
// leave every other output bit-identical (masked keys get weight exactly 0).
TEST_F(DecoderModel, NoiseBlockIsInvisibleToOtherSplits) {
    const auto ck = LanceCheckpoint::open(models_.at("g8_hd16_f32"));
    const LanceConfig& c = ck->config();
    const LanceWeights dec_w(*ck);
    DecoderSession dec(dec_w);
    MixedSeq m = mixed_sequence(c, 4);
    Outputs a, b;
    ForwardOptions fo;
    fo.final_hidden = true;
    dec.forward(m.batch, nullptr, false, a, fo);
    const size_t C = c.latent_channels, n_lat = 6;
    auto fresh = randn(n_lat * C, 77);
    std::copy(fresh.begin(), fresh.end(), m.batch.latents.begin() + n_lat * C);
    m.batch.timesteps.back() = 0.9f;
    dec.forward(m.batch, nullptr, false, b, fo);
    // Und rows outside the noise split (its VS and VE, und rows 9 and 10, belong to it).
    const size_t V = c.vocab_size;
    for (size_t u : {0u, 1u, 2u, 3u, 4u, 5u, 6u, 7u, 8u, 11u})
        for (size_t i = 0; i < V; ++i) ASSERT_EQ(a.logits[u * V + i], b.logits[u * V + i]) << u;
    EXPECT_NE(a.logits[9 * V], b.logits[9 * V]);
    for (size_t i = 0; i < n_lat * C; ++i) ASSERT_EQ(a.velocity[i], b.velocity[i]);
    double changed = 0;
    for (size_t i = n_lat * C; i < 2 * n_lat * C; ++i)
        changed = std::max(changed, static_cast<double>(std::fabs(a.velocity[i] - b.velocity[i])));
    EXPECT_GT(changed, 1e-3);
    const size_t H = c.hidden_size;
    for (size_t r : {0u, 5u, 7u, 12u, 14u, 23u})
        for (size_t i = 0; i < H; ++i)
            ASSERT_EQ(a.final_hidden[r * H + i], b.final_hidden[r * H + i]) << r;
}

// ---- AWQ INT4 -------------------------------------------------------------------------------

// The fast forward of m on a checkpoint (per-layer outputs kept) against the float64 reference.
struct VsReference {
    Outputs out;
    ref::Output want;
    double layers = 0, logits = 0, velocity = 0;  // relative L2: worst layer, logits, velocity
};
VsReference forward_vs_reference(const LanceCheckpoint& ck, const MixedSeq& m) {
    const LanceWeights w(ck);
    DecoderSession dec(w);
    VsReference r;
    ForwardOptions fo;
    fo.layer_out = true;
    dec.forward(m.batch, nullptr, false, r.out, fo);
    r.want = ref::forward(ck, m.ref);
    for (int l = 0; l < ck.config().num_hidden_layers; ++l)
        r.layers = std::max(r.layers, rel_l2(r.out.layer_out[l], r.want.layer_out[l]));
    r.logits = rel_l2(r.out.logits, r.want.logits);
    r.velocity = rel_l2(r.out.velocity, r.want.velocity);
    return r;
}

// The same decoder code on AWQ INT4 weights matches the reference on the dequantized weights
// (<= 1e-4), and differs from the unquantized model (so the quantized weights are really used).
TEST_F(DecoderModel, AwqInt4WeightsRunThroughTheSameCode) {
    const std::string awq =
        test::make_rtn_int4(models_.at("g2_hd32_f32"), dir_->path() / "awq", 32);
    const auto ck = LanceCheckpoint::open(awq);
    ASSERT_EQ(ck->kind(), CheckpointKind::Awq);
    const MixedSeq m = mixed_sequence(ck->config(), 12);
    const VsReference r = forward_vs_reference(*ck, m);
    std::printf("  awq g32     layers %.2e logits %.2e velocity %.2e\n", r.layers, r.logits,
                r.velocity);
    EXPECT_LT(r.layers, 1e-4);
    EXPECT_LT(r.logits, 1e-4);
    EXPECT_LT(r.velocity, 1e-4);

    const auto ck32 = LanceCheckpoint::open(models_.at("g2_hd32_f32"));
    const LanceWeights dec32_w(*ck32);
    DecoderSession dec32(dec32_w);
    Outputs plain;
    dec32.forward(m.batch, nullptr, false, plain);
    EXPECT_GT(rel_l2(r.out.logits, to_f64(plain.logits)), 1e-3);
}

// ---- lancet forward -------------------------------------------------------------------------

struct InTensor {
    DType dt;
    Shape shape;
    std::vector<uint8_t> bytes;
};
template <typename T>
InTensor tensor_of(DType dt, Shape shape, const std::vector<T>& v) {
    const auto* p = reinterpret_cast<const uint8_t*>(v.data());
    return {dt, std::move(shape), std::vector<uint8_t>(p, p + v.size() * sizeof(T))};
}

void write_input(const fs::path& path, const std::map<std::string, InTensor>& t) {
    SafetensorsWriter w(path.string());
    for (const auto& [name, e] : t) w.add(name, e.dt, e.shape);
    for (const auto& [name, e] : t) w.write(name, e.bytes.data(), e.bytes.size());
    w.finish();
}

std::map<std::string, InTensor> cli_input(const MixedSeq& m) {
    const Batch& b = m.batch;
    const int64_t L = b.size(), N = b.timesteps.size();
    std::vector<int64_t> lens, modes;
    for (const Split& s : b.splits) lens.push_back(s.len), modes.push_back(int(s.mode));
    return {{"token_ids", tensor_of(DType::I64, {L}, b.token_ids)},
            {"is_gen", tensor_of(DType::U8, {L}, b.is_gen)},
            {"latents", tensor_of(DType::F32, {N, 48}, b.latents)},
            {"timesteps", tensor_of(DType::F32, {N}, b.timesteps)},
            {"split_lens", tensor_of(DType::I64, {int64_t(lens.size())}, lens)},
            {"split_modes", tensor_of(DType::I64, {int64_t(modes.size())}, modes)},
            {"latent_grid", tensor_of(DType::I64, {3}, std::vector<int64_t>{1, 2, 3})}};
}

// ---- INT5 and NVFP4 (spec §1.2, §1.3) --------------------------------------------------------

// Folders in the seed's INT5 and NVFP4 layouts run through the same decoder: the fast forward
// matches the float64 reference on the spec-decoded weights (<= 1e-4), the quantized weights are
// really used (the result differs from the unquantized model), and `lancet forward` gives the
// same. (How close each quantizer stays to the weights is quant_q4_test's business: this tiny
// random model amplifies any weight change to O(1) in its logits, INT4 included.)
TEST_F(DecoderModel, Int5AndNvfp4WeightsRunThroughTheSameCode) {
    const std::string src = models_.at("g2_hd32_f32");
    const auto ck32 = LanceCheckpoint::open(src);
    const MixedSeq m = mixed_sequence(ck32->config(), 12);
    const LanceWeights dec32_w(*ck32);
    DecoderSession dec32(dec32_w);
    Outputs plain;
    dec32.forward(m.batch, nullptr, false, plain);
    for (QuantFormat f : {QuantFormat::Int5, QuantFormat::Nvfp4}) {
        const std::string name(quant_format_name(f));
        const std::string dir =
            test::make_rtn_int5_or_nvfp4(src, dir_->path() / ("q_" + name), f, 32);
        const auto ck = LanceCheckpoint::open(dir);
        ASSERT_EQ(ck->kind(),
                  f == QuantFormat::Nvfp4 ? CheckpointKind::Nvfp4 : CheckpointKind::Awq);
        ASSERT_EQ(ck->quant_meta()->format, f);
        const VsReference v = forward_vs_reference(*ck, m);
        const double vs_plain = rel_l2(v.out.logits, to_f64(plain.logits));
        std::printf("  %-6s layers %.2e logits %.2e velocity %.2e\n", name.c_str(), v.layers,
                    v.logits, v.velocity);
        EXPECT_LT(v.layers, 1e-4) << name;
        EXPECT_LT(v.logits, 1e-4) << name;
        EXPECT_LT(v.velocity, 1e-4) << name;
        EXPECT_GT(vs_plain, 1e-3) << name;

        // The CLI on the same folder: the library's logits.
        TempDir tmp;
        write_input(tmp / "in.safetensors", cli_input(m));
        // Exact arithmetic, as the reference (the CLI's default rounds to bf16 on AMX).
        const auto r = test::run_lancet("--exact-activations forward --model " + dir + " --input " +
                                        (tmp / "in.safetensors").string() + " --out " +
                                        (tmp / "out.safetensors").string());
        ASSERT_EQ(r.exit_code, 0) << name << ": " << r.err;
        SafetensorsFile fo_file((tmp / "out.safetensors").string());
        const TensorEntry* e = fo_file.find("velocity");
        ASSERT_NE(e, nullptr);
        EXPECT_LT(rel_l2(to_f32(fo_file.view(*e)), v.want.velocity), 1e-4) << name;
    }
}

// A folder whose INT5 codes break the format fails to load with one line naming the tensor.
TEST_F(DecoderModel, Int5CodeOutOfRangeIsOneLineError) {
    const std::string dir = test::make_rtn_int5_or_nvfp4(
        models_.at("g2_hd16_f32"), dir_->path() / "int5_bad", QuantFormat::Int5, 32);
    const std::string file = dir + "/awq_state_dict.safetensors";
    const std::string tensor = "language_model.model.layers.1.mlp.up_proj.qweight";
    std::string bytes = test::read_file(file);
    {
        SafetensorsFile f(file);
        const TensorEntry* e = f.find(tensor);
        ASSERT_NE(e, nullptr);
        bytes[f.view(*e).data - f.mapping().data() + 3] = char(40);  // row 0, column 3
    }
    test::write_file(file, bytes);
    const auto ck = LanceCheckpoint::open(dir);
    try {
        const LanceWeights w(*ck);
        ADD_FAILURE() << "code 40 accepted";
    } catch (const Error& e) {
        const std::string msg = e.what();
        EXPECT_NE(msg.find("layers.1.mlp.up_proj"), std::string::npos) << msg;
        EXPECT_NE(msg.find("code 40 at row 0, column 3"), std::string::npos) << msg;
        EXPECT_EQ(msg.find('\n'), std::string::npos) << msg;
    }
}

TEST_F(DecoderModel, ForwardCliRoundTrip) {
    const std::string model = models_.at("g2_hd16_bf16");
    const auto ck = LanceCheckpoint::open(model);
    const MixedSeq m = mixed_sequence(ck->config(), 8);
    TempDir tmp;
    write_input(tmp / "in.safetensors", cli_input(m));
    // Exact arithmetic, as the reference (the CLI's default attention is bf16 on AMX).
    const auto r = test::run_lancet("--exact-activations forward --model " + model + " --input " +
                                    (tmp / "in.safetensors").string() + " --out " +
                                    (tmp / "out.safetensors").string());
    ASSERT_EQ(r.exit_code, 0) << r.err;
    SafetensorsFile f((tmp / "out.safetensors").string());
    const ref::Output want = ref::forward(*ck, m.ref, 278);
    auto get = [&](const std::string& name, const Shape& shape) {
        const TensorEntry* e = f.find(name);
        EXPECT_NE(e, nullptr) << name;
        if (!e) return std::vector<float>{};
        EXPECT_EQ(e->shape, shape) << name;
        return to_f32(f.view(*e));
    };
    const int64_t L = m.batch.size(), H = 64;
    EXPECT_LT(rel_l2(get("logits", {12, 320}), want.logits), 1e-4);
    EXPECT_LT(rel_l2(get("velocity", {12, 48}), want.velocity), 1e-4);
    EXPECT_LT(rel_l2(get("final_hidden", {L, H}), want.final_hidden), 1e-4);
    EXPECT_LT(rel_l2(get("layer_out.1", {L, H}), want.layer_out[1]), 1e-4);

    // Explicit positions and PE3D indices override the defaults (here: the same values).
    auto in = cli_input(m);
    std::vector<int64_t> pos(3 * L);
    for (int64_t i = 0; i < L; ++i)
        for (int a = 0; a < 3; ++a) pos[a * L + i] = m.batch.positions[i][a];
    in["positions"] = tensor_of(DType::I64, {3, L}, pos);
    in["pe3d_index"] = tensor_of(DType::I64, {12}, m.batch.pe3d_index);
    write_input(tmp / "in2.safetensors", in);
    const auto r2 = test::run_lancet("--exact-activations forward --model " + model + " --input " +
                                     (tmp / "in2.safetensors").string() + " --out " +
                                     (tmp / "out2.safetensors").string());
    ASSERT_EQ(r2.exit_code, 0) << r2.err;
    SafetensorsFile f2((tmp / "out2.safetensors").string());
    EXPECT_EQ(to_f32(f2.view(*f2.find("velocity"))), get("velocity", {12, 48}));
}

TEST_F(DecoderModel, ForwardCliRejectsMalformedInput) {
    const std::string model = models_.at("g2_hd16_f32");
    const auto ck = LanceCheckpoint::open(model);
    const MixedSeq m = mixed_sequence(ck->config(), 8);
    const int64_t L = m.batch.size();
    using Edit = std::function<void(std::map<std::string, InTensor>&)>;
    const std::vector<std::pair<std::string, Edit>> cases = {
        {"token_ids", [](auto& t) { t.erase("token_ids"); }},
        {"is_gen", [&](auto& t) { t["is_gen"].dt = DType::I8; }},
        {"is_gen",
         [&](auto& t) {
             t["is_gen"] = tensor_of(DType::U8, {L - 1}, std::vector<uint8_t>(L - 1));
         }},
        {"split_lens",
         [&](auto& t) {
             t["split_lens"] = tensor_of(DType::I64, {5}, std::vector<int64_t>{5, 8, 2, 8, 2});
         }},
        {"split_modes",
         [&](auto& t) {
             t["split_modes"] = tensor_of(DType::I64, {5},
                                          std::vector<int64_t>{0, 1, 0, 4, 0});  // 3 is full_noise
         }},
        {"latents",
         [&](auto& t) {
             t["latents"] = tensor_of(DType::F32, {11, 48}, std::vector<float>(11 * 48, 1.0f));
         }},
        {"timesteps", [&](auto& t) { t.erase("timesteps"); }},
        {"latent_grid",
         [&](auto& t) {
             t["latent_grid"] = tensor_of(DType::I64, {3}, std::vector<int64_t>{1, 2, 2});
         }},
        {"token_ids",
         [&](auto& t) {
             auto ids = m.batch.token_ids;
             ids[1] = 320;
             t["token_ids"] = tensor_of(DType::I64, {L}, ids);
         }},
        {"is_gen",
         [&](auto& t) {
             auto g = m.batch.is_gen;
             g[0] = 1;
             t["is_gen"] = tensor_of(DType::U8, {L}, g);
         }},
        {"positions",
         [&](auto& t) {
             t["positions"] = tensor_of(DType::I64, {3, L - 1}, std::vector<int64_t>(3 * (L - 1)));
         }},
        {"pe3d_index",
         [&](auto& t) {
             t["pe3d_index"] = tensor_of(DType::I64, {12}, std::vector<int64_t>(12, 1 << 20));
         }},
    };
    TempDir tmp;
    for (size_t i = 0; i < cases.size(); ++i) {
        auto in = cli_input(m);
        cases[i].second(in);
        const fs::path ip = tmp / ("in" + std::to_string(i) + ".safetensors");
        const fs::path op = tmp / ("out" + std::to_string(i) + ".safetensors");
        write_input(ip, in);
        const auto r = test::run_lancet("forward --model " + model + " --input " + ip.string() +
                                        " --out " + op.string());
        EXPECT_EQ(r.exit_code, 1) << i << ": " << r.err;
        EXPECT_EQ(std::count(r.err.begin(), r.err.end(), '\n'), 1) << i << ": " << r.err;
        EXPECT_NE(r.err.find(cases[i].first), std::string::npos) << i << ": " << r.err;
        EXPECT_FALSE(fs::exists(op)) << i;
    }
    const auto r = test::run_lancet("forward --model " + model + " --input " +
                                    (tmp / "nope.safetensors").string() + " --out " +
                                    (tmp / "o.safetensors").string());
    EXPECT_EQ(r.exit_code, 1);
}

}  // namespace
}  // namespace lancet
