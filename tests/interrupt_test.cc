// Interrupted runs leave nothing behind: the `lancet` binary is started as a child, sent a real
// SIGINT or SIGTERM while its temporary output exists, and must exit with 128 + signal, one line
// naming what it removed, and no temporary (and no output) left; a temporary planted under the
// name of a dead process is removed by the next run on the same output, a live owner's is kept.
#include <fcntl.h>
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdlib>
#include <filesystem>
#include <sstream>
#include <string>
#include <vector>

#include "io/temp_output.h"
#include "test_util.h"

namespace lancet {
namespace {

namespace fs = std::filesystem;
using test::lancet_bin;
using test::run_lancet;
using test::TempDir;

std::string q(const fs::path& p) { return "'" + p.string() + "'"; }

// Starts `lancet args...` with stderr to `err_file`; returns its pid.
pid_t start_lancet(const std::vector<std::string>& args, const fs::path& err_file) {
    const std::string bin = lancet_bin();
    std::vector<std::string> argv_s{bin};
    argv_s.insert(argv_s.end(), args.begin(), args.end());
    const pid_t pid = fork();
    if (pid == 0) {
        const int fd = ::open(err_file.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
        const int null = ::open("/dev/null", O_WRONLY);
        if (fd < 0 || null < 0) _exit(127);
        dup2(fd, 2);
        dup2(null, 1);
        std::vector<char*> argv;
        for (auto& s : argv_s) argv.push_back(s.data());
        argv.push_back(nullptr);
        execv(bin.c_str(), argv.data());
        _exit(127);
    }
    return pid;
}

// Entries of `dir` whose name starts with `prefix`.
std::vector<std::string> entries_starting(const fs::path& dir, const std::string& prefix) {
    std::vector<std::string> r;
    for (const auto& e : fs::directory_iterator(dir)) {
        const std::string n = e.path().filename().string();
        if (n.rfind(prefix, 0) == 0) r.push_back(n);
    }
    return r;
}

// A pid that belonged to a process which has exited and been reaped.
pid_t dead_pid() {
    const pid_t pid = fork();
    if (pid == 0) _exit(0);
    int status = 0;
    waitpid(pid, &status, 0);
    return pid;
}

struct Interrupted {
    bool raced = false;  // the run finished before the signal reached it: try again
    int status = 0;
    std::string err;
    pid_t pid = 0;
};

// Runs quantize on `src` into `out` and sends `sig` as soon as its temporary folder exists.
Interrupted quantize_and_interrupt(const fs::path& dir, int sig) {
    const fs::path out = dir / "out", err = dir / "stderr";
    Interrupted r;
    r.pid = start_lancet(
        {"-t", "1", "quantize", "--method", "awq", "--stats", (dir / "stats.safetensors").string(),
         "--src", (dir / "small").string(), "--out", out.string(), "--force"},
        err);
    EXPECT_GT(r.pid, 0);
    const fs::path tmp = dir / ("out.tmp." + std::to_string(r.pid));
    bool exited = false;
    for (;;) {
        if (waitpid(r.pid, &r.status, WNOHANG) == r.pid) {
            exited = true;
            break;
        }
        std::error_code ec;
        if (fs::exists(tmp, ec)) break;
        usleep(200);
    }
    if (!exited) {
        kill(r.pid, sig);
        waitpid(r.pid, &r.status, 0);
    }
    r.err = test::read_file(err);
    std::error_code ec;
    r.raced = fs::exists(out, ec);  // the run got to its rename first
    return r;
}

void check_interrupt(int sig, const char* name) {
    TempDir dir;
    ASSERT_EQ(run_lancet("synth --preset small -o " + q(dir / "small")).exit_code, 0);
    ASSERT_EQ(run_lancet("stats synth --model " + q(dir / "small") + " -o " +
                         q(dir / "stats.safetensors"))
                  .exit_code,
              0);
    Interrupted r;
    for (int attempt = 0; attempt < 5; ++attempt) {
        r = quantize_and_interrupt(dir.path(), sig);
        if (!r.raced) break;
        fs::remove_all(dir / "out");
    }
    ASSERT_FALSE(r.raced) << "the run always finished before the signal";
    ASSERT_TRUE(WIFEXITED(r.status)) << "killed by signal " << WTERMSIG(r.status);
    EXPECT_EQ(WEXITSTATUS(r.status), 128 + sig) << r.err;
    // Nothing of the output remains: no folder, no temporary, no moved-aside old one.
    EXPECT_TRUE(entries_starting(dir.path(), "out").empty())
        << entries_starting(dir.path(), "out").front();
    // One line says what was removed, naming the temporary folder.
    const std::string tmp = (dir / ("out.tmp." + std::to_string(r.pid))).string();
    const std::string expect =
        std::string("lancet: interrupted by ") + name + "; removed the temporary output " + tmp;
    std::istringstream lines(r.err);
    int n_interrupt_lines = 0;
    for (std::string line; std::getline(lines, line);) {
        if (line.rfind("lancet: interrupted", 0) != 0) continue;
        ++n_interrupt_lines;
        EXPECT_EQ(line.substr(0, expect.size()), expect) << line;
    }
    EXPECT_EQ(n_interrupt_lines, 1) << r.err;
    EXPECT_EQ(r.err.find("lancet: error"), std::string::npos) << r.err;
}

TEST(Interrupt, SigintDuringQuantizeRemovesTheTemporaryFolder) {
    check_interrupt(SIGINT, "SIGINT");
}

TEST(Interrupt, SigtermDuringQuantizeRemovesTheTemporaryFolder) {
    check_interrupt(SIGTERM, "SIGTERM");
}

TEST(Interrupt, StaleTemporaryOfADeadRunIsRemovedALiveOnesKept) {
    TempDir dir;
    const pid_t dead = dead_pid();
    const fs::path stale = dir / ("m.tmp." + std::to_string(dead));
    const fs::path live = dir / ("m.tmp." + std::to_string(getpid()));  // this test is alive
    fs::create_directories(stale / "sub");
    test::write_file(stale / "sub" / "model.safetensors", "partial");
    fs::create_directories(live);
    // A stale single-file temporary too (SafetensorsWriter / write_file_atomic's kind).
    const fs::path stale_file = dir / ("s.safetensors.tmp." + std::to_string(dead));
    test::write_file(stale_file, "partial");

    const auto r = run_lancet("synth --preset tiny -o " + q(dir / "m"));
    ASSERT_EQ(r.exit_code, 0) << r.err;
    EXPECT_FALSE(fs::exists(stale));
    EXPECT_TRUE(fs::exists(live)) << "a live process's temporary must be left alone";
    EXPECT_TRUE(fs::exists(dir / "m" / "model.safetensors"));
    EXPECT_NE(r.err.find("removed " + stale.string() + ", left by an interrupted run (process " +
                         std::to_string(dead) + " is gone)"),
              std::string::npos)
        << r.err;
    EXPECT_EQ(r.err.find(live.string()), std::string::npos) << r.err;

    const auto s =
        run_lancet("stats synth --model " + q(dir / "m") + " -o " + q(dir / "s.safetensors"));
    ASSERT_EQ(s.exit_code, 0) << s.err;
    EXPECT_FALSE(fs::exists(stale_file));
    EXPECT_NE(s.err.find("removed " + stale_file.string()), std::string::npos) << s.err;
}

// A forced run moves the old output to `.old.<pid>` just before its rename; a dead run's `.old`
// is garbage only when the output exists (else it is the only copy and is kept).
TEST(Interrupt, StaleOldFolderRemovedOnlyBesideAnExistingOutput) {
    TempDir dir;
    const pid_t dead = dead_pid();
    const fs::path old = dir / ("m.old." + std::to_string(dead));
    fs::create_directories(old);
    EXPECT_EQ(remove_stale_temps((dir / "m").string()), 0);
    EXPECT_TRUE(fs::exists(old));
    fs::create_directories(dir / "m");
    EXPECT_EQ(remove_stale_temps((dir / "m").string()), 1);
    EXPECT_FALSE(fs::exists(old));
    // Names that only look alike are not touched.
    const fs::path other = dir / ("mm.tmp." + std::to_string(dead));
    fs::create_directories(dir / "m.tmp.12x");
    fs::create_directories(other);
    EXPECT_EQ(remove_stale_temps((dir / "m").string()), 0);
    EXPECT_TRUE(fs::exists(dir / "m.tmp.12x"));
    EXPECT_TRUE(fs::exists(other));
}

}  // namespace
}  // namespace lancet
