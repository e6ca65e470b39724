// `lancet batch`: items split across ranks from the launcher's environment (and mpirun when
// installed) give the same outputs as one process; failures are recorded; reruns resume.
#include "pipeline/batch.h"

#include <gtest/gtest.h>

#include <cstdlib>
#include <nlohmann/json.hpp>
#include <sstream>

#include "core/error.h"
#include "test_util.h"

namespace lancet {
namespace {

namespace fs = std::filesystem;
using nlohmann::json;

using test::ScopedEnv;

class Batch : public ::testing::Test {
  protected:
    void SetUp() override {
        model_ = test::synth_tiny(dir_);
        json ex = json::array();
        for (int i = 0; i < 5; ++i)
            ex.push_back({{"id", "q" + std::to_string(i)},
                          {"prompt", "question " + std::to_string(i)},
                          {"max_new_tokens", 5 + i}});
        ex.push_back({{"id", "empty"}, {"prompt", ""}});  // fails: empty prompt
        ex.push_back("a bare prompt string");
        examples_ = (dir_ / "ex.json").string();
        test::write_file(examples_, ex.dump());
    }
    test::RunResult batch(const std::string& out, const std::string& extra = "") {
        return test::run_lancet("batch -m " + model_ + " --examples " + examples_ + " -o " + out +
                                " " + extra);
    }
    static std::vector<json> manifest(const fs::path& p) {
        std::istringstream in(test::read_file(p));
        std::vector<json> v;
        for (std::string line; std::getline(in, line);) v.push_back(json::parse(line));
        return v;
    }
    void expect_same_items(const fs::path& a, const fs::path& b) {
        size_t n = 0;
        for (const auto& e : fs::directory_iterator(a / "items")) {
            const fs::path other = b / "items" / e.path().filename();
            ASSERT_TRUE(fs::exists(other)) << other;
            EXPECT_EQ(test::read_file(e.path()), test::read_file(other)) << other;
            ++n;
        }
        EXPECT_EQ(n, 6u);
        EXPECT_EQ(std::distance(fs::directory_iterator(b / "items"), fs::directory_iterator()), 6);
    }

