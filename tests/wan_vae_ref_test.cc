// Self-checks of the float64 Wan2.2 VAE reference: layout facts of the spec (patchify order,
// AvgDown / DupUp grouping), the cache equivalence §5 states for plain causal convs, the
// first-chunk rules, shapes and causality of the whole encode / decode.
#include "model/wan_vae_ref.h"

#include <gtest/gtest.h>

#include <cmath>

#include "core/numeric.h"
#include "core/rng.h"
#include "model/wan_vae_synth.h"
#include "test_util.h"

namespace lancet {
namespace {

using namespace wan_vae_ref;

Vol random_vol(int64_t c, int64_t t, int64_t h, int64_t w, uint64_t seed, double scale = 1.0) {
    Vol v(c, t, h, w);
    Rng r(seed);
    for (double& x : v.d) x = scale * r.normal();
    return v;
}

double max_abs_diff(const Vol& a, const Vol& b) {
    EXPECT_EQ(a.C, b.C);
    EXPECT_EQ(a.T, b.T);
    EXPECT_EQ(a.H, b.H);
    EXPECT_EQ(a.W, b.W);
    double m = 0;
    for (size_t i = 0; i < std::min(a.d.size(), b.d.size()); ++i)
        m = std::max(m, std::fabs(a.d[i] - b.d[i]));
    return m;
}

// The tiny synthetic VAE, written once and loaded through the real loader.
const Weights& tiny() {
    static Weights* w = [] {  // the weights are copied out, so the folder can go
        test::TempDir dir;
        const std::string p = (dir / "vae.pth").string();
        write_synth_wan_vae(p, wan_vae_synth_config("tiny"), DType::F32, 3);
        WanVaeFile f(p);
        return new Weights(f);
    }();
    return *w;
}

TEST(WanVaeRef, PatchifyChannelOrderIsCRQ) {
    Vol x = random_vol(3, 2, 6, 8, 1);
    const Vol p = patchify(x);
    ASSERT_EQ(p.C, 12);
    // pixel (c=1, t=1, row 3, column 4): row 3 = 2·1 + q (q=1), column 4 = 2·2 + r (r=0)
    EXPECT_EQ(p.at((1 * 2 + 0) * 2 + 1, 1, 1, 2), x.at(1, 1, 3, 4));
    // pixel (c=2, t=0, row 4, column 5): q=0, r=1
    EXPECT_EQ(p.at((2 * 2 + 1) * 2 + 0, 0, 2, 2), x.at(2, 0, 4, 5));
    EXPECT_EQ(max_abs_diff(unpatchify(p), x), 0.0);
}

TEST(WanVaeRef, AvgDownAndDupUpGroupChannelsAsTheModules) {
    // AvgDown3D(2 -> 4, ft 2, fs 2): 2·8 = 16 flat channels ((c·2 + dt)·2 + dh)·2 + dw, groups
    // of 4.
    const Vol x = random_vol(2, 3, 4, 4, 2);
    const Vol y = avg_down3d(x, 4, 2, 2);
    ASSERT_EQ(y.T, 2);  // 3 frames + 1 zero frame in front
    // out channel 3 = flat 12..15 = c 1, dt 1, dh 0..1, dw 0..1; out frame 0 is [zero, x0]
    const double want =
        (x.at(1, 0, 2, 0) + x.at(1, 0, 2, 1) + x.at(1, 0, 3, 0) + x.at(1, 0, 3, 1)) / 4;
    EXPECT_NEAR(y.at(3, 0, 1, 0), want, 1e-15);
    // out channel 0 = c 0, dt 0: the zero frame in chunk frame 0, x frame 1 in out frame 1
    EXPECT_EQ(y.at(0, 0, 0, 0), 0.0);
    // DupUp3D(4 -> 2, ft 2, fs 2): repeats 4; out (o, dt, dh, dw) reads channel flat/4
    const Vol u = dup_up3d(y, 2, 2, 2, false);
    ASSERT_EQ(u.T, 4);
    EXPECT_EQ(u.at(1, 3, 3, 2), y.at(((1 * 2 + 1) * 2 + 1) * 2 / 4, 1, 1, 1));
    const Vol uf = dup_up3d(y, 2, 2, 2, true);
    ASSERT_EQ(uf.T, 3);  // the first chunk drops factor_t - 1 leading frames
    EXPECT_EQ(max_abs_diff(uf, u.frames(1, 4)), 0.0);
}

TEST(WanVaeRef, ChunkedCachedConvEqualsWholeSequence) {
    // §5: for plain causal convs the cache schedule equals one whole-sequence causal conv.
    const Weights& w = tiny();
    const std::string p = "encoder.downsamples.1.downsamples.0";  // 8 -> 16 with a shortcut
    const Vol x = random_vol(8, 9, 4, 4, 3);
    Caches whole;
    const Vol want = residual_block(w, p, x, whole);
    Caches c;
    Vol got;
    for (auto [a, b] : {std::pair{0, 1}, {1, 5}, {5, 6}, {6, 9}}) {  // includes a 1-frame chunk
        c.idx = 0;
        got = cat_t(got, residual_block(w, p, x.frames(a, b), c));
    }
    EXPECT_LT(max_abs_diff(got, want), 1e-12);
}

TEST(WanVaeRef, EncodeDecodeShapesAndCausality) {
    const Weights& w = tiny();
    Vol video = random_vol(3, 9, 32, 48, 4, 0.5);
    Vol logvar;
    const Vol z = encode(w, video, &logvar);
    EXPECT_EQ(z.C, 48);
    EXPECT_EQ(z.T, 3);
    EXPECT_EQ(z.H, 2);
    EXPECT_EQ(z.W, 3);
    EXPECT_EQ(logvar.T, 3);
    double rms = 0;
    for (double v : z.d) rms += v * v;
    rms = std::sqrt(rms / static_cast<double>(z.d.size()));
    EXPECT_GT(rms, 0.05);  // activations stay O(1) through the synthetic network
    EXPECT_LT(rms, 20);
    // Latent frame 0 depends on pixel frame 0 only; frame 1 on pixel frames 0..4.
    Vol v2 = video;
    for (int64_t c = 0; c < 3; ++c)
        for (int64_t h = 0; h < 32; ++h) v2.at(c, 7, h, 5) += 0.3;
    const Vol z2 = encode(w, v2, nullptr);
    EXPECT_EQ(max_abs_diff(z.frames(0, 2), z2.frames(0, 2)), 0.0);
    EXPECT_GT(max_abs_diff(z, z2), 0.0);
    // A 1-frame video is the first chunk alone.
    const Vol z1 = encode(w, video.frames(0, 1), nullptr);
    EXPECT_EQ(max_abs_diff(z1, z.frames(0, 1)), 0.0);

    Vol raw;
    const Vol v = decode(w, z, &raw);
    EXPECT_EQ(v.C, 3);
    EXPECT_EQ(v.T, 9);
    EXPECT_EQ(v.H, 32);
    EXPECT_EQ(v.W, 48);
    for (double e : v.d) ASSERT_LE(std::fabs(e), 1.0);
    // Decoding is causal too: latent frame 0 alone gives pixel frame 0, frames 0..1 give 0..4.
    EXPECT_EQ(max_abs_diff(decode(w, z.frames(0, 1)), v.frames(0, 1)), 0.0);
    EXPECT_EQ(max_abs_diff(decode(w, z.frames(0, 2)), v.frames(0, 5)), 0.0);
    size_t inside = 0;
    for (double e : raw.d) inside += std::fabs(e) < 1.0;
    EXPECT_GT(inside, raw.d.size() / 2);  // most of the synthetic output is not clamped
}

TEST(WanVaeRef, LatentStatsAreBf16AsLanceBuildsThem) {
    const LatentStats s = wan_latent_stats(48);
    // -0.2289 in bf16 is -0.228515625; 1/0.4765: std 0.4765 -> bf16 0.4765625, 1/that = 2.0983...
    // -> bf16 2.09375.
    EXPECT_EQ(s.mean[0], -0.228515625f);
    EXPECT_EQ(s.inv_std[0], 2.09375f);
    EXPECT_EQ(s.mean.size(), 48u);
    // The spec's first three constants (§5), each as its bf16 rounding.
    const double mean3[3] = {-0.2289, -0.0052, -0.1323}, std3[3] = {0.4765, 1.0364, 0.4514};
    for (int c = 0; c < 3; ++c) {
        EXPECT_LE(std::fabs(s.mean[c] - mean3[c]), std::fabs(mean3[c]) * 0x1p-8) << c;
        EXPECT_LE(std::fabs(1.0 / s.inv_std[c] - std3[c]), std3[c] * 0x1p-7) << c;
        EXPECT_EQ(s.mean[c], round_bf16(s.mean[c]));
        EXPECT_EQ(s.inv_std[c], round_bf16(s.inv_std[c]));
    }
}

}  // namespace
}  // namespace lancet
