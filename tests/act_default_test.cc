// The CLI's activation default for INT4 weights: auto (W4A8 for GEMVs; bf16 tiles above 8 rows on
// AMX) unless --exact-activations (or $LANCET_ACT=f32) asks for exact f32 ones. Checked on
// `lancet forward` of an INT4 model: the default's output is bit-identical to LANCET_ACT=auto's,
// the flag's to LANCET_ACT=f32's, and the two differ. Likewise the attention precision switch.
#include <gtest/gtest.h>

#include <cstdlib>
#include <filesystem>
#include <initializer_list>
#include <string>
#include <utility>
#include <vector>

#include "io/safetensors.h"
#include "test_util.h"

namespace lancet {
namespace {

namespace fs = std::filesystem;
using test::run_lancet;
using test::TempDir;

std::string q(const fs::path& p) { return "'" + p.string() + "'"; }

// A text-only packed sequence of L tokens in one causal split.
void write_text_input(const fs::path& path, int64_t L) {
    std::vector<int64_t> ids(static_cast<size_t>(L));
    for (int64_t i = 0; i < L; ++i) ids[static_cast<size_t>(i)] = 10 + (i * 37) % 200;
    const std::vector<uint8_t> is_gen(static_cast<size_t>(L), 0);
    const std::vector<int64_t> lens{L}, modes{0}, grid{1, 2, 3};
    SafetensorsWriter w(path.string());
    w.add("token_ids", DType::I64, {L});
    w.add("is_gen", DType::U8, {L});
    w.add("split_lens", DType::I64, {1});
    w.add("split_modes", DType::I64, {1});
    w.add("latent_grid", DType::I64, {3});
    w.write("token_ids", ids.data(), ids.size() * 8);
    w.write("is_gen", is_gen.data(), is_gen.size());
    w.write("split_lens", lens.data(), 8);
    w.write("split_modes", modes.data(), 8);
    w.write("latent_grid", grid.data(), 24);
    w.finish();
}

// The bytes `lancet FLAGS forward --model MODEL` writes for dir/in.safetensors into dir/out, with
// `env` set for this run only (an empty value is as unset to lancet).
std::string forward_bytes(const fs::path& dir, const std::string& model, const std::string& flags,
                          const std::string& out,
                          std::initializer_list<std::pair<const char*, std::string>> env = {}) {
    const test::ScopedEnv scoped(env);
    const auto r = run_lancet(flags + " forward --model " + q(model) + " --input " +
                              q(dir / "in.safetensors") + " --out " + q(dir / out));
    EXPECT_EQ(r.exit_code, 0) << r.err;
    return test::read_file(dir / out);
}

TEST(ActivationDefault, Int4UsesAutoUnlessExactActivations) {
    TempDir dir;
    ASSERT_EQ(run_lancet("synth --preset tiny -o " + q(dir / "tiny")).exit_code, 0);
    const std::string int4 = test::make_rtn_int4((dir / "tiny").string(), dir / "tiny-int4", 32);
    write_text_input(dir / "in.safetensors", 24);
    auto forward = [&](const std::string& env, const std::string& flags, const std::string& out) {
        return forward_bytes(dir.path(), int4, flags, out, {{"LANCET_ACT", env}});
    };
    const std::string by_default = forward("", "", "default.safetensors");
    const std::string automatic = forward("auto", "", "auto.safetensors");
    const std::string exact = forward("", "--exact-activations", "exact.safetensors");
    const std::string f32 = forward("f32", "", "f32.safetensors");
    ASSERT_FALSE(by_default.empty());
    EXPECT_EQ(by_default, automatic) << "the default is not auto";
    EXPECT_EQ(exact, f32) << "--exact-activations is not the f32 path";
    EXPECT_NE(by_default, exact) << "W4A8 and exact activations gave the same bytes";
}

// --activations f32|int8|bf16|auto: f32 is --exact-activations, auto the default, bf16 the INT4
// weights dequantized to bf16 with bf16 activations plus BF16 weights with bf16 activations
// (LANCET_ACT=bf16 with LANCET_BF16_ACT=bf16, bit for bit); it differs from both others;
// contradicting flags are a one-line error.
TEST(ActivationDefault, ActivationsFlagPicksTheMode) {
    TempDir dir;
    ASSERT_EQ(run_lancet("synth --preset tiny -o " + q(dir / "tiny")).exit_code, 0);
    const std::string int4 = test::make_rtn_int4((dir / "tiny").string(), dir / "tiny-int4", 32);
    write_text_input(dir / "in.safetensors", 40);  // 40 rows: the bf16 GEMM paths, not the GEMV
    auto forward = [&](const std::string& env, const std::string& flags, const std::string& out) {
        const std::string bf16_env = env.empty() ? "" : env == "bf16" ? "bf16" : "f32";
        return forward_bytes(dir.path(), int4, flags, out,
                             {{"LANCET_ACT", env}, {"LANCET_BF16_ACT", bf16_env}});
    };
    const std::string a_f32 = forward("", "--activations f32", "a_f32.safetensors");
    const std::string a_int8 = forward("", "--activations int8", "a_int8.safetensors");
    const std::string a_bf16 = forward("", "--activations bf16", "a_bf16.safetensors");
    ASSERT_FALSE(a_bf16.empty());
    EXPECT_EQ(a_f32, forward("", "--exact-activations", "exact.safetensors"));
    EXPECT_EQ(forward("", "--activations auto", "a_auto.safetensors"),
              forward("", "", "default.safetensors"));
    EXPECT_EQ(a_bf16, forward("bf16", "", "env_bf16.safetensors"));
    EXPECT_NE(a_bf16, a_f32);
    EXPECT_NE(a_bf16, a_int8);
    for (const char* bad : {"--exact-activations --activations bf16",
                            "--bf16-activations --activations f32", "--activations int4"}) {
        const auto r = run_lancet(std::string(bad) + " forward --model " + q(int4));
        EXPECT_EQ(r.exit_code, 1) << bad;
        EXPECT_EQ(r.err.rfind("lancet: error: ", 0), 0u) << r.err;
        EXPECT_EQ(r.err.find('\n'), r.err.size() - 1) << r.err;
    }
}

// BF16 weights: auto by default (bf16 activations where they run on the AMX tiles, f32 otherwise),
// bit for bit LANCET_BF16_ACT=auto; --exact-activations is LANCET_BF16_ACT=f32 (with f32
// attention on both sides); --bf16-activations differs from it.
TEST(ActivationDefault, Bf16WeightsUseAutoUnlessExactActivations) {
    TempDir dir;
    ASSERT_EQ(run_lancet("synth --preset tiny --dtype bf16 -o " + q(dir / "tiny")).exit_code, 0);
    write_text_input(dir / "in.safetensors", 40);
    auto forward = [&](const std::string& env, const std::string& flags, const std::string& out) {
        return forward_bytes(dir.path(), (dir / "tiny").string(), flags, out,
                             {{"LANCET_BF16_ACT", env}});
    };
    const std::string by_default = forward("", "", "default.safetensors");
    ASSERT_FALSE(by_default.empty());
    EXPECT_EQ(by_default, forward("auto", "", "auto.safetensors")) << "the default is not auto";
    const std::string exact = forward("", "--exact-activations", "exact.safetensors");
    EXPECT_EQ(exact, forward("f32", "--attention f32", "f32.safetensors"));
    EXPECT_NE(forward("", "--attention f32 --bf16-activations", "b.safetensors"), exact)
        << "bf16 and f32 activations gave the same bytes";
}

// --lm-head: an INT4 checkpoint's BF16 lm_head runs as INT4 g64 by default and as stored with
// --lm-head bf16 (the outputs differ); a BF16 checkpoint's runs as stored either way (identical
// bytes); a bad value is a one-line usage error.
TEST(LmHeadDefault, Int4CheckpointsQuantizeTheHeadUnlessBf16) {
    TempDir dir;
    ASSERT_EQ(run_lancet("synth --preset tiny --dtype bf16 -o " + q(dir / "tiny")).exit_code, 0);
    const std::string int4 = test::make_rtn_int4((dir / "tiny").string(), dir / "tiny-int4", 32);
    write_text_input(dir / "in.safetensors", 16);
    auto forward = [&](const std::string& model, const std::string& flags, const std::string& out) {
        return forward_bytes(dir.path(), model, flags, out);
    };
    const std::string q_int4 = forward(int4, "", "q_int4.safetensors");
    const std::string q_bf16 = forward(int4, "--lm-head bf16", "q_bf16.safetensors");
    ASSERT_FALSE(q_int4.empty());
    EXPECT_NE(q_int4, q_bf16) << "the INT4 checkpoint's lm_head was not quantized by default";
    const std::string orig = (dir / "tiny").string();
    EXPECT_EQ(forward(orig, "", "o_def.safetensors"),
              forward(orig, "--lm-head bf16", "o_bf16.safetensors"))
        << "a BF16 checkpoint's lm_head must run as stored";
    const auto bad = run_lancet("--lm-head int3 forward --model " + q(int4));
    EXPECT_EQ(bad.exit_code, 1);
    EXPECT_EQ(bad.err.rfind("lancet: error: ", 0), 0u) << bad.err;
}

// --attention / $LANCET_ATTN: auto by default (f32 with exact activations); bf16 from either gives
// the same bytes and differs from f32 (24 query rows: the AMX tiles where the CPU has them); a bad
// value of either is one line and exit 1.
TEST(AttentionPrecision, FlagAndEnvironmentSelectBf16) {
    TempDir dir;
    ASSERT_EQ(run_lancet("synth --preset tiny -o " + q(dir / "tiny")).exit_code, 0);
    write_text_input(dir / "in.safetensors", 24);
    auto forward = [&](const std::string& env, const std::string& flags, const std::string& out) {
        return forward_bytes(dir.path(), (dir / "tiny").string(), flags, out,
                             {{"LANCET_ATTN", env}});
    };
    const std::string by_default = forward("", "", "default.safetensors");
    const std::string f32 = forward("", "--attention f32", "f32.safetensors");
    const std::string flag = forward("", "--attention bf16", "flag.safetensors");
    const std::string env = forward("bf16", "", "env.safetensors");
    ASSERT_FALSE(by_default.empty());
    EXPECT_EQ(by_default, forward("", "--attention auto", "auto.safetensors"))
        << "the default is not auto attention";
    EXPECT_EQ(forward("", "--exact-activations", "exact.safetensors"),
              forward("", "--exact-activations --attention f32", "exact_f32.safetensors"))
        << "exact activations do not imply f32 attention";
    EXPECT_NE(forward("", "--exact-activations --attention bf16", "exact_bf16.safetensors"),
              forward("", "--exact-activations", "exact2.safetensors"))
        << "--attention bf16 must override the exact-activations default";
    EXPECT_EQ(flag, env) << "--attention bf16 and LANCET_ATTN=bf16 differ";
    EXPECT_NE(flag, f32) << "bf16 and f32 attention gave the same bytes";
    EXPECT_EQ(forward("bf16", "--attention f32", "over.safetensors"), f32)
        << "the flag must override the environment";
    const auto bad_flag = run_lancet("--attention f16 forward --model " + q(dir / "tiny"));
    EXPECT_EQ(bad_flag.exit_code, 1);
    EXPECT_EQ(bad_flag.err.rfind("lancet: error: ", 0), 0u) << bad_flag.err;
    test::RunResult bad_env;
    {
        const test::ScopedEnv f16{{"LANCET_ATTN", "f16"}};
        bad_env = run_lancet("forward --model " + q(dir / "tiny") + " --input " +
                             q(dir / "in.safetensors") + " --out " + q(dir / "bad.safetensors"));
    }
    EXPECT_EQ(bad_env.exit_code, 1);
    EXPECT_NE(bad_env.err.find("LANCET_ATTN=f16"), std::string::npos) << bad_env.err;
    EXPECT_FALSE(fs::exists(dir / "bad.safetensors"));
}

}  // namespace
}  // namespace lancet
