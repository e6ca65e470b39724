// The flow sampler (spec §3.1, §2.7.1) and the generation task sequences (§2.4, §2.6.2, §3.2-3.4):
// the arithmetic against float64 references, the cached prefix against full-sequence steps, the
// layouts, positions and CFG drop of every task, and `lancet sample` / `lancet run` on the tiny
// synthetic checkpoint.
#include "pipeline/flow_sampler.h"

#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <filesystem>
#include <map>

#include "core/numeric.h"
#include "core/rng.h"
#include "core/thread_pool.h"
#include "io/image.h"
#include "io/safetensors.h"
#include "io/video.h"
#include "kernels/ops.h"
#include "model/decoder.h"
#include "model/lance_checkpoint.h"
#include "pipeline/gen_tasks.h"
#include "pipeline/generation.h"
#include "pipeline/vae_codec.h"
#include "test_util.h"
#include "tokenizer/qwen2_tokenizer.h"

namespace lancet {
namespace {

namespace fs = std::filesystem;

std::vector<float> randn(uint64_t seed, size_t n, double scale = 1.0) {
    Rng r(seed);
    std::vector<float> v(n);
    for (float& x : v) x = static_cast<float>(scale * r.normal());
    return v;
}

double rel_l2(const std::vector<float>& a, const std::vector<float>& b) {
    double num = 0, den = 0;
    for (size_t i = 0; i < a.size(); ++i) {
        num += (static_cast<double>(a[i]) - b[i]) * (static_cast<double>(a[i]) - b[i]);
        den += static_cast<double>(b[i]) * b[i];
    }
    return std::sqrt(num / std::max(den, 1e-300));
}

TEST(FlowSampler, TimeGridMatchesReferenceAndCfgWindow) {
    for (const auto& [steps, shift] : {std::pair{30, 3.5}, std::pair{7, 1.0}, std::pair{50, 5.0}}) {
        const auto f = flow_time_grid(steps, shift);
        const auto d = ref::flow_time_grid(steps, shift);
        ASSERT_EQ(f.size(), d.size());
        double worst = 0;
        for (size_t k = 0; k < f.size(); ++k) worst = std::max(worst, std::abs(f[k] - d[k]));
        EXPECT_LE(worst, 4e-7) << steps << " " << shift;  // a few f32 ulps of values <= 1
        EXPECT_EQ(f.front(), 1.0f);
        EXPECT_EQ(f.back(), 0.0f);
    }
    // Spec §3.1: with 30 steps and shift 3.5 CFG is active on the first 26 steps.
    FlowSamplerOptions o;
    const auto g = flow_time_grid(30, 3.5);
    int active = 0;
    for (int k = 0; k < 30; ++k) active += cfg_active(g[k], o);
    EXPECT_EQ(active, 26);
    o.cfg = 1.0;
    EXPECT_FALSE(cfg_active(g[0], o));
}

// CFG combine and the global norm clamp: f32 against float64 (tight), bf16 with a bound from the
// six roundings per element.
TEST(FlowSampler, CfgCombineMatchesReference) {
    const size_t n = 48 * 37;
    for (double g : {4.0, 1.5, 0.0}) {
        const auto vc = randn(1, n), vu0 = randn(2, n, 0.7);
        std::vector<float> vu(n);
        for (size_t i = 0; i < n; ++i) vu[i] = 0.8f * vc[i] + vu0[i];
        std::vector<double> dc(vc.begin(), vc.end()), du(vu.begin(), vu.end()), want(n);
        ref::cfg_combine(dc.data(), du.data(), n, g, want.data());
        std::vector<float> got(n);
        cfg_combine(vc.data(), vu.data(), n, g, false, got.data());
        double worst = 0;
        for (size_t i = 0; i < n; ++i) {
            const double bound = 1e-6 * (std::abs(du[i]) + g * (std::abs(dc[i]) + std::abs(du[i])) +
                                         std::abs(want[i])) +
                                 1e-7;
            const double e = std::abs(got[i] - want[i]);
            worst = std::max(worst, e / bound);
        }
        EXPECT_LE(worst, 1.0) << "f32, g " << g;
        cfg_combine(vc.data(), vu.data(), n, g, true, got.data());
        worst = 0;
        size_t at = 0;
        for (size_t i = 0; i < n; ++i) {
            // Inputs, difference, product, sum, scale and final product: 2^-8 relative each
            // (the bf16 unit roundoff).
            const double u = 0x1p-8;
            const double bound = u * (3 * g * (std::abs(dc[i]) + std::abs(du[i])) +
                                      3 * std::abs(du[i]) + 8 * std::abs(want[i])) +
                                 1e-30;
            const double e = std::abs(got[i] - want[i]) / bound;
            if (e > worst) worst = e, at = i;
            EXPECT_EQ(got[i], round_bf16(got[i])) << "not a bf16 value at " << i;
        }
        EXPECT_LE(worst, 1.0) << "bf16, g " << g << ", worst element " << at;
    }
    // Identical branches: the combination is the conditional velocity (scale 1).
    const auto v = randn(3, 96);
    std::vector<float> out(96);
    cfg_combine(v.data(), v.data(), 96, 4.0, false, out.data());
    for (size_t i = 0; i < 96; ++i) EXPECT_FLOAT_EQ(out[i], v[i]);
}

TEST(FlowSampler, EulerUpdatesOnlyGeneratedRows) {
    const size_t rows = 5, C = 48;
    auto x = randn(4, rows * C);
    const auto x0 = x;
    const auto v = randn(5, rows * C);
    const std::vector<uint8_t> gen = {0, 1, 1, 0, 1};
    const float dt = 0.0371f;
    for (bool b16 : {false, true}) {
        x = x0;
        if (b16)
            for (float& f : x) f = round_bf16(f);
        const auto start = x;
        euler_step(x.data(), v.data(), gen.data(), rows, C, dt, b16);
        for (size_t r = 0; r < rows; ++r)
            for (size_t c = 0; c < C; ++c) {
                const size_t i = r * C + c;
                if (!gen[r]) {
                    EXPECT_EQ(x[i], start[i]);
                    continue;
                }
                const double want = static_cast<double>(start[i]) - static_cast<double>(v[i]) * dt;
                const double bound =
                    b16 ? 0x1p-8 * (std::abs(v[i] * dt) + 2 * std::abs(want)) + 1e-30
                        : 1e-7 * (std::abs(want) + std::abs(v[i] * dt)) + 1e-30;
                EXPECT_LE(std::abs(x[i] - want), bound) << r << " " << c << " bf16 " << b16;
            }
    }
}

TEST(FlowSampler, NoiseIsSeededAndStandard) {
    const auto a = flow_noise(42, 200000), b = flow_noise(42, 200000), c = flow_noise(43, 16);
    EXPECT_EQ(a, b);
    EXPECT_NE(std::vector<float>(a.begin(), a.begin() + 16), c);
    double m = 0, s = 0;
    for (float v : a) m += v, s += static_cast<double>(v) * v;
    m /= a.size();
    s = std::sqrt(s / a.size() - m * m);
    EXPECT_LT(std::abs(m), 0.01);
    EXPECT_LT(std::abs(s - 1), 0.01);
}

TEST(FlowSampler, ReanchoringFollowsShiftPositionIds) {
    std::vector<RopePosition> pos;
    std::vector<Modality> mod;
    auto add = [&](Modality m, RopePosition p) { mod.push_back(m), pos.push_back(p); };
    add(Modality::Text, {0, 0, 0});
    add(Modality::Vit, {1, 1, 1});
    add(Modality::Vit, {2, 2, 3});
    add(Modality::Vit, {4, 4, 4});
    add(Modality::Source, {5, 5, 5});
    add(Modality::Source, {6, 7, 8});
    add(Modality::Caption, {9, 9, 9});
    add(Modality::Target, {10, 10, 10});
    add(Modality::Target, {11, 12, 13});
    shift_position_ids(pos, mod);
    EXPECT_EQ(pos[1], (RopePosition{1000, 1, 1}));
    EXPECT_EQ(pos[2], (RopePosition{1001, 2, 3}));
    EXPECT_EQ(pos[3], (RopePosition{1003, 4, 4}));
    EXPECT_EQ(pos[6], (RopePosition{9, 9, 9}));
    EXPECT_EQ(pos[7], (RopePosition{5, 5, 5}));
    EXPECT_EQ(pos[8], (RopePosition{6, 7, 8}));
    // Unequal counts: the target keeps its own ids.
    pos.push_back({12, 12, 12});
    mod.push_back(Modality::Target);
    const auto before = pos;
    shift_position_ids(pos, mod);
    EXPECT_EQ(pos[9], before[9]);
}

// ---- on the tiny synthetic checkpoint -------------------------------------------------------

class FlowModel : public ::testing::Test {
  protected:
    static void SetUpTestSuite() {
        dir_ = new test::TempDir();
        model_ = test::synth_tiny(*dir_);
    }
    static void TearDownTestSuite() {
        delete dir_;
        dir_ = nullptr;
    }
    static test::TempDir* dir_;
    static std::string model_;