    test::TempDir dir_;
    std::string model_, examples_;
};

TEST_F(Batch, TwoRanksFromTheEnvironmentMatchOneProcess) {
    const auto one = batch((dir_ / "one").string());
    ASSERT_EQ(one.exit_code, 0) << one.err;
    EXPECT_NE(one.out.find("rank 0 of 1: 7 items, 6 done, 0 skipped (output exists), 1 failed"),
              std::string::npos)
        << one.out;
    EXPECT_NE(one.out.find("merged 1 parts: 7 items, 1 failed"), std::string::npos) << one.out;
    const auto m1 = manifest(dir_ / "one" / "manifest.jsonl");
    ASSERT_EQ(m1.size(), 7u);
    for (size_t i = 0; i < m1.size(); ++i) {
        EXPECT_EQ(m1[i]["item"], i);
        EXPECT_EQ(m1[i]["rank"], 0);
        EXPECT_TRUE(m1[i]["seconds"].is_number());
    }
    EXPECT_TRUE(m1[5]["output"].is_null());
    EXPECT_NE(m1[5]["error"].get<std::string>().find("empty prompt"), std::string::npos);
    EXPECT_EQ(m1[6]["id"], "000006");

    // Each launcher's variables, two ranks, one output folder each; then --merge.
    const std::vector<std::vector<std::pair<const char*, const char*>>> launchers = {
        {{"RANK", "WORLD_SIZE"}},
        {{"SLURM_PROCID", "SLURM_NTASKS"}},
        {{"OMPI_COMM_WORLD_RANK", "OMPI_COMM_WORLD_SIZE"}}};
    int k = 0;
    for (const auto& l : launchers) {
        const fs::path out = dir_ / ("two" + std::to_string(k++));
        for (int r = 1; r >= 0; --r) {  // rank 1 first: rank 0 then finds every part
            ScopedEnv env({{l[0].first, std::to_string(r)}, {l[0].second, "2"}});
            const auto res = batch(out.string(), "--merge-wait 0");
            ASSERT_EQ(res.exit_code, 0) << res.err;
            EXPECT_NE(res.out.find("rank " + std::to_string(r) + " of 2"), std::string::npos);
        }
        const auto m2 = manifest(out / "manifest.jsonl");
        ASSERT_EQ(m2.size(), 7u);
        for (size_t i = 0; i < m2.size(); ++i) {
            EXPECT_EQ(m2[i]["item"], i);
            EXPECT_EQ(m2[i]["rank"], static_cast<int>(i % 2));
            EXPECT_EQ(m2[i]["output"], m1[i]["output"]);
        }
        expect_same_items(dir_ / "one", out);
    }

    // An indexed job: JOB_COMPLETION_INDEX with the count given; merged separately.
    const fs::path idx = dir_ / "indexed";
    for (int r = 0; r < 2; ++r) {
        ScopedEnv env({{"JOB_COMPLETION_INDEX", std::to_string(r)}});
        const auto res = batch(idx.string(), "--world-size 2");
        ASSERT_EQ(res.exit_code, 0) << res.err;
    }
    const auto merged = test::run_lancet("batch --merge " + idx.string());
    ASSERT_EQ(merged.exit_code, 0) << merged.err;
    EXPECT_NE(merged.out.find("merged 2 parts: 7 items, 1 failed"), std::string::npos);
    expect_same_items(dir_ / "one", idx);
}

TEST_F(Batch, RerunSkipsFinishedItems) {
    const fs::path out = dir_ / "out";
    ASSERT_EQ(batch(out.string()).exit_code, 0);
    const std::string before = test::read_file(out / "items" / "q2.txt");
    fs::remove(out / "items" / "q3.txt");
    const auto again = batch(out.string());
    ASSERT_EQ(again.exit_code, 0) << again.err;
    EXPECT_NE(again.out.find("1 done, 5 skipped (output exists), 1 failed"), std::string::npos)
        << again.out;
    EXPECT_EQ(test::read_file(out / "items" / "q2.txt"), before);
    EXPECT_TRUE(fs::exists(out / "items" / "q3.txt"));
}

TEST_F(Batch, MergeRefusesAMissingPart) {
    const fs::path out = dir_ / "half";
    {
        ScopedEnv env({{"RANK", "0"}, {"WORLD_SIZE", "2"}});
        const auto r = batch(out.string());
        ASSERT_EQ(r.exit_code, 0) << r.err;
        EXPECT_NE(r.out.find("lancet batch --merge"), std::string::npos) << r.out;
    }
    const auto m = test::run_lancet("batch --merge " + out.string());
    EXPECT_EQ(m.exit_code, 1);
    EXPECT_NE(m.err.find("lancet: error: batch --merge: part rank-00001-of-00002.jsonl is missing"),
              std::string::npos)
        << m.err;
    EXPECT_FALSE(fs::exists(out / "manifest.jsonl"));
}

TEST_F(Batch, BadLauncherEnvironmentIsOneLine) {
    {
        ScopedEnv env({{"RANK", "2"}, {"WORLD_SIZE", "2"}});
        EXPECT_THROW(launcher_rank(), Error);
        const auto r = batch((dir_ / "x").string());
        EXPECT_EQ(r.exit_code, 1);
        EXPECT_EQ(r.err, "lancet: error: batch: rank 2 is outside a world of 2\n");
    }
    {
        ScopedEnv env({{"JOB_COMPLETION_INDEX", "1"}});
        EXPECT_THROW(launcher_rank(), Error);
        EXPECT_EQ(launcher_rank(3).rank, 1);
    }
    {
        ScopedEnv env({{"SLURM_PROCID", "x"}, {"SLURM_NTASKS", "2"}});
        EXPECT_THROW(launcher_rank(), Error);
    }
    EXPECT_EQ(launcher_rank().world, 1);
}

TEST_F(Batch, MpirunTwoRanksMatchOneProcess) {
    if (std::system("command -v mpirun >/dev/null 2>&1") != 0)
        GTEST_SKIP() << "mpirun not installed (openmpi-bin)";
    ASSERT_EQ(batch((dir_ / "one").string()).exit_code, 0);
    const std::string bin = test::lancet_bin();
    const fs::path out = dir_ / "mpi";
    const std::string cmd =
        "timeout -s KILL 120 mpirun -np 2 --oversubscribe --allow-run-as-root " + bin +
        " batch -m " + model_ + " --examples " + examples_ + " -o " + out.string() + " >" +
        (dir_ / "mpi.log").string() + " 2>&1";
    ASSERT_EQ(std::system(cmd.c_str()), 0) << test::read_file(dir_ / "mpi.log");
    // Rank 0 waited for rank 1's part and merged.
    const auto m = manifest(out / "manifest.jsonl");
    ASSERT_EQ(m.size(), 7u);
    for (size_t i = 0; i < m.size(); ++i) EXPECT_EQ(m[i]["rank"], static_cast<int>(i % 2));
    expect_same_items(dir_ / "one", out);
}

}  // namespace
}  // namespace lancet
