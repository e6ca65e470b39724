// `lancet vae encode|decode` and `lancet forward --component vae-*`: shapes of a round trip on the
// tiny synthetic VAE, identical results from both commands, and bad input as one line, exit 1,
// no output file.
#include <gtest/gtest.h>

#include <filesystem>
#include <string>
#include <vector>

#include "core/rng.h"
#include "io/pth_writer.h"
#include "io/safetensors.h"
#include "model/wan_vae_synth.h"
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
    const fs::path evil = fs::path(__FILE__).parent_path() / "data" / "pth" / "evil_global.pth";
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