    GenTaskInput input(GenTask task, const LanceConfig& cfg, int64_t lt, int64_t lh, int64_t lw) {
        GenTaskInput in;
        in.task = task;
        in.caption = "a red fox jumps over the lazy dog";
        in.lt = lt, in.lh = lh, in.lw = lw;
        const size_t C = cfg.latent_channels;
        in.noise = flow_noise(42, static_cast<size_t>(gen_task_rows(in)) * C);
        if (task == GenTask::I2V) in.cond_latent = randn(7, lh * lw * C, 0.5);
        if (gen_task_is_edit(task)) {
            in.cond_latent = randn(8, lt * lh * lw * C, 0.5);
            in.vit_grid = {1, 4, 6};  // 2 x 3 merged rows
            in.vit_rows = randn(9, 6 * cfg.hidden_size, 0.3);
        }
        return in;
    }
};
test::TempDir* FlowModel::dir_ = nullptr;
std::string FlowModel::model_;

TEST_F(FlowModel, TaskLayoutsPositionsAndCfgDrop) {
    const auto ck = LanceCheckpoint::open(model_);
    const LanceConfig& cfg = ck->config();
    const Qwen2Tokenizer tok = Qwen2Tokenizer::load(model_);
    EXPECT_NE(gen_system_prompt(GenTask::ImageEdit).find("user\xE2\x80\x99s text instruction"),
              std::string::npos);
    EXPECT_NE(gen_system_prompt(GenTask::VideoEdit).find("Generate a new video"),
              std::string::npos);
    const int64_t vs = cfg.vision_start_token_id, ve = cfg.vision_end_token_id;
    for (GenTask task :
         {GenTask::T2I, GenTask::T2V, GenTask::I2V, GenTask::ImageEdit, GenTask::VideoEdit}) {
        SCOPED_TRACE(gen_task_name(task));
        const int64_t lt = (task == GenTask::T2I || task == GenTask::ImageEdit) ? 1 : 3;
        const GenTaskInput in = input(task, cfg, lt, 2, 3);
        const GenSequence s = build_gen_sequence(tok, cfg, in);
        check_gen_sequence(s, cfg, "test");
        const Batch& b = s.batch;
        std::vector<SplitMode> modes;
        for (const Split& sp : b.splits) modes.push_back(sp.mode);
        using M = SplitMode;
        if (gen_task_is_edit(task))
            EXPECT_EQ(modes, (std::vector<M>{M::Causal, M::Full, M::Full, M::Causal, M::Causal,
                                             M::Noise, M::Causal}));
        else
            EXPECT_EQ(modes,
                      (std::vector<M>{M::Causal, M::Causal, M::Causal, M::Noise, M::Causal}));
        // The dropped tokens are exactly the caption's.
        std::vector<int64_t> dropped;
        for (size_t i = 0; i < b.size(); ++i)
            if (s.cfg_drop[i]) dropped.push_back(b.token_ids[i]);
        const auto cap = tok.encode(in.caption);
        EXPECT_EQ(dropped, std::vector<int64_t>(cap.begin(), cap.end()));
        // Target block: VS, pads, VE; generated rows all but i2v's first frame.
        const int64_t n = lt * 2 * 3;
        size_t nb = 0, at = 0;
        for (const Split& sp : b.splits) {
            if (sp.mode == M::Noise) nb = at;
            at += sp.len;
        }
        EXPECT_EQ(b.token_ids[nb], vs);
        EXPECT_EQ(b.token_ids[nb + n + 1], ve);
        const size_t N = s.gen_rows.size();
        int64_t generated = 0;
        for (uint8_t g : s.gen_rows) generated += g;
        EXPECT_EQ(generated, task == GenTask::I2V ? n - 6 : n);
        if (task == GenTask::I2V) {
            for (size_t r = 0; r < 6 * static_cast<size_t>(cfg.latent_channels); ++r)
                EXPECT_EQ(b.latents[(N - n) * cfg.latent_channels + r], in.cond_latent[r]);
        }
        if (!gen_task_is_edit(task)) {
            // get_rope_index: the block starts after VS at base, temporal step 2 per frame.
            const int64_t base = b.positions[nb][0] + 1;
            EXPECT_EQ(b.positions[nb + 1], (RopePosition{base, base, base}));
            if (lt > 1) {
                EXPECT_EQ(b.positions[nb + 1 + 6], (RopePosition{base + 2, base, base}));
            }
            EXPECT_EQ(b.positions[nb + n + 1][0], base + std::max<int64_t>(2 * (lt - 1), 2) + 1);
            EXPECT_EQ(b.positions[nb + n], (RopePosition{base + 2 * (lt - 1), base + 1, base + 2}));
            EXPECT_EQ(b.positions, mrope_positions(b.token_ids, s.grids, cfg));
        } else {
            // ViT block anchored at 1000 (VS first), target = source one by one.
            size_t vit_at = 0, src_at = 0;
            at = 0;
            for (size_t k = 0; k < b.splits.size(); ++k) {
                if (k == 1) vit_at = at;
                if (k == 2) src_at = at;
                at += b.splits[k].len;
            }
            EXPECT_EQ(b.positions[vit_at][0], 1000);
            EXPECT_EQ(s.modality[vit_at], Modality::Vit);
            for (int64_t i = 0; i < n + 2; ++i)
                EXPECT_EQ(b.positions[nb + i], b.positions[src_at + i]) << i;
            EXPECT_EQ(std::count(s.gen_rows.begin(), s.gen_rows.begin() + n, 1), 0);
        }
    }
}

// The arithmetic of a whole run: every recorded step satisfies x_k = x_{k-1} - v_k dt_k on the
// generated rows (float64, bf16 bound) and leaves clean rows as they were.
TEST_F(FlowModel, TrajectoryFollowsEuler) {
    const auto ck = LanceCheckpoint::open(model_);
    const LanceConfig& cfg = ck->config();
    const Qwen2Tokenizer tok = Qwen2Tokenizer::load(model_);
    const LanceWeights weights(*ck);
    DecoderSession dec(weights);
    const GenSequence s = build_gen_sequence(tok, cfg, input(GenTask::I2V, cfg, 2, 2, 2));
    FlowSamplerOptions o;
    o.steps = 6;
    o.keep_trajectory = true;
    const SampleResult r = flow_sample(dec, s, o);
    const auto grid = ref::flow_time_grid(6, 3.5);
    const size_t C = cfg.latent_channels;
    std::vector<float> prev = s.batch.latents;
    for (float& f : prev) f = round_bf16(f);
    int cfg_steps = 0;
    for (int k = 0; k < 6; ++k) {
        cfg_steps += grid[k] > 0.4;
        const double dt = grid[k] - grid[k + 1];
        for (size_t g = 0; g < s.gen_rows.size(); ++g)
            for (size_t c = 0; c < C; ++c) {
                const size_t i = g * C + c;
                if (!s.gen_rows[g]) {
                    ASSERT_EQ(r.xs[k][i], prev[i]);
                    continue;
                }
                const double want = prev[i] - static_cast<double>(r.vs[k][i]) * dt;
                const double bound =
                    0x1p-8 * (std::abs(r.vs[k][i] * dt) + 2 * std::abs(want)) + 2e-7;
                ASSERT_LE(std::abs(r.xs[k][i] - want), bound) << "step " << k << " row " << g;
            }
        prev = r.xs[k];
    }
    EXPECT_EQ(r.cfg_steps, cfg_steps);
    EXPECT_EQ(r.forwards, 6 + cfg_steps);
    EXPECT_EQ(r.x, r.xs.back());
}

// The cached-prefix sampler equals running the whole sequence every step (Lance's non-KV path)
// when the unconditional cache uses its own positions; Lance's KV quirk changes the result.
TEST_F(FlowModel, CachedPrefixEqualsFullSequence) {
    const auto ck = LanceCheckpoint::open(model_);
    const LanceConfig& cfg = ck->config();
    const Qwen2Tokenizer tok = Qwen2Tokenizer::load(model_);
    const LanceWeights weights(*ck);
    DecoderSession dec(weights);
    for (GenTask task : {GenTask::T2I, GenTask::I2V, GenTask::ImageEdit}) {
        SCOPED_TRACE(gen_task_name(task));
        const int64_t lt = task == GenTask::I2V ? 2 : 1;
        const GenSequence s = build_gen_sequence(tok, cfg, input(task, cfg, lt, 2, 3));
        FlowSamplerOptions o;
        o.steps = 5;
        o.bf16_state = false;
        o.uncond_cache_cond_positions = false;
        o.keep_trajectory = true;
        const SampleResult cached = flow_sample(dec, s, o);
        o.kv_cache = false;
        const SampleResult full = flow_sample(dec, s, o);
        ASSERT_EQ(cached.forwards, full.forwards);
        for (int k = 0; k < o.steps; ++k) {
            EXPECT_LT(rel_l2(cached.vs[k], full.vs[k]), 2e-5) << "step " << k;
            EXPECT_LT(rel_l2(cached.xs[k], full.xs[k]), 2e-5) << "step " << k;
        }
        o.kv_cache = true;
        o.uncond_cache_cond_positions = true;
        const SampleResult quirk = flow_sample(dec, s, o);
        EXPECT_GT(rel_l2(quirk.x, cached.x), 1e-6) << "the KV-path quirk changed nothing";
        for (float v : quirk.x) ASSERT_TRUE(std::isfinite(v));
    }
}

// A CFG step as one stacked forward (both branches' noisy blocks through the linears together,
// DecoderSession::forward_chunks) against two forwards, one per branch. With W4A8 on INT4 weights
// every layer linear is row-independent (linear.h fixes its per-element arithmetic), the latent
// bridge runs per chunk and every other op works row by row or per chunk: the trajectories are
// bit-identical, for a block of 6 rows per branch (GEMV-sized alone, GEMM-sized stacked) and of
// 20. With f32 activations the linears may sum in another order for another row count (more
// accumulators below 9 rows): the first step's combined velocities, from identical inputs and
// without bf16 rounding, agree within the bound DecodeStep derives per branch (1e-5 relative;
// INT4 weights 4x: 4e-5) times the CFG combination's gain: v = v_u + g (v_c - v_u) carries
// errors e_c, e_u as (1 + g) e_c + g e_u, at most (1 + 2g) times a branch's (9 at g = 4).
TEST_F(FlowModel, StackedCfgStepEqualsTwoForwards) {
    const std::string int4 = test::make_rtn_int4(model_, dir_->path() / "int4", 32);
    ThreadPool pool(2);
    struct Case {
        std::string model;
        kernels::ActMode act;
        bool exact;
        double bound;
    };
    const Case cases[] = {{model_, kernels::ActMode::F32, false, 1e-5},
                          {int4, kernels::ActMode::F32, false, 4e-5},
                          {int4, kernels::ActMode::Int8, true, 0}};
    for (const Case& cs : cases) {
        const auto ck = LanceCheckpoint::open(cs.model);
        const LanceConfig& cfg = ck->config();
        const Qwen2Tokenizer tok = Qwen2Tokenizer::load(cs.model);
        const LanceWeights weights(*ck);
        kernels::OpContext ctx = kernels::OpContext::defaults(&pool);
        ctx.act = cs.act;
        DecoderSession dec(weights, ctx);
        double worst = 0;
        for (GenTask task : {GenTask::T2I, GenTask::I2V, GenTask::ImageEdit}) {
            for (const int64_t lw : {3, 10}) {
                SCOPED_TRACE(std::string(gen_task_name(task)) + " " + cs.model + " act " +
                             kernels::act_mode_name(cs.act) + " block 2x" + std::to_string(lw));
                const int64_t lt = task == GenTask::I2V ? 2 : 1;
                const GenSequence s = build_gen_sequence(tok, cfg, input(task, cfg, lt, 2, lw));
                FlowSamplerOptions o;
                o.steps = 4;
                o.keep_trajectory = true;
                o.bf16_state = cs.exact;
                const SampleResult stacked = flow_sample(dec, s, o);
                o.cfg_batch = false;
                const SampleResult apart = flow_sample(dec, s, o);
                ASSERT_EQ(stacked.forwards, apart.forwards);
                ASSERT_GT(stacked.cfg_steps, 0);
                ASSERT_EQ(stacked.cfg_steps, apart.cfg_steps);
                if (cs.exact) {
                    for (int k = 0; k < o.steps; ++k) {
                        size_t diff = 0;
                        for (size_t i = 0; i < stacked.xs[k].size(); ++i)
                            diff +=
                                std::memcmp(&stacked.xs[k][i], &apart.xs[k][i], sizeof(float)) !=
                                    0 ||
                                std::memcmp(&stacked.vs[k][i], &apart.vs[k][i], sizeof(float)) != 0;
                        EXPECT_EQ(diff, 0u) << "step " << k;
                    }
                } else {
                    const double e = rel_l2(stacked.vs[0], apart.vs[0]);
                    EXPECT_LT(e, (1 + 2 * o.cfg) * cs.bound) << "first step's combined velocity";
                    EXPECT_TRUE(std::any_of(stacked.vs[0].begin(), stacked.vs[0].end(),
                                            [](float v) { return v != 0; }));
                    worst = std::max(worst, e);
                }
            }
        }
        if (!cs.exact)
            std::printf("%s act %s: worst first-step rel-L2 %.3g (bound %.3g)\n", cs.model.c_str(),
                        kernels::act_mode_name(cs.act), worst, 9 * cs.bound);
    }
}

TEST_F(FlowModel, NoUnconditionalBranchAtCfgOne) {
    const auto ck = LanceCheckpoint::open(model_);
    const LanceConfig& cfg = ck->config();
    const Qwen2Tokenizer tok = Qwen2Tokenizer::load(model_);
    const LanceWeights weights(*ck);
    DecoderSession dec(weights);
    const GenSequence s = build_gen_sequence(tok, cfg, input(GenTask::T2I, cfg, 1, 2, 2));
    FlowSamplerOptions o;
    o.steps = 3;
    o.cfg = 1.0;
    const SampleResult r = flow_sample(dec, s, o);
    EXPECT_EQ(r.forwards, 3);
    EXPECT_EQ(r.cfg_steps, 0);
}

std::string q(const fs::path& p) { return "'" + p.string() + "'"; }

TEST_F(FlowModel, RunT2iWritesPngWithMetadata) {
    test::TempDir d;
    const fs::path out = d / "fox.png";
    const auto r = test::run_lancet("-q run --task t2i -m " + q(model_) +
                                    " -p 'a red fox' --size 32x48 --steps 3 -o " + q(out));
    ASSERT_EQ(r.exit_code, 0) << r.err;
    const std::string png = test::read_file(out);
    EXPECT_EQ(png.substr(1, 3), "PNG");
    EXPECT_NE(png.find("a red fox"), std::string::npos);
    EXPECT_NE(png.find("lancet 0.1.0"), std::string::npos);
    EXPECT_NE(png.find("seed"), std::string::npos);
    // Same seed, same image.
    const fs::path out2 = d / "fox2.png";
    ASSERT_EQ(test::run_lancet("-q run --task t2i -m " + q(model_) +
                               " -p 'a red fox' --size 32x48 --steps 3 -o " + q(out2))
                  .exit_code,
              0);
    EXPECT_EQ(test::read_file(out2), png);
}

TEST_F(FlowModel, RunRefusesBadInput) {
    test::TempDir d;
    const std::string m = " -m " + q(model_) + " ";
    struct Case {
        std::string args, needle, file;
    };
    const std::vector<Case> cases = {
        {"--task t2i -p x --size 40x32 -o " + q(d / "a.png"), "multiple of 16", "a.png"},
        {"--task t2i -p x --size 2048x32 -o " + q(d / "b.png"), "PE3D limit", "b.png"},
        {"--task t2i -p x --size 32 -o " + q(d / "c.png"), "WIDTHxHEIGHT", "c.png"},
        {"--task t2i -p x -o " + q(d / "d.gif"), "unknown output format", "d.gif"},
        {"--task t2i -p x -o " + q(d / "e.mp4"), "makes an image", "e.mp4"},
        {"--task image_edit -p x -o " + q(d / "f.png"), "--image", "f.png"},
        {"--task i2v -p x -o " + q(d / "g.mp4"), "--image", "g.mp4"},
        {"--task t2i -p x --cfg nan -o " + q(d / "h.png"), "--cfg", "h.png"},
        {"--task t2i -p x --steps 0 -o " + q(d / "i.png"), "--steps", "i.png"},
        {"--task t2i -p x --shift -1 -o " + q(d / "j.png"), "--shift", "j.png"},
        {"--task t2v -p x --size 32x32 --frames 200 -o " + q(d / "k.mp4"), "PE3D table", "k.mp4"},
        {"--task t2i -p '' -o " + q(d / "l.png"), "empty", "l.png"},
    };
    for (const Case& c : cases) {
        const auto r = test::run_lancet("-q run" + m + c.args);
        EXPECT_EQ(r.exit_code, 1) << c.args;
        EXPECT_EQ(std::count(r.err.begin(), r.err.end(), '\n'), 1) << c.args << ": " << r.err;
        EXPECT_NE(r.err.find("lancet: error:"), std::string::npos) << r.err;
        EXPECT_NE(r.err.find(c.needle), std::string::npos) << c.args << ": " << r.err;
        EXPECT_FALSE(fs::exists(d / c.file)) << c.args;
    }
    // No partial files of any name.
    EXPECT_TRUE(fs::is_empty(d.path()));
    // The output never replaces the input image.
    test::TempDir src;
    ImageRGB8 img;
    img.width = img.height = 32;
    img.rgb.assign(32 * 32 * 3, 90);
    write_png((src / "in.png").string(), img);
    const std::string before = test::read_file(src / "in.png");
    const auto same =
        test::run_lancet("-q run --task image_edit -m " + q(model_) + " -p x --image " +
                         q(src / "in.png") + " -o " + q(src / "in.png"));
    EXPECT_EQ(same.exit_code, 1);
    EXPECT_NE(same.err.find("overwrite the input"), std::string::npos) << same.err;
    EXPECT_EQ(test::read_file(src / "in.png"), before);
    // A model folder without the VAE (as quantized folders are) needs --vae.
    test::TempDir nv;
    for (const auto& e : fs::directory_iterator(model_))
        if (e.path().filename() != "Wan2.2_VAE.pth")
            fs::create_symlink(e.path(), nv / e.path().filename().string());
    const auto r = test::run_lancet("-q run --task t2i -m " + q(nv.path()) +
                                    " -p x --size 32x32 -o " + q(d / "v.png"));
    EXPECT_EQ(r.exit_code, 1);
    EXPECT_NE(r.err.find("Wan2.2_VAE.pth"), std::string::npos) << r.err;
    EXPECT_FALSE(fs::exists(d / "v.png"));
}

// `lancet sample` on a hand-packed i2v-like sequence: its outputs, the clean rows kept, and the
// final latent equal to the last step.
TEST_F(FlowModel, SampleCommand) {
    const auto ck = LanceCheckpoint::open(model_);
    const LanceConfig& cfg = ck->config();
    const Qwen2Tokenizer tok = Qwen2Tokenizer::load(model_);
    const GenSequence s = build_gen_sequence(tok, cfg, input(GenTask::I2V, cfg, 2, 2, 2));
    const Batch& b = s.batch;
    const int64_t L = b.size(), N = s.gen_rows.size(), C = cfg.latent_channels;
    test::TempDir d;
    {
        SafetensorsWriter w((d / "seq.safetensors").string());
        std::vector<int64_t> lens, modes;
        for (const Split& sp : b.splits) lens.push_back(sp.len), modes.push_back(int(sp.mode));
        const int64_t S = lens.size();
        const std::vector<int64_t> grid = {2, 2, 2};
        w.add("token_ids", DType::I64, {L});
        w.add("is_gen", DType::U8, {L});
        w.add("split_lens", DType::I64, {S});
        w.add("split_modes", DType::I64, {S});
        w.add("latent_grid", DType::I64, {3});
        w.add("x_init", DType::F32, {N, C});
        w.add("gen_rows", DType::U8, {N});
        w.add("cfg_drop", DType::U8, {L});
        w.begin();
        w.write("token_ids", b.token_ids.data(), L * 8);
        w.write("is_gen", b.is_gen.data(), L);
        w.write("split_lens", lens.data(), S * 8);
        w.write("split_modes", modes.data(), S * 8);
        w.write("latent_grid", grid.data(), 24);
        w.write("x_init", b.latents.data(), N * C * 4);
        w.write("gen_rows", s.gen_rows.data(), N);
        w.write("cfg_drop", s.cfg_drop.data(), L);
        w.finish();
    }
    const auto r =
        test::run_lancet("-q sample --model " + q(model_) + " --input " + q(d / "seq.safetensors") +
                         " --out " + q(d / "out.safetensors") + " --steps 3 --decode");
    ASSERT_EQ(r.exit_code, 0) << r.err;
    SafetensorsFile f((d / "out.safetensors").string());
    for (const char* name : {"x.0", "v.0", "x.2", "v.2", "latent"}) {
        const TensorEntry* e = f.find(name);
        ASSERT_NE(e, nullptr) << name;
        EXPECT_EQ(e->shape, (Shape{N, C}));
    }
    const TensorEntry* fr = f.find("frames");
    ASSERT_NE(fr, nullptr);
    EXPECT_EQ(fr->shape, (Shape{3, 5, 32, 32}));
    const float* lat = reinterpret_cast<const float*>(f.view(*f.find("latent")).data);
    const float* x2 = reinterpret_cast<const float*>(f.view(*f.find("x.2")).data);
    for (int64_t i = 0; i < N * C; ++i) ASSERT_EQ(lat[i], x2[i]);
    for (int64_t g = 0; g < N; ++g)
        if (!s.gen_rows[g]) {
            for (int64_t c = 0; c < C; ++c)
                ASSERT_EQ(lat[g * C + c], round_bf16(b.latents[g * C + c])) << g;
        }
    // Absurd settings are refused before any work, leaving no output.
    const auto bad =
        test::run_lancet("-q sample --model " + q(model_) + " --input " + q(d / "seq.safetensors") +
                         " --out " + q(d / "o2.safetensors") + " --steps 0");
    EXPECT_EQ(bad.exit_code, 1);
    EXPECT_FALSE(fs::exists(d / "o2.safetensors"));
}

// --examples: one file per item in a folder built under a temporary name; compare: a model
// against itself gives zero latent difference and identical pixels, and a sheet of items x models.
// A video's frames handed out chunk by chunk (the MP4 writer's path) equal the gathered
// [3, T, H, W] frames of the same request, and the output then holds no frames; `run --task t2v`
// writes the streamed MP4 with every frame.
TEST_F(FlowModel, VideoFramesStreamChunkByChunk) {
    const auto ck = LanceCheckpoint::open(model_);
    const Qwen2Tokenizer tok = Qwen2Tokenizer::load(model_);
    const LanceWeights weights(*ck);
    DecoderSession dec(weights);
    Generator gen(*ck, tok, resolve_vae_path(model_));
    GenItem it;
    it.task = GenTask::T2V;
    it.caption = "a red fox";
    it.width = 32, it.height = 48;
    it.lt = 3;
    GenSettings s;
    s.steps = 2;
    const GenOutput whole = gen.generate(dec, it, s, 5);
    ASSERT_EQ(whole.T, 9);
    std::vector<std::vector<float>> chunks;
    std::vector<int64_t> counts;
    GenCallbacks cb;
    cb.on_frames = [&](const float* f, int64_t n, int64_t H, int64_t W) {
        EXPECT_EQ(H, 48);
        EXPECT_EQ(W, 32);
        chunks.emplace_back(f, f + 3 * n * H * W);
        counts.push_back(n);
    };
    const GenOutput streamed = gen.generate(dec, it, s, 5, cb);
    EXPECT_TRUE(streamed.frames.empty());
    EXPECT_EQ(streamed.latent, whole.latent);
    ASSERT_EQ(counts, (std::vector<int64_t>{1, 4, 4}));
    const int64_t T = 9, HW = 48 * 32;
    int64_t t0 = 0;
    for (size_t k = 0; k < chunks.size(); ++k) {
        for (int64_t c = 0; c < 3; ++c)
            for (int64_t i = 0; i < counts[k] * HW; ++i)
                ASSERT_EQ(chunks[k][static_cast<size_t>(c * counts[k] * HW + i)],
                          whole.frames[static_cast<size_t>((c * T + t0) * HW + i)])
                    << "chunk " << k << " channel " << c;
        t0 += counts[k];
    }
    test::TempDir d;
    const auto r = test::run_lancet("-q run --task t2v -m " + q(model_) +
                                    " -p 'a red fox' --size 32x48 --frames 9 --steps 2 -o " +
                                    q(d / "fox.mp4"));
    ASSERT_EQ(r.exit_code, 0) << r.err;
    const VideoInfo info = VideoReader((d / "fox.mp4").string()).info();
    EXPECT_EQ(info.frame_count, 9);
    EXPECT_EQ(info.width, 32);
    EXPECT_EQ(info.height, 48);
    for (const auto& e : fs::directory_iterator(d.path()))
        EXPECT_EQ(e.path().string().find(".tmp"), std::string::npos) << e.path();
}

TEST_F(FlowModel, ExamplesAndCompare) {
    test::TempDir d;
    test::write_file(d / "ex.json", "{\"a.png\": \"a red fox\", \"b.png\": \"a blue bird\"}");
    auto r = test::run_lancet("-q run --task t2i -m " + q(model_) + " --examples " +
                              q(d / "ex.json") + " --size 32x32 --steps 2 -o " + q(d / "out"));
    ASSERT_EQ(r.exit_code, 0) << r.err;
    EXPECT_TRUE(fs::exists(d / "out" / "a.png"));
    EXPECT_TRUE(fs::exists(d / "out" / "b.png"));
    EXPECT_NE(test::read_file(d / "out" / "a.png"), test::read_file(d / "out" / "b.png"));
    // The single-prompt run writes the same image as its example item.
    r = test::run_lancet("-q run --task t2i -m " + q(model_) +
                         " -p 'a red fox' --size 32x32 --steps 2 -o " + q(d / "one.png"));
    ASSERT_EQ(r.exit_code, 0) << r.err;
    EXPECT_EQ(test::read_file(d / "one.png"), test::read_file(d / "out" / "a.png"));

    r = test::run_lancet("-q compare --model " + q(model_) + " --model " + q(model_) +
                         " --task t2i --examples " + q(d / "ex.json") +
                         " --size 32x48 --steps 2 -o " + q(d / "sheet.png"));
    ASSERT_EQ(r.exit_code, 0) << r.err;
    EXPECT_NE(r.out.find("overall"), std::string::npos) << r.out;
    EXPECT_NE(r.out.find("0.00000        inf"), std::string::npos) << r.out;
    const ImageRGB8 sheet = read_image((d / "sheet.png").string());
    EXPECT_EQ(sheet.width, 2 * 32);
    EXPECT_EQ(sheet.height, 2 * 48);
    // Fewer than two models: refused.
    r = test::run_lancet("-q compare --model " + q(model_) + " --task t2i -p x -o " +
                         q(d / "s2.png"));
    EXPECT_EQ(r.exit_code, 1);
    EXPECT_FALSE(fs::exists(d / "s2.png"));
}

}  // namespace
}  // namespace lancet
