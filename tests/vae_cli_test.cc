// `lancet vae encode|decode` and `lancet forward --component vae-*`: shapes of a round trip on the
// tiny synthetic VAE, identical results from both commands, and bad input as one line, exit 1,
// no output file.
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include "core/rng.h"
#include "io/image.h"
#include "io/pth_writer.h"
#include "io/safetensors.h"
#include "io/temp_output.h"
#include "io/video.h"
#include "model/wan_vae.h"
#include "model/wan_vae_synth.h"
#include "pipeline/vae_codec.h"
#include "test_util.h"

namespace lancet {
namespace {

namespace fs = std::filesystem;
using test::run_lancet;

void write_tensor(const fs::path& p, const std::string& name, const Shape& s, double scale = 0.5) {
    std::vector<float> v(static_cast<size_t>(shape_numel(s)));
    Rng r(5);
    for (float& x : v) x = static_cast<float>(scale * r.normal());
    SafetensorsWriter w(p.string());
    w.add(name, DType::F32, s);
    w.begin();
    w.write(name, v.data(), v.size() * 4);
    w.finish();
}

Shape shape_of(const fs::path& p, const std::string& name) {
    SafetensorsFile f(p.string());
    return f.find(name)->shape;
}

std::string q(const fs::path& p) { return "'" + p.string() + "'"; }

class VaeCli : public ::testing::Test {
  protected:
    void SetUp() override {
        vae = dir / "Wan2.2_VAE.pth";
        write_synth_wan_vae(vae.string(), wan_vae_synth_config("tiny"), DType::F32, 1);
    }
    // Runs and expects exit 1, one stderr line containing `what`, and no `out`.
    void expect_error(const std::string& args, const std::string& what, const fs::path& out) {
        const test::RunResult r = run_lancet(args);
        EXPECT_EQ(r.exit_code, 1) << args << "\n" << r.err;
        EXPECT_EQ(r.err.rfind("lancet: error: ", 0), 0u) << r.err;
        EXPECT_EQ(std::count(r.err.begin(), r.err.end(), '\n'), 1) << r.err;
        EXPECT_NE(r.err.find(what), std::string::npos) << r.err;
        EXPECT_FALSE(fs::exists(out)) << out;
    }
    test::TempDir dir;
    fs::path vae;
};

TEST_F(VaeCli, EncodeDecodeRoundTripShapesAndForwardAgrees) {
    write_tensor(dir / "in.safetensors", "video", {3, 5, 32, 48});
    auto r = run_lancet("-q vae encode --vae " + q(vae) + " --input " + q(dir / "in.safetensors") +
                        " -o " + q(dir / "z.safetensors"));
    ASSERT_EQ(r.exit_code, 0) << r.err;
    EXPECT_EQ(shape_of(dir / "z.safetensors", "latent"), (Shape{48, 2, 2, 3}));
    r = run_lancet("-q forward --component vae-encode --model-or-vae " + q(dir.path()) +
                   " --input " + q(dir / "in.safetensors") + " --out " + q(dir / "z2.safetensors"));
    ASSERT_EQ(r.exit_code, 0) << r.err;
    EXPECT_EQ(test::read_file(dir / "z.safetensors"), test::read_file(dir / "z2.safetensors"));

    // --sample adds exp(logvar/2)·ε: seeded, so repeatable, and not the mean
    for (const char* n : {"s1.safetensors", "s2.safetensors"}) {
        r = run_lancet("-q vae encode --sample --seed 3 --vae " + q(vae) + " --input " +
                       q(dir / "in.safetensors") + " -o " + q(dir / n));
        ASSERT_EQ(r.exit_code, 0) << r.err;
    }
    EXPECT_EQ(test::read_file(dir / "s1.safetensors"), test::read_file(dir / "s2.safetensors"));
    EXPECT_NE(test::read_file(dir / "s1.safetensors"), test::read_file(dir / "z.safetensors"));
    r = run_lancet("vae decode --vae " + q(vae) + " --input " + q(dir / "z.safetensors") + " -o " +
                   q(dir / "v.safetensors"));
    ASSERT_EQ(r.exit_code, 0) << r.err;
    EXPECT_NE(r.err.find("ETA"), std::string::npos) << r.err;  // progress per chunk
    EXPECT_EQ(shape_of(dir / "v.safetensors", "video"), (Shape{3, 5, 32, 48}));
    r = run_lancet("-q forward --component vae-decode --model " + q(vae) + " --input " +
                   q(dir / "z.safetensors") + " --out " + q(dir / "v2.safetensors"));
    ASSERT_EQ(r.exit_code, 0) << r.err;
    EXPECT_EQ(test::read_file(dir / "v.safetensors"), test::read_file(dir / "v2.safetensors"));
    SafetensorsFile f((dir / "v.safetensors").string());
    for (float v : to_f32(f.view(*f.find("video")))) ASSERT_LE(std::fabs(v), 1.0f);
}

// An image with smooth colour ramps (so the encoder sees structure, not noise).
ImageRGB8 ramp_image(int w, int h) {
    ImageRGB8 img;
    img.width = w;
    img.height = h;
    img.rgb.resize(static_cast<size_t>(3 * w * h));
    for (int y = 0; y < h; ++y)
        for (int x = 0; x < w; ++x) {
            uint8_t* p = &img.rgb[static_cast<size_t>(3 * (y * w + x))];
            p[0] = static_cast<uint8_t>(255 * x / (w - 1));
            p[1] = static_cast<uint8_t>(255 * y / (h - 1));
            p[2] = static_cast<uint8_t>((x * 7 + y * 3) % 256);
        }
    return img;
}

TEST_F(VaeCli, ImageAndVideoFilesRoundTrip) {
    // PNG in -> latent -> PNG and MP4 out: the files decode, at the input's size.
    write_png((dir / "in.png").string(), ramp_image(48, 32));
    auto r = run_lancet("-q vae encode --vae " + q(vae) + " --input " + q(dir / "in.png") + " -o " +
                        q(dir / "z.safetensors"));
    ASSERT_EQ(r.exit_code, 0) << r.err;
    EXPECT_EQ(shape_of(dir / "z.safetensors", "latent"), (Shape{48, 1, 2, 3}));
    r = run_lancet("-q vae decode --vae " + q(vae) + " --input " + q(dir / "z.safetensors") +
                   " -o " + q(dir / "out.png"));
    ASSERT_EQ(r.exit_code, 0) << r.err;
    const ImageRGB8 back = read_image((dir / "out.png").string());
    EXPECT_EQ(back.width, 48);
    EXPECT_EQ(back.height, 32);
    // With --bf16-activations the same command works (weights rounded to bf16 at load).
    r = run_lancet("-q --bf16-activations vae decode --vae " + q(vae) + " --input " +
                   q(dir / "z.safetensors") + " -o " + q(dir / "out16.png"));
    ASSERT_EQ(r.exit_code, 0) << r.err;
    EXPECT_EQ(read_image((dir / "out16.png").string()).width, 48);
    if (!video_support_built()) GTEST_SKIP() << "no FFmpeg in this build";
    r = run_lancet("-q vae decode --vae " + q(vae) + " --input " + q(dir / "z.safetensors") +
                   " -o " + q(dir / "one.mp4"));
    ASSERT_EQ(r.exit_code, 0) << r.err;
    EXPECT_EQ(VideoReader((dir / "one.mp4").string()).info().frame_count, 1);

    // MP4 in (9 frames at 12 fps: Lance's sampler keeps all 9 = 4·2+1) -> latent t = 3 -> MP4 of
    // 9 frames at 12 fps.
    std::vector<float> clip(static_cast<size_t>(3 * 9 * 32 * 32));
    Rng rng(4);
    for (float& v : clip) v = static_cast<float>(rng.unit_float() * 2 - 1);
    write_mp4((dir / "clip.mp4").string(), clip.data(), 9, 32, 32);
    r = run_lancet("-q vae encode --vae " + q(vae) + " --input " + q(dir / "clip.mp4") + " -o " +
                   q(dir / "zc.safetensors"));
    ASSERT_EQ(r.exit_code, 0) << r.err;
    EXPECT_EQ(shape_of(dir / "zc.safetensors", "latent"), (Shape{48, 3, 2, 2}));
    r = run_lancet("-q vae decode --vae " + q(vae) + " --input " + q(dir / "zc.safetensors") +
                   " -o " + q(dir / "out.mp4"));
    ASSERT_EQ(r.exit_code, 0) << r.err;
    VideoReader vr((dir / "out.mp4").string());
    EXPECT_EQ(vr.info().frame_count, 9);
    EXPECT_EQ(vr.info().width, 32);
    EXPECT_NEAR(vr.info().avg_fps, 12.0, 1e-6);
    // --preset: Lance's VAE preprocessing (image_256res: a 48x32 image goes to a 3:2-ish bucket).
    r = run_lancet("-q vae encode --preset image_256res --vae " + q(vae) + " --input " +
                   q(dir / "in.png") + " -o " + q(dir / "zp.safetensors"));
    ASSERT_EQ(r.exit_code, 0) << r.err;
    const Shape zp = shape_of(dir / "zp.safetensors", "latent");
    EXPECT_EQ(zp[0], 48);
    EXPECT_GT(zp[2] * zp[3], 150);  // ~256² pixels / 16²
}

TEST_F(VaeCli, MediaBadInputIsOneLineAndWritesNothing) {
    const fs::path z = dir / "z.safetensors";
    const std::string enc = "vae encode --vae " + q(vae) + " --input ";
    write_png((dir / "odd.png").string(), ramp_image(40, 30));
    expect_error(enc + q(dir / "odd.png") + " -o " + q(z), "not multiples of 16", z);
    std::ofstream(dir / "notes.txt") << "hello";
    expect_error(enc + q(dir / "notes.txt") + " -o " + q(z), "unknown input type '.txt'", z);
    write_png((dir / "ok.png").string(), ramp_image(32, 32));
    expect_error(enc + q(dir / "ok.png") + " -o " + q(dir / "z.png"), "unknown output type",
                 dir / "z.png");
    expect_error(enc + q(dir / "ok.png") + " --preset huge -o " + q(z), "unknown resolution preset",
                 z);
    // A PNG that is not one: one line naming it.
    std::ofstream(dir / "fake.png") << "not a png at all";
    expect_error(enc + q(dir / "fake.png") + " -o " + q(z), "fake.png", z);
    // --crop takes the centre 32x16 of 40x30
    auto r =
        run_lancet("-q vae encode --crop " + enc.substr(11) + q(dir / "odd.png") + " -o " + q(z));
    ASSERT_EQ(r.exit_code, 0) << r.err;
    EXPECT_EQ(shape_of(z, "latent"), (Shape{48, 1, 1, 2}));
    const std::string dec = "vae decode --vae " + q(vae) + " --input ";
    expect_error(dec + q(z) + " -o " + q(dir / "out.jpg"), "unknown output type '.jpg'",
                 dir / "out.jpg");
    expect_error(dec + q(z) + " -o " + q(dir / "missing" / "out.png"), "does not exist",
                 dir / "missing" / "out.png");
    write_tensor(dir / "z3.safetensors", "latent", {48, 3, 2, 2});
    expect_error(dec + q(dir / "z3.safetensors") + " -o " + q(dir / "v.png"),
                 "a PNG holds one frame", dir / "v.png");
    // An output that cannot be created (a folder in the way of the temporary name's rename).
    fs::create_directories(dir / "taken.png" / "inside");
    expect_error(dec + q(z) + " -o " + q(dir / "taken.png"), "output is a folder",
                 dir / "taken.png" / "x");
}

// --tile through the command: the blended clip is summed in a temporary file and streamed out, to
// a 'video' tensor equal to the library's decode_tiled and to an MP4 of every frame; a tile
// covering the latent is the untiled decode.
TEST_F(VaeCli, TiledDecodeStreamsToTensorAndMp4) {
    write_tensor(dir / "z.safetensors", "latent", {48, 2, 4, 6}, 1.0);
    // Exact arithmetic, the in-process library's default (the CLI's rounds to bf16 on AMX).
    const std::string base = "-q --exact-activations vae decode --vae " + q(vae) + " --input " +
                             q(dir / "z.safetensors");
    auto r = run_lancet(base + " --tile 3 --tile-overlap 1 -o " + q(dir / "t.safetensors"));
    ASSERT_EQ(r.exit_code, 0) << r.err;
    r = run_lancet(base + " --tile 8 -o " + q(dir / "whole_tile.safetensors"));
    ASSERT_EQ(r.exit_code, 0) << r.err;
    r = run_lancet(base + " -o " + q(dir / "untiled.safetensors"));
    ASSERT_EQ(r.exit_code, 0) << r.err;
    EXPECT_EQ(test::read_file(dir / "whole_tile.safetensors"),
              test::read_file(dir / "untiled.safetensors"));
    WanVaeFile f(vae.string());
    wan_vae::Context ctx;
    ctx.ops = kernels::OpContext::defaults();
    wan_vae::Decoder dec(f);
    SafetensorsFile zf((dir / "z.safetensors").string());
    const std::vector<float> z = to_f32(zf.view(*zf.find("latent")));
    // The untiled tensor went through the scratch file channels-first: equal to the gathered
    // decode.
    SafetensorsFile uf((dir / "untiled.safetensors").string());
    EXPECT_EQ(to_f32(uf.view(*uf.find("video"))), wan_vae::decode_all(ctx, dec, z.data(), 2, 4, 6));
    const std::vector<float> want = wan_vae::decode_tiled(ctx, dec, z.data(), 2, 4, 6, 3, 1);
    SafetensorsFile tf((dir / "t.safetensors").string());
    EXPECT_EQ(tf.find("video")->shape, (Shape{3, 5, 64, 96}));
    EXPECT_EQ(to_f32(tf.view(*tf.find("video"))), want);
    r = run_lancet(base + " --tile 3 --tile-overlap 1 -o " + q(dir / "t.mp4"));
    ASSERT_EQ(r.exit_code, 0) << r.err;
    EXPECT_EQ(VideoReader((dir / "t.mp4").string()).info().frame_count, 5);
    for (const auto& e : fs::directory_iterator(dir.path()))
        EXPECT_EQ(e.path().string().find(".tmp"), std::string::npos) << e.path();
}

// The scratch file behind the streamed outputs: reads what was written where it was written,
// zeros elsewhere, refuses access past its end; VideoTensorSpill turns time-ordered chunks
// [3, n, H, W] into [3, T, H, W] and refuses to write an incomplete video.
TEST(VideoTensorSpill, GathersChunksChannelsFirst) {
    ScratchFile sf(64, "test scratch");
    const float v[3] = {1.5f, -2.0f, 3.25f};
    sf.write(v, sizeof v, 20);
    float back[5] = {};
    sf.read(back, sizeof back, 16);
    EXPECT_EQ(back[0], 0.0f);
    EXPECT_EQ(back[1], 1.5f);
    EXPECT_EQ(back[3], 3.25f);
    EXPECT_EQ(back[4], 0.0f);
    EXPECT_NE(test::error_of([&] { sf.write(v, sizeof v, 56); }).find("test scratch"),
              std::string::npos);

    const int64_t T = 5, H = 2, W = 3, HW = H * W;
    std::vector<float> want(static_cast<size_t>(3 * T * HW));
    Rng r(4);
    for (float& e : want) e = static_cast<float>(r.normal());
    VideoTensorSpill spill(T, H, W);
    test::TempDir d;
    {
        SafetensorsWriter w((d / "early.safetensors").string());
        w.add("video", DType::F32, {3, T, H, W});
        w.begin();
        EXPECT_NE(test::error_of([&] { spill.append_to(w); }).find("0 of 5 frames"),
                  std::string::npos);
    }
    EXPECT_FALSE(fs::exists(d / "early.safetensors"));
    int64_t t0 = 0;
    for (int64_t n : {1, 4}) {
        std::vector<float> chunk(static_cast<size_t>(3 * n * HW));
        for (int64_t c = 0; c < 3; ++c)
            for (int64_t i = 0; i < n * HW; ++i)
                chunk[static_cast<size_t>(c * n * HW + i)] =
                    want[static_cast<size_t>((c * T + t0) * HW + i)];
        spill.add(chunk.data(), n);
        t0 += n;
    }
    EXPECT_EQ(spill.frames(), 5);
    SafetensorsWriter w((d / "v.safetensors").string());
    w.add("video", DType::F32, {3, T, H, W});
    w.begin();
    spill.append_to(w);
    w.finish();
    SafetensorsFile f((d / "v.safetensors").string());
    EXPECT_EQ(to_f32(f.view(*f.find("video"))), want);
    EXPECT_NE(test::error_of([&] { spill.add(want.data(), 1); }).find("6 frames"),
              std::string::npos);
}

TEST_F(VaeCli, BenchVaeOnTheTinyPreset) {
    auto r = run_lancet(
        "bench vae --preset tiny --latent 2 --conv-side 4 --reps 1 --tile 1 "
        "--tile-overlap 0");
    ASSERT_EQ(r.exit_code, 0) << r.err;
    EXPECT_NE(r.out.find("| decoder.upsamples.0.upsamples.1.residual.2 | 32 | 32 |"),
              std::string::npos)
        << r.out;
    EXPECT_NE(r.out.find("decode 2x2 latent -> 32x32 image"), std::string::npos) << r.out;
    EXPECT_NE(r.out.find("x cut)"), std::string::npos) << r.out;
    EXPECT_NE(r.out.find("tiled decode (tiles of 1, overlap 0"), std::string::npos) << r.out;
    EXPECT_NE(r.out.find("| 32 | 32 | bf16 |"), std::string::npos) << r.out;
    EXPECT_NE(r.out.find("bf16 activations (weights rounded to bf16): decode"), std::string::npos)
        << r.out;
    EXPECT_NE(r.out.find("bf16 activations: encode"), std::string::npos) << r.out;
    r = run_lancet("bench vae --preset tiny --reps 0");
    EXPECT_EQ(r.exit_code, 1);
    EXPECT_NE(r.err.find("--reps must be >= 1"), std::string::npos) << r.err;
    EXPECT_EQ(std::count(r.err.begin(), r.err.end(), '\n'), 1) << r.err;
}

TEST_F(VaeCli, InspectShowsTheRecoveredStructure) {
    const auto r = run_lancet("inspect " + q(vae));
    ASSERT_EQ(r.exit_code, 0) << r.err;
    EXPECT_NE(r.out.find("tensors: 196"), std::string::npos) << r.out;
    EXPECT_NE(r.out.find("Wan2.2 VAE: dim 8, dec_dim 8, z_dim 48, dim_mult [1,2,4,4], 2 residual "
                         "blocks, temporal_downsample [F,T,T]"),
              std::string::npos)
        << r.out;
}

TEST_F(VaeCli, BadInputIsOneLineAndWritesNothing) {
    const fs::path out = dir / "out.safetensors";
    const std::string enc = "vae encode --vae " + q(vae) + " -o " + q(out) + " --input ";
    write_tensor(dir / "odd.safetensors", "video", {3, 5, 40, 32});
    expect_error(enc + q(dir / "odd.safetensors"), "not multiples of 16", out);
    write_tensor(dir / "t6.safetensors", "video", {3, 6, 32, 32});
    expect_error(enc + q(dir / "t6.safetensors"), "silently drop the last 1 frame", out);
    // --crop takes what Lance would: the centre 32x32 (offset round(8/2) = 4 rows) and 5 frames
    auto r = run_lancet("vae encode --crop --vae " + q(vae) + " -o " + q(dir / "c.safetensors") +
                        " --input " + q(dir / "t6.safetensors"));
    EXPECT_EQ(r.exit_code, 0) << r.err;
    EXPECT_NE(r.err.find("cropped 6x32x32 to 5x32x32"), std::string::npos) << r.err;
    r = run_lancet("vae encode --crop --vae " + q(vae) + " -o " + q(dir / "c2.safetensors") +
                   " --input " + q(dir / "odd.safetensors"));
    EXPECT_EQ(r.exit_code, 0) << r.err;
    EXPECT_NE(r.err.find("cropped 5x40x32 to 5x32x32 (frames x height x width; offset 4, 0)"),
              std::string::npos)
        << r.err;
    EXPECT_EQ(shape_of(dir / "c2.safetensors", "latent"), (Shape{48, 2, 2, 2}));
    write_tensor(dir / "rgba.safetensors", "video", {4, 5, 32, 32});
    expect_error(enc + q(dir / "rgba.safetensors"), "expected 3", out);
    expect_error(enc + q(dir / "nothing.safetensors"), "no such input file", out);
    write_tensor(dir / "z16.safetensors", "latent", {16, 2, 2, 2});
    expect_error(
        "vae decode --vae " + q(vae) + " -o " + q(out) + " --input " + q(dir / "z16.safetensors"),
        "has 16 channels, the VAE expects 48", out);
    expect_error(
        "vae decode --vae " + q(vae) + " -o " + q(out) + " --input " + q(dir / "odd.safetensors"),
        "no tensor 'latent'", out);
    write_tensor(dir / "ok.safetensors", "video", {3, 1, 32, 32});
    const fs::path nodir = dir / "missing" / "out.safetensors";
    expect_error(enc.substr(0, enc.find(" -o ")) + " -o " + q(nodir) + " --input " +
                     q(dir / "ok.safetensors"),
                 "does not exist", nodir);
    // a forbidden pickle global, and a state dict missing one key
    const fs::path evil = fs::path(LANCET_TEST_DATA_DIR) / "pth" / "evil_global.pth";
    expect_error(
        "vae encode --vae " + q(evil) + " -o " + q(out) + " --input " + q(dir / "ok.safetensors"),
        "os", out);
    {
        PthWriter w((dir / "short.pth").string());
        std::vector<Shape> shapes;
        for (const auto& s : wan_vae_tensor_list(wan_vae_synth_config("tiny")))
            if (s.name != "decoder.head.0.gamma") {
                w.add(s.name, DType::F32, s.shape);
                shapes.push_back(s.shape);
            }
        w.begin();
        for (const auto& s : shapes) {
            std::vector<float> z(static_cast<size_t>(shape_numel(s)), 0.1f);
            w.append(z.data(), z.size() * 4);
        }
        w.finish();
    }
    expect_error("vae encode --vae " + q(dir / "short.pth") + " -o " + q(out) + " --input " +
                     q(dir / "ok.safetensors"),
                 "missing tensor 'decoder.head.0.gamma'", out);
}

}  // namespace
}  // namespace lancet
