// Runs `lancet bench kernels` and `bench awq` on tiny configurations: tables, JSON records, and
// bad-input errors.
#include <gtest/gtest.h>

#include <algorithm>
#include <filesystem>
#include <map>
#include <nlohmann/json.hpp>
#include <sstream>
#include <string>
#include <utility>
#include <vector>

#include "kernels/dispatch.h"
#include "test_util.h"

namespace lancet::test {
namespace {

// `lancet -t 2 bench kernels ARGS --bandwidth-mib 64 --json FILE`: the run and the JSON records it
// wrote, one per line (none when it failed); no temporary file is left beside FILE.
struct BenchRun {
    RunResult r;
    std::vector<nlohmann::json> records;
};
BenchRun bench_kernels(const std::string& args) {
    TempDir tmp;
    const auto json = tmp / "bench.jsonl";
    BenchRun b{
        run_lancet("-t 2 bench kernels " + args + " --bandwidth-mib 64 --json " + json.string()),
        {}};
    if (b.r.exit_code != 0) return b;
    EXPECT_FALSE(std::filesystem::exists(json.string() + ".tmp"));
    std::istringstream lines(read_file(json));
    for (std::string line; std::getline(lines, line);)
        b.records.push_back(nlohmann::json::parse(line));
    return b;
}

TEST(BenchKernelsCli, PrintsTableAndWritesJson) {
    const auto [r, records] = bench_kernels("--quick --shapes kv --n 1,9 --reps 1 --act f32");
    ASSERT_EQ(r.exit_code, 0) << r.err;
    EXPECT_NE(r.out.find("ISA "), std::string::npos) << r.out;
    EXPECT_NE(r.out.find(", 2 threads"), std::string::npos) << r.out;
    EXPECT_NE(r.out.find("| k_proj/v_proj | 256x2048 | 1 |"), std::string::npos) << r.out;
    EXPECT_NE(r.out.find("| k_proj/v_proj | 256x2048 | 9 |"), std::string::npos) << r.out;
    int linear = 0, naive = 0, bandwidth = 0;
    for (const auto& rec : records) {
        const std::string kernel = rec.at("kernel");
        if (kernel == "read_bandwidth") {
            ++bandwidth;
            EXPECT_GT(rec.at("gbps").get<double>(), 0.0);
        } else if (kernel == "linear" || kernel == "naive_dequant_bf16") {
            (kernel == "linear" ? linear : naive)++;
            for (const char* f :
                 {"weight_type", "m", "k", "n", "threads", "median_ms", "gflops", "weight_gbps"})
                EXPECT_TRUE(rec.contains(f)) << f << " missing in " << rec.dump();
            EXPECT_EQ(rec.at("m").get<int>(), 256);
            EXPECT_EQ(rec.at("k").get<int>(), 2048);
            EXPECT_EQ(rec.at("threads").get<int>(), 2);
            EXPECT_GT(rec.at("median_ms").get<double>(), 0.0);
        }
    }
    EXPECT_EQ(bandwidth, 1);
    EXPECT_EQ(linear, 4);  // int4 and bf16, n = 1 and 9
    EXPECT_EQ(naive, 2);
}

// --types int5,nvfp4 time the spec §1.2/§1.3 weights next to BF16, with their ratio columns.
TEST(BenchKernelsCli, Int5AndNvfp4Columns) {
    const auto [r, records] = bench_kernels("--shapes kv --n 1,9 --reps 1 --types int5,nvfp4,bf16");
    ASSERT_EQ(r.exit_code, 0) << r.err;
    for (const char* col : {"| int5 ms |", "| nvfp4 ms |", "| int5 speedup vs bf16 |",
                            "| nvfp4 speedup vs bf16 |", "| nvfp4 GB/s / read |"})
        EXPECT_NE(r.out.find(col), std::string::npos) << col << " in " << r.out;
    std::map<std::string, int> linear;
    for (const auto& rec : records) {
        if (rec.at("kernel") != "linear") continue;
        const std::string t = rec.at("weight_type");
        ++linear[t];
        EXPECT_EQ(rec.at("group_size").get<int>(), t == "int5" ? 64 : t == "nvfp4" ? 16 : 0);
        EXPECT_GT(rec.at("median_ms").get<double>(), 0.0);
    }
    EXPECT_EQ(linear, (std::map<std::string, int>{{"bf16", 2}, {"int5", 2}, {"nvfp4", 2}}));
    const RunResult bad = run_lancet("bench kernels --types int6 --shapes kv --n 1");
    EXPECT_EQ(bad.exit_code, 1);
    EXPECT_NE(bad.err.find("int4, int5, nvfp4, bf16 or f32"), std::string::npos) << bad.err;
}

TEST(BenchKernelsCli, ActInt8AddsW4A8Columns) {
    const auto [r, records] =
        bench_kernels("--quick --shapes kv --n 1,9 --reps 1 --act int8 --cold --cold-mib 32");
    ASSERT_EQ(r.exit_code, 0) << r.err;
    for (const char* col : {"int4-f32 ms", "int4-w4a8 ms", "int4-w4a8 speedup vs bf16",
                            "int4-w4a8 GB/s / read", "naive / int4-w4a8", "int8 dot peak"})
        EXPECT_NE(r.out.find(col), std::string::npos) << col << " in " << r.out;
    // On the amx ISA (the default where the CPU and OS have AMX) the AVX-512 W4A8 kernel is timed
    // beside the tiles, and both are set against the AMX peak too.
    const bool amx = lancet::kernels::active_isa() == lancet::kernels::Isa::Amx;
    if (amx) {
        for (const char* col : {"int4-w4a8-vnni ms", "int4-w4a8 / amx peak",
                                "int4-w4a8-vnni / amx peak", "AMX int8 peak"})
            EXPECT_NE(r.out.find(col), std::string::npos) << col << " in " << r.out;
    }
    int int8 = 0, f32 = 0, amx_peak = 0;
    for (const auto& rec : records) {
        amx_peak += rec.at("kernel") == "amx_int8_peak";
        if (rec.at("kernel") != "linear") continue;
        EXPECT_TRUE(rec.at("cold").get<bool>()) << rec.dump();
        (rec.at("activations") == "int8" ? int8 : f32)++;
    }
    EXPECT_EQ(int8, amx ? 4 : 2);  // int4 with int8 activations, n = 1 and 9 (amx: and vnni)
    EXPECT_EQ(f32, 4);             // int4 and bf16 with f32 activations
    EXPECT_EQ(amx_peak, amx ? 1 : 0);
}

// The decoder's fused q/k/v call as a row of its own: all parts' bytes, every variant (BF16 parts
// one by one), no naive column for it; n = 1 takes the fused W4A8 GEMV, n = 9 the per-weight path.
TEST(BenchKernelsCli, FusedQkvRowTimesTheDecodersCall) {
    const auto [r, records] =
        bench_kernels("--quick --shapes qkv --n 1,9 --reps 1 --cold --cold-mib 16");
    ASSERT_EQ(r.exit_code, 0) << r.err;
    EXPECT_NE(r.out.find("| q+k+v fused | 2560x2048 | 1 |"), std::string::npos) << r.out;
    EXPECT_NE(r.out.find("| q+k+v fused | 2560x2048 | 9 |"), std::string::npos) << r.out;
    int rows = 0;
    for (const auto& rec : records) {
        const std::string line = rec.dump();
        EXPECT_NE(rec.at("kernel"), "naive_dequant_bf16") << line;
        if (rec.at("kernel") != "linear") continue;
        ++rows;
        EXPECT_EQ(rec.at("fused_parts").get<int>(), 3) << line;
        EXPECT_EQ(rec.at("m").get<int>(), 2560) << line;
        // GB/s over the three weights' published bytes (INT4 g64: out * in / 2 codes plus 3
        // bytes of scale and zero per group; BF16: 2 per weight), so GB/s x ms = MB of all parts.
        const double ms = rec.at("median_ms").get<double>();
        EXPECT_GT(ms, 0.0) << line;
        const double mb = rec.at("weight_type") == "int4"
                              ? (2560.0 * 2048 / 2 + 2560.0 * 32 * 3) / 1e6
                              : 2560.0 * 2048 * 2 / 1e6;
        EXPECT_NEAR(rec.at("weight_gbps").get<double>() * ms, mb, 1e-6 * mb) << line;
    }
    EXPECT_GE(rows, 6);  // int4-f32, int4-w4a8 and bf16 at n = 1 and 9 (amx: and vnni)
}

TEST(BenchKernelsCli, BadInputIsOneLineAndExit1) {
    for (const char* args : {"bench kernels --shapes nope", "bench kernels --types int3",
                             "bench kernels --group-size 48 --shapes kv", "bench kernels --n 0",
                             "bench kernels --reps 0", "bench kernels --act int4",
                             // "-1" read as size_t: n x k wrapped and the bench segfaulted.
                             "bench kernels --n -1", "bench kernels --n 70000",
                             // Usage errors (CLI11) follow the one-line rule too.
                             "bench kernels --no-such-flag", "bench kernels --reps abc"}) {
        const RunResult r = run_lancet(args);
        EXPECT_EQ(r.exit_code, 1) << args;
        EXPECT_EQ(r.err.rfind("lancet: error: ", 0), 0u) << args << ": " << r.err;
        EXPECT_EQ(std::count(r.err.begin(), r.err.end(), '\n'), 1) << r.err;
    }
}

// An unknown LANCET_ISA or LANCET_ACT is an error that names the variable and its value.
TEST(BenchKernelsCli, UnknownIsaOrActivationModeInEnvironmentIsAnError) {
    for (const auto& [var, value] :
         {std::pair<const char*, const char*>{"LANCET_ISA", "sse9"}, {"LANCET_ACT", "int3"}}) {
        const ScopedEnv env({{var, value}});
        const RunResult r = run_lancet("bench kernels --quick --shapes kv --n 1 --bandwidth-mib 8");
        EXPECT_EQ(r.exit_code, 1) << var;
        EXPECT_NE(r.err.find(std::string(var) + "=" + value), std::string::npos) << r.err;
    }
}

TEST(BenchAwqCli, PrintsOneRowPerGroupNoWorseThanRtn) {
    const RunResult r = run_lancet(
        "-t 2 bench awq --hidden 256 --intermediate 512 --heads 4 --kv-heads 2 --tokens 256 "
        "--rows 64");
    ASSERT_EQ(r.exit_code, 0) << r.err;
    EXPECT_NE(r.out.find("hidden 256, intermediate 512, 4/2 heads"), std::string::npos) << r.out;
    std::istringstream lines(r.out);
    int rows = 0;
    for (std::string line; std::getline(lines, line);) {
        std::istringstream f(line);
        std::string name;
        int in = 0, out = 0;
        double alpha, rtn_s, rtn_h, awq_s, awq_h, wall, cpu;
        if (!(f >> name >> in >> out >> alpha >> rtn_s >> rtn_h >> awq_s >> awq_h >> wall >> cpu))
            continue;
        ++rows;
        // The search keeps RTN when it cannot beat it on the search rows.
        EXPECT_LE(awq_s, rtn_s * (1 + 1e-9)) << line;
        EXPECT_GT(rtn_s, 0.0) << line;
        EXPECT_GE(alpha, 0.0) << line;
        EXPECT_LE(alpha, 1.0) << line;
        if (name == "qkv") {
            EXPECT_EQ(out, 256 + 2 * 128) << line;
        }
        if (name == "down(up)") {
            EXPECT_EQ(in, 512) << line;
        }
    }
    EXPECT_EQ(rows, 4) << r.out;

    const RunResult one = run_lancet(
        "bench awq --hidden 256 --intermediate 512 --heads 4 --kv-heads 2 --tokens 256 --rows 64 "
        "--groups down");
    ASSERT_EQ(one.exit_code, 0) << one.err;
    EXPECT_NE(one.out.find("down(up)"), std::string::npos) << one.out;
    EXPECT_EQ(one.out.find("qkv "), std::string::npos) << one.out;
}

// `bench gen` on the tiny synth: the stacked CFG step (default) and two forwards per step
// (--no-cfg-batch), the step's split into linears and the rest, and the JSON record.
TEST(BenchGenCli, StackedAndTwoForwardSteps) {
    TempDir tmp;
    const auto model = tmp / "tiny";
    ASSERT_EQ(run_lancet("synth --preset tiny --out " + model.string()).exit_code, 0);
    for (const bool stacked : {true, false}) {
        const auto json = tmp / (stacked ? "a.json" : "b.json");
        const RunResult r = run_lancet("-t 2 bench gen --model " + model.string() +
                                       " --size 64 --steps 2 --reps 1 --json " + json.string() +
                                       (stacked ? "" : " --no-cfg-batch"));
        ASSERT_EQ(r.exit_code, 0) << r.err;
        EXPECT_NE(r.out.find(stacked ? "one stacked forward" : "two noisy-block forwards"),
                  std::string::npos)
            << r.out;
        EXPECT_NE(r.out.find("in the linears"), std::string::npos) << r.out;
        const auto rec = nlohmann::json::parse(read_file(json));
        EXPECT_EQ(rec.at("cfg_batch").get<bool>(), stacked);
        EXPECT_EQ(rec.at("target_tokens").get<double>(), 16.0);
        EXPECT_GT(rec.at("step_s").get<double>(), 0.0);
        EXPECT_GE(rec.at("step_linear_s").get<double>(), 0.0);
        EXPECT_LE(rec.at("step_linear_s").get<double>(), rec.at("step_s").get<double>());
        EXPECT_GE(rec.at("step_cpu_s").get<double>(), 0.0);
    }
}

TEST(BenchAwqCli, BadOptionsAreOneLineErrors) {
    for (const char* args : {"bench awq --groups qkv,mlp", "bench awq --hidden 100 --heads 16",
                             "bench awq --heads 16 --kv-heads 3", "bench awq --rows 2"}) {
        const RunResult r = run_lancet(args);
        EXPECT_EQ(r.exit_code, 1) << args;
        EXPECT_EQ(r.err.rfind("lancet: error: bench awq: ", 0), 0u) << args << ": " << r.err;
        EXPECT_EQ(std::count(r.err.begin(), r.err.end(), '\n'), 1) << r.err;
    }
}

}  // namespace
}  // namespace lancet::test
