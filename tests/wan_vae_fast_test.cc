// The fast Wan2.2 VAE (model/wan_vae.h) against the float64 reference (model/wan_vae_ref.h) on the
// tiny synthetic VAE: every block over first, second and later chunks (1-frame and 4-frame chunks),
// then whole encodes and decodes of 1- and 9-frame clips. Bounds: f32 accumulation over the
// reduction lengths on the path, u·ΣK·(magnitude), reported with the worst element.
#include <gtest/gtest.h>

#include <cmath>

#include "core/rng.h"
#include "model/wan_vae.h"
#include "model/wan_vae_ref.h"
#include "model/wan_vae_synth.h"
#include "test_util.h"

namespace lancet {
namespace {

namespace ref = wan_vae_ref;
namespace fast = wan_vae;

constexpr double kU = 0x1p-24;  // f32 unit roundoff

struct Tiny {
    test::TempDir dir;
    std::unique_ptr<WanVaeFile> file;
    std::unique_ptr<ref::Weights> w;
    Tiny(DType dt = DType::F32) {
        const std::string p = (dir / "vae.pth").string();
        write_synth_wan_vae(p, wan_vae_synth_config("tiny"), dt, 11);
        file = std::make_unique<WanVaeFile>(p);
        w = std::make_unique<ref::Weights>(*file);
    }
};

const Tiny& tiny() {
    static Tiny* t = new Tiny;
    return *t;
}

fast::Context ctx() {
    fast::Context c;
    c.ops = kernels::OpContext::defaults();
    return c;
}

ref::Vol random_vol(int64_t c, int64_t t, int64_t h, int64_t w, uint64_t seed) {
    ref::Vol v(c, t, h, w);
    Rng r(seed);
    for (double& x : v.d) x = static_cast<float>(r.normal());  // representable in f32
    return v;
}

fast::Frames to_frames(const ref::Vol& v) {
    fast::Frames f(v.T, v.H, v.W, v.C);
    for (int64_t c = 0; c < v.C; ++c)
        for (int64_t t = 0; t < v.T; ++t)
            for (int64_t h = 0; h < v.H; ++h)
                for (int64_t w = 0; w < v.W; ++w)
                    f.frame(t)[(h * v.W + w) * v.C + c] = static_cast<float>(v.at(c, t, h, w));
    return f;
}

double max_abs(const ref::Vol& v) {
    double m = 0;
    for (double x : v.d) m = std::max(m, std::fabs(x));
    return m;
}

// Worst |fast - ref| against `bound`, with the element in the failure message.
void expect_close(const fast::Frames& f, const ref::Vol& r, double bound, const std::string& what) {
    ASSERT_EQ(f.T, r.T) << what;
    ASSERT_EQ(f.H, r.H) << what;
    ASSERT_EQ(f.W, r.W) << what;
    ASSERT_EQ(f.C, r.C) << what;
    double worst = 0;
    int64_t wc = 0, wt = 0, wh = 0, ww = 0;
    for (int64_t c = 0; c < r.C; ++c)
        for (int64_t t = 0; t < r.T; ++t)
            for (int64_t h = 0; h < r.H; ++h)
                for (int64_t w = 0; w < r.W; ++w) {
                    const double e =
                        std::fabs(f.frame(t)[(h * r.W + w) * r.C + c] - r.at(c, t, h, w));
                    if (!(e <= worst)) worst = e, wc = c, wt = t, wh = h, ww = w;
                }
    EXPECT_LE(worst, bound) << what << ": worst at (c " << wc << ", t " << wt << ", h " << wh
                            << ", w " << ww << ")";
    std::printf("  %-40s worst %.3g (bound %.3g, |ref| max %.3g)\n", what.c_str(), worst, bound,
                max_abs(r));
}

// Chunk lengths of a schedule: first chunk 1 frame, then `later` frames each.
const std::vector<std::vector<int>> kSchedules = {{1, 4, 4}, {1, 1, 1}, {1, 4, 1, 4}};

TEST(WanVaeFast, ResidualBlocksOverChunkSchedules) {
    const Tiny& t = tiny();
    for (const std::string p : {"encoder.downsamples.1.downsamples.0",  // 8 -> 16, shortcut
                                "encoder.downsamples.1.downsamples.1",  // 16 -> 16
                                "decoder.upsamples.2.upsamples.0"}) {   // 32 -> 16, shortcut
        const auto shp = t.file->view(p + ".residual.2.weight").shape;
        const int64_t ci = shp[1], co = shp[0];
        // Two norms (length C) and two convs (27·C): the reduction lengths on the path.
        const double K = static_cast<double>(ci + 27 * ci + co + 27 * co);
        for (const auto& sched : kSchedules) {
            fast::ResidualBlock fb(*t.file, p);
            ref::Caches rc;
            uint64_t seed = 100;
            for (size_t k = 0; k < sched.size(); ++k) {
                const ref::Vol x = random_vol(ci, sched[k], 5, 6, seed++);
                rc.idx = 0;
                const ref::Vol want = ref::residual_block(*t.w, p, x, rc);
                const fast::Frames got = fb.forward(ctx(), to_frames(x));
                expect_close(got, want, 8 * K * kU * (max_abs(want) + 1),
                             p + " chunk " + std::to_string(k) + " of " + std::to_string(sched[k]));
            }
        }
    }
}

TEST(WanVaeFast, AttentionBlockPerFrame) {
    const Tiny& t = tiny();
    for (const std::string p : {"encoder.middle.1", "decoder.middle.1"}) {
        const int64_t c = t.file->view(p + ".proj.weight").shape[0];
        const fast::AttentionBlock fb(*t.file, p);
        const ref::Vol x = random_vol(c, 3, 4, 5, 7);
        const ref::Vol want = ref::attention_block(*t.w, p, x);
        // norm (C), qkv (C), scores (C), softmax-weighted sum (n = 20), proj (C)
        const double K = static_cast<double>(4 * c + 20);
        expect_close(fb.forward(ctx(), to_frames(x)), want, 8 * K * kU * (max_abs(want) + 1), p);
    }
}

TEST(WanVaeFast, ResampleModesWithFirstChunkRules) {
    const Tiny& t = tiny();
    struct Case {
        std::string p;
        ref::ResampleMode rm;
        fast::ResampleMode fm;
        std::vector<int> sched;
    };
    const std::vector<Case> cases = {
        {"encoder.downsamples.0.downsamples.2",
         ref::ResampleMode::Downsample2d,
         fast::ResampleMode::Downsample2d,
         {1, 4, 4}},
        {"encoder.downsamples.1.downsamples.2",
         ref::ResampleMode::Downsample3d,
         fast::ResampleMode::Downsample3d,
         {1, 4, 4, 4}},
        {"encoder.downsamples.2.downsamples.2",
         ref::ResampleMode::Downsample3d,
         fast::ResampleMode::Downsample3d,
         {1, 2, 2}},
        {"decoder.upsamples.0.upsamples.3",
         ref::ResampleMode::Upsample3d,
         fast::ResampleMode::Upsample3d,
         {1, 1, 1, 1}},
        {"decoder.upsamples.1.upsamples.3",
         ref::ResampleMode::Upsample3d,
         fast::ResampleMode::Upsample3d,
         {1, 2, 2}},
        {"decoder.upsamples.2.upsamples.3",
         ref::ResampleMode::Upsample2d,
         fast::ResampleMode::Upsample2d,
         {1, 4}},
    };
    for (const Case& cs : cases) {
        const int64_t c = t.file->view(cs.p + ".resample.1.weight").shape[0];
        fast::Resample fr(*t.file, cs.p, cs.fm);
        ref::Caches rc;
        const double K = static_cast<double>(9 * c + 3 * c);  // 3×3 conv, then time conv
        uint64_t seed = 200;
        for (size_t k = 0; k < cs.sched.size(); ++k) {
            const ref::Vol x = random_vol(c, cs.sched[k], 6, 4, seed++);
            rc.idx = 0;
            const ref::Vol want = ref::resample(*t.w, cs.p, cs.rm, x, rc);
            expect_close(fr.forward(ctx(), to_frames(x)), want, 8 * K * kU * (max_abs(want) + 1),
                         cs.p + " chunk " + std::to_string(k));
        }
    }
}

TEST(WanVaeFast, AvgDownAndDupUpShortcuts) {
    const ref::Vol x = random_vol(8, 4, 4, 6, 9);
    for (auto [out, ft, fs] : {std::tuple{16, 2, 2}, {8, 1, 2}, {8, 1, 1}}) {
        const ref::Vol want = ref::avg_down3d(x, out, ft, fs);
        expect_close(fast::avg_down3d(to_frames(x), out, ft, fs), want, 8 * 8 * kU * max_abs(want),
                     "avg_down3d " + std::to_string(out));
    }
    for (bool first : {true, false}) {
        const ref::Vol xs = random_vol(16, first ? 1 : 2, 3, 2, 10);
        const ref::Vol want = ref::dup_up3d(xs, 8, 2, 2, first);
        fast::Frames y(want.T, want.H, want.W, want.C);  // zeros: the add is the shortcut itself
        fast::dup_up3d_add(to_frames(xs), 2, 2, first, y);
        expect_close(y, want, 0.0, first ? "dup_up3d first" : "dup_up3d later");
    }
}

// ΣK over the convs of a whole pass, for the bound of the full encode / decode.
double reduction_sum(const WanVaeFile& f, const std::string& prefix) {
    double k = 0;
    for_each_wan_vae_tensor(f.config(), [&](const VaeTensorSpec& s) {
        if (s.name.rfind(prefix, 0) != 0) return;
        if (s.kind == VaeTensorKind::Conv3dWeight || s.kind == VaeTensorKind::Conv2dWeight)
            k += static_cast<double>(shape_numel(s.shape) / s.shape[0]);
        if (s.kind == VaeTensorKind::Gamma) k += static_cast<double>(s.shape[0]);
    });
    return k;
}

TEST(WanVaeFast, EncodeMatchesReferenceOn1And9Frames) {
    const Tiny& t = tiny();
    fast::Encoder enc(*t.file);
    const double K = reduction_sum(*t.file, "encoder.") + reduction_sum(*t.file, "conv1.");
    for (int64_t T : {1, 9}) {
        ref::Vol video = random_vol(3, T, 32, 48, 20 + T);
        for (double& v : video.d) v = static_cast<float>(0.5 * v);
        std::vector<float> vf(video.d.begin(), video.d.end());
        ref::Vol lv;
        const ref::Vol want = ref::encode(*t.w, video, &lv);
        std::vector<float> logvar;
        fast::FlopCount fl;
        fast::Context c = ctx();
        c.flops = &fl;
        const std::vector<float> got = fast::encode(c, enc, vf.data(), T, 32, 48, &logvar);
        ASSERT_EQ(got.size(), want.d.size());
        double worst = 0, worst_lv = 0;
        for (size_t i = 0; i < got.size(); ++i) {
            worst = std::max(worst, std::fabs(got[i] - want.d[i]));
            worst_lv = std::max(worst_lv, std::fabs(logvar[i] - lv.d[i]));
        }
        const double bound = K * kU * (max_abs(want) + 1) * 4;
        EXPECT_LE(worst, bound) << T << " frames";
        EXPECT_LE(worst_lv, bound) << T << " frames";
        std::printf("  encode %2d frames: worst %.3g (bound %.3g), MACs %.3g executed of %.3g\n",
                    static_cast<int>(T), worst, bound, fl.executed, fl.dense);
        EXPECT_LT(fl.executed, fl.dense);
    }
}

TEST(WanVaeFast, DecodeMatchesReferenceOn1And3LatentFrames) {
    const Tiny& t = tiny();
    fast::Decoder dec(*t.file);
    const double K = reduction_sum(*t.file, "decoder.") + reduction_sum(*t.file, "conv2.");
    for (int64_t lt : {1, 3}) {
        const ref::Vol z = random_vol(48, lt, 2, 3, 40 + lt);
        std::vector<float> zf(z.d.begin(), z.d.end());
        ref::Vol raw;
        ref::decode(*t.w, z, &raw);
        std::vector<float> unclamped;
        fast::FlopCount fl;
        fast::Context c = ctx();
        c.flops = &fl;
        const std::vector<float> got = fast::decode_all(c, dec, zf.data(), lt, 2, 3, &unclamped);
        ASSERT_EQ(unclamped.size(), raw.d.size());
        double worst = 0;
        for (size_t i = 0; i < raw.d.size(); ++i) {
            worst = std::max(worst, std::fabs(unclamped[i] - raw.d[i]));
            ASSERT_EQ(got[i], std::clamp(unclamped[i], -1.0f, 1.0f));
        }
        const double bound = K * kU * (max_abs(raw) + 1) * 4;
        EXPECT_LE(worst, bound) << lt << " latent frames";
        std::printf(
            "  decode %d latent frames: worst %.3g (bound %.3g), MACs %.3g executed of %.3g "
            "(%.2fx cut)\n",
            static_cast<int>(lt), worst, bound, fl.executed, fl.dense, fl.dense / fl.executed);
    }
}

TEST(WanVaeFast, TileSpans) {
    using V = std::vector<std::pair<int64_t, int64_t>>;
    EXPECT_EQ(fast::tile_spans(6, 8, 2), (V{{0, 6}}));
    EXPECT_EQ(fast::tile_spans(6, 3, 1), (V{{0, 3}, {2, 5}, {3, 6}}));
    EXPECT_EQ(fast::tile_spans(7, 4, 0), (V{{0, 4}, {3, 7}}));
    EXPECT_EQ(fast::tile_spans(8, 4, 0), (V{{0, 4}, {4, 8}}));
}

TEST(WanVaeFast, TiledDecodeBlendsIndependentTiles) {
    const Tiny& t = tiny();
    fast::Decoder dec(*t.file);
    const int64_t lt = 2, h = 4, w = 6;
    const ref::Vol z = random_vol(48, lt, h, w, 55);
    const std::vector<float> zf(z.d.begin(), z.d.end());
    const std::vector<float> whole = fast::decode_all(ctx(), dec, zf.data(), lt, h, w);
    // A tile covering everything is the untiled decode.
    EXPECT_EQ(fast::decode_tiled(ctx(), dec, zf.data(), lt, h, w, 8, 2), whole);
    // Tiles of 3 overlapping by 1: rows 0..2, 1..3 (flush) and columns 0..2, 2..4, 3..5.
    const std::vector<float> tiled = fast::decode_tiled(ctx(), dec, zf.data(), lt, h, w, 3, 1);
    ASSERT_EQ(tiled.size(), whole.size());
    // Pixels that only the first tile covers are that tile's own decode, exactly.
    std::vector<float> sub(static_cast<size_t>(48 * lt * 3 * 3));
    for (int64_t c = 0; c < 48 * lt; ++c)
        for (int64_t y = 0; y < 3; ++y)
            for (int64_t x = 0; x < 3; ++x) sub[(c * 3 + y) * 3 + x] = zf[(c * h + y) * w + x];
    const std::vector<float> first = fast::decode_all(ctx(), dec, sub.data(), lt, 3, 3);
    const int64_t T = 5, H = 64, W = 96;
    double worst = 0, sum = 0;
    for (int64_t c = 0; c < 3 * T; ++c)
        for (int64_t y = 0; y < H; ++y)
            for (int64_t x = 0; x < W; ++x) {
                const float v = tiled[(c * H + y) * W + x];
                ASSERT_LE(std::fabs(v), 1.0f);
                if (y < 16 && x < 32) {
                    ASSERT_EQ(v, first[(c * 48 + y) * 48 + x]) << y << "," << x;
                }
                const double e = std::fabs(v - whole[(c * H + y) * W + x]);
                worst = std::max(worst, e);
                sum += e;
            }
    std::printf("  tiled (3, overlap 1) vs untiled: max |diff| %.3g, mean %.3g\n", worst,
                sum / static_cast<double>(whole.size()));
    EXPECT_GT(worst, 0.0);  // tiles see less context: the seams differ
}

TEST(WanVaeFast, Bf16WeightsMatchTheReferenceOfTheSameFile) {
    Tiny t(DType::BF16);  // the reference reads the same bf16 values
    fast::Decoder dec(*t.file);
    const ref::Vol z = random_vol(48, 2, 2, 2, 77);
    std::vector<float> zf(z.d.begin(), z.d.end());
    ref::Vol raw;
    ref::decode(*t.w, z, &raw);
    std::vector<float> unclamped;
    fast::decode_all(ctx(), dec, zf.data(), 2, 2, 2, &unclamped);
    double worst = 0;
    for (size_t i = 0; i < raw.d.size(); ++i)
        worst = std::max(worst, std::fabs(unclamped[i] - raw.d[i]));
    const double K = reduction_sum(*t.file, "decoder.") + reduction_sum(*t.file, "conv2.");
    EXPECT_LE(worst, K * kU * (max_abs(raw) + 1) * 4);
}

}  // namespace
}  // namespace lancet
