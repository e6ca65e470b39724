// The vision tower: config parsing, the checkpoint's ViT folder, the window plan and patch
// packing against the reference's definitions, and the fast tower against the float64 reference
// piece by piece (embedding, every block, the merged output) on tiny random weights.
#include "model/vit.h"

#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <functional>
#include <nlohmann/json.hpp>
#include <set>

#include "core/error.h"
#include "core/rng.h"
#include "io/json_file.h"
#include "io/safetensors.h"
#include "model/decoder.h"
#include "model/lance_checkpoint.h"
#include "model/positions.h"
#include "model/synth.h"
#include "model/vit_config.h"
#include "model/vit_ref.h"
#include "test_util.h"

namespace lancet {
namespace {

namespace fs = std::filesystem;
using nlohmann::json;
using test::TempDir;

std::string synth(const TempDir& dir, const std::string& name, DType dt = DType::F32,
                  const std::string& preset = "tiny") {
    SynthOptions o;
    o.preset = preset;
    o.dtype = dt;
    o.seed = 7;
    o.out = (dir / name).string();
    synth_checkpoint(o);
    return o.out;
}

void expect_error(const std::function<void()>& f, const std::string& fragment) {
    try {
        f();
        ADD_FAILURE() << "no error; wanted: " << fragment;
    } catch (const Error& e) {
        const std::string m = e.what();
        EXPECT_NE(m.find(fragment), std::string::npos) << m;
        EXPECT_EQ(m.find('\n'), std::string::npos) << m;
    }
}

std::vector<float> random_video(int64_t n, uint64_t seed) {
    Rng r(seed);
    std::vector<float> v(static_cast<size_t>(n));
    for (float& x : v) x = 4.0f * r.unit_float() - 2.0f;  // CLIP-normalised pixels lie in ~[-2, 2]
    return v;
}

TEST(VitConfig, ReadsTheReleaseVisionConfig) {
    const fs::path shared = test::shared_dir();
    if (shared.empty()) GTEST_SKIP() << "../shared absent";
    const json j = read_json_file((shared / "data/qwen2-tokenizer/config.json").string());
    const VitConfig v = vit_config_from_json(j["vision_config"], "config.json");
    EXPECT_EQ(v.depth, 32);
    EXPECT_EQ(v.hidden_size, 1280);
    EXPECT_EQ(v.num_heads, 16);
    EXPECT_EQ(v.head_dim(), 80);
    EXPECT_EQ(v.intermediate_size, 3420);
    EXPECT_EQ(v.out_hidden_size, 2048);
    EXPECT_EQ(v.patch_dim(), 1176);
    EXPECT_EQ(v.merged_dim(), 5120);
    EXPECT_EQ(v.merge_pixels(), 28);
    EXPECT_EQ(v.window_merge_blocks(), 4);
    EXPECT_EQ(v.fullatt_block_indexes, (std::vector<int>{7, 15, 23, 31}));
    EXPECT_TRUE(v.is_full_attention(15));
    EXPECT_FALSE(v.is_full_attention(14));
    // The folder form (in_channels) reads back the same.
    const VitConfig w = vit_config_from_json(vit_folder_config_json(v), "rt");
    EXPECT_EQ(vit_config_to_json(w), vit_config_to_json(v));
}

TEST(VitConfig, RejectsBadValuesInOneLine) {
    const json good = vit_folder_config_json(synth_config("tiny").vision);
    auto bad = [&](const std::function<void(json&)>& edit, const std::string& fragment) {
        json j = good;
        edit(j);
        expect_error([&] { vit_config_from_json(j, "vit/config.json"); }, fragment);
    };
    bad([](json& j) { j.erase("depth"); }, "missing key \"depth\"");
    bad([](json& j) { j["num_heads"] = 3; }, "head_dim divisible by 4");
    bad([](json& j) { j["window_size"] = 100; }, "window_size 100");
    bad([](json& j) { j["fullatt_block_indexes"] = {1, 1}; }, "twice");
    bad([](json& j) { j["fullatt_block_indexes"] = {9}; }, "not a block index < 4");
    bad([](json& j) { j["hidden_act"] = "gelu"; }, "hidden_act");
    bad([](json& j) { j["patch_size"] = 0; }, "out of range");
    bad([](json& j) { j["hidden_size"] = "32"; }, "must be an integer");
}

TEST(VitCheckpoint, SynthWritesTheVitFolderConfigAndItSizesTheTower) {
    TempDir dir;
    const std::string m = synth(dir, "m");
    const fs::path cfg = fs::path(m) / "Qwen2.5-VL-ViT/config.json";
    ASSERT_TRUE(fs::exists(cfg));
    const json j = read_json_file(cfg.string());
    EXPECT_EQ(j["in_channels"], 3);
    auto ck = LanceCheckpoint::open(m);
    EXPECT_EQ(ck->config().vision.depth, 4);
    EXPECT_EQ(ck->config().vision.fullatt_block_indexes, (std::vector<int>{1, 3}));
    // The folder's config wins over llm_config.json's copy, and the tensor shapes are checked
    // against it: a narrower width is a one-line shape error.
    json k = j;
    k["intermediate_size"] = 40;
    test::write_file(cfg, k.dump());
    expect_error([&] { LanceCheckpoint::open(m); }, "mlp.gate_proj.weight has shape [48, 32]");
    k = j;
    k["depth"] = 3;
    k["fullatt_block_indexes"] = {1};
    test::write_file(cfg, k.dump());
    expect_error([&] { LanceCheckpoint::open(m); }, "unexpected vit_model.blocks.3.");
    k = j;
    k["out_hidden_size"] = 32;
    test::write_file(cfg, k.dump());
    expect_error([&] { LanceCheckpoint::open(m); }, "out_hidden_size 32 must equal");
}

// The window plan against the reference's definition of a window, on grids with partial edge
// windows and two temporal patches, at the tiny preset's and the release's geometry.
TEST(VitPlan, WindowOrderMatchesTheReferenceWindows) {
    struct Case {
        int64_t T, H, W;
    };
    for (const VitConfig& v : {synth_config("tiny").vision, VitConfig{}})
        for (const Case c : {Case{2, 28, 28}, Case{2, 28 * 5, 28 * 7}, Case{4, 28 * 9, 28 * 4},
                             Case{2, 28 * 8, 28 * 8}, Case{4, 28 * 3, 28 * 13}}) {
            const VitPlan p = vit_plan(v, c.T, c.H, c.W, "test");
            const int64_t m = v.spatial_merge_size, wm = v.window_merge_blocks();
            ASSERT_EQ(p.gt, c.T / 2);
            ASSERT_EQ(p.gh, c.H / 14);
            ASSERT_EQ(static_cast<int64_t>(p.patch_raster.size()), p.patches());
            ASSERT_EQ(static_cast<int64_t>(p.window_index.size()), p.merged());
            // A permutation of the raster patches; every merge block's m*m patches consecutive in
            // (dy, dx) order, and window_index names that block.
            std::set<int32_t> seen(p.patch_raster.begin(), p.patch_raster.end());
            EXPECT_EQ(static_cast<int64_t>(seen.size()), p.patches());
            for (int64_t i = 0; i < p.merged(); ++i) {
                const int64_t b = p.window_index[i], t = b / (p.mh * p.mw);
                const int64_t bh = b / p.mw % p.mh, bw = b % p.mw;
                for (int64_t k = 0; k < m * m; ++k)
                    EXPECT_EQ(p.patch_raster[i * m * m + k],
                              (t * p.gh + bh * m + k / m) * p.gw + bw * m + k % m);
            }
            // Windows: ceil(mh/wm) x ceil(mw/wm) per temporal patch; every window's patches share
            // the reference's window, consecutive windows differ, and raster order of windows.
            const int64_t nwin = ((p.mh + wm - 1) / wm) * ((p.mw + wm - 1) / wm);
            ASSERT_EQ(static_cast<int64_t>(p.cu_window.size()), nwin + 1);
            EXPECT_EQ(p.cu_window.back(), p.frame_rows);
            for (int64_t t = 0; t < p.gt; ++t) {
                int64_t last_key = -1;
                for (int64_t s = 0; s < nwin; ++s) {
                    const int64_t r0 = t * p.frame_rows + p.cu_window[s];
                    const int64_t r1 = t * p.frame_rows + p.cu_window[s + 1];
                    ASSERT_LT(r0, r1);
                    const int64_t a = p.patch_raster[r0];
                    const int64_t ah = a / p.gw % p.gh, aw = a % p.gw;
                    for (int64_t r = r0; r < r1; ++r) {
                        const int64_t b = p.patch_raster[r];
                        EXPECT_EQ(b / (p.gh * p.gw), t);
                        EXPECT_TRUE(ref::vit_same_window(v, ah, aw, b / p.gw % p.gh, b % p.gw));
                    }
                    // The next window's first patch is outside this window.
                    if (r1 < (t + 1) * p.frame_rows) {
                        const int64_t b = p.patch_raster[r1];
                        EXPECT_FALSE(ref::vit_same_window(v, ah, aw, b / p.gw % p.gh, b % p.gw));
                    }
                    const int64_t key = (ah / (m * wm)) * 1000 + aw / (m * wm);
                    EXPECT_GT(key, last_key);
                    last_key = key;
                }
            }
            for (int64_t i = 0; i < p.frame_rows; ++i) {
                const int64_t b = p.patch_raster[i];
                EXPECT_EQ(p.frame_pos[i], (std::array<int64_t, 2>{b / p.gw, b % p.gw}));
            }
        }
    // The release geometry at 672 x 672: 2304 patches, 576 tokens, 36 full windows of 64.
    const VitPlan p = vit_plan(VitConfig{}, 2, 672, 672, "test");
    EXPECT_EQ(p.patches(), 2304);
    EXPECT_EQ(p.merged(), 576);
    EXPECT_EQ(p.cu_window.size(), 37u);
    EXPECT_EQ(p.cu_window[1], 64);
}

TEST(VitPlan, BadGeometryIsOneLine) {
    const VitConfig v = synth_config("tiny").vision;
    expect_error([&] { vit_plan(v, 3, 56, 56, "in.safetensors"); }, "3 frames");
    expect_error([&] { vit_plan(v, 2, 56, 50, "in.safetensors"); }, "multiples of 28");
    expect_error([&] { vit_plan(v, 0, 56, 56, "in.safetensors"); }, "must be > 0");
}

// Packing: row r of the packed rows is patch (t, bh*m+dy, bw*m+dx) in (t, bh, bw, dy, dx) order,
// each the (C, tp, py, px) vector the reference reads straight from the video. Exact.
TEST(VitPack, RowsAreTheReferencePatchVectorsInPackingOrder) {
    const VitConfig v = synth_config("tiny").vision;
    const int64_t T = 4, H = 28 * 3, W = 28 * 5, C = v.in_chans, P = v.patch_dim();
    const std::vector<float> video = random_video(C * T * H * W, 3);
    const std::vector<double> v64(video.begin(), video.end());
    std::vector<float> rows(static_cast<size_t>(T / 2 * (H / 14) * (W / 14) * P));
    vit_pack_patches(v, video.data(), T, H, W, rows.data());
    std::vector<double> want(static_cast<size_t>(P));
    int64_t r = 0, mismatches = 0;
    for (int64_t t = 0; t < T / 2; ++t)
        for (int64_t bh = 0; bh < H / 28; ++bh)
            for (int64_t bw = 0; bw < W / 28; ++bw)
                for (int64_t dy = 0; dy < 2; ++dy)
                    for (int64_t dx = 0; dx < 2; ++dx, ++r) {
                        ref::vit_patch_vector(v, v64.data(), T, H, W, t, bh * 2 + dy, bw * 2 + dx,
                                              want.data());
                        for (int64_t k = 0; k < P; ++k)
                            mismatches += rows[r * P + k] != static_cast<float>(want[k]);
                    }
    EXPECT_EQ(mismatches, 0);
    // Spot check of the layout itself: column 1 of row 0 is pixel (c0, frame 0, y0, x1); column
    // p*p is frame 1 (the temporal patch's second frame).
    EXPECT_EQ(rows[1], video[1]);
    EXPECT_EQ(rows[14 * 14], video[1 * H * W]);
}

// The reference's 2-D RoPE is a rotation whose q.k depends only on the position difference.
TEST(VitRef, RopeIsARelativeRotation) {
    Rng r(5);
    const size_t hd = 16;
    std::vector<double> q(hd), k(hd);
    for (double& x : q) x = r.unit_float() - 0.5;
    for (double& x : k) x = r.unit_float() - 0.5;
    auto dot_at = [&](int64_t qr, int64_t qc, int64_t kr, int64_t kc) {
        std::vector<double> a = q, b = k;
        ref::vit_rope(a.data(), hd, qr, qc);
        ref::vit_rope(b.data(), hd, kr, kc);
        double s = 0;
        for (size_t i = 0; i < hd; ++i) s += a[i] * b[i];
        return s;
    };
    EXPECT_NEAR(dot_at(3, 5, 1, 2), dot_at(12, 9, 10, 6), 1e-12);
    EXPECT_GT(std::abs(dot_at(3, 5, 1, 2) - dot_at(3, 5, 2, 1)), 1e-6);  // rows and cols differ
}

// Elementwise bound for f32 vs f64 through `stages` sequential reductions of length <= K: each
// stage's f32 error is at most K * u relative to the magnitudes it sums, which the layer norms
// keep near the output's scale, so |fast - ref| <= stages * K * u * (|ref| + rms(ref)).
struct Compare {
    double worst_ratio = 0, worst_abs = 0;
    size_t worst_at = 0;
};
Compare compare(const std::vector<float>& fast, const std::vector<double>& want, double stages,
                double K) {
    EXPECT_EQ(fast.size(), want.size());
    double ss = 0;
    for (double w : want) ss += w * w;
    const double rms = std::sqrt(ss / static_cast<double>(want.size()));
    const double u = std::ldexp(1.0, -24);
    Compare c;
    for (size_t i = 0; i < want.size() && i < fast.size(); ++i) {
        const double d = std::abs(fast[i] - want[i]);
        const double ratio = d / (stages * K * u * (std::abs(want[i]) + rms));
        if (ratio > c.worst_ratio) c.worst_ratio = ratio, c.worst_abs = d, c.worst_at = i;
    }
    return c;
}

// The fast tower against the reference: after the patch embedding, after every block and at the
// output, on odd grids (partial windows), two temporal patches, F32 and BF16 weights.
TEST(VisionTower, EveryPieceMatchesTheReference) {
    TempDir dir;
    for (const DType dt : {DType::F32, DType::BF16}) {
        const std::string m = synth(dir, dt == DType::F32 ? "f32" : "bf16", dt);
        auto ck = LanceCheckpoint::open(m);
        const VitConfig& v = ck->config().vision;
        const ref::VitWeights w64 = ref::load_vit_weights(*ck);
        VisionTower tower(*ck);
        const kernels::OpContext ctx = kernels::OpContext::defaults();
        const double K = std::max({v.patch_dim(), v.intermediate_size, v.merged_dim()});
        struct Case {
            int64_t T, H, W;
        };
        for (const Case c : {Case{2, 28 * 5, 28 * 6}, Case{4, 28 * 3, 28 * 9}, Case{2, 28, 28}}) {
            const int64_t N = c.T * c.H * c.W * v.in_chans;
            const std::vector<float> video = random_video(N, 11 + c.W);
            const std::vector<double> v64(video.begin(), video.end());
            ref::VitTrace rt;
            const std::vector<double> want = ref::vit_forward(w64, v64.data(), c.T, c.H, c.W, &rt);
            VitTraceF32 ft;
            const std::vector<float> got = tower.forward(ctx, video.data(), c.T, c.H, c.W, &ft);
            const VitPlan p = vit_plan(v, c.T, c.H, c.W, "test");
            const int64_t D = v.hidden_size;
            // Window-order states back to raster for the comparison.
            auto raster = [&](const std::vector<float>& win) {
                std::vector<float> r(win.size());
                for (int64_t i = 0; i < p.patches(); ++i)
                    std::memcpy(&r[p.patch_raster[i] * D], &win[i * D], D * sizeof(float));
                return r;
            };
            const Compare e = compare(raster(ft.embed), rt.embed, 1, v.patch_dim());
            EXPECT_LE(e.worst_ratio, 1.0) << "embed";
            double worst_block = 0;
            ASSERT_EQ(ft.block_out.size(), rt.block_out.size());
            for (size_t j = 0; j < ft.block_out.size(); ++j) {
                const Compare b = compare(raster(ft.block_out[j]), rt.block_out[j],
                                          1 + 2.0 * static_cast<double>(j + 1), K);
                EXPECT_LE(b.worst_ratio, 1.0) << "block " << j;
                worst_block = std::max(worst_block, b.worst_ratio);
            }
            const Compare o = compare(got, want, 3 + 2.0 * v.depth, K);
            EXPECT_LE(o.worst_ratio, 1.0) << "output";
            ASSERT_EQ(static_cast<int64_t>(got.size()), p.merged() * v.out_hidden_size);
            std::printf(
                "  %s [3,%ld,%ld,%ld]: worst/bound embed %.2e, blocks %.2e, output %.2e "
                "(|d| %.2e at %zu)\n",
                std::string(dtype_name(dt)).c_str(), static_cast<long>(c.T), static_cast<long>(c.H),
                static_cast<long>(c.W), e.worst_ratio, worst_block, o.worst_ratio, o.worst_abs,
                o.worst_at);
        }
    }
}

// `quantize --include vit` (RTN INT4) runs through the same tower: the reference dequantizes the
// same codes, so the f32 bound above holds unchanged.
TEST(VisionTower, AwqInt4WeightsMatchTheReference) {
    TempDir dir;
    const std::string m = synth(dir, "m");
    const std::string q = (dir / "q4").string();
    const auto r = test::run_lancet("quantize --method rtn --group-size 32 --include vit --src " +
                                    m + " --out " + q);
    ASSERT_EQ(r.exit_code, 0) << r.err;
    auto ck = LanceCheckpoint::open(q);
    ASSERT_TRUE(ck->is_quantized("vit_model.blocks.0.attn.qkv"));
    ASSERT_TRUE(ck->is_quantized("vit_model.merger.mlp.2"));
    const VitConfig& v = ck->config().vision;
    const ref::VitWeights w64 = ref::load_vit_weights(*ck);
    VisionTower tower(*ck);
    const int64_t T = 2, H = 28 * 5, W = 28 * 3;
    const std::vector<float> video = random_video(3 * T * H * W, 4);
    const std::vector<double> v64(video.begin(), video.end());
    const std::vector<double> want = ref::vit_forward(w64, v64.data(), T, H, W);
    const std::vector<float> got =
        tower.forward(kernels::OpContext::defaults(), video.data(), T, H, W);
    const double K = std::max({v.patch_dim(), v.intermediate_size, v.merged_dim()});
    const Compare o = compare(got, want, 3 + 2.0 * v.depth, K);
    std::printf("  int4 [3,2,140,84]: worst/bound %.2e (|d| %.2e at %zu)\n", o.worst_ratio,
                o.worst_abs, o.worst_at);
    EXPECT_LE(o.worst_ratio, 1.0);
    // And it differs from the unquantized tower by far more than that bound: the codes are used.
    auto orig = LanceCheckpoint::open(m);
    const std::vector<double> full =
        ref::vit_forward(ref::load_vit_weights(*orig), v64.data(), T, H, W);
    double diff = 0;
    for (size_t i = 0; i < full.size(); ++i) diff = std::max(diff, std::abs(full[i] - want[i]));
    EXPECT_GT(diff, 100 * o.worst_abs);
}

// Window vs full blocks matter: turning block 1 into a window block changes the output of a grid
// larger than one window (so the test above would see a wrong block list).
TEST(VisionTower, FullAttentionBlocksSeeTheWholeTemporalPatch) {
    TempDir dir;
    const std::string m = synth(dir, "m");
    auto ck = LanceCheckpoint::open(m);
    ref::VitWeights w = ref::load_vit_weights(*ck);
    const int64_t T = 2, H = 28 * 5, W = 28 * 5;
    const std::vector<float> video = random_video(3 * T * H * W, 2);
    const std::vector<double> v64(video.begin(), video.end());
    const std::vector<double> a = ref::vit_forward(w, v64.data(), T, H, W);
    w.cfg.fullatt_block_indexes = {3};
    const std::vector<double> b = ref::vit_forward(w, v64.data(), T, H, W);
    double diff = 0;
    for (size_t i = 0; i < a.size(); ++i) diff = std::max(diff, std::abs(a[i] - b[i]));
    EXPECT_GT(diff, 1e-3);
    // Temporal patches never see each other: with four frames, changing frame 3 (temporal patch
    // 1) leaves temporal patch 0's output rows exactly as they were.
    const int64_t T4 = 4;
    std::vector<double> four(3 * T4 * H * W), four2;
    for (int64_t c = 0; c < 3; ++c)
        for (int64_t t = 0; t < T4; ++t)
            std::memcpy(&four[(c * T4 + t) * H * W], &v64[(c * T + t % 2) * H * W],
                        H * W * sizeof(double));
    four2 = four;
    for (int64_t i = 0; i < H * W; ++i) four2[(0 * T4 + 3) * H * W + i] += 0.5;
    const std::vector<double> x = ref::vit_forward(w, four.data(), T4, H, W);
    const std::vector<double> y = ref::vit_forward(w, four2.data(), T4, H, W);
    const size_t half = x.size() / 2;
    double first = 0, second = 0;
    for (size_t i = 0; i < half; ++i) first = std::max(first, std::abs(x[i] - y[i]));
    for (size_t i = half; i < x.size(); ++i) second = std::max(second, std::abs(x[i] - y[i]));
    EXPECT_EQ(first, 0.0);
    EXPECT_GT(second, 1e-3);
}

// lancet forward --component vit: embeds equal the library's output; bad inputs are one line,
// exit 1 and no output file.
TEST(VisionTower, ForwardCli) {
    TempDir dir;
    const std::string m = synth(dir, "m");
    const int64_t T = 2, H = 28 * 5, W = 28 * 2;
    const std::vector<float> video = random_video(3 * T * H * W, 9);
    auto write_video = [&](const fs::path& p, Shape shape, const std::vector<float>& data,
                           const std::string& name = "video") {
        SafetensorsWriter w(p.string());
        w.add(name, DType::F32, shape);
        w.begin();
        w.write(name, data.data(), data.size() * 4);
        w.finish();
    };
    write_video(dir / "in.safetensors", {3, T, H, W}, video);
    // Exact arithmetic on the CLI side too: the library's default, which the reference checks.
    const auto r = test::run_lancet("--exact-activations forward --component vit --model " + m +
                                    " --input " + (dir / "in.safetensors").string() + " --out " +
                                    (dir / "out.safetensors").string());
    ASSERT_EQ(r.exit_code, 0) << r.err;
    SafetensorsFile f((dir / "out.safetensors").string());
    const TensorEntry* e = f.find("embeds");
    ASSERT_NE(e, nullptr);
    EXPECT_EQ(e->shape, (Shape{T / 2 * (H / 28) * (W / 28), 64}));
    auto ck = LanceCheckpoint::open(m);
    VisionTower tower(*ck);
    const std::vector<float> want =
        tower.forward(kernels::OpContext::defaults(), video.data(), T, H, W);
    ASSERT_EQ(static_cast<size_t>(e->shape[0] * e->shape[1]), want.size());
    EXPECT_EQ(std::memcmp(f.view(*e).data, want.data(), want.size() * 4), 0);

    struct Bad {
        std::string name;
        Shape shape;
        std::string tensor, fragment;
    };
    const std::vector<Bad> bad = {
        {"odd", {3, 3, H, W}, "video", "3 frames"},
        {"h", {3, T, 30, W}, "video", "multiples of 28"},
        {"chan", {4, T, H, W}, "video", "4"},
        {"rank", {3 * T, H, W}, "video", "rank 4"},
        {"name", {3, T, H, W}, "pixels", "missing tensor video"},
    };
    for (const Bad& b : bad) {
        std::vector<float> d(static_cast<size_t>(shape_numel(b.shape)), 0.1f);
        const fs::path in = dir / (b.name + ".safetensors"), out = dir / (b.name + ".out");
        write_video(in, b.shape, d, b.tensor);
        const auto rb = test::run_lancet("forward --component vit --model " + m + " --input " +
                                         in.string() + " --out " + out.string());
        EXPECT_EQ(rb.exit_code, 1) << b.name;
        EXPECT_NE(rb.err.find("lancet: error:"), std::string::npos) << rb.err;
        EXPECT_NE(rb.err.find(b.fragment), std::string::npos) << b.name << ": " << rb.err;
        EXPECT_EQ(std::count(rb.err.begin(), rb.err.end(), '\n'), 1) << rb.err;
        EXPECT_FALSE(fs::exists(out)) << b.name;
    }
    // A checkpoint without ViT weights: drop vit_model.* from a copy.
    const fs::path nov = test::copy_without_vit(m, dir / "novit");
    const auto rn = test::run_lancet("forward --component vit --model " + nov.string() +
                                     " --input " + (dir / "in.safetensors").string() + " --out " +
                                     (dir / "nv.safetensors").string());
    EXPECT_EQ(rn.exit_code, 1);
    EXPECT_NE(rn.err.find("no ViT weights"), std::string::npos) << rn.err;
    EXPECT_FALSE(fs::exists(dir / "nv.safetensors"));
}

// `lancet forward` (the decoder) with vit_video: the ViT's rows fill the und <|video_pad|> rows of
// an x2t-style sequence (text, a full ViT block, text), positions from the ViT grid. Checked
// against the same composition through the library (both halves are checked against their f64
// references above and in decoder_test), and against the sequence without the ViT rows.
TEST(VisionTower, DecoderForwardTakesVitVideo) {
    TempDir dir;
    const std::string m = synth(dir, "m");
    auto ck = LanceCheckpoint::open(m);
    const LanceConfig& c = ck->config();
    const int64_t T = 2, H = 28 * 2, W = 28 * 3, K = (T / 2) * (H / 28) * (W / 28);
    const std::vector<float> video = random_video(3 * T * H * W, 21);
    std::vector<int64_t> ids = {c.bos_token_id, 72, 105, c.vision_start_token_id};
    for (int64_t k = 0; k < K; ++k) ids.push_back(c.video_token_id);
    ids.insert(ids.end(), {c.vision_end_token_id, 65, 66, 67});
    const int64_t L = static_cast<int64_t>(ids.size());
    const std::vector<int64_t> split_lens = {3, K + 2, 3}, split_modes = {0, 1, 0};
    auto write_in = [&](const fs::path& path, bool with_video, int64_t frames) {
        SafetensorsWriter w(path.string());
        std::vector<uint8_t> is_gen(static_cast<size_t>(L), 0);
        w.add("token_ids", DType::I64, {L});
        w.add("is_gen", DType::U8, {L});
        w.add("split_lens", DType::I64, {3});
        w.add("split_modes", DType::I64, {3});
        if (with_video) w.add("vit_video", DType::F32, {3, frames, H, W});
        w.begin();
        w.write("token_ids", ids.data(), ids.size() * 8);
        w.write("is_gen", is_gen.data(), is_gen.size());
        w.write("split_lens", split_lens.data(), 24);
        w.write("split_modes", split_modes.data(), 24);
        if (with_video) {
            std::vector<float> v(static_cast<size_t>(3 * frames * H * W));
            for (size_t i = 0; i < v.size(); ++i) v[i] = video[i % video.size()];
            w.write("vit_video", v.data(), v.size() * 4);
        }
        w.finish();
    };
    write_in(dir / "in.safetensors", true, T);
    // Exact arithmetic on the CLI side: the in-process library's default.
    const auto r = test::run_lancet("--exact-activations forward --model " + m + " --input " +
                                    (dir / "in.safetensors").string() + " --out " +
                                    (dir / "out.safetensors").string());
    ASSERT_EQ(r.exit_code, 0) << r.err;
    SafetensorsFile f((dir / "out.safetensors").string());
    const TensorView got = f.view(*f.find("final_hidden"));

    // The library composition.
    VisionTower tower(*ck);
    const std::vector<float> rows =
        tower.forward(kernels::OpContext::defaults(), video.data(), T, H, W);
    DecoderOptions dopt;
    dopt.logits_limit = 278;
    const LanceWeights weights(*ck, dopt);
    DecoderSession dec(weights);
    Batch b;
    b.token_ids = ids;
    b.is_gen.assign(static_cast<size_t>(L), 0);
    b.splits = {{3, SplitMode::Causal}, {K + 2, SplitMode::Full}, {3, SplitMode::Causal}};
    b.positions = mrope_positions(ids, {VisionGrid{T / 2, H / 14, W / 14}}, c);
    EXPECT_EQ(b.positions[4], (RopePosition{4, 4, 4}));  // first ViT row at base 4
    EXPECT_EQ(b.positions[4 + K - 1], (RopePosition{4, 4 + 1, 4 + 2}));
    const int64_t D = c.hidden_size;
    std::vector<float> emb(static_cast<size_t>(L * D));
    weights.embed_tokens(ids.data(), static_cast<size_t>(L), emb.data());
    std::memcpy(&emb[4 * D], rows.data(), rows.size() * 4);
    b.embeddings = emb.data();
    Outputs out;
    ForwardOptions fo;
    fo.final_hidden = true;
    dec.forward(b, nullptr, false, out, fo);
    ASSERT_EQ(static_cast<size_t>(got.nbytes), out.final_hidden.size() * 4);
    EXPECT_EQ(std::memcmp(got.data, out.final_hidden.data(), got.nbytes), 0);

    // Bad inputs: ViT rows without vit_video, a row count that does not match, odd frames.
    write_in(dir / "nov.safetensors", false, T);
    write_in(dir / "four.safetensors", true, 4);
    write_in(dir / "odd.safetensors", true, 3);
    for (const auto& [name, fragment] : std::vector<std::pair<std::string, std::string>>{
             {"nov", "no vit_video"}, {"four", "gives 12 ViT rows"}, {"odd", "3 frames"}}) {
        const auto rb = test::run_lancet("forward --model " + m + " --input " +
                                         (dir / (name + ".safetensors")).string() + " --out " +
                                         (dir / (name + ".out")).string());
        EXPECT_EQ(rb.exit_code, 1) << name;
        EXPECT_NE(rb.err.find(fragment), std::string::npos) << name << ": " << rb.err;
        EXPECT_FALSE(fs::exists(dir / (name + ".out")));
    }
}

// Copies model.safetensors keeping (and renaming) the tensors `keep` accepts.
void copy_tensors(const std::string& from, const fs::path& to,
                  const std::function<bool(std::string&)>& keep) {
    auto src = Checkpoint::open(from);
    std::vector<std::pair<std::string, std::string>> names;  // (in file, written as)
    for (const std::string& n : src->names()) {
        std::string out = n;
        if (keep(out)) names.emplace_back(n, out);
    }
    SafetensorsWriter w(to.string());
    for (const auto& [n, o] : names) w.add(o, src->view(n).dtype, src->view(n).shape);
    w.begin();
    for (const auto& [n, o] : names) w.write(o, src->view(n).data, src->view(n).nbytes);
    w.finish();
}

// Where the weights come from: the bundled vit_model.* copy overrides a vit.safetensors in the
// ViT folder (Lance's load order); without the bundle (Lance_3B layout) the separate file runs.
TEST(VisionTower, BundledWeightsOverrideTheSeparateFile) {
    TempDir dir;
    SynthOptions o;
    o.preset = "tiny";
    o.out = (dir / "a").string();
    o.seed = 7;
    synth_checkpoint(o);
    o.out = (dir / "b").string();
    o.seed = 8;
    synth_checkpoint(o);
    const std::string a = (dir / "a").string(), b = (dir / "b").string();
    const int64_t T = 2, H = 56, W = 56;
    const std::vector<float> video = random_video(3 * T * H * W, 6);
    auto run = [&](const std::string& model) {
        auto ck = LanceCheckpoint::open(model);
        VisionTower tower(*ck);
        return tower.forward(kernels::OpContext::defaults(), video.data(), T, H, W);
    };
    const std::vector<float> ya = run(a), yb = run(b);
    ASSERT_NE(ya, yb);
    // b's ViT as a separate vit.safetensors inside a's ViT folder: a's bundled copy still runs.
    auto strip = [](std::string& n) {
        if (n.rfind("vit_model.", 0) != 0) return false;
        n = n.substr(10);
        return true;
    };
    copy_tensors(b + "/model.safetensors", fs::path(a) / "Qwen2.5-VL-ViT/vit.safetensors", strip);
    EXPECT_EQ(run(a), ya);
    // Lance_3B layout: a without vit_model.*, the ViT folder beside it holding b's ViT.
    const fs::path c = dir / "downloads/Lance_3B", vdir = dir / "downloads/Qwen2.5-VL-ViT";
    fs::create_directories(c);
    fs::create_directories(vdir);
    for (const char* f : {"llm_config.json", "vocab.json", "merges.txt", "tokenizer_config.json"})
        fs::copy_file(fs::path(a) / f, c / f);
    copy_tensors(a + "/model.safetensors", c / "model.safetensors",
                 [](std::string& n) { return n.rfind("vit_model.", 0) != 0; });
    fs::copy_file(fs::path(b) / "Qwen2.5-VL-ViT/config.json", vdir / "config.json");
    fs::copy_file(fs::path(a) / "Qwen2.5-VL-ViT/vit.safetensors", vdir / "vit.safetensors");
    auto ck = LanceCheckpoint::open(c.string());
    EXPECT_EQ(ck->vit_layout(), VitLayout::Separate);
    EXPECT_EQ(run(c.string()), yb);
}

// bench vision runs on a tiny model and prints the split; bad geometry is one line.
TEST(VisionTower, BenchVisionSmoke) {
    TempDir dir;
    const std::string m = synth(dir, "m");
    const auto r = test::run_lancet("bench vision --model " + m + " --size 84 --reps 1 --json " +
                                    (dir / "b.json").string());
    ASSERT_EQ(r.exit_code, 0) << r.err;
    EXPECT_NE(r.out.find("attention"), std::string::npos) << r.out;
    EXPECT_NE(r.out.find("ViT linears reach"), std::string::npos) << r.out;
    const json rec = json::parse(test::read_file(dir / "b.json"));
    EXPECT_GT(rec["linear_gflops"].get<double>(), 0.0);
    const auto bad = test::run_lancet("bench vision --model " + m + " --size 80");
    EXPECT_EQ(bad.exit_code, 1);
    EXPECT_NE(bad.err.find("multiples of 28"), std::string::npos) << bad.err;
    EXPECT_EQ(std::count(bad.err.begin(), bad.err.end(), '\n'), 1) << bad.err;
}

}  // namespace
}  // namespace lancet
