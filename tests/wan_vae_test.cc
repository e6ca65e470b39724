// Tests the Wan2.2 VAE inventory (real counts), config recovery from shapes, the PyTorch zip
// writer (round trip through the restricted reader), synth output and strict loading errors.
#include <gtest/gtest.h>

#include <cstring>
#include <filesystem>
#include <functional>
#include <string>
#include <vector>

#include "core/error.h"
#include "core/numeric.h"
#include "io/pth.h"
#include "io/pth_writer.h"
#include "model/wan_vae_synth.h"
#include "model/wan_vae_tensors.h"
#include "test_util.h"

namespace lancet {
namespace {

namespace fs = std::filesystem;

using test::error_of;

TEST(WanVaeInventory, RealDimsMatchTheSpecCounts) {
    const WanVaeConfig cfg;  // the defaults are Wan2.2_VAE.pth's
    int64_t total = 0, enc = 0, dec = 0, c1 = 0, c2 = 0;
    size_t n = 0;
    for_each_wan_vae_tensor(cfg, [&](const VaeTensorSpec& s) {
        ++n;
        const int64_t p = shape_numel(s.shape);
        total += p;
        if (s.name.rfind("encoder.", 0) == 0) enc += p;
        if (s.name.rfind("decoder.", 0) == 0) dec += p;
        if (s.name.rfind("conv1.", 0) == 0) c1 += p;
        if (s.name.rfind("conv2.", 0) == 0) c2 += p;
    });
    EXPECT_EQ(n, 196u);
    EXPECT_EQ(total, 704688668);
    EXPECT_EQ(enc, 149627776);
    EXPECT_EQ(dec, 555049228);
    EXPECT_EQ(c1, 9312);
    EXPECT_EQ(c2, 2352);
    EXPECT_EQ(cfg.enc_dims(), (std::vector<int64_t>{160, 160, 320, 640, 640}));
    EXPECT_EQ(cfg.dec_dims(), (std::vector<int64_t>{1024, 1024, 1024, 512, 256}));
    EXPECT_EQ(cfg.space_factor(), 16);
    EXPECT_EQ(cfg.time_factor(), 4);
    // The spec's named shapes.
    std::unordered_map<std::string, Shape> m;
    for (const auto& s : wan_vae_tensor_list(cfg)) m[s.name] = s.shape;
    EXPECT_EQ(m.at("encoder.conv1.weight"), (Shape{160, 12, 3, 3, 3}));
    EXPECT_EQ(m.at("encoder.middle.1.norm.gamma"), (Shape{640, 1, 1}));
    EXPECT_EQ(m.at("encoder.middle.1.to_qkv.weight"), (Shape{1920, 640, 1, 1}));
    EXPECT_EQ(m.at("encoder.head.2.weight"), (Shape{96, 640, 3, 3, 3}));
    EXPECT_EQ(m.at("conv1.weight"), (Shape{96, 96, 1, 1, 1}));
    EXPECT_EQ(m.at("decoder.conv1.weight"), (Shape{1024, 48, 3, 3, 3}));
    EXPECT_EQ(m.at("decoder.head.2.weight"), (Shape{12, 256, 3, 3, 3}));
    EXPECT_EQ(m.at("encoder.downsamples.1.downsamples.2.time_conv.weight"),
              (Shape{320, 320, 3, 1, 1}));
    EXPECT_EQ(m.at("decoder.upsamples.0.upsamples.3.time_conv.weight"),
              (Shape{2048, 1024, 3, 1, 1}));
    EXPECT_EQ(m.at("decoder.upsamples.2.upsamples.0.shortcut.weight"), (Shape{512, 1024, 1, 1, 1}));
    EXPECT_EQ(m.count("encoder.downsamples.0.downsamples.2.time_conv.weight"), 0u);
    EXPECT_EQ(m.count("decoder.upsamples.2.upsamples.3.time_conv.weight"), 0u);
}

TEST(WanVaeInventory, ConfigIsRecoveredFromShapes) {
    std::vector<WanVaeConfig> cfgs = {WanVaeConfig{}, wan_vae_synth_config("tiny"),
                                      wan_vae_synth_config("small")};
    WanVaeConfig odd;
    odd.dim = 16, odd.dec_dim = 24, odd.z_dim = 8, odd.dim_mult = {1, 2, 2};
    odd.num_res_blocks = 1, odd.temporal_downsample = {true, false};
    cfgs.push_back(odd);
    for (const auto& c : cfgs) {
        std::unordered_map<std::string, Shape> m;
        for (const auto& s : wan_vae_tensor_list(c)) m[s.name] = s.shape;
        const WanVaeConfig r = wan_vae_config_from_shapes(
            [&](const std::string& n) -> const Shape* {
                auto it = m.find(n);
                return it == m.end() ? nullptr : &it->second;
            },
            "x");
        EXPECT_EQ(r.dim, c.dim);
        EXPECT_EQ(r.dec_dim, c.dec_dim);
        EXPECT_EQ(r.z_dim, c.z_dim);
        EXPECT_EQ(r.dim_mult, c.dim_mult);
        EXPECT_EQ(r.num_res_blocks, c.num_res_blocks);
        EXPECT_EQ(r.temporal_downsample, c.temporal_downsample);
        check_wan_vae_tensors(r, m, "x");
    }
}

class PthWriterRoundTrip : public ::testing::TestWithParam<bool> {};

TEST_P(PthWriterRoundTrip, ThroughTheReader) {
    test::TempDir dir;
    const std::string path = (dir / "w.pth").string();
    struct T {
        std::string name;
        DType dtype;
        Shape shape;
    };
    std::vector<T> ts = {{"a.weight", DType::F32, {3, 4, 1, 1, 2}},
                         {"b", DType::BF16, {5}},
                         {"scalar", DType::F32, {}},
                         {"empty", DType::F32, {0, 3}},
                         {"h", DType::F16, {2, 2}},
                         {"i", DType::I64, {3}},
                         {"big.numel", DType::U8, {70000}},
                         {"m", DType::BOOL, {4}}};
    std::vector<std::vector<uint8_t>> bytes;
    {
        PthWriter w(path, /*force_zip64=*/GetParam());
        for (const auto& t : ts) w.add(t.name, t.dtype, t.shape);
        w.begin();
        for (size_t k = 0; k < ts.size(); ++k) {
            std::vector<uint8_t> b(static_cast<size_t>(shape_numel(ts[k].shape)) *
                                   dtype_size(ts[k].dtype));
            for (size_t i = 0; i < b.size(); ++i)
                b[i] =
                    static_cast<uint8_t>(ts[k].dtype == DType::BOOL ? (i + k) % 2 : i * 7 + k * 13);
            // in two pieces, to exercise appends that split a tensor
            w.append(b.data(), b.size() / 2);
            w.append(b.data() + b.size() / 2, b.size() - b.size() / 2);
            bytes.push_back(std::move(b));
        }
        w.finish();
    }
    EXPECT_FALSE(fs::exists(path + ".tmp." + std::to_string(::getpid())));
    PthFile f(path);
    EXPECT_EQ(f.prefix(), "archive");
    ASSERT_EQ(f.tensors().size(), ts.size());
    EXPECT_TRUE(f.verify_crc());
    for (size_t k = 0; k < ts.size(); ++k) {
        const PthTensor& t = f.tensors()[k];
        EXPECT_EQ(t.name, ts[k].name);
        EXPECT_EQ(t.dtype, ts[k].dtype);
        EXPECT_EQ(t.shape, ts[k].shape);
        EXPECT_TRUE(t.is_contiguous());
        ASSERT_EQ(t.nbytes(), bytes[k].size());
        EXPECT_EQ(std::memcmp(t.data(), bytes[k].data(), bytes[k].size()), 0) << t.name;
        if (!bytes[k].empty()) {  // torch aligns every storage to 64 bytes
            EXPECT_EQ(reinterpret_cast<uintptr_t>(t.data()) % 64, 0u) << t.name;
        }
    }
}

INSTANTIATE_TEST_SUITE_P(Zip32AndZip64, PthWriterRoundTrip, ::testing::Bool());

TEST(PthWriter, IncompleteWriteLeavesNothing) {
    test::TempDir dir;
    const std::string path = (dir / "w.pth").string();
    {
        PthWriter w(path);
        w.add("x", DType::F32, {4});
        w.begin();
        float v[2] = {1, 2};
        w.append(v, sizeof v);
        EXPECT_NE(error_of([&] { w.finish(); }).find("not completely written"), std::string::npos);
    }
    EXPECT_TRUE(fs::is_empty(dir.path()));
}

TEST(WanVaeFile, SynthTinyLoadsFromPthAndSafetensors) {
    test::TempDir dir;
    const WanVaeConfig cfg = wan_vae_synth_config("tiny");
    for (DType dt : {DType::F32, DType::BF16}) {
        for (VaeFileFormat fmt : {VaeFileFormat::Pth, VaeFileFormat::Safetensors}) {
            const std::string path =
                (dir / (fmt == VaeFileFormat::Pth ? "vae.pth" : "vae.safetensors")).string();
            write_synth_wan_vae(path, cfg, dt, 7, fmt);
            WanVaeFile f(path);
            EXPECT_EQ(f.config().dim, 8);
            EXPECT_EQ(f.config().dec_dim, 8);
            EXPECT_EQ(f.config().z_dim, 48);
            EXPECT_EQ(f.dtype(), dt);
            int64_t params = 0;
            for (const auto& s : wan_vae_tensor_list(cfg)) {
                params += shape_numel(s.shape);
                std::vector<float> want(static_cast<size_t>(shape_numel(s.shape)));
                fill_wan_vae_tensor(s, 7, want.data());
                const std::vector<float> got = f.to_f32(s.name);
                ASSERT_EQ(got.size(), want.size());
                for (size_t i = 0; i < got.size(); ++i)
                    ASSERT_EQ(got[i], dt == DType::BF16 ? round_bf16(want[i]) : want[i]) << s.name;
            }
            EXPECT_EQ(static_cast<int64_t>(f.params()), params);
        }
    }
}

// Writes the tiny inventory with one change: `drop` left out, `extra` added, `reshape` given
// another shape.
std::string write_variant(const fs::path& dir, const std::string& drop, const std::string& extra,
                          const std::string& reshape) {
    const std::string path = (dir / "v.pth").string();
    PthWriter w(path);
    std::vector<Shape> shapes;
    for (auto s : wan_vae_tensor_list(wan_vae_synth_config("tiny"))) {
        if (s.name == drop) continue;
        if (s.name == reshape) s.shape[0] += 1;
        w.add(s.name, DType::F32, s.shape);
        shapes.push_back(s.shape);
    }
    if (!extra.empty()) {
        w.add(extra, DType::F32, {2});
        shapes.push_back({2});
    }
    w.begin();
    for (const auto& s : shapes) {
        std::vector<float> z(static_cast<size_t>(shape_numel(s)), 0.5f);
        w.append(z.data(), z.size() * 4);
    }
    w.finish();
    return path;
}

TEST(WanVaeFile, StrictErrorsNameTheKey) {
    test::TempDir dir;
    const std::string k = "decoder.upsamples.1.upsamples.2.residual.3.gamma";
    std::string e = error_of([&] { WanVaeFile f(write_variant(dir.path(), k, "", "")); });
    EXPECT_NE(e.find("missing tensor '" + k + "'"), std::string::npos) << e;
    e = error_of([&] { WanVaeFile f(write_variant(dir.path(), "", "decoder.extra.bias", "")); });
    EXPECT_NE(e.find("unexpected tensor 'decoder.extra.bias'"), std::string::npos) << e;
    e = error_of([&] { WanVaeFile f(write_variant(dir.path(), "", "", "encoder.head.0.gamma")); });
    EXPECT_NE(
        e.find("tensor 'encoder.head.0.gamma' has shape [33, 1, 1, 1], expected [32, 1, 1, 1]"),
        std::string::npos)
        << e;
    e = error_of([&] { WanVaeFile f(write_variant(dir.path(), "encoder.conv1.weight", "", "")); });
    EXPECT_NE(e.find("no tensor 'encoder.conv1.weight'"), std::string::npos) << e;
    EXPECT_EQ(e.find('\n'), std::string::npos);
    const fs::path evil = fs::path(LANCET_TEST_DATA_DIR) / "pth" / "evil_global.pth";
    e = error_of([&] { WanVaeFile f(evil.string()); });
    EXPECT_NE(e.find("os"), std::string::npos) << e;
}

}  // namespace
}  // namespace lancet
